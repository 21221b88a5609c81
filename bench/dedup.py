"""Dedup of the same instructions: Self-Instruct's ROUGE-L rule vs selfloop's FAISS embedding dedup.

Baseline: Self-Instruct's filter. Instructions are taken in order and one is kept unless its
ROUGE-L F-measure against some instruction kept before it exceeds 0.7; every kept instruction is
scored. Two implementations of that rule are timed: Self-Instruct's own (the `rouge-score`
package's tokenizer and `_score_lcs`, a Python dynamic-programming LCS, tokens computed once per
instruction, one process: the named baseline), and selfloop's (judges.text.rouge_l, a
bit-parallel LCS ~8x faster, as in judges.filters' `similar_to_pool` rule). Candidate:
judges.dedup at the default settings (all-mpnet-base-v2 and the paraphrase band; `--model
all-minilm-l6-v2` for the old default's embedder), embedding time and
writing the pool to disk included; loading the model (once per process) is timed separately.

The instructions are made here, from templates x subjects x paraphrase variants with a fixed
seed: 26 task families (general help, writing, math, coding, classification/extraction,
healthcare, law, finance) and 14 task types over 160 topics of those domains, three paraphrases
each. 70% are fresh tasks (redrawn while they repeat one already seen), 30% re-propose an
earlier task in one of its paraphrases (a third of those word for word), the way a model
re-proposes what it has seen. That gives known duplicates; same-template tasks with another
subject or number are near-misses that should be kept, and both methods merge many of them
(ROUGE-L because short templated instructions share most words, MiniLM because it hardly tells
numbers apart). The first N of the instructions are the N-instruction set.

Prints, for 1,000 / 2,000 / 5,000 instructions, both wall times and drop counts; FAISS at 20,000
(ROUGE-L is not run there: its cost is n x kept, its time is extrapolated from the measured
growth and marked so); one more round of 1,000 against the pool accepted from the 20,000; both
methods' precision/recall on the generated duplicates and on the labelled pairs
(tests/judges/data/dedup_pairs.jsonl); last, the ratios at 5,000, against Self-Instruct's
implementation last of all. Needs `pip install rouge-score` (the `bench` extra) for that one.

    python bench/dedup.py [--sizes 1000,2000,5000] [--large 20000] [--threads N]
        [--device cpu|cuda|auto] [--dtype auto|float32|bfloat16] [--model all-minilm-l6-v2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from judges.dedup import DedupConfig, DedupReport, Pool, dedup, pair_is_duplicate  # noqa: E402
from judges.embed import Embedder  # noqa: E402
from judges.text import rouge_l, rouge_tokens  # noqa: E402

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "judges" / "data" / "dedup_pairs.jsonl"
ROUGE_THRESHOLD = 0.7

# fmt: off
CITIES = ["Rome", "Tokyo", "Lisbon", "Mexico City", "Cairo", "Vancouver", "Istanbul", "Seoul",
          "Prague", "Buenos Aires", "Marrakech", "Sydney", "Dublin", "Hanoi", "Cape Town"]
SCIENCE = ["why the sky is blue", "how rainbows form", "the water cycle", "how airplanes fly",
           "what causes the seasons", "how magnets work", "why the moon has phases",
           "how a refrigerator keeps food cold", "what gravity is", "how the internet works",
           "why leaves change color in autumn", "how volcanoes erupt", "what causes thunder",
           "how batteries store energy", "why ice floats"]
AUDIENCES = ["a five-year-old", "a high school student", "a university student",
             "a retired engineer", "someone who is new to the topic"]
TIPS = ["falling asleep faster", "saving money on groceries", "staying focused while studying",
        "keeping houseplants alive", "packing a suitcase", "learning to cook", "running a first "
        "marathon", "reducing screen time", "moving to a new city", "making friends as an adult",
        "cleaning a small apartment", "training a puppy", "planning a wedding on a budget",
        "commuting by bike", "working from home", "preparing for a job interview",
        "decluttering a closet", "traveling with a toddler", "hosting a dinner party"]
FORMS = ["poem", "haiku", "limerick", "sonnet", "song"]
POEM_SUBJECTS = ["the sea", "the desert", "autumn leaves", "a lost key", "a city at night",
                 "friendship", "a rainy morning", "the first snow", "an old lighthouse",
                 "a cat who loves cheese", "the moon", "a long train journey",
                 "a mountain village", "a forgotten garden", "a summer storm", "growing older",
                 "a busy kitchen", "a quiet library", "the northern lights"]
EMAIL_KINDS = ["a thank-you", "an apology", "a follow-up", "a polite reminder", "a farewell"]
EMAIL_TO = ["a colleague who helped me finish a project", "my landlord",
            "a customer whose order arrived late", "my child's teacher",
            "a recruiter I met at a conference", "my team after a product launch",
            "a supplier who missed a deadline", "a former manager", "a new client"]
BLOG = ["remote work", "healthy cooking", "personal finance for students", "urban gardening",
        "learning a second language", "minimalist travel", "home workouts", "board games",
        "electric cars", "time management", "photography for beginners", "zero-waste living",
        "starting a podcast", "mental health at work", "coffee brewing"]
STORIES = ["a robot who learns to paint", "a dragon who is afraid of fire",
           "a girl who finds a door in a tree", "the last bookshop on Earth",
           "a detective who cannot remember faces", "two rivals stuck in an elevator",
           "a village where it never stops raining", "a clock that runs backwards",
           "an astronaut who misses the smell of bread", "a chess game that lasts fifty years",
           "a dog who becomes mayor", "a letter delivered thirty years late"]
LANGS = ["Python", "JavaScript", "Java", "Go", "Rust", "C++"]
FUNCS = ["checks whether a string is a palindrome", "reverses a linked list",
         "removes duplicate values from a list", "counts the words in a text",
         "checks whether a number is prime", "merges two sorted lists",
         "converts Celsius to Fahrenheit", "finds the largest element of an array",
         "computes the factorial of a number", "validates an email address",
         "flattens a nested list", "returns the n-th Fibonacci number",
         "sorts a list of names alphabetically", "parses a date string",
         "computes the average of a list of numbers"]
CS_PAIRS = [("a process", "a thread"), ("the stack", "the heap"), ("TCP", "UDP"),
            ("SQL databases", "NoSQL databases"), ("compiled languages", "interpreted languages"),
            ("a list", "a tuple"), ("git merge", "git rebase"), ("unit tests", "integration tests"),
            ("REST", "GraphQL"), ("an abstract class", "an interface"), ("HTTP", "HTTPS"),
            ("concurrency", "parallelism")]
SQL_TASKS = ["finds the ten most recent rows", "counts the rows per month",
             "deletes rows older than a year", "finds duplicate email addresses",
             "computes the average amount per customer", "lists rows with a missing price"]
TABLES = ["orders", "customers", "invoices", "employees", "products", "payments", "shipments"]
TEXTS = ["product review", "tweet", "restaurant review", "movie review", "customer email",
         "hotel review", "app store review", "news headline", "support chat", "survey answer"]
ENTITIES = ["dates", "email addresses", "phone numbers", "company names", "people's names",
            "dollar amounts", "city names", "product names"]
DOCS = ["text", "email", "contract", "news article", "meeting notes", "invoice"]
LENGTHS = ["one sentence", "three bullet points", "fifty words", "two paragraphs"]
SUM_DOCS = ["article", "report", "email thread", "research abstract", "court opinion",
            "earnings call transcript", "patient leaflet"]
CONDITIONS = ["type 2 diabetes", "type 1 diabetes", "the flu", "asthma", "anemia", "migraine",
              "hypothyroidism", "Lyme disease", "pneumonia", "celiac disease", "gout",
              "depression", "kidney stones", "shingles", "sleep apnea", "tonsillitis",
              "appendicitis", "psoriasis", "high blood pressure", "a concussion"]
DRUGS = ["ibuprofen", "amoxicillin", "metformin", "acetaminophen", "lisinopril", "atorvastatin",
         "sertraline", "omeprazole", "prednisone", "levothyroxine", "warfarin", "cetirizine",
         "albuterol", "gabapentin", "aspirin"]
LIFESTYLE = ["lower high blood pressure", "lower high cholesterol", "manage type 2 diabetes",
             "reduce migraines", "improve sleep quality", "reduce the risk of stroke",
             "ease acid reflux", "manage anxiety", "protect bone health", "reduce back pain"]
LAW_PAIRS = [("a misdemeanor", "a felony"), ("copyright", "a trademark"), ("a will", "a trust"),
             ("a patent", "a trade secret"), ("mediation", "arbitration"),
             ("a lease", "a license"), ("libel", "slander"), ("an LLC", "a corporation"),
             ("civil law", "criminal law"), ("a contractor", "an employee"),
             ("a power of attorney", "a guardianship"), ("theft", "robbery")]
LAW_TOPICS = ["the divorce process", "the eviction process", "small claims court",
              "forming an LLC", "child custody rules", "non-compete agreements",
              "contesting a will", "security deposit rules for tenants"]
PLACES = ["California", "New York", "Texas", "England", "Germany", "Ontario"]
DRAFTS = ["rental agreement for an apartment", "employment contract for a part-time employee",
          "non-disclosure agreement between two companies", "freelance services contract",
          "letter demanding the return of a security deposit",
          "privacy policy for a small website", "partnership agreement for two founders",
          "cease and desist letter for trademark misuse"]
TERMS = ["an index fund", "a hedge fund", "compound interest", "a Roth IRA", "a bond yield",
         "a price-to-earnings ratio", "dollar-cost averaging", "an emergency fund",
         "a credit score", "inflation", "an ETF", "a capital gains tax", "a certificate of "
         "deposit", "a stock split", "a margin call", "an annuity", "diversification",
         "a balance sheet", "amortization", "liquidity"]
HOUSEHOLDS = ["a family of four", "a single student", "a retired couple",
              "a young professional in a big city", "a freelance designer",
              "a single parent with two kids"]

def _equation(r: random.Random) -> dict:
    a, b = r.randint(2, 12), r.randint(1, 30)
    return {"a": a, "b": b, "c": a * r.randint(1, 15) + b}  # integer solutions


# Each family: paraphrase variants of one task (same slots), and a function drawing the slots.
# A task is (family, slots); its variants are duplicates of each other, other slots are not.
FAMILIES: list[tuple[list[str], object]] = [
    (["Give me {n} tips for {s}.", "What are {n} good tips for {s}?",
      "Share {n} practical tips for {s}."],
     lambda r: {"s": r.choice(TIPS), "n": r.choice(["three", "five", "ten"])}),
    (["Explain {s} to {a}.", "How would you explain {s} to {a}?",
      "Describe {s} in a way that {a} would understand."],
     lambda r: {"s": r.choice(SCIENCE), "a": r.choice(AUDIENCES)}),
    (["Plan a {n}-day itinerary for a first visit to {s}.",
      "Create a {n}-day travel plan for someone visiting {s} for the first time.",
      "Suggest a {n}-day itinerary for a first trip to {s}."],
     lambda r: {"s": r.choice(CITIES), "n": r.choice(["two", "three", "four", "five", "seven"])}),
    (["Write a {f} about {s}.", "Compose a {f} about {s}.", "Write me a {f} about {s}."],
     lambda r: {"f": r.choice(FORMS), "s": r.choice(POEM_SUBJECTS)}),
    (["Write {k} email to {s}.", "Draft {k} email to {s}.", "Compose {k} email addressed to {s}."],
     lambda r: {"k": r.choice(EMAIL_KINDS), "s": r.choice(EMAIL_TO)}),
    (["Suggest {n} catchy titles for a blog post about {s}.",
      "Give me {n} catchy titles for a blog post on {s}.",
      "Come up with {n} catchy blog post titles about {s}."],
     lambda r: {"n": r.choice(["three", "five", "ten"]), "s": r.choice(BLOG)}),
    (["Write a short story about {s}.", "Tell a short story about {s}.",
      "Write a brief story about {s}."], lambda r: {"s": r.choice(STORIES)}),
    (["What is {a}% of {b}?", "Calculate {a} percent of {b}.", "Find {a}% of {b}."],
     lambda r: {"a": r.randrange(5, 100, 5), "b": r.randrange(10, 2001, 10)}),
    (["Solve for x: {a}x + {b} = {c}.", "Find x if {a}x + {b} = {c}.",
      "What value of x satisfies {a}x + {b} = {c}?"],
     lambda r: _equation(r)),
    (["If a {v} travels {d} km in {h} hours, what is its average speed?",
      "A {v} covers {d} km in {h} hours. What is its average speed?",
      "What is the average speed of a {v} that travels {d} km in {h} hours?"],
     lambda r: {"v": r.choice(["train", "car", "bus", "cyclist"]),
                "d": r.randrange(50, 901, 10), "h": r.randint(2, 8)}),
    (["What is the {x} of a circle with a radius of {n} cm?",
      "Find the {x} of a circle whose radius is {n} cm.",
      "Calculate the {x} of a circle of radius {n} cm."],
     lambda r: {"x": r.choice(["area", "circumference"]), "n": r.randint(1, 60)}),
    (["Write a {l} function that {s}.", "Write a function in {l} that {s}.",
      "Show me {l} code for a function that {s}."],
     lambda r: {"l": r.choice(LANGS), "s": r.choice(FUNCS)}),
    (["Explain the difference between {a} and {b}.", "What is the difference between {a} and "
      "{b}?", "How do {a} and {b} differ?"],
     lambda r: dict(zip("ab", r.choice(CS_PAIRS)))),
    (["Write a SQL query that {s} in the {t} table.", "Give me a SQL query that {s} in the {t} "
      "table.", "Write an SQL statement that {s} in the {t} table."],
     lambda r: {"s": r.choice(SQL_TASKS), "t": r.choice(TABLES)}),
    (["Classify the sentiment of this {s} as {c}.",
      "Determine whether the sentiment of this {s} is {c}.",
      "Is the sentiment of this {s} {c}?"],
     lambda r: {"s": r.choice(TEXTS), "c": r.choice(["positive, negative, or neutral",
                                                     "positive or negative",
                                                     "happy, angry, sad, or neutral"])}),
    (["Extract all the {e} mentioned in the following {d}.",
      "List all the {e} that appear in the following {d}.", "Find all the {e} in the following "
      "{d}."], lambda r: {"e": r.choice(ENTITIES), "d": r.choice(DOCS)}),
    (["Summarize the following {d} in {n}.", "Give a summary of the following {d} in {n}.",
      "Write a summary of this {d} in {n}."],
     lambda r: {"d": r.choice(SUM_DOCS), "n": r.choice(LENGTHS)}),
    (["What are the common symptoms of {s} in {w}?", "What symptoms are common in {w} with {s}?",
      "Which symptoms usually point to {s} in {w}?"],
     lambda r: {"s": r.choice(CONDITIONS), "w": r.choice(["children", "adults", "older adults"])}),
    (["What are the side effects of {s} in {w}?", "What side effects can {s} cause in {w}?",
      "List the possible side effects of {s} in {w}."],
     lambda r: {"s": r.choice(DRUGS), "w": r.choice(["children", "adults", "pregnant women"])}),
    (["What lifestyle changes can help {s}?", "Which lifestyle changes help {s}?",
      "How can changes in lifestyle help {s}?"], lambda r: {"s": r.choice(LIFESTYLE)}),
    (["What is the difference between {a} and {b} in law?", "How does {a} differ from {b} "
      "legally?", "Explain the legal difference between {a} and {b}."],
     lambda r: dict(zip("ab", r.choice(LAW_PAIRS)))),
    (["Explain {s} in {p}.", "How does {s} work in {p}?", "Give an overview of {s} in {p}."],
     lambda r: {"s": r.choice(LAW_TOPICS), "p": r.choice(PLACES)}),
    (["Draft a simple {s}.", "Write a simple {s}.", "Prepare a basic {s}."],
     lambda r: {"s": r.choice(DRAFTS)}),
    (["Explain what {s} is.", "What is {s}? Explain.", "Can you explain what {s} is?"],
     lambda r: {"s": r.choice(TERMS)}),
    (["Calculate the monthly payment on a ${p},000 mortgage at {i}% interest over {y} years.",
      "What is the monthly payment for a {y}-year, ${p},000 mortgage at a {i}% interest rate?",
      "Work out the monthly payment of a ${p},000 loan over {y} years at {i}% interest."],
     lambda r: {"p": r.randrange(100, 951, 25), "i": r.choice([3, 3.5, 4, 4.5, 5, 5.5, 6, 7]),
                "y": r.choice([10, 15, 20, 25, 30])}),
    (["Write a monthly budget for {s} with an income of ${x}.",
      "Create a monthly budget for {s} earning ${x} a month.",
      "Make a monthly budget for {s} whose income is ${x} per month."],
     lambda r: {"s": r.choice(HOUSEHOLDS), "x": f"{r.randrange(1200, 9001, 600):,}"}),
# fmt: on
]

TOPICS = [
    # science
    "photosynthesis", "the water cycle", "black holes", "plate tectonics", "the immune system",
    "climate change", "DNA replication", "the speed of light", "volcanoes", "ocean tides",
    "evolution by natural selection", "the periodic table", "renewable energy",
    "the greenhouse effect", "gravity", "electricity", "sound waves", "the human heart",
    "sleep cycles", "the solar system", "magnetism", "earthquakes", "rainforests", "coral reefs",
    "bees and pollination", "the nitrogen cycle", "antibiotic resistance", "nuclear fusion",
    # history and culture
    "the French Revolution", "the Roman Empire", "the printing press", "the Industrial "
    "Revolution", "the Silk Road", "the Renaissance", "the Cold War", "ancient Egypt",
    "the moon landing", "the invention of the telephone", "the fall of the Berlin Wall",
    "the Olympic Games", "jazz music", "impressionist painting", "the Great Depression",
    "the history of the internet", "the Maya civilization", "the Magna Carta",
    "the women's suffrage movement",
    # technology and coding
    "recursion", "binary search", "hash tables", "machine learning", "public-key cryptography",
    "version control with git", "cloud computing", "REST APIs", "database indexing",
    "garbage collection", "the TCP/IP model", "containerization", "unit testing",
    "regular expressions", "big O notation", "neural networks", "blockchain", "compilers",
    "caching", "operating system scheduling", "open-source licensing",
    "two-factor authentication", "SQL joins", "functional programming", "quantum computing",
    # health
    "type 2 diabetes", "high blood pressure", "migraines", "seasonal allergies",
    "the Mediterranean diet", "intermittent fasting", "dehydration", "concussions", "asthma",
    "food poisoning", "vitamin D deficiency", "anxiety disorders", "physical therapy",
    "the common cold", "CPR", "sunscreen", "hearing loss", "childhood vaccinations", "insomnia",
    "lower back pain", "iron deficiency", "strokes", "heat exhaustion", "mindfulness meditation",
    # law
    "tenant rights", "copyright law", "the right to remain silent", "small claims court",
    "employment contracts", "non-disclosure agreements", "wills and probate",
    "trademark registration", "the GDPR", "jury duty", "consumer protection law",
    "parental leave laws", "defamation", "the appeals process", "prenuptial agreements",
    "traffic tickets", "patents", "freedom of speech", "arbitration",
    # finance
    "compound interest", "index funds", "credit scores", "inflation", "budgeting",
    "emergency funds", "student loans", "mortgages", "retirement accounts",
    "stock market crashes", "cryptocurrency", "insurance deductibles", "tax brackets",
    "dollar-cost averaging", "bonds", "dividends", "startup funding", "currency exchange rates",
    "credit card debt", "home equity", "annuities", "financial statements", "venture capital",
    "payday loans",
    # everyday life
    "composting", "time management", "public speaking", "job interviews",
    "learning a new language", "houseplant care", "meal prepping", "minimalism",
    "first aid kits", "remote work", "negotiation", "recycling", "bicycle maintenance",
    "saving energy at home", "email etiquette",
]  # fmt: skip
# Task types that fit any topic, three paraphrases each.
GENERIC = [
    ["Explain {s} to a beginner.", "Give a beginner-friendly explanation of {s}.",
     "How would you explain {s} to someone new to it?"],
    ["Write five quiz questions about {s}.", "Create a five-question quiz on {s}.",
     "Make up five quiz questions that test knowledge of {s}."],
    ["List common misconceptions about {s}.", "What are some common misconceptions about {s}?",
     "Name a few widespread misunderstandings about {s}."],
    ["Give an analogy that explains {s}.", "Explain {s} using an everyday analogy.",
     "What is a good analogy for {s}?"],
    ["Write a tweet about {s}.", "Compose a tweet about {s}.", "Draft a short tweet on {s}."],
    ["Summarize the key facts about {s} in three bullet points.",
     "Give three bullet points summarizing {s}.", "Sum up {s} in three bullet points."],
    ["Write a lesson plan for teaching {s}.", "Create a lesson plan on {s}.",
     "Draft a one-hour lesson plan about {s}."],
    ["Write an FAQ about {s} with five questions and answers.",
     "Create a five-question FAQ on {s}.", "Draft a short FAQ covering {s}."],
    ["Suggest three resources for learning about {s}.",
     "Recommend three resources for learning {s}.",
     "What are three good resources to learn about {s}?"],
    ["Write a glossary of five key terms related to {s}.",
     "Define five key terms related to {s}.", "List and define five important terms about {s}."],
    ["Explain why {s} matters in everyday life.", "Why does {s} matter in daily life?",
     "Describe how {s} affects everyday life."],
    ["Write a one-paragraph encyclopedia entry on {s}.",
     "Draft a short encyclopedia-style paragraph about {s}.",
     "Write an encyclopedia paragraph describing {s}."],
    ["Create a mnemonic to remember the key ideas of {s}.",
     "Come up with a mnemonic for the main ideas of {s}.",
     "Suggest a memory aid for the key points of {s}."],
    ["Write a short dialogue between a teacher and a student about {s}.",
     "Create a brief teacher-student conversation about {s}.",
     "Write a short conversation in which a teacher explains {s} to a student."],
]  # fmt: skip
FAMILIES += [(variants, lambda r: {"s": r.choice(TOPICS)}) for variants in GENERIC]


def make_instructions(n: int, seed: int = 0) -> tuple[list[str], list[bool]]:
    """`n` instructions and, for each, whether it re-states a task that came earlier."""
    rng = random.Random(seed)
    tasks: list[tuple[int, tuple]] = []
    seen: set[tuple[int, tuple]] = set()
    texts, is_dup = [], []
    for _ in range(n):
        if tasks and rng.random() < 0.3:
            family, slots = rng.choice(tasks)  # a re-proposal, in any of its paraphrases
        else:
            # A fresh task: redraw while it repeats one already seen (small families run out).
            for _ in range(100):
                family = rng.randrange(len(FAMILIES))
                slots = tuple(sorted(FAMILIES[family][1](rng).items()))
                if (family, slots) not in seen:
                    break
            tasks.append((family, slots))
        variant = rng.choice(FAMILIES[family][0])
        texts.append(variant.format(**dict(slots)))
        is_dup.append((family, slots) in seen)
        seen.add((family, slots))
    return texts, is_dup


def rouge_dedup(
    texts: list[str], pool: Sequence[str] = (), *, reference: bool = False
) -> tuple[float, list[bool]]:
    """Self-Instruct's rule against `pool` and the kept texts; returns (seconds, dropped).

    `reference`: score as Self-Instruct's code does (rouge-score's tokenizer and `_score_lcs`),
    else with selfloop's bit-parallel `rouge_l`. Same rule, same threshold, same order."""
    if reference:
        from rouge_score import rouge_scorer

        tokenize = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)._tokenizer.tokenize

        def score(a: list[str], b: list[str]) -> float:
            return rouge_scorer._score_lcs(a, b).fmeasure
    else:
        tokenize, score = rouge_tokens, rouge_l
    start = time.perf_counter()
    kept = [tokenize(t) for t in pool]
    dropped = []
    for text in texts:
        tokens = tokenize(text)
        best = max((score(tokens, other) for other in kept), default=0.0)
        dropped.append(best > ROUGE_THRESHOLD)
        if best <= ROUGE_THRESHOLD:
            kept.append(tokens)
    return time.perf_counter() - start, dropped


def have_reference() -> bool:
    try:
        import rouge_score  # noqa: F401
    except ImportError:
        print("rouge-score is not installed (pip install rouge-score): Self-Instruct's own "
              "implementation is skipped, only selfloop's faster ROUGE-L is timed")  # fmt: skip
        return False
    return True


class TimedEmbedder(Embedder):
    """The same embedder, adding up the seconds spent encoding (to split FAISS's time)."""

    seconds = 0.0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        start = time.perf_counter()
        try:
            return super().encode(texts)
        finally:
            self.seconds += time.perf_counter() - start


def faiss_dedup(
    texts: list[str], embedder: Embedder, run_dir: str, config: DedupConfig, first_id: int = 0
) -> tuple[float, DedupReport]:
    """Load the pool in `run_dir`, dedup `texts` against it, add the kept; (seconds, report)."""
    records = [{"id": str(first_id + i), "instruction": t} for i, t in enumerate(texts)]
    if isinstance(embedder, TimedEmbedder):
        embedder.seconds = 0.0
    start = time.perf_counter()
    pool = Pool(run_dir, config, embedder)
    report = dedup(records, pool)
    pool.add(report.kept, report.kept_vectors)
    return time.perf_counter() - start, report


def dropped_flags(report: DedupReport, n: int, first_id: int = 0) -> list[bool]:
    gone = {int(d.record["id"]) - first_id for d in report.dropped}
    return [i in gone for i in range(n)]


def precision_recall(predicted: list[bool], actual: list[bool]) -> tuple[float, float, int]:
    tp = sum(p and a for p, a in zip(predicted, actual))
    n_pred, n_true = sum(predicted), sum(actual)
    return (tp / n_pred if n_pred else 0.0), (tp / n_true if n_true else 0.0), n_pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,2000,5000", help="sets timed with both methods")
    ap.add_argument("--large", type=int, default=20_000, help="set timed with FAISS only")
    ap.add_argument("--round", type=int, default=1000, help="new candidates in the round test")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--model", default=None, help="dedup.model (default: the default, all-mpnet-base-v2)"
    )
    ap.add_argument(
        "--device", default="cpu", help="embedding device: cpu (default), cuda, or auto"
    )
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="embedding precision (dedup.dtype; auto = bfloat16 where the device has it natively)",
    )
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    base, big = sizes[-1], max(args.large, sizes[-1])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    texts, is_dup = make_instructions(big + args.round, args.seed)
    print(
        f"{big:,} generated instructions (+{args.round:,} for the round test; "
        f"{len(FAMILIES)} task families, seed {args.seed}); CPU cores {os.cpu_count()}, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    config = DedupConfig(model=args.model) if args.model else DedupConfig()
    ref = have_reference()
    print(
        f"baseline: ROUGE-L > {ROUGE_THRESHOLD} against kept instructions (Self-Instruct), "
        f"as Self-Instruct computes it (rouge-score, 'ref') and with selfloop's bit-parallel LCS"
    )
    print(
        f"selfloop: {config.model} embeddings + FAISS ({config.index}: flat below "
        f"{config.approximate_above:,}), cosine >= {config.threshold}, paraphrase band from "
        f"{config.paraphrase_threshold}, pool written to disk"
    )
    start = time.perf_counter()
    embedder = TimedEmbedder(
        config.model, device=args.device, batch_size=config.batch_size, dtype=args.dtype
    )
    embedder.encode(["warm-up"])
    print(
        f"embedding model load (once per process, not in the times below): "
        f"{time.perf_counter() - start:.1f}s; embedding on {embedder.model.device} in "
        f"{embedder.dtype} (--dtype {args.dtype})"
    )

    print(
        f"\n{'n':>7} {'ref s':>7} {'ROUGE-L s':>10} {'dropped':>8} {'FAISS s':>8} "
        f"{'(embed)':>8} {'dropped':>8} {'true dups':>9} {'ref/FAISS':>9} {'ROUGE/FAISS':>11}"
    )
    rows: dict[int, dict] = {}
    for n in sorted(set(sizes) | {big}):
        row: dict = {"true": sum(is_dup[:n])}
        if n in sizes:
            row["rouge_s"], row["rouge_drop"] = rouge_dedup(texts[:n])
            if ref:
                row["ref_s"], ref_drop = rouge_dedup(texts[:n], reference=True)
                # the same rule: any disagreement is a tokenizer difference, said, not hidden
                row["ref_differs"] = sum(a != b for a, b in zip(ref_drop, row["rouge_drop"]))
        with tempfile.TemporaryDirectory() as run_dir:
            row["faiss_s"], row["report"] = faiss_dedup(texts[:n], embedder, run_dir, config)
            row["embed_s"] = embedder.seconds
        row["faiss_drop"] = dropped_flags(row["report"], n)
        rows[n] = row
        rouge = (
            f"{row['rouge_s']:>10.1f} {sum(row['rouge_drop']):>8,}"
            if "rouge_s" in row
            else f"{'not run':>10} {'':>8}"
        )
        ratio = f"{row['rouge_s'] / row['faiss_s']:>10.1f}x" if "rouge_s" in row else ""
        ref_s = f"{row['ref_s']:>7.1f}" if "ref_s" in row else f"{'-':>7}"
        ref_ratio = f"{row['ref_s'] / row['faiss_s']:>8.1f}x" if "ref_s" in row else f"{'':>9}"
        print(
            f"{n:>7,} {ref_s} {rouge} {row['faiss_s']:>8.1f} {row['embed_s']:>8.1f} "
            f"{sum(row['faiss_drop']):>8,} "
            f"{row['true']:>9,} {ref_ratio} {ratio}",
            flush=True,
        )
    if ref:
        differs = {n: r["ref_differs"] for n, r in rows.items() if "ref_differs" in r}
        print(f"instructions the two ROUGE-L implementations decide differently: {differs}")

    if len(sizes) > 1:
        (n0, n1), (t0, t1) = sizes[-2:], (rows[sizes[-2]]["rouge_s"], rows[base]["rouge_s"])
        expo = math.log(t1 / t0) / math.log(n1 / n0)
        kept0, kept1 = (n - sum(rows[n]["rouge_drop"]) for n in (n0, n1))
        print(
            f"\nROUGE-L growth {n0:,} -> {n1:,}: {t1 / t0:.1f}x the time for {n1 / n0:.1f}x the "
            f"instructions (n^{expo:.2f}). Each candidate is scored against every kept one, so "
            f"the cost is n x kept: quadratic when most are kept; here ROUGE-L drops "
            f"{1 - kept1 / n1:.0%} (same-template tasks with another subject or number score "
            f"> 0.7), so its pool grew only {kept0:,} -> {kept1:,}."
        )
        if big not in sizes:
            est = t1 * (big / n1) ** max(expo, 1.0)
            f = rows[big]["faiss_s"]
            print(
                f"ROUGE-L at {big:,}: NOT RUN; EXTRAPOLATED from {n0:,}-{n1:,} (n^{expo:.2f}): "
                f"~{est:,.0f}s, vs FAISS measured {f:.1f}s (~{est / f:.1f}x)."
            )
    if big not in sizes:
        b, g = rows[base], rows[big]
        print(
            f"FAISS {base:,} -> {big:,}: {g['faiss_s'] / b['faiss_s']:.1f}x the time for "
            f"{big / base:.0f}x the instructions; embedding {b['embed_s'] / base * 1e3:.1f} -> "
            f"{g['embed_s'] / big * 1e3:.1f} ms per instruction, the rest (search, greedy pass, "
            f"pool write) {(b['faiss_s'] - b['embed_s']) / base * 1e3:.2f} -> "
            f"{(g['faiss_s'] - g['embed_s']) / big * 1e3:.2f} ms"
        )

    # The embedding precision (dedup.dtype): the same texts in float32 and bfloat16, this run.
    sample = list(dict.fromkeys(texts[:base]))
    seconds, vectors = {}, {}
    for dtype in ("float32", "bfloat16"):
        emb = Embedder(config.model, device=args.device, batch_size=config.batch_size, dtype=dtype)
        emb.encode(sample[:64])  # load and warm up, untimed
        start = time.perf_counter()
        vectors[dtype] = emb.encode(sample)
        seconds[dtype] = time.perf_counter() - start
    cos = (vectors["float32"] * vectors["bfloat16"]).sum(axis=1)
    print(
        f"\nembedding precision, the same {len(sample):,} distinct texts: float32 "
        f"{seconds['float32']:.1f}s, bfloat16 autocast {seconds['bfloat16']:.1f}s "
        f"({seconds['bfloat16'] / seconds['float32']:.2f}x the time; bfloat16 is native here: "
        f"{embedder.dtype == 'bfloat16'}); cosine to float32 mean {cos.mean():.5f}, "
        f"min {cos.min():.5f}"
    )

    # One more round against a grown pool: what a loop pays per round in its later rounds.
    accepted = rows[big]["report"]
    new = texts[big : big + args.round]
    with tempfile.TemporaryDirectory() as run_dir:
        Pool(run_dir, config, embedder).add(accepted.kept, accepted.kept_vectors)
        f_round, report = faiss_dedup(new, embedder, run_dir, config, first_id=big)
        e_round = embedder.seconds
    pool_texts = [r["instruction"] for r in accepted.kept]
    r_round, r_drop = rouge_dedup(new, pool_texts)
    ref_round = rouge_dedup(new, pool_texts, reference=True)[0] if ref else None
    print(
        f"\none more round: {len(new):,} new candidates against an accepted pool of "
        f"{len(pool_texts):,} (FAISS's kept from the {big:,}; both methods use the same pool):"
        f"\n  ROUGE-L {r_round:.1f}s, dropped {sum(r_drop):,}; FAISS {f_round:.1f}s (embedding "
        f"{e_round:.1f}s, pool load included), dropped {len(report.dropped):,}; "
        f"{r_round / f_round:.1f}x. ROUGE-L's per-round cost grows with the pool, FAISS's with "
        f"the new candidates."
        + (
            f" Self-Instruct's implementation: {ref_round:.1f}s, {ref_round / f_round:.1f}x."
            if ref_round is not None
            else ""
        )
    )

    print(f"\nagainst the generated duplicates (re-proposals of an earlier task), n = {base:,}:")
    for name, key in (("ROUGE-L", "rouge_drop"), ("FAISS", "faiss_drop")):
        p, rc, npred = precision_recall(rows[base][key], is_dup[:base])
        print(f"  {name:8} dropped {npred:5,}  precision {p:.3f}  recall {rc:.3f}")

    pairs = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    actual = [p["label"] == "duplicate" for p in pairs]
    rouge_pred = [
        rouge_l(rouge_tokens(p["a"]), rouge_tokens(p["b"])) > ROUGE_THRESHOLD for p in pairs
    ]
    a = embedder.encode([p["a"] for p in pairs])
    b = embedder.encode([p["b"] for p in pairs])
    faiss_pred = [  # the rule dedup applies: threshold, then the contrast stage
        pair_is_duplicate(float(s), p["a"], p["b"], config, embedder)
        for s, p in zip((a * b).sum(axis=1), pairs)
    ]
    print(
        f"labelled pairs ({len(pairs)}: {sum(actual)} duplicate, "
        f"{len(pairs) - sum(actual)} distinct):"
    )
    for name, pred in (("ROUGE-L", rouge_pred), ("FAISS", faiss_pred)):
        p, rc, npred = precision_recall(pred, actual)
        tp = sum(x and y for x, y in zip(pred, actual))
        print(
            f"  {name:8} called {npred:3} duplicate ({tp} right)  precision {p:.3f}  "
            f"recall {rc:.3f}"
        )

    r = rows[base]
    print(
        f"\nROUGE-L {r['rouge_s']:.1f}s (selfloop's LCS)"
        + (f", {r['ref_s']:.1f}s (Self-Instruct's)" if "ref_s" in r else "")
        + f" vs FAISS {r['faiss_s']:.1f}s (embedding included) on the same {base:,} "
        f"instructions (target >= 20x); load average now {os.getloadavg()[0]:.1f}"
    )
    print(f"ratio selfloop's ROUGE-L / FAISS at {base:,}: {r['rouge_s'] / r['faiss_s']:.1f}x")
    if "ref_s" in r:
        ratio = r["ref_s"] / r["faiss_s"]
        print(f"ratio Self-Instruct's ROUGE-L / FAISS at {base:,}: {ratio:.1f}x")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/dedup.py")

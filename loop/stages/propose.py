"""propose: new instructions from the student (self-instruct), filtered as Self-Instruct filters
them (heuristics, and ROUGE-L against the seeds and every instruction already learned) before
anyone answers them."""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.data import write_examples, write_jsonl
from loop.accounting import account
from loop.context import Context, LoopState
from loop.rundir import write_json
from loop.stages.base import STATS, Stage, counts

log = logging.getLogger(__name__)

PROPOSED, REPLIES, KEPT, REJECTED = (
    "proposed.jsonl",
    "replies.jsonl",
    "kept.jsonl",
    "rejected.jsonl",
)


def run(ctx: Context, state: LoopState) -> dict:
    from agent.construct import propose as run_propose
    from agent.seeds import load_seed_tasks

    n = state["round"]
    if ctx.rundir.stage_done(n, "propose"):
        return {}
    seeds = [s.model_dump() for s in load_seed_tasks(ctx.cfg.run.seeds_file)]
    pool_tasks = ctx.rundir.accepted()
    t0 = time.monotonic()
    proposals: list[dict] = []
    stats: dict[str, Any] = {}
    if "self_instruct" in ctx.cfg.run.sources or "teacher" in ctx.cfg.run.sources:
        proposals, stats = run_propose(ctx.student(state), seeds, pool_tasks, ctx.cfg.propose, n)
    report = proposal_filter(ctx, seeds, pool_tasks).run(proposals, instructions_only=True)
    with ctx.rundir.writing_stage(n, "propose") as out:
        write_examples(out / PROPOSED, proposals)
        write_jsonl(out / REPLIES, stats.pop("replies", []))
        write_examples(out / KEPT, report.kept)
        write_examples(out / REJECTED, report.rejected_records())
        write_json(
            out / STATS,
            {
                **stats,
                "filter": report.summary(),
                "seconds": time.monotonic() - t0,
                "account": account("propose", len(proposals), len(report.kept), report.counts),
            },
        )
    log.info(
        "round %d propose: %d proposals, %d pass the instruction filters",
        n,
        len(proposals),
        len(report.kept),
    )
    return {}


def proposal_filter(ctx: Context, seeds: list[dict], pool_tasks: list[dict]) -> Any:
    """The instruction filters for proposals; the ROUGE-L rule (if on) compares each proposal
    with the seed tasks and every instruction already learned, as Self-Instruct does."""
    from judges.filters import FilterChain

    known = [t["instruction"] for t in [*seeds, *pool_tasks] if t.get("instruction")]
    return FilterChain(ctx.cfg.filters, pool=known)


def summary(s: dict[str, Any]) -> str:
    f = s.get("filter") or {}
    return (
        f"{s.get('proposals', 0)} proposals from {s.get('calls', 0)} calls, "
        f"{f.get('kept', 0)} pass the instruction filters; rejected: {counts(f.get('counts'))}"
    )


STAGE = Stage(
    name="propose",
    run=run,
    writes=(PROPOSED, REPLIES, KEPT, REJECTED, STATS),
    reads=("pool.jsonl", "run.seeds_file"),
    records=KEPT,
    accounted=True,
    summary=summary,
)

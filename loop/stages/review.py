"""review: with run.review on, the round pauses (a LangGraph interrupt) until a person has
edited its review file and `selfloop review --accept` has written `rounds/NNN/review/`; the round
then trains on what the person kept. Off (the default), the stage does nothing. The file format
and the accept step are in loop.review."""

from __future__ import annotations

import logging
from pathlib import Path

from loop.context import Context, LoopState
from loop.review import KEPT, REJECTED, STATS
from loop.stages.base import Drop, Stage, read_if

log = logging.getLogger(__name__)


def run(ctx: Context, state: LoopState) -> dict:
    if not ctx.cfg.run.review:
        return {}
    from langgraph.types import interrupt

    from loop.review import review_paths, write_review_files

    n = state["round"]
    if not ctx.rundir.stage_done(n, "review"):
        jsonl, csv_path = review_paths(ctx.rundir, n)
        if not jsonl.exists():  # written once: a person may already be editing it
            jsonl, csv_path = write_review_files(ctx.rundir, n)
        log.info("round %d paused for review: edit %s or %s", n, jsonl, csv_path)
        interrupt({"round": n, "review_file": str(jsonl), "review_csv": str(csv_path)})
    return {"kept": ctx.rundir.stage_stats(n, "review")["accepted"]}


def summary(v: dict) -> str:
    return (
        f"accepted {v.get('accepted', 0)}, rejected {v.get('rejected', 0)}, "
        f"edited {v.get('edited', 0)}"
    )


def drops(stage_dir: Path) -> list[Drop]:
    return [
        ("review", f"review {r.get('review', 'removed')}", r) for r in read_if(stage_dir / REJECTED)
    ]


STAGE = Stage(
    name="review",
    run=run,
    writes=(KEPT, REJECTED, STATS),
    reads=("dedup", "review.jsonl | review.csv"),
    records=KEPT,
    accounted=True,
    proceed=lambda s: s.get("kept", 0) > 0,  # a reviewer removed everything
    switch="run.review",
    summary=summary,
    drops=drops,
)

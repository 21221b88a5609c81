"""The round-end nodes of the graph: promote (the candidate becomes champion, its data joins
the pool), reject, and next (record the round's metrics, decide whether to stop, advance).
They run once a round is decided; the stages before them are in loop.stages."""

from __future__ import annotations

import logging
from typing import Any

from loop.context import Context, LoopState
from loop.rundir import RunDir, write_json

log = logging.getLogger(__name__)


def promote(ctx: Context, state: LoopState) -> dict:
    n = state["round"]
    adapter = ctx.rundir.adapter_dir(n)
    ctx.pool().add(ctx.rundir.input_records(n, "tune"))
    ctx.rundir.set_champion(adapter)
    ctx.release()  # the next round loads the new champion
    return {
        "champion": str(adapter.relative_to(ctx.rundir.root)),
        "champion_round": n,
        "rejections": 0,
    }


def reject(ctx: Context, state: LoopState) -> dict:
    n = state["round"]
    if ctx.rundir.decision(n) is None:  # only when the round ended before the gate
        why = f"rejected: round {n} kept no new examples after filtering, judging and dedup"
        if state.get("trained") is False:
            why = f"rejected: round {n} had no preference pairs for tune.objective to train on"
        write_json(
            ctx.rundir.decision_path(n),
            {"decision": "rejected", "promote": False, "reasons": [why], "checks": []},
        )
    return {"rejections": state.get("rejections", 0) + 1, "decision": "rejected"}


def next_round(ctx: Context, state: LoopState) -> dict:
    """Record the round's metrics, decide whether to stop, advance the round counter."""
    n = state["round"]
    if not any(m.get("round") == n for m in ctx.rundir.read_metrics()):
        ctx.rundir.append_metrics(round_metrics(ctx.rundir, n))
    if ctx.cfg.metrics.tensorboard or ctx.cfg.metrics.mlflow:
        from loop.metrics import sync

        sync(ctx.rundir, ctx.cfg.metrics)
    stop = None
    if n >= ctx.cfg.run.max_rounds:
        stop = f"max_rounds ({ctx.cfg.run.max_rounds}) reached"
    elif state.get("rejections", 0) >= ctx.cfg.run.patience:
        stop = f"patience: {state['rejections']} rejected rounds in a row"
    elif state.get("kept", 0) < ctx.cfg.run.min_new_examples:
        stop = f"nothing left to learn: round {n} kept {state.get('kept', 0)} new examples"
    elif _target_reached(ctx, n, state):
        stop = f"target {ctx.cfg.run.target_metric} >= {ctx.cfg.run.target_value} reached"
    if stop:
        log.info("stopping: %s", stop)
        return {"stop": stop}
    return {"round": n + 1, "kept": 0, "decision": None, "trained": True}


def _target_reached(ctx: Context, n: int, state: LoopState) -> bool:
    run = ctx.cfg.run
    if not run.target_metric or run.target_value is None or state.get("decision") != "promoted":
        return False
    node: Any = ctx.rundir.eval_results(n)[0].to_dict()
    for part in run.target_metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, (int, float)) and node >= run.target_value


def round_metrics(rundir: RunDir, n: int) -> dict[str, Any]:
    """One metrics.jsonl record: each stage's part (counts, training figures, eval overall,
    decision), in pipeline order."""
    from loop.stages import PIPELINE

    rec: dict[str, Any] = {"round": n}
    for stage in PIPELINE:
        rec.update(stage.round_metrics(rundir.round_dir(n)))
    if times := rundir.stage_times(n):
        rec["seconds"] = times
    return rec

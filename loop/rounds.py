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
            why = (
                f"rejected: round {n} had nothing tune.objective={ctx.cfg.tune.objective} "
                "trains on (no preference pairs; grpo: no prompt passed only sometimes)"
            )
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
    if ctx.cfg.metrics.enabled():
        from loop.metrics import sync

        sync(ctx.rundir, ctx.cfg.metrics)
    if stop := stop_reason(ctx, state):
        log.info("stopping: %s", stop)
        return {"stop": stop}
    return next_round_state(n)


def next_round_state(n: int) -> dict:
    """The state update that starts round n + 1."""
    return {"round": n + 1, "kept": 0, "decision": None, "trained": True, "stop": None}


def stop_reason(ctx: Context, state: LoopState) -> str | None:
    """Why the run stops after its round `state["round"]` under ctx's config; None: go on.
    Asked again when a finished run is resumed, so a raised max_rounds or patience extends it."""
    n, run = state["round"], ctx.cfg.run
    if n >= run.max_rounds:
        return f"max_rounds ({run.max_rounds}) reached"
    if state.get("rejections", 0) >= run.patience:
        return f"patience: {state['rejections']} rejected rounds in a row"
    if state.get("kept", 0) < run.min_new_examples:
        return f"nothing left to learn: round {n} kept {state.get('kept', 0)} new examples"
    if _target_reached(ctx, n, state):
        return f"target {run.target_metric} >= {run.target_value} reached"
    return None


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

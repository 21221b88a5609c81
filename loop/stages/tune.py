"""tune: train the round's adapter on what the round kept (warm-started from the champion), or
on the whole accepted pool plus this round from the base model (`tune.warm_start: false`).
Writes `rounds/NNN/adapter/` (PEFT format, with train_metrics.json); step checkpoints in
`adapter.checkpoints/` let a killed run lose at most `tune.save_steps` steps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.data import read_json
from loop.context import Context, LoopState
from loop.faults import tune_callbacks
from loop.stages.base import Stage

log = logging.getLogger(__name__)

ADAPTER = "adapter"
TRAIN_METRICS = "train_metrics.json"
_METRICS = ("steps", "final_loss", "tokens", "seconds", "tokens_per_second", "peak_memory_mb")


def run(ctx: Context, state: LoopState) -> dict:
    from tuners import train

    n = state["round"]
    if ctx.rundir.stage_done(n, "tune"):
        return {"trained": True}
    kept = ctx.rundir.input_records(n, "tune")
    champion = ctx.rundir.root / state["champion"] if state.get("champion") else None
    if ctx.cfg.tune.objective == "grpo":
        return _grpo(ctx, n, champion)
    if ctx.cfg.tune.objective != "sft":
        return _preference(ctx, n, champion)
    if ctx.cfg.tune.warm_start and champion is not None:
        data, init = kept + replayed(ctx, n, len(kept)), champion
    else:  # fresh: the whole accepted pool plus this round, from the base model
        data, init = ctx.rundir.accepted() + kept, None
    ctx.release()
    result = train(
        ctx.cfg.model,
        data,
        ctx.rundir.adapter_dir(n),
        ctx.cfg.tune,
        init_adapter=init,
        round_index=n,
        callbacks=_callbacks(ctx, n),
    )
    log.info("round %d tune: %d steps, final loss %.4f", n, result.steps, result.final_loss)
    return {}


def _callbacks(ctx: Context, n: int) -> list[Any]:
    """Step-level metrics for the enabled dashboards, and the kill tests' failpoint."""
    from loop.metrics import step_callback

    steps = step_callback(ctx.rundir, ctx.cfg.metrics, n)
    return [*([steps] if steps is not None else []), *tune_callbacks(n)]


def replayed(ctx: Context, n: int, new: int) -> list[dict[str, Any]]:
    """`tune.replay` x `new` earlier accepted examples, drawn the same way on a re-run."""
    import random

    k = round(ctx.cfg.tune.replay * new)
    pool = ctx.rundir.accepted()
    if k == 0 or not pool:
        return []
    picked = random.Random(f"replay/{ctx.cfg.tune.seed}/{n}").sample(pool, min(k, len(pool)))
    log.info("round %d tune: %d new examples + %d replayed", n, new, len(picked))
    return picked


def _preference(ctx: Context, n: int, champion: Path | None) -> dict:
    """dpo / rpo on this round's pairs, from the champion (with tune.warm_start, the default; it
    is then also the reference) or from a fresh adapter against the base."""
    from tuners.preference import train_preference

    pairs = ctx.rundir.round_pairs(n, ctx.cfg.tune.pair_sources)
    if not pairs:
        log.info("round %d tune: no preference pairs from %s", n, ctx.cfg.tune.pair_sources)
        return {"trained": False}
    ctx.release()
    result = train_preference(
        ctx.cfg.model,
        pairs,
        ctx.rundir.adapter_dir(n),
        ctx.cfg.tune,
        init_adapter=champion if ctx.cfg.tune.warm_start else None,
        round_index=n,
        callbacks=_callbacks(ctx, n),
    )
    log.info(
        "round %d tune (%s): %d pairs, %d steps, final loss %.4f, reward margin %s",
        n,
        ctx.cfg.tune.objective,
        len(pairs),
        result.steps,
        result.final_loss,
        result.preference.get("rewards/margins"),
    )
    return {"trained": True}


def _grpo(ctx: Context, n: int, champion: Path | None) -> dict:
    """grpo on the round's constrained prompts that the model passes sometimes (the filter
    stage's pass rates): a prompt always or never passed gives every answer of a group the same
    reward, so no gradient. From the champion with tune.warm_start."""
    from agent.data import read_jsonl
    from loop.stages.filter import PASS_RATES
    from tuners.grpo import train_grpo

    path = ctx.rundir.round_dir(n) / "filter" / PASS_RATES
    rates = read_jsonl(path) if path.is_file() else []
    tasks = [r for r in rates if 0 < r.get("pass_rate", 0) < 1 and r.get("constraints")]
    if not tasks:
        log.info("round %d tune: no prompt the model passes only sometimes: nothing for grpo", n)
        return {"trained": False}
    ctx.release()
    result = train_grpo(
        ctx.cfg.model,
        tasks,
        ctx.rundir.adapter_dir(n),
        ctx.cfg.tune,
        init_adapter=champion if ctx.cfg.tune.warm_start else None,
        round_index=n,
        callbacks=_callbacks(ctx, n),
    )
    log.info(
        "round %d tune (grpo): %d prompts, %d steps, mean reward %s",
        n,
        len(tasks),
        result.steps,
        result.preference.get("reward"),
    )
    return {"trained": True}


def metrics(round_dir: Path) -> dict[str, Any]:
    path = round_dir / ADAPTER / TRAIN_METRICS
    if not path.is_file():
        return {}
    t = read_json(path)
    extra = {k: t[k] for k in ("objective", "examples", "preference") if k in t}
    return {"tune": {**{k: t[k] for k in _METRICS}, **extra, "losses": t["losses"]}}


STAGE = Stage(
    name="tune",
    run=run,
    writes=(TRAIN_METRICS, "adapter_model.safetensors", "adapter_config.json"),
    reads=("review | dedup", "champion"),
    output=ADAPTER,
    proceed=lambda s: s.get("trained", True),  # a preference round without pairs ends here
    metrics=metrics,
)

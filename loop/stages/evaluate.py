"""evaluate: the candidate (this round's adapter) on the eval suites, with its pairwise win rate
against the champion where `eval.pairwise` asks for it (loop.config.eval_pairwise), and the
champion on the same suites for the gate's guard comparisons.
The champion's responses come from the eval cache after the first round (judges.evals.runner)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from loop.config import eval_pairwise, eval_suites
from loop.context import Context, LoopState
from loop.faults import failpoint
from loop.rundir import write_json
from loop.stages.base import STATS, Stage

log = logging.getLogger(__name__)

EVAL, CHAMPION_EVAL = "eval.json", "champion_eval.json"


def run(ctx: Context, state: LoopState) -> dict:
    from judges.evals.result import write_eval
    from judges.evals.runner import evaluate as run_eval

    n = state["round"]
    if ctx.rundir.stage_done(n, "evaluate"):
        return {}
    gen = ctx.student(state)
    champion = ctx.rundir.root / state["champion"] if state.get("champion") else None
    common = {
        "cache_dir": ctx.cfg.eval.cache(ctx.rundir.root),
        "sampling": ctx.cfg.eval.sampling,
        "limit_per_suite": ctx.cfg.eval.limits(),
        "held_out_types": ctx.cfg.augment.held_out_types,
    }
    t0 = time.monotonic()
    suites = eval_suites(ctx.cfg)
    # The win rate's judge: judge.model when configured, else (runner default) the student's
    # base weights, so neither side judges itself.
    judge, pairwise = None, eval_pairwise(ctx.cfg)
    if pairwise and ctx.cfg.judge.model is not None:
        from judges.llm_judge import LLMJudge

        judge = LLMJudge(ctx.judge_model(state), ctx.cfg.judge.rubric)
    cand = run_eval(
        gen,
        suites,
        adapter=ctx.rundir.adapter_dir(n),
        champion_adapter=champion or "base",
        judge=judge,
        pairwise_suites=None if pairwise else [],
        **common,
    )
    failpoint("evaluate.candidate", n)
    champ = run_eval(gen, suites, adapter=champion, **common)
    with ctx.rundir.writing_stage(n, "evaluate") as out:
        write_eval(out / EVAL, cand)
        write_eval(out / CHAMPION_EVAL, champ)
        write_json(out / STATS, {"seconds": time.monotonic() - t0})
    return {}


def metrics(round_dir: Path) -> dict[str, Any]:
    path = round_dir / "evaluate" / EVAL
    if not path.is_file():
        return {}
    from judges.evals.result import EvalResult

    suites = EvalResult.read(path).suites
    out: dict[str, Any] = {
        "eval": {
            f"{s}.{m}": v.overall.value
            for s, suite in suites.items()
            for m, v in suite.metrics.items()
        }
    }
    # Verifiable suites: the held-out vs trained constraint sets, and each type's pass rate.
    for s, suite in suites.items():
        for m, v in suite.metrics.items():
            for part, stat in v.slices.get("constraint_set", {}).items():
                out["eval"][f"{s}.{m}.{part}"] = stat.value
        loose = suite.metrics.get("instruction_loose")
        for t, stat in (loose.slices.get("constraint_type", {}) if loose else {}).items():
            out.setdefault("eval_constraint_types", {})[f"{s}.{t}"] = stat.value
    return out


STAGE = Stage(
    name="evaluate",
    run=run,
    writes=(EVAL, CHAMPION_EVAL, STATS),
    reads=("tune", "champion", "eval_cache/"),
    summary=lambda s: f"{s.get('seconds', 0):.0f} s",
    metrics=metrics,
)

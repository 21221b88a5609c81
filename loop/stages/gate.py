"""gate: promote the candidate only if it beats the champion on the primary metric (a paired
interval clear of the margin, when required) and no guard metric regressed beyond its
tolerance; the decision and its reasons go to `rounds/NNN/decision.json` (loop.gate decides)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loop.context import Context, LoopState
from loop.rundir import write_json
from loop.stages.base import Stage

log = logging.getLogger(__name__)

DECISION = "decision.json"


def run(ctx: Context, state: LoopState) -> dict:
    from loop.gate import decide

    n = state["round"]
    if not ctx.rundir.stage_done(n, "gate"):
        cand, champ = ctx.rundir.eval_results(n)
        decision = decide(cand, champ, ctx.cfg.gate, ctx.rundir.start_eval(n))
        write_json(ctx.rundir.round_dir(n) / DECISION, decision.to_dict())
        log.info("round %d: %s", n, decision.summary)
    return {"decision": ctx.rundir.decision(n)["decision"]}


def metrics(round_dir: Path) -> dict[str, Any]:
    from agent.data import read_json

    path = round_dir / DECISION
    if not path.is_file():
        return {}
    d = read_json(path)
    return {"decision": {"decision": d["decision"], "reasons": d["reasons"]}}


STAGE = Stage(
    name="gate",
    run=run,
    writes=(DECISION,),
    reads=("evaluate",),
    output=DECISION,
    proceed=lambda s: s.get("decision") == "promoted",
    metrics=metrics,
)

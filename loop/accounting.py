"""Per-round accounting: where every candidate of a round went.

Each selecting stage (propose's instruction filters, filter, judge, dedup, review) writes an
`account` into its stats.json: how many records came in, how many it kept, and how many it
dropped for each named reason. `account()` builds one and refuses one that does not add up, so a
stage that loses records without a reason fails where it runs, not in a later audit.
`round_account()` reads a round's accounts back and checks the chain between stages (what one
stage kept is what the next one got), for `selfloop show`, the metrics and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import SelfloopError

# Stages in round order whose input is the previous selecting stage's output. `respond` is not
# one of them: it turns tasks into responses (n per task, plus teacher and imported ones).
CHAIN = ("filter", "judge", "dedup", "review")


def account(stage: str, n_in: int, kept: int, dropped: Mapping[str, int]) -> dict[str, Any]:
    """A stage's account; raises if `n_in != kept + sum(dropped)` (a record went missing)."""
    dropped = {k: int(v) for k, v in dropped.items() if v}
    if n_in != kept + sum(dropped.values()):
        raise SelfloopError(
            f"{stage}: {n_in} records in, {kept} kept and {sum(dropped.values())} dropped "
            f"({dropped}): the stage lost or invented records"
        )
    return {"in": n_in, "kept": kept, "dropped": dropped}


def round_account(round_dir: Path) -> dict[str, Any]:
    """The accounts of a round's finished stages, in order, with `problems` (empty when every
    stage adds up and each chained stage received exactly what the one before kept)."""
    stages: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for stage in ("propose", *CHAIN):
        path = round_dir / stage / "stats.json"
        if not path.is_file():
            continue
        acc = json.loads(path.read_text()).get("account")
        if acc is None:
            problems.append(f"{stage}: stats.json has no account (written by an older version)")
            continue
        stages[stage] = acc
        if acc["in"] != acc["kept"] + sum(acc["dropped"].values()):
            problems.append(f"{stage}: {acc['in']} in != {acc['kept']} kept + dropped")
    previous = None
    for stage in CHAIN:
        if stage not in stages:
            continue
        if previous is not None and stages[stage]["in"] != stages[previous]["kept"]:
            problems.append(
                f"{stage}: received {stages[stage]['in']} but {previous} kept "
                f"{stages[previous]['kept']}"
            )
        previous = stage
    return {"stages": stages, "problems": problems}

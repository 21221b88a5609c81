"""Per-round accounting: where every candidate of a round went.

Each selecting stage (those marked `accounted` in loop.stages: propose's instruction filters,
filter, judge, dedup, review) writes an `account` into its stats.json: how many records came in,
how many it kept, and how many it dropped for each named reason. `account()` builds one and
refuses one that does not add up, so a stage that loses records without a reason fails where it
runs, not in a later audit.
`round_account()` reads a round's accounts back and checks the chain between stages (what one
stage kept is what the next one got), for `selfloop show`, the metrics and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.data import read_json
from agent.errors import SelfloopError


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
    """The accounts of a round's finished stages, in pipeline order, with `problems` (empty when
    every stage adds up and each accounted stage whose input stage is accounted too received
    exactly what that stage kept). A stage's input is `loop.stages.input_of`, as when it ran;
    `respond` keeps no account (it turns tasks
    into n responses each), so filter's intake is not chained to propose's output."""
    from loop.stages import PIPELINE, get, input_of

    stages: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for stage in PIPELINE:
        src = input_of(stage.name, lambda name: (round_dir / get(name).done_path).exists())
        source = None if src is None else src.name
        path = round_dir / stage.done_path / "stats.json"
        if stage.accounted and path.is_file():
            acc = read_json(path).get("account")
            if acc is None:
                problems.append(
                    f"{stage.name}: stats.json has no account (written by an older version)"
                )
            else:
                stages[stage.name] = acc
                if acc["in"] != acc["kept"] + sum(acc["dropped"].values()):
                    problems.append(f"{stage.name}: {acc['in']} in != {acc['kept']} kept + dropped")
                if source in stages and acc["in"] != stages[source]["kept"]:
                    problems.append(
                        f"{stage.name}: received {acc['in']} but {source} kept "
                        f"{stages[source]['kept']}"
                    )
    return {"stages": stages, "problems": problems}

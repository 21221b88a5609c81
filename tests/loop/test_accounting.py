"""Per-round accounting: a stage that loses a record fails; a round's chain of stages adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import SelfloopError
from loop.accounting import account, round_account


def test_account_adds_up_and_drops_zero_reasons() -> None:
    acc = account("judge", 10, 4, {"low_score": 3, "not_best": 3, "unjudged": 0})
    assert acc == {"in": 10, "kept": 4, "dropped": {"low_score": 3, "not_best": 3}}


def test_a_lost_record_is_refused() -> None:
    with pytest.raises(SelfloopError, match="dedup: 10 records in, 4 kept and 5 dropped"):
        account("dedup", 10, 4, {"duplicate": 5})


def _stage(rd: Path, stage: str, acc: dict | None) -> None:
    (rd / stage).mkdir(parents=True)
    (rd / stage / "stats.json").write_text(json.dumps({} if acc is None else {"account": acc}))


def test_round_account_checks_the_chain_between_stages(tmp_path: Path) -> None:
    _stage(tmp_path, "propose", account("propose", 9, 7, {"cut_off": 2}))
    _stage(tmp_path, "filter", account("filter", 14, 6, {"repetitive": 8}))
    _stage(tmp_path, "judge", account("judge", 6, 3, {"not_best": 3}))
    _stage(tmp_path, "dedup", account("dedup", 3, 2, {"duplicate": 1}))
    out = round_account(tmp_path)
    assert out["problems"] == [] and list(out["stages"]) == ["propose", "filter", "judge", "dedup"]
    # dedup now says it received 4 where the judge kept 3: a record came from nowhere
    (tmp_path / "dedup" / "stats.json").write_text(
        json.dumps({"account": {"in": 4, "kept": 3, "dropped": {"duplicate": 1}}})
    )
    assert round_account(tmp_path)["problems"] == ["dedup: received 4 but judge kept 3"]


def test_round_account_names_a_stage_without_an_account(tmp_path: Path) -> None:
    _stage(tmp_path, "filter", None)
    assert round_account(tmp_path)["problems"] == [
        "filter: stats.json has no account (written by an older version)"
    ]

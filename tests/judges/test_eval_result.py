"""The typed eval result: accessors, a mis-shaped file named in one line, writes that refuse a
broken shape without touching what is on disk. (The round trip of a real `evaluate` output is in
test_eval_runner.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import SelfloopError
from judges.evals import metrics as m
from judges.evals.result import EvalResult, write_eval


def _result(values: list[bool]) -> dict:
    rows = [{"id": f"p{k}", "domain": "law" if k % 2 else "general"} for k in range(len(values))]
    stat = m.sliced(
        [{**r, "ok": v} for r, v in zip(rows, values, strict=True)],
        lambda rs: m.rate([r["ok"] for r in rs]),
    )
    items = [{**r, "scores": {"prompt_loose": float(v)}} for r, v in zip(rows, values)]
    suite = {"metric": "verifiable", "n": len(values), "errors": 1, "items": items}
    return {"schema": 1, "suites": {"if": {**suite, "metrics": {"prompt_loose": stat}}}}


def test_accessors_read_the_nested_dict() -> None:
    ev = EvalResult.of(_result([True, False, True, True]))
    assert ev.value("if.prompt_loose") == 0.75
    assert ev.overall("if.prompt_loose").n == 4
    assert ev.metric("if.prompt_loose").slices["domain"]["law"].n == 2
    assert ev.scores("if.prompt_loose") == {"p0": 1.0, "p1": 0.0, "p2": 1.0, "p3": 1.0}
    assert ev.scores("if.prompt_loose", ("domain", "law")) == {"p1": 0.0, "p3": 1.0}
    # Items without the key (an eval.json written before items carried it) are in no slice.
    assert ev.scores("if.prompt_loose", ("constraint_set", "None")) == {}
    assert ev.errors("if") == 1
    empty = EvalResult.of(_result([]))
    assert empty.metric("if.prompt_loose") is not None
    assert empty.overall("if.prompt_loose") is None  # no prompts: no value to compare


def test_a_mis_shaped_file_is_one_line_naming_it_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    bad = _result([True])
    bad["suites"]["if"]["metrics"]["prompt_loose"]["overall"]["n"] = "many"
    path.write_text(json.dumps(bad))
    with pytest.raises(SelfloopError) as e:
        EvalResult.read(path)
    msg = str(e.value)
    assert str(path) in msg and "suites.if.metrics.prompt_loose.overall.n" in msg
    assert "\n" not in msg


def test_write_checks_the_shape_and_keeps_the_old_file_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    good = _result([True, False])
    write_eval(path, good)
    before = path.read_bytes()
    assert EvalResult.read(path).to_dict() == json.loads(before)
    with pytest.raises(ValueError):
        write_eval(path, {"suites": {"if": {"items": [{"scores": {}}]}}})  # an item sans id
    assert path.read_bytes() == before

"""The IF suite was `ifeval` until it was named for what it is (selfloop's own IFEval-style
prompts, not IFEval): configs, eval.json files, eval caches and metrics.jsonl written under the
old name still read, as the new one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.errors import SelfloopError
from judges.evals import load_suite, load_suites
from judges.evals.result import EvalResult
from judges.evals.runner import OutputCache
from loop.config import load_config
from loop.rundir import RunDir


def test_the_old_suite_name_loads_the_renamed_suite(tmp_path: Path) -> None:
    assert load_suite("ifeval") == load_suite("if")
    assert list(load_suites(["ifeval", "safety"])) == ["if", "safety"]
    # a user's suite cannot take the old name: old files would read it as the bundled one
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(load_suite("if")[0]) + "\n")
    with pytest.raises(SelfloopError, match="'ifeval' is already taken"):
        load_suites([], files={"ifeval": (path, "verifiable")})


def test_a_config_with_the_old_name_reads_as_the_new(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import judges.evals

    judges.evals._warned.clear()  # said once per process: make this test see it
    path = tmp_path / "old.yaml"
    path.write_text(
        "run:\n  target_metric: suites.ifeval.metrics.prompt_loose.overall.value\n"
        "  target_value: 0.9\n"
        "eval:\n  suites: [ifeval, safety]\n  suite_limits: {ifeval: null}\n"
        "gate:\n  primary: ifeval.prompt_loose\n"
        "  guards: [{metric: ifeval.instruction_loose}]\n"
    )
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path)
    assert cfg.eval.suites == ["if", "safety"] and cfg.eval.suite_limits == {"if": None}
    assert cfg.gate.primary == "if.prompt_loose"
    assert [g.metric for g in cfg.gate.guards] == ["if.instruction_loose"]
    assert cfg.run.target_metric == "suites.if.metrics.prompt_loose.overall.value"
    assert "the 'ifeval' evaluation suite is now 'if'" in caplog.text


def test_an_old_eval_json_and_metrics_record_read_under_the_new_name(tmp_path: Path) -> None:
    old = {"schema": 1, "suites": {"ifeval": {"metric": "verifiable", "n": 0, "metrics": {}}}}
    (tmp_path / "eval.json").write_text(json.dumps(old))
    assert list(EvalResult.read(tmp_path / "eval.json").suites) == ["if"]
    rd = RunDir(tmp_path)
    rd.append_metrics(
        {
            "round": 1,
            "eval": {"ifeval.prompt_loose": 0.5, "safety.refusal_rate": 1.0},
            "eval_constraint_types": {"ifeval.title": 0.25},
        }
    )
    (rec,) = rd.read_metrics()
    assert rec["eval"] == {"if.prompt_loose": 0.5, "safety.refusal_rate": 1.0}
    assert rec["eval_constraint_types"] == {"if.title": 0.25}


def test_an_old_eval_cache_still_hits(tmp_path: Path) -> None:
    cache = OutputCache(tmp_path, "model", "adapter")
    entry = {"kind": "response", "suite": "ifeval", "id": "ifeval-001", "settings": "s"}
    cache.path.write_text(json.dumps({**entry, "input_sha": "x", "text": "hi"}) + "\n")
    hit = OutputCache(tmp_path, "model", "adapter").get("response", "if", "ifeval-001", "s", "x")
    assert hit is not None and hit["text"] == "hi"

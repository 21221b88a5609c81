"""The stage contract: a stage added through the one list (loop.stages.PIPELINE) is in the
graph, in `selfloop show`, in the accounting chain check and in the metrics, and the stages
after it take its records without being told; `selfloop config` refuses what `run` refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent.data import read_jsonl, write_examples
from loop import stages
from loop.accounting import account, round_account
from loop.config import load_config
from loop.context import Context, LoopState
from loop.graph import build_graph, run
from loop.rundir import write_json
from loop.show import render_round
from loop.stages.base import STATS, Stage
from tests.helpers import EXPERT, selfloop, write_config
from tuners.train import data_hash


def _tag(ctx: Context, state: LoopState) -> dict:
    """A toy stage: marks every record it passes on and drops the one about leap years."""
    n = state["round"]
    if ctx.rundir.stage_done(n, "tag"):
        return {}
    records = ctx.rundir.input_records(n, "tag")
    kept = [{**r, "domain": "tagged"} for r in records if "leap year" not in r["instruction"]]
    with ctx.rundir.writing_stage(n, "tag") as out:
        write_examples(out / "tagged.jsonl", kept)
        dropped = {"leap_year": len(records) - len(kept)}
        write_json(out / STATS, {"account": account("tag", len(records), len(kept), dropped)})
    return {"kept": len(kept)}


TAG = Stage(
    name="tag",
    run=_tag,
    writes=("tagged.jsonl", STATS),
    reads=("dedup",),
    records="tagged.jsonl",
    accounted=True,
    proceed=lambda s: s.get("kept", 0) > 0,
)


@pytest.fixture
def with_tag(monkeypatch: pytest.MonkeyPatch) -> list[Stage]:
    pipeline = list(stages.PIPELINE)
    pipeline.insert(stages.names().index("dedup") + 1, TAG)
    monkeypatch.setattr(stages, "PIPELINE", pipeline)
    return pipeline


def test_a_stage_added_to_the_list_runs_in_the_graph_show_accounting_and_metrics(
    with_tag: list[Stage], tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = load_config(write_config(tmp_path, tiny_model_dir, max_rounds=1))
    graph = build_graph(Context(cfg, _rundir(tmp_path)), None).get_graph()
    edges = {(e.source, e.target) for e in graph.edges}
    assert {("dedup", "tag"), ("tag", "review"), ("tag", "reject")} <= edges
    assert ("dedup", "review") not in edges

    rd = tmp_path / "run"
    run(cfg, rd)
    r1 = rd / "rounds" / "001"
    tagged = read_jsonl(r1 / "tag" / "tagged.jsonl")
    assert tagged and all(r["domain"] == "tagged" for r in tagged)
    assert len(tagged) == len(read_jsonl(r1 / "dedup" / "kept.jsonl")) - 1  # the leap year
    # tune trained on the toy stage's records, not dedup's: the data hash says so
    trained = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
    assert trained["data_sha256"] == data_hash(tagged)
    acc = round_account(r1)
    assert acc["problems"] == [] and acc["stages"]["tag"]["in"] == acc["stages"]["dedup"]["kept"]
    shown = render_round(rd, 1)
    assert f"tag       {len(tagged)} of {len(tagged) + 1} kept; dropped: leap_year 1" in shown
    metrics = json.loads((rd / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["tag"]["account"]["kept"] == len(tagged)
    assert list(metrics).index("tag") == list(metrics).index("dedup") + 1

    # the chain check sees the new stage: an intake that is not what dedup kept is a problem
    stats = json.loads((r1 / "tag" / STATS).read_text())
    stats["account"]["in"] += 1
    stats["account"]["dropped"]["leap_year"] += 1
    (r1 / "tag" / STATS).write_text(json.dumps(stats))
    assert round_account(r1)["problems"] == [
        f"tag: received {len(tagged) + 2} but dedup kept {len(tagged) + 1}"
    ]
    assert len(EXPERT) > len(tagged)  # the toy drop and the guards both removed something


def _rundir(tmp: Path):  # noqa: ANN202
    from loop.rundir import RunDir

    return RunDir(tmp / "unused")


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.method=full", "tune.method: full trains a whole model"),
        ("backend.kind=openai", "backend.kind: openai cannot be the student's backend"),
        ("judge.backend.kind=transformers", "judge.backend is set but judge.model is not"),
    ],
)
def test_config_refuses_exactly_what_run_refuses(
    tmp_path: Path, tiny_model_dir: Path, override: str, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": str(tiny_model_dir)}}))
    shown = selfloop("config", "-c", str(path), "--set", override)
    ran = selfloop("run", "-c", str(path), "--set", override, "--out", str(tmp_path / "r"))
    for res in (shown, ran):
        assert res.returncode == 1 and message in res.stderr, res.stderr
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()  # refused before anything was written
    fine = selfloop("config", "-c", str(path))
    assert fine.returncode == 0 and yaml.safe_load(fine.stdout)["model"]["name"] == str(
        tiny_model_dir
    )

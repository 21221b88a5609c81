"""Round metrics mirrored to TensorBoard, MLflow and W&B (offline): every numeric figure of
metrics.jsonl with the round as the step, each round logged once, a missed round caught up on the
next sync; and the training steps (loss, learning rate, grad norm, tokens/s) as `train/...`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent.errors import SelfloopError
from loop.config import load_config
from loop.graph import run
from loop.metrics import MetricsConfig, check_available, round_steps, scalars, step_callback, sync
from loop.rundir import RunDir
from tests.helpers import write_config


def test_scalars_flattens_every_numeric_leaf() -> None:
    rec = {
        "round": 2,
        "dedup": {"kept": 3, "dedup": {"dropped": 1, "threshold": 0.85}, "contaminated": {}},
        "tune": {"final_loss": 1.5, "losses": [[1, 2.0]], "nan": float("nan")},
        "eval": {"if.prompt_loose": 0.25, "helpfulness.win_rate": None},
        "filter": {"ok": True, "kind": "text"},
        "decision": {"decision": "promoted", "reasons": ["promoted: ..."]},
    }
    assert scalars(rec) == {
        "dedup/kept": 3.0,
        "dedup/dedup/dropped": 1.0,
        "dedup/dedup/threshold": 0.85,
        "tune/final_loss": 1.5,
        "eval/if.prompt_loose": 0.25,
        "filter/ok": 1.0,
        "decision/promoted": 1.0,
    }


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _mlflow_history(run_dir: Path, key: str) -> list[tuple[int, float]]:
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{run_dir.resolve()}/mlflow.db")
    [found] = client.search_runs(
        [client.get_experiment_by_name("selfloop").experiment_id],
        filter_string=f"tags.selfloop_run = '{run_dir.resolve()}'",
    )
    return sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))


def test_a_run_logs_its_rounds_to_tensorboard_and_mlflow(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = write_config(tmp_path, tiny_model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["metrics"] = {"tensorboard": True, "mlflow": True, "wandb": True}
    path.write_text(yaml.safe_dump(cfg))
    rd = tmp_path / "run"
    run(load_config(path), rd)
    records = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]

    # Training steps: the Trainer's own logs, one point per step, the curve train_metrics has.
    curve = [(s, pytest.approx(v, rel=1e-5)) for s, v in records[0]["tune"]["losses"]]
    assert len(curve) == records[0]["tune"]["steps"] > 1
    tb_steps = _tb_scalars(rd / "tensorboard")
    assert tb_steps["train/loss"] == curve
    assert {"train/learning_rate", "train/grad_norm", "train/tokens_per_second"} <= set(tb_steps)
    assert all(v > 0 for _, v in tb_steps["train/tokens_per_second"])
    assert _mlflow_history(rd, "train/loss") == curve
    # W&B offline: its run files hold both kinds of figures (read back needs `wandb sync`).
    logged = b"".join(f.read_bytes() for f in (rd / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logged.count(b"train/loss") >= len(curve) and b"dedup/kept" in logged

    tb = _tb_scalars(rd / "tensorboard")
    assert tb["dedup/kept"] == [(r["round"], float(r["dedup"]["kept"])) for r in records]
    assert tb["tune/final_loss"] == [(1, pytest.approx(records[0]["tune"]["final_loss"]))]
    assert set(scalars(records[0])) <= set(tb)  # every figure of round 1 is there
    promoted = [(r["round"], float(r["decision"]["decision"] == "promoted")) for r in records]
    assert tb["decision/promoted"] == promoted
    assert _mlflow_history(rd, "dedup/kept") == tb["dedup/kept"]
    assert _mlflow_history(rd, "decision/promoted") == promoted

    # Nothing new: nothing logged. A round missed (killed between the two writes): caught up once.
    mcfg = load_config(rd / "config.yaml").metrics
    assert sync(RunDir(rd), mcfg) == []
    (rd / ".tensorboard.logged.json").write_text("[1]")
    assert sync(RunDir(rd), MetricsConfig(tensorboard=True)) == [2]
    steps = [s for s, _ in _tb_scalars(rd / "tensorboard")["dedup/kept"]]
    assert sorted(set(steps)) == [1, 2] and steps.count(1) == 1


def test_a_missing_logger_package_is_refused_before_anything_is_written(
    monkeypatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    with pytest.raises(SelfloopError, match="pip install tensorboard"):
        check_available(MetricsConfig(tensorboard=True))
    cfg = load_config(write_config(tmp_path, tiny_model_dir), ["metrics.tensorboard=true"])
    with pytest.raises(SelfloopError, match="metrics.tensorboard needs"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_step_offsets_count_both_trainings_of_a_greedy_round(tmp_path: Path) -> None:
    """A round with a greedy preference step trains twice (sft, then rpo from it): the
    dashboards' step axis counts both, for earlier rounds and within the round, so the rpo
    curve follows the sft one instead of overwriting its steps. A round whose greedy answers
    all passed has the sft adapter as its own: its steps count once."""
    from types import SimpleNamespace

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir(parents=True)
    greedy = {"pairs": 105, "sft": {"steps": 70}}
    records = [
        {"round": 1, "tune": {"steps": 14, "greedy": greedy}},
        {"round": 2, "tune": {"steps": 9, "greedy": {"pairs": 0, "sft": {"steps": 9}}}},
        {"round": 3, "tune": {"steps": 6}},  # no greedy step
    ]
    rd.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [round_steps(r) for r in records] == [84, 9, 6]
    # tune.greedy_steps: the trainings before the round's adapter's, whatever the sft part did
    later = {"pairs": 105, "sft": {"steps": 70}, "before_steps": 84, "later": [{"pairs": 3}]}
    assert round_steps({"tune": {"steps": 5, "greedy": later}}) == 89

    cb = step_callback(rd, MetricsConfig(tensorboard=True), 4, after=12)
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    cb.on_train_begin(None, state, None)
    cb.on_log(None, state, None, logs={"loss": 0.5})
    cb.on_train_end(None, state, None)
    assert _tb_scalars(rd.root / "tensorboard")["train/loss"] == [(84 + 9 + 6 + 12 + 1, 0.5)]

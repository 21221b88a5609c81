"""tune.greedy_steps without a model: which adapter each step starts from, where it goes, which
adapter becomes the round's when a step's failures give no pair, and the optimizer steps the
round counts (`loop.metrics.round_steps`). The trainer and the greedy answers are stand-ins
here; tests/loop/test_loop.py runs the real ones on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loop.config import load_config
from loop.context import Context
from loop.metrics import round_steps
from loop.rundir import RunDir
from loop.stages import tune

STEPS = {"sft": 10, "rpo": 3}


def _round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int, pairs_at: list[int]
) -> tuple[list[tuple[str, str]], list[str], Path]:
    """Run `greedy_step` with `tune.greedy_steps: steps`, the greedy answers of step k giving a
    pair when k is in `pairs_at`; what was trained (start, out), the adapters that answered,
    and the round's directory."""
    cfg = load_config(None, [f"tune.greedy_steps={steps}"])
    ctx = Context(cfg, RunDir(tmp_path / "run"))
    ctx.rundir.root.mkdir(parents=True)
    trained: list[tuple[str, str]] = []
    answered: list[str] = []
    r1 = ctx.rundir.round_dir(1)

    def fit(cfg: Any, data: Any, out: Path, init: Path | None, n: int, callbacks: Any) -> None:
        objective = cfg.tune.objective
        trained.append(
            (init.relative_to(r1).as_posix() if init else "base", out.relative_to(r1).as_posix())
        )
        out.mkdir(parents=True)
        metrics = {m: 0 for m in tune._METRICS} | {"steps": STEPS[objective], "losses": []}
        (out / tune.TRAIN_METRICS).write_text(json.dumps({**metrics, "objective": objective}))

    def greedy_pairs(ctx: Any, state: Any, adapter: Path, label: str, where: Path, verified: Any):
        answered.append(label)
        k = len(answered)
        made = [{"prompt_id": "t1"}] if k in pairs_at else []
        return [{"instruction_id": "t1"}], made, {"cut_off" if made else "good": 1}

    monkeypatch.setattr(tune, "fit", fit)
    monkeypatch.setattr(tune, "_greedy_pairs", greedy_pairs)
    tune.greedy_step(ctx, {"round": 1}, [{"id": "x", "constraints": [{"type": "lowercase"}]}], None)
    return trained, answered, r1


def _counted(r1: Path) -> int:
    return round_steps({"tune": tune.metrics(r1)["tune"]})


def test_each_later_step_trains_from_the_adapter_the_one_before_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained, answered, r1 = _round(tmp_path, monkeypatch, 3, [1, 2, 3])
    assert trained == [
        ("base", "greedy/sft_adapter"),
        ("greedy/sft_adapter", "greedy/step-2/start_adapter"),
        ("greedy/step-2/start_adapter", "greedy/step-3/start_adapter"),
        ("greedy/step-3/start_adapter", "adapter"),
    ]
    assert answered == ["sft", "greedy1", "greedy2"]
    stats = json.loads((r1 / "greedy" / "stats.json").read_text())
    assert [x["step"] for x in stats["later"]] == [2, 3]
    assert stats["before_steps"] == 10 + 3 + 3 and _counted(r1) == 10 + 3 * 3


@pytest.mark.parametrize(
    ("steps", "pairs_at", "round_adapter", "counted"),
    [
        (3, [1, 2], "greedy/step-3/start_adapter", 10 + 3 + 3),  # step 3 had no pair
        (2, [1], "greedy/step-2/start_adapter", 10 + 3),
        (2, [], "greedy/sft_adapter", 10),  # nothing to pair after sft
        (1, [], "greedy/sft_adapter", 10),  # one step: the old books, no before_steps
        (1, [1], "adapter", 10 + 3),
    ],
)
def test_a_step_without_pairs_makes_the_adapter_it_started_from_the_rounds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    steps: int,
    pairs_at: list[int],
    round_adapter: str,
    counted: int,
) -> None:
    trained, answered, r1 = _round(tmp_path, monkeypatch, steps, pairs_at)
    assert len(answered) == min(steps, len(pairs_at) + 1)
    assert (r1 / "adapter" / tune.TRAIN_METRICS).read_bytes() == (
        r1 / round_adapter / tune.TRAIN_METRICS
    ).read_bytes()
    assert _counted(r1) == counted
    stats = json.loads((r1 / "greedy" / "stats.json").read_text())
    assert ("before_steps" in stats) == (steps > 1)

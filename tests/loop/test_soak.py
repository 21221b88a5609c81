"""A long unattended run: 5 rounds on the tiny model, SIGKILLed at a seeded random schedule of
points between and inside stages, each time resumed, ends exactly as an uninterrupted run."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
import yaml

from tests.helpers import crash_config, run_outcome, selfloop

ROUNDS = 5
# Round 1 trains, evaluates and is promoted; later rounds have nothing new to import, so they end
# rejected after dedup (min_new_examples 0 keeps the run going to round 5). Each list is in the
# order a round reaches its points, so a schedule sorted this way fires every kill.
FIRST = [
    "propose.writing", "respond.writing", "respond.done", "filter.writing", "judge.writing",
    "dedup.done", "tune.saved", "tune.done", "evaluate.candidate", "evaluate.writing",
    "gate.done", "promote.done", "next.done",
]  # fmt: skip
LATER = ["propose.writing", "augment.done", "filter.writing", "dedup.writing", "reject.done",
         "next.done"]  # fmt: skip


def _schedule(seed: int, kills: int) -> list[str]:
    points = [(1, i, p) for i, p in enumerate(FIRST)]
    points += [(n, i, p) for n in range(2, ROUNDS + 1) for i, p in enumerate(LATER)]
    picked = sorted(random.Random(seed).sample(points, kills))
    return [f"{p}@{n}" for n, _, p in picked]


@pytest.fixture(scope="module")
def soak_config(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("soak")
    path = crash_config(tmp, tiny_model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["run"].update({"max_rounds": ROUNDS, "patience": ROUNDS, "min_new_examples": 0})
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_random_kills_over_five_rounds_end_as_an_uninterrupted_run(
    soak_config: Path, tmp_path: Path
) -> None:
    clean = selfloop("run", str(soak_config), "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    expected = run_outcome(tmp_path / "clean")
    assert len(expected["metrics"]) == ROUNDS
    assert [m["decision"]["decision"] for m in expected["metrics"]] == ["promoted"] + [
        "rejected"
    ] * (ROUNDS - 1)

    run_dir = tmp_path / "run"
    schedule = _schedule(seed=7, kills=6)
    for k, point in enumerate(schedule):
        verb = ["run", str(soak_config), "--out"] if k == 0 else ["resume"]
        proc = selfloop(*verb, str(run_dir), env={"SELFLOOP_FAILPOINT": point})
        assert proc.returncode == -signal.SIGKILL, (schedule, point, proc.stderr[-2000:])
    done = selfloop("resume", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    got = run_outcome(run_dir)
    for key in expected:
        assert got[key] == expected[key], f"{schedule}: {key} differs"

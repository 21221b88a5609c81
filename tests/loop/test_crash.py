"""Crash injection: a real `selfloop run` subprocess SIGKILLs itself at a named point (see
loop/faults.py), `selfloop resume` finishes it, and the result equals an uninterrupted run's:
the same pool, champion, decisions and metrics; no example lost or duplicated, no round counted
twice."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import crash_config as _config
from tests.helpers import mount_tmpfs, selfloop
from tests.helpers import run_outcome as _outcome


@pytest.fixture(scope="module")
def clean(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("crash-clean")
    cfg = _config(tmp, tiny_model_dir)
    done = selfloop("run", str(cfg), "--out", str(tmp / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = _outcome(tmp / "run")
    # The points below are only all reached if round 1 is promoted and round 2 is not.
    assert outcome["champion"] == "rounds/001/adapter", outcome["decisions"]
    assert [m["decision"]["decision"] for m in outcome["metrics"]] == ["promoted", "rejected"]
    return cfg, outcome


@pytest.mark.parametrize(
    "point",
    [
        "propose.writing@1",  # during proposal: outputs written, not yet renamed into place
        "dedup.done@1",  # after dedup, before its checkpoint
        "tune.saved@1",  # mid-tuning, after the first step checkpoint
        "evaluate.candidate@1",  # during evaluation: candidate done, champion not
        "promote.done@1",  # between promote and the next round
        "next.done@1",  # the round recorded in metrics.jsonl, round 2 not started
        "propose.writing@2",  # round 2, with the new champion loaded
    ],
)
def test_kill_at_any_point_then_resume_matches_a_clean_run(
    clean: tuple[Path, dict], tmp_path: Path, point: str
) -> None:
    cfg, expected = clean
    run_dir = tmp_path / "run"
    killed = selfloop("run", str(cfg), "--out", str(run_dir), env={"SELFLOOP_FAILPOINT": point})
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
    resumed = selfloop("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "finished:" in resumed.stdout
    got = _outcome(run_dir)
    for key in expected:
        assert got[key] == expected[key], f"{point}: {key} differs"
    pool_ids = [json.loads(x)["id"] for x in got["pool"].splitlines()]
    assert len(pool_ids) == len(set(pool_ids)) > 0  # nothing duplicated in the pool


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A 256 MiB tmpfs to fill (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    unmount = mount_tmpfs(mnt, "size=256m", "filling a disk")
    try:
        yield mnt
    finally:
        unmount()


@pytest.mark.parametrize(
    "point",
    [
        "judge.writing@1",  # the disk fills mid-stage: its rename works, the checkpoint write not
        "tune.saved@1",  # mid-training, after the first step checkpoint
        "evaluate.candidate@1",  # between the two evaluations (eval cache, eval.json)
    ],
)
def test_a_full_disk_stops_the_run_with_one_line_and_resume_after_freeing_it_matches(
    clean: tuple[Path, dict], small_disk: Path, point: str
) -> None:
    cfg, expected = clean
    run_dir, filler = small_disk / "run", small_disk / "filler"
    full = selfloop(
        "run",
        str(cfg),
        "--out",
        str(run_dir),
        env={"SELFLOOP_FAILPOINT": point, "SELFLOOP_FAILPOINT_FILL": str(filler)},
    )
    assert full.returncode == 1, (point, full.returncode, full.stderr[-2000:])
    errors = [x for x in full.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0], full.stderr[-2000:]
    assert f"selfloop resume {run_dir}" in errors[0]
    assert "Traceback" not in full.stderr
    filler.unlink()  # space freed
    resumed = selfloop("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _outcome(run_dir)
    for key in expected:
        assert got[key] == expected[key], f"{point}: {key} differs"


def _signalled_run(cfg: Path, run_dir: Path, signals: int, hold: float) -> tuple[int, str]:
    """`selfloop run` held `hold` seconds inside round 1's dedup stage (its outputs written, not
    yet in place), SIGTERM sent `signals` times there; its exit code and stderr."""
    import os
    import subprocess
    import sys
    import time

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SELFLOOP_FAILPOINT": "dedup.writing@1",
        "SELFLOOP_FAILPOINT_SLEEP": str(hold),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "run", str(cfg), "--out", str(run_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    while not any("failpoint dedup.writing: sleeping" in x for x in seen):
        line = proc.stderr.readline()
        assert line, "".join(seen)[-3000:]  # it ended before reaching the stage
        seen.append(line)
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    _, rest = proc.communicate(timeout=hold + 120)
    return proc.returncode, "".join(seen) + rest


def test_a_signal_stops_the_run_after_its_stage_then_resume_matches(
    clean: tuple[Path, dict], tmp_path: Path
) -> None:
    cfg, expected = clean
    run_dir = tmp_path / "run"
    code, err = _signalled_run(cfg, run_dir, signals=1, hold=5)
    assert code == 1, err[-3000:]
    assert "stopping after the current stage (send it again to stop now)" in err
    assert "stopped before review of round 1; resume to go on" in err  # the node after dedup
    assert (run_dir / "rounds" / "001" / "dedup" / "kept.jsonl").is_file()  # the stage finished
    assert not (run_dir / "rounds" / "001" / "adapter").exists()  # tune did not start
    resumed = selfloop("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _outcome(run_dir) == expected


def test_a_second_signal_stops_the_run_mid_stage_then_resume_matches(
    clean: tuple[Path, dict], tmp_path: Path
) -> None:
    import time

    cfg, expected = clean
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    code, err = _signalled_run(cfg, run_dir, signals=2, hold=600)
    assert code == 1, err[-3000:]
    assert time.monotonic() - t0 < 300  # not held for the stage's 600 s
    assert "stopped mid-stage (SIGTERM again)" in err
    assert not (run_dir / "rounds" / "001" / "dedup").exists()  # nothing half-written in place
    resumed = selfloop("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _outcome(run_dir) == expected

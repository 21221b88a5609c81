"""One model process per machine: registration, detection of another, refusal or warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agent import procs
from agent.errors import SelfloopError


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFLOOP_PROCS_DIR", str(tmp_path / "procs"))
    monkeypatch.delenv("SELFLOOP_ALLOW_SHARED_CPU", raising=False)
    return tmp_path / "procs"


@pytest.fixture
def other(registry):
    """A live process, registered as if it were another selfloop run."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    registry.mkdir(parents=True, exist_ok=True)
    (registry / f"{p.pid}.json").write_text(json.dumps({"pid": p.pid, "what": "selfloop run"}))
    yield p
    p.kill()
    p.wait()


def test_a_claim_registers_for_its_block_only(registry) -> None:
    with procs.claim("test"):
        entry = json.loads((registry / f"{os.getpid()}.json").read_text())
        assert entry["what"] == "test" and entry["pid"] == os.getpid()
        assert procs.others() == []  # itself does not count
    assert not (registry / f"{os.getpid()}.json").exists()


def test_another_live_process_is_refused_or_warned_about(registry, other, capsys) -> None:
    assert [e["pid"] for e in procs.others()] == [other.pid]
    with (
        pytest.raises(SelfloopError, match=f"pid {other.pid}: selfloop run"),
        procs.claim("bench", refuse=True),
    ):
        pass
    assert not (registry / f"{os.getpid()}.json").exists()  # refused: never registered
    with procs.claim("selfloop run"):
        pass
    assert "warning: another selfloop model process is running" in capsys.readouterr().err


def test_an_override_lets_a_bench_share_the_cpu(registry, other, monkeypatch) -> None:
    monkeypatch.setenv("SELFLOOP_ALLOW_SHARED_CPU", "1")
    with procs.claim("bench", refuse=True):
        pass


def test_a_dead_process_entry_is_cleared(registry) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    registry.mkdir(parents=True)
    (registry / f"{p.pid}.json").write_text(json.dumps({"pid": p.pid, "what": "gone"}))
    (registry / "junk.json").write_text("{not json")
    assert procs.others() == []
    assert not (registry / f"{p.pid}.json").exists()


def test_threads_follow_the_cores_this_process_may_use(monkeypatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert procs.set_threads() == procs.cores()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert procs.set_threads() == 1  # the user's setting wins
    finally:
        torch.set_num_threads(before)


def test_a_bench_beside_another_model_process_exits_with_one_line(registry, other) -> None:
    r = subprocess.run(
        [sys.executable, "-c", "from agent.procs import bench_main; bench_main(print, 'b')"],
        capture_output=True,
        text=True,
        env={**os.environ, "SELFLOOP_PROCS_DIR": str(registry)},
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: another selfloop")

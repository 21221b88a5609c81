"""Atomic directories: complete under their final name or absent, and no leftovers from a
killed process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.atomic import HOST, atomic_dir, dir_sibling


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed mid-write")
    assert not final.exists() and not list(tmp_path.iterdir())
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("whole")
    assert (final / "weights").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_dead_process_leftover_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    """A SIGKILL leaves `.NAME.tmp-HOST-PID` behind; the next try (another PID) removes it,
    but not the temporary directory of a process still writing, nor another machine's."""
    final = tmp_path / "adapter"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = final.with_name(f".adapter.tmp-{HOST}-{int(dead.stdout)}")
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "weights").write_text("x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = final.with_name(f".adapter.tmp-{HOST}-{live.pid}")
        elsewhere = final.with_name(".adapter.tmp-0badc0de-1")  # another machine's
        elsewhere.mkdir()
        busy.mkdir()
        with atomic_dir(final) as tmp:
            assert tmp == dir_sibling(final)
        assert not left.exists() and final.is_dir()
        assert busy.is_dir() and elsewhere.is_dir()
    finally:
        live.kill()
        live.wait()

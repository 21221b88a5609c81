"""Atomic writes: a file or a directory appears complete under its final name, or not at all.

Everything selfloop writes that a killed process could leave half-written (run directory files,
pool index, training fingerprints, exported artifacts) goes through here: the content is
written to a temporary sibling (`.NAME.tmp-PID`, a directory `.NAME.tmp-HOST-PID`; same
filesystem, so the rename is atomic), flushed to disk, then renamed into place.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import SelfloopError


def tmp_sibling(path: Path) -> Path:
    """The temporary name `path` is written under before its rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def check_parents(path: str | Path) -> None:
    """One line (SelfloopError) when a file stands where a directory above `path` should be,
    instead of a FileExistsError or NotADirectoryError from deep inside a write."""
    path = Path(path)
    for above in path.absolute().parents:
        if above.exists():
            if not above.is_dir():
                raise SelfloopError(f"cannot write {path}: {above} is a file, not a directory")
            return


def make_parents(path: Path) -> None:
    """Create the directories above `path` (see `check_parents` for a file in the way)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_parents(path)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    make_parents(path)
    tmp = tmp_sibling(path)
    try:
        with tmp.open("wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# This machine, in the names of temporary directories: a leftover of this machine's can be
# checked against its PID; another machine's (a shared filesystem) cannot.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def dir_sibling(path: Path) -> Path:
    """The temporary name `atomic_dir` builds `path` under: `.NAME.tmp-HOST-PID`."""
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")


def remove_stale(final: Path) -> list[Path]:
    """Remove the temporary directories of `final` that killed processes of this machine left
    (`.NAME.tmp-HOST-PID` whose PID no longer runs, or this process's own); a live process's
    is its work in progress, another machine's cannot be checked: both stay."""
    gone = []
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.tmp-{HOST}-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and (int(pid) == os.getpid() or not alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)
            gone.append(tmp)
    return gone


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` when the block succeeds (and is
    removed when it fails). `final` must not exist: a directory is never renamed over another.
    What a killed process left of an earlier try (an adapter is megabytes) is removed first."""
    final = Path(final)
    make_parents(final)
    tmp = dir_sibling(final)
    remove_stale(final)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Thread discipline for model processes: one per machine, using the cores it has.

Two processes that each run a model on the same few cores do not share them gracefully: each
spawns a thread per core and they preempt each other mid-matmul, so both run 10-20x slower
(measured on 2 cores, bench/ and the loop alike). So every long-running model command
(`selfloop run` / `resume`, the benches) registers itself in a per-user directory under the
system temp dir while it works, and before it starts looks for another live one: the loop warns
loudly, a bench refuses (a timing taken beside another model process is worthless).

`claim()` also sets torch's intra-op threads to the cores this process may run on
(`os.sched_getaffinity`, which honours taskset and container CPU limits where torch's default,
the machine's physical cores, does not), unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.atomic import alive
from agent.errors import SelfloopError

log = logging.getLogger(__name__)


def registry() -> Path:
    """Where live model processes register; shared by every run of this user on this machine."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    default = Path(tempfile.gettempdir()) / f"selfloop-{uid}"
    return Path(os.environ.get("SELFLOOP_PROCS_DIR") or default)


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _ancestors() -> set[int]:
    """This process and its parents (a `selfloop run` started by a registered bench is fine)."""
    pids, pid = {os.getpid()}, os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def others() -> list[dict[str, Any]]:
    """The other live registered model processes (stale entries of dead ones are removed)."""
    found = []
    mine = _ancestors()
    for f in sorted(registry().glob("*.json")):  # none when the directory does not exist
        try:
            entry = json.loads(f.read_text())
            pid = int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid in mine:
            continue
        if alive(pid):
            found.append(entry)
        else:
            f.unlink(missing_ok=True)
    return found


def set_threads() -> int:
    """torch intra-op threads = the cores this process may use (unless OMP_NUM_THREADS is set)."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(cores())
    return torch.get_num_threads()


def describe(entry: dict[str, Any]) -> str:
    return f"pid {entry.get('pid')}: {entry.get('what', '?')}"


@contextlib.contextmanager
def claim(what: str, *, refuse: bool = False) -> Iterator[None]:
    """Register this process as a model process for the duration of the block.

    With another one alive: `refuse` raises a one-line SelfloopError (unless
    SELFLOOP_ALLOW_SHARED_CPU=1), else a loud warning goes to stderr and the work goes on (a long
    unattended run should not die for a stray bench)."""
    busy = others()
    if busy:
        msg = (
            f"another selfloop model process is running ({'; '.join(map(describe, busy))}); two "
            f"on {cores()} cores slow each other 10-20x"
        )
        if refuse and os.environ.get("SELFLOOP_ALLOW_SHARED_CPU") != "1":
            raise SelfloopError(
                f"{msg}: wait for it to end (SELFLOOP_ALLOW_SHARED_CPU=1 runs anyway)"
            )
        print(f"warning: {msg}", file=sys.stderr, flush=True)
    set_threads()
    path = registry() / f"{os.getpid()}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "what": what, "started": time.time()}))
    except OSError as e:  # a read-only temp dir must not stop the work
        log.warning("cannot register the model process in %s: %s", path.parent, e)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def bench_main(main: Any, what: str) -> None:
    """Run a bench's `main` as the only model process on the machine, or exit 2 saying why."""
    try:
        with claim(what, refuse=True):
            main()
    except SelfloopError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

"""Crash injection for the kill-and-resume tests.

`SELFLOOP_FAILPOINT=<point>` (or `<point>@<round>`) makes the process SIGKILL itself when it
reaches that point, the way a power cut or the OOM killer would stop it: no cleanup, no
`finally`. The points are named where they are called: `<stage>.writing` (a stage's outputs are
written to its temporary directory but not renamed into place), `<node>.done` (a node finished
but its checkpoint is not saved), `tune.saved` (training wrote its first step checkpoint),
`evaluate.candidate` (the candidate is evaluated, the champion not yet). Unset, a point costs one
environment lookup.

With `SELFLOOP_FAILPOINT_SLEEP=<seconds>` set as well, the point does not kill: it says so on
stderr and sleeps, so a test can signal the process while it is inside a stage.

With `SELFLOOP_FAILPOINT_FILL=<file>` set as well, the point does not kill: it fills the disk
that holds `<file>` (writing zeros to it until the filesystem says ENOSPC) and lets the process
go on, so the run's next writes meet a real full disk wherever they happen. The disk-full test
runs a loop on a small tmpfs that way, frees the space and resumes.
"""

from __future__ import annotations

import os
import signal
from typing import Any

ENV = "SELFLOOP_FAILPOINT"
FILL_ENV = "SELFLOOP_FAILPOINT_FILL"
SLEEP_ENV = "SELFLOOP_FAILPOINT_SLEEP"


def failpoint(name: str, round_index: int | None = None) -> None:
    """Die here if the environment names this point (and, with `@N`, this round)."""
    want = os.environ.get(ENV)
    if not want:
        return
    point, _, rnd = want.partition("@")
    if point == name and (not rnd or (round_index is not None and int(rnd) == round_index)):
        if fill := os.environ.get(FILL_ENV):
            _fill_disk(fill)
            return
        if seconds := os.environ.get(SLEEP_ENV):
            import sys
            import time

            print(f"failpoint {name}: sleeping {seconds} s", file=sys.stderr, flush=True)
            time.sleep(float(seconds))
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _fill_disk(path: str) -> None:
    """Write zeros to `path` until its filesystem is full (the test frees it by deleting it)."""
    import errno

    block = b"\0" * (1 << 16)
    try:
        with open(path, "ab") as f:
            while True:
                f.write(block)
                f.flush()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise


def tune_callbacks(round_index: int) -> list[Any]:
    """A TrainerCallback that fires `tune.saved` after the first complete step checkpoint."""
    if not os.environ.get(ENV, "").startswith("tune.saved"):
        return []
    from transformers import TrainerCallback

    class _Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            failpoint("tune.saved", round_index)

    return [_Kill()]

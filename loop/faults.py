"""Crash injection for the kill-and-resume tests.

`SELFLOOP_FAILPOINT=<point>` (or `<point>@<round>`) makes the process SIGKILL itself when it
reaches that point, the way a power cut or the OOM killer would stop it: no cleanup, no
`finally`. The points are named where they are called: `<stage>.writing` (a stage's outputs are
written to its temporary directory but not renamed into place), `<node>.done` (a node finished
but its checkpoint is not saved), `tune.saved` (training wrote its first step checkpoint),
`evaluate.candidate` (the candidate is evaluated, the champion not yet). Unset, a point costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal
from typing import Any

ENV = "SELFLOOP_FAILPOINT"


def failpoint(name: str, round_index: int | None = None) -> None:
    """Die here if the environment names this point (and, with `@N`, this round)."""
    want = os.environ.get(ENV)
    if not want:
        return
    point, _, rnd = want.partition("@")
    if point == name and (not rnd or (round_index is not None and int(rnd) == round_index)):
        os.kill(os.getpid(), signal.SIGKILL)


def tune_callbacks(round_index: int) -> list[Any]:
    """A TrainerCallback that fires `tune.saved` after the first complete step checkpoint."""
    if not os.environ.get(ENV, "").startswith("tune.saved"):
        return []
    from transformers import TrainerCallback

    class _Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            failpoint("tune.saved", round_index)

    return [_Kill()]

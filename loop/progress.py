"""Progress of long stages: a bar in a terminal, plain log lines when not in one.

The loop wraps the generators it hands to the stages (`tracked`), so every `generate` call of
propose, respond, judge and evaluate reports without the stages knowing: in a terminal a rich
progress bar per call (prompts done / total, rate, time left); under nohup, systemd or CI a log
line at most every `every` seconds and one when the call ends, so a log file shows the run is
alive and how far it got. Training reports its optimizer steps the same way
(`training_progress`, a transformers TrainerCallback the tune stage adds).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("selfloop.progress")

Callback = Callable[[int, int], None]


def reporter(
    label: str, total: int, every: float = 30.0, unit: str = "prompts", bar: bool = True
) -> tuple[Callback, Callable[[], None]]:
    """(callback(done, total), finish()) for one unit of work of `total` items; `bar=False`:
    log lines even in a terminal."""
    if bar and sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        task = bar.add_task(label, total=total)
        bar.start()
        return (lambda done, _total: bar.update(task, completed=done)), bar.stop

    started = last = time.monotonic()
    seen = [0]

    def plain(done: int, total_: int) -> None:
        nonlocal last
        seen[0] = done
        now = time.monotonic()
        if now - last >= every and done < total_:
            last = now
            log.info("%s: %d/%d %s (%.0f s)", label, done, total_, unit, now - started)

    def finish() -> None:
        took = time.monotonic() - started
        log.info("%s: %d/%d %s in %.0f s", label, seen[0], total, unit, took)

    return plain, finish


class Tracked:
    """A Generator whose `generate` calls report progress under `label()`; all else delegates."""

    def __init__(self, gen: Any, label: Callable[[], str]) -> None:
        self._gen, self._label = gen, label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gen, name)

    def generate(self, prompts, params=None, *, adapter=None, progress=None):  # noqa: ANN001, ANN201
        update, finish = reporter(self._label(), len(prompts))

        def both(done: int, total: int) -> None:
            update(done, total)
            if progress is not None:
                progress(done, total)

        try:
            return self._gen.generate(prompts, params, adapter=adapter, progress=both)
        finally:
            finish()


def training_progress(label: str, every: float = 30.0) -> Any:
    """A TrainerCallback logging optimizer steps done / total under `label` at most every
    `every` seconds and at the end, so a long tune stage is not silent under nohup or CI. Log
    lines only: in a terminal transformers draws its own bar, and a log line needs no cleanup
    when training raises."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.update: Callback | None = None
            self.finish: Callable[[], None] | None = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.update, self.finish = reporter(
                label, state.max_steps, every, unit="steps", bar=False
            )
            self.update(state.global_step, state.max_steps)  # a resumed run starts part way

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            if self.update is not None:
                self.update(state.global_step, state.max_steps)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            if self.finish is not None:
                self.finish()
                self.update = self.finish = None

    return TrainingProgress()

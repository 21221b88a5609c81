"""The stages of a round, in order: THE list the graph, `selfloop show`, the accounting chain
check and the metrics all derive the stage order and file names from.

Adding a stage = one module here (a `Stage`, see loop.stages.base) + one line in `PIPELINE`.
The round-end nodes (promote, reject, next round) are in loop.rounds; they are not stages: they
write no stage directory and run once the round is decided.
"""

from __future__ import annotations

from collections.abc import Callable

from loop.stages import (
    augment,
    dedup,
    evaluate,
    filter,
    gate,
    judge,
    propose,
    respond,
    review,
    tune,
)
from loop.stages.base import Stage

PIPELINE: list[Stage] = [
    propose.STAGE,
    augment.STAGE,
    respond.STAGE,
    filter.STAGE,
    judge.STAGE,
    dedup.STAGE,
    review.STAGE,
    tune.STAGE,
    evaluate.STAGE,
    gate.STAGE,
]


def get(name: str) -> Stage:
    for stage in PIPELINE:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r} (stages: {', '.join(names())})")


def names() -> list[str]:
    return [s.name for s in PIPELINE]


def before(name: str) -> list[Stage]:
    """The stages that run before `name`, in order."""
    return PIPELINE[: names().index(name)]


def input_of(name: str, done: Callable[[str], bool]) -> Stage | None:
    """The stage whose records `name` takes: the nearest earlier one that passes records on,
    skipping a stage that can be off (review, by default) or is optional and did not run."""
    for s in reversed(before(name)):
        if s.records is not None and ((s.switch is None and not s.optional) or done(s.name)):
            return s
    return None

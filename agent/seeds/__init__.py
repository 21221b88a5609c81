"""Seed tasks written for selfloop: the default pool that self-instruct proposals start from.

`seed_tasks.jsonl` ships inside the package, one JSON object a line: `id`, `instruction`,
`input` (may be ""), `output` (a reference answer), `domain`, `language` (ISO 639-1) and
`constraints` (verifiable format constraints as data, see `judges.verifiable`; may be empty).
A user-supplied JSONL in the same format replaces the bundled pool. Every record is validated;
a bad one raises `SelfloopError` naming file:line and what is wrong, so a typo in a custom seed
file stops a run before any model is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.data import parse_object
from agent.errors import SelfloopError, describe_validation

SEED_FILE = "seed_tasks.jsonl"
_LANGUAGE_RE = re.compile(r"[a-z]{2}")


class SeedTask(BaseModel):
    """One seed task: an instruction, optional input, a reference output and its tags."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    instruction: str
    input: str = ""
    output: str
    domain: str  # any non-empty tag; the bundled pool uses general, writing, ..., finance
    language: str
    constraints: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("id", "instruction", "output", "domain")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value

    @field_validator("language")
    @classmethod
    def _iso_639_1(cls, value: str) -> str:
        if not _LANGUAGE_RE.fullmatch(value):
            raise ValueError(f"must be a two-letter ISO 639-1 code such as 'en', got {value!r}")
        return value


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """The seed tasks of `path`, or the bundled pool when `path` is None.

    Raises SelfloopError (file:line and the problem) on bad JSON, a missing or unknown field, an
    invalid constraint, a reference output that fails its own constraints, or a duplicate id.
    """
    if path is None:
        source = resources.files(__name__).joinpath(SEED_FILE)
        label = str(source)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError as e:  # a broken install, not a user error
            raise SelfloopError(f"bundled seed file missing: {label}") from e
    else:
        label = str(path)
        if not Path(path).is_file():
            raise SelfloopError(f"seed file not found: {label}")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SelfloopError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    tasks = list(_parse(text.splitlines(), label))
    if not tasks:
        raise SelfloopError(f"{label}: no seed tasks (the file is empty)")
    return tasks


def _parse(lines: Iterable[str], label: str) -> Iterable[SeedTask]:
    # Imported here: judges imports agent.errors, so a module-level import could form a cycle.
    from judges.verifiable import check, validate_all

    first_line: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{label}:{n}"
        try:
            record = parse_object(line)
        except ValueError as e:
            raise SelfloopError(f"{where}: {e}") from None
        try:
            task = SeedTask.model_validate(record)
        except ValidationError as e:
            raise SelfloopError(f"{where}: {describe_validation(e)}") from e
        try:
            task.constraints = validate_all(task.constraints)
        except SelfloopError as e:
            raise SelfloopError(f"{where}: {e}") from e
        failed = [r for r in check(task.output, task.constraints) if not r.passed]
        if failed:
            raise SelfloopError(
                f"{where}: output fails its own constraint {failed[0].type!r} ({failed[0].reason})"
            )
        if task.id in first_line:
            raise SelfloopError(
                f"{where}: duplicate id {task.id!r} (first used on line {first_line[task.id]})"
            )
        first_line[task.id] = n
        yield task


__all__ = ["SEED_FILE", "SeedTask", "load_seed_tasks"]

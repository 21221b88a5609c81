"""Tasks written for selfloop: the seed pool that self-instruct proposals start from, and the
base instructions that constraint augmentation builds tasks on.

`seed_tasks.jsonl` ships inside the package, one JSON object a line: `id`, `instruction`,
`input` (may be ""), `output` (a reference answer), `domain`, `language` (ISO 639-1) and
`constraints` (verifiable format constraints as data, see `judges.verifiable`; may be empty).
A user-supplied JSONL in the same format replaces the bundled pool.

`base_tasks.jsonl` holds instructions only (`id`, `instruction`, `domain`, `language`): open
requests with no input and no format of their own, for `augment.base_tasks` to attach
verifiable constraints to. Only 30 of the seeds are such tasks (and pass the instruction
filters), so a round of 120 constrained tasks draws each of them 4 times with other constraints.

Every record is validated; a bad one raises `SelfloopError` naming file:line and what is wrong,
so a typo in a custom file stops a run before any model is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from agent.data import parse_object
from agent.errors import SelfloopError, describe_validation

SEED_FILE = "seed_tasks.jsonl"
BASE_FILE = "base_tasks.jsonl"
_LANGUAGE_RE = re.compile(r"[a-z]{2}")


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _iso_639_1(value: str) -> str:
    if not _LANGUAGE_RE.fullmatch(value):
        raise ValueError(f"must be a two-letter ISO 639-1 code such as 'en', got {value!r}")
    return value


Text = Annotated[str, AfterValidator(_non_empty)]
Language = Annotated[str, AfterValidator(_iso_639_1)]


class SeedTask(BaseModel):
    """One seed task: an instruction, optional input, a reference output and its tags."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Text
    instruction: Text
    input: str = ""
    output: Text
    domain: Text  # any non-empty tag; the bundled pool uses general, writing, ..., finance
    language: Language
    constraints: list[dict[str, Any]] = Field(default_factory=list)


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """The seed tasks of `path`, or the bundled pool when `path` is None.

    Raises SelfloopError (file:line and the problem) on bad JSON, a missing or unknown field, an
    invalid constraint, a reference output that fails its own constraints, or a duplicate id.
    """
    text, label = _read(path, SEED_FILE, "seed")
    tasks = list(_parse(text.splitlines(), label))
    if not tasks:
        raise SelfloopError(f"{label}: no seed tasks (the file is empty)")
    return tasks


class BaseTask(BaseModel):
    """One base instruction for constraint augmentation: no input, no answer, no constraints."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Text
    instruction: Text
    domain: Text = "general"
    language: Language = "en"


def load_base_tasks(path: str | Path | None = None) -> list[BaseTask]:
    """The base instructions of `path`, or the bundled ones when `path` is None.

    Raises SelfloopError (file:line and the problem) on bad JSON, a missing or unknown field, or
    a duplicate id."""
    text, label = _read(path, BASE_FILE, "base task")
    tasks: list[BaseTask] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{label}:{n}"
        try:
            task = BaseTask.model_validate(parse_object(line))
        except ValueError as e:  # bad JSON, or pydantic's ValidationError (a ValueError)
            why = describe_validation(e) if isinstance(e, ValidationError) else e
            raise SelfloopError(f"{where}: {why}") from None
        if task.id in first_line:
            raise SelfloopError(
                f"{where}: duplicate id {task.id!r} (first used on line {first_line[task.id]})"
            )
        first_line[task.id] = n
        tasks.append(task)
    if not tasks:
        raise SelfloopError(f"{label}: no base tasks (the file is empty)")
    return tasks


def _read(path: str | Path | None, bundled: str, kind: str) -> tuple[str, str]:
    """(text, label) of `path`, or of the bundled file `bundled` when `path` is None."""
    if path is None:
        source = resources.files(__name__).joinpath(bundled)
        label = str(source)
        try:
            return source.read_text(encoding="utf-8"), label
        except FileNotFoundError as e:  # a broken install, not a user error
            raise SelfloopError(f"bundled {kind} file missing: {label}") from e
    label = str(path)
    if not Path(path).is_file():
        raise SelfloopError(f"{kind} file not found: {label}")
    try:
        return Path(path).read_text(encoding="utf-8"), label
    except UnicodeDecodeError as e:
        raise SelfloopError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from e


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


__all__ = ["BASE_FILE", "SEED_FILE", "BaseTask", "SeedTask", "load_base_tasks", "load_seed_tasks"]

"""Chat-example records on disk: the canonical `Example` and JSONL I/O (atomic), with errors
naming file and line.

Every stage of a round reads and writes `Example` records: chat `messages` plus provenance (id,
source, round, stage, model, sampling...), scores (`judge_score`) and reasons (`filter_reason`,
`dedup_neighbour`, `guard_neighbour`, ...). They stay plain dicts in memory, so a stage adds its
own keys without ceremony; `write_examples` / `read_examples` validate each one against `Example`
at the stage boundary and stamp `schema_version`, so a stage that writes a malformed record fails
where it wrote it, and a file from a newer selfloop is refused instead of misread. Import/export
formats (Alpaca, ShareGPT, HF datasets) build on these functions (`agent.formats`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.atomic import atomic_write
from agent.errors import SelfloopError, describe_validation

SCHEMA_VERSION = 1  # bump when a field changes meaning; readers refuse newer files


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class Example(BaseModel):
    """The canonical record. Keys beyond these (a stage's provenance and reasons) ride along."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    id: str = Field(..., min_length=1)
    source: Literal["self", "teacher", "human", "human-edited"] = Field(
        ..., description="Who wrote the answer (or the task, before it is answered)."
    )
    round: int | None = Field(None, ge=1)
    stage: str | None = None
    messages: list[Message] = Field(
        default_factory=list, description="The chat; empty only for a task not yet answered."
    )
    instruction: str | None = None
    input: str | None = None
    response: str | None = None
    domain: str | None = None
    language: str | None = None
    model: str | None = Field(None, description="The model that wrote it (None: a person).")
    judge_score: float | None = None

    @model_validator(mode="after")
    def _has_content(self) -> Example:
        if not self.messages and not (self.instruction or "").strip():
            raise ValueError("a record needs messages or an instruction")
        return self


def check_example(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`record` validated as an Example, with `schema_version` first; one-line error otherwise."""
    version = record.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SelfloopError(
            f"{where}: schema_version {version} was written by a newer selfloop (this one reads "
            f"up to {SCHEMA_VERSION}); upgrade selfloop to read it"
        )
    try:
        Example.model_validate(record)
    except ValidationError as e:
        raise SelfloopError(f"{where}: {describe_validation(e)}") from None
    return {"schema_version": SCHEMA_VERSION, **record}


def write_examples(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Validate every record as an Example, then write them atomically (nothing on a bad one)."""
    checked = [check_example(r, f"{path}: record {k}") for k, r in enumerate(records, 1)]
    return write_jsonl(path, checked)


def parse_object(line: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; ValueError saying what is wrong (callers add file:line)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    return rec


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The Example records of a JSONL file; a bad or newer-schema record names file:line."""
    return [check_example(rec, where) for where, rec in _objects(path)]


def _objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", object) for every non-blank line; a line that is not an object fails."""
    path = Path(path)
    if not path.is_file():
        raise SelfloopError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", parse_object(line)
                except ValueError as e:
                    raise SelfloopError(f"{path}:{n}: {e}") from None


def read_jsonl(path: str | Path, require_messages: bool = False) -> list[dict[str, Any]]:
    """All records of a JSONL file; blank lines are skipped; a bad line names file:line."""
    records = []
    for where, rec in _objects(path):
        if require_messages:
            _check_messages(rec.get("messages"), where)
        records.append(rec)
    return records


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise SelfloopError(f"{where}: 'messages' must be a non-empty list")
    for k, m in enumerate(messages):
        if (
            not isinstance(m, Mapping)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise SelfloopError(
                f"{where}: messages[{k}] must be {{role: system|user|assistant, content: str}}"
            )


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records atomically: a temporary file in the same directory, then a rename."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

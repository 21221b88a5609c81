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


def json_object_problem(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """(content, "") for a file holding a JSON object, else (None, what is wrong with it): not
    UTF-8, not JSON, nested too deeply, or a JSON value that is not an object. Callers raise
    the error type their layer uses, with the reason in one line."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    except RecursionError:
        return None, "nested too deeply"
    if isinstance(data, dict):
        return data, ""
    return None, f"a JSON {type(data).__name__}, not an object"


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object file's content; a damaged one (not UTF-8, not JSON, not an object) is a
    one-line SelfloopError naming the file. Files selfloop wrote itself are read this way, so
    a disk error or a bad hand edit reads as what it is, not as a traceback."""
    data, why = json_object_problem(path)
    if data is None:
        raise SelfloopError(f"{path} is damaged: {why}")
    return data


def parse_object(line: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; ValueError saying what is wrong (callers add file:line)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        msg = e.msg.removesuffix(" at")  # "Invalid control character at"
        raise ValueError(f"not valid JSON ({msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("nested too deeply to be a record") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    return rec


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The Example records of a JSONL file; a bad or newer-schema record names file:line."""
    return [check_example(rec, where) for where, rec in read_objects(path)]


def read_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", object) for every non-blank line; a line that is not an object fails."""
    path = Path(path)
    if not path.is_file():
        raise SelfloopError(f"data file not found: {path}")
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SelfloopError(f"{path}:{n}: not UTF-8 text (byte {e.start})") from None
            if line.strip():
                try:
                    yield f"{path}:{n}", parse_object(line)
                except ValueError as e:
                    raise SelfloopError(f"{path}:{n}: {e}") from None


def read_jsonl(path: str | Path, require_messages: bool = False) -> list[dict[str, Any]]:
    """All records of a JSONL file; blank lines are skipped; a bad line names file:line."""
    records = []
    for where, rec in read_objects(path):
        if require_messages:
            _check_messages(rec.get("messages"), where)
        records.append(rec)
    return records


def _check_messages(messages: Any, where: str) -> None:
    """A chat to train on: well-formed messages, an assistant answer, no empty turn (what
    `data import` refuses, refused here too)."""
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
        if not m["content"].strip():
            raise SelfloopError(f"{where}: messages[{k}] ({m['role']}) has empty content")
    if not any(m["role"] == "assistant" for m in messages):
        raise SelfloopError(f"{where}: no assistant message to learn from")


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records atomically: a temporary file in the same directory, then a rename."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

"""Chat-example records on disk: JSONL read/write (atomic), with errors naming file and line.

A record is a JSON object with a `messages` list of `{"role", "content"}` plus provenance keys
(id, round, stage, source, scores, reasons...). Import/export formats (Alpaca, ShareGPT, HF
datasets) build on these two functions (issue #3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import SelfloopError


def parse_object(line: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; ValueError saying what is wrong (callers add file:line)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    return rec


def read_jsonl(path: str | Path, require_messages: bool = False) -> list[dict[str, Any]]:
    """All records of a JSONL file; blank lines are skipped; a bad line names file:line."""
    path = Path(path)
    if not path.is_file():
        raise SelfloopError(f"data file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = parse_object(line)
            except ValueError as e:
                raise SelfloopError(f"{path}:{n}: {e}") from None
            if require_messages:
                _check_messages(rec.get("messages"), f"{path}:{n}")
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path

"""Export: canonical records written as messages JSONL, Alpaca JSON, ShareGPT JSON, a Hugging
Face `datasets` directory or Parquet, atomically (`export_records`; see `agent.formats`)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import SelfloopError
from agent.formats.records import SHAREGPT_FROM, Invalid, Row, example_id, first_line, from_messages

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("messages", "alpaca", "sharegpt", "hf", "parquet")


@dataclass
class ExportResult:
    """What `export_records` wrote, and the records it left out (Alpaca: multi-turn)."""

    path: Path
    format: str
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id, why)


# --- export ----------------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _table_row(rec: Mapping[str, Any], rid: str, body: dict[str, Any]) -> dict[str, Any]:
    # Fixed columns first; meta and any other provenance keys as JSON text (one simple schema).
    row = {**body, "id": rid, "source": rec.get("source"), "round": rec.get("round")}
    row["meta"] = _json_text(rec.get("meta") or {})
    for key, value in rec.items():
        if key not in row and key != "messages":
            row[key] = _json_text(value)
    return row


def _write_file(tmp: Path, write: Callable[[io.TextIOBase], None]) -> None:
    with tmp.open("w", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _write_dataset(rows: list[dict[str, Any]], tmp: Path, fmt: str) -> None:
    import pyarrow as pa
    from datasets import Dataset
    from datasets.utils import logging as ds_logging

    # The library logs, it does not draw progress bars; restore the caller's setting after.
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        ds = Dataset.from_list(rows)
        if fmt == "hf":
            ds.save_to_disk(str(tmp))
        else:
            ds.to_parquet(str(tmp))
    except (pa.ArrowException, TypeError, ValueError) as e:  # say, `round` of mixed types
        raise SelfloopError(f"cannot write the records as {fmt}: {first_line(e)}") from e
    finally:
        if bars:
            ds_logging.enable_progress_bar()


# What `Dataset.save_to_disk` writes beside its data files: marks a directory an hf export made.
_SAVED_DATASET = ("dataset_info.json", "state.json")


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise SelfloopError(f"{out} already exists; pass --overwrite to replace it")
        if out.is_dir() and not out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
            return
        if tmp.is_dir():
            out.unlink()
    os.replace(tmp, out)


def export_records(
    records: Iterable[Mapping[str, Any]],
    out_path: str | Path,
    fmt: str,
    overwrite: bool = False,
) -> ExportResult:
    """Write `records` to `out_path` as messages JSONL, Alpaca JSON, ShareGPT JSON, an HF
    `datasets` directory (save_to_disk) or Parquet, atomically.

    Records are validated like imports (SelfloopError names the record's id or position).
    Alpaca holds one exchange only: multi-turn records are left out and listed in `skipped`.
    Raises SelfloopError for an unknown format, nothing to write, or an existing `out_path`
    without `overwrite`.
    """
    if fmt not in EXPORT_FORMATS:
        raise SelfloopError(
            f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}"
        )
    out = Path(out_path)
    # Overwriting replaces a file, or a dataset directory an hf export wrote; never any other
    # directory (a user's folder would be deleted with everything in it).
    if out.is_dir() and fmt != "hf":
        raise SelfloopError(f"{out} is a directory; {fmt} data goes to one file: name a file")
    if out.is_dir() and not all((out / f).is_file() for f in _SAVED_DATASET):
        raise SelfloopError(f"{out} is a directory but not a saved dataset; refusing to replace it")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise SelfloopError(f"{out} already exists; pass --overwrite to replace it")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise SelfloopError(f"cannot write {out}: {above} is a file, not a directory")
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, Mapping):
            raise SelfloopError(f"cannot export record {n}: expected a mapping")
        try:
            messages = from_messages(Row(rec, {}))[0]
        except Invalid as e:
            raise SelfloopError(f"cannot export record {rec.get('id') or n}: {e}") from e
        rid = str(rec.get("id") or example_id(messages))
        if fmt == "messages":
            rows.append({**rec, "id": rid, "messages": messages})
        elif fmt == "sharegpt":
            turns = [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages]
            rows.append(_table_row(rec, rid, {"conversations": turns}))
        elif fmt == "alpaca":
            system = messages[0]["content"] if messages[0]["role"] == "system" else ""
            turns = messages[1:] if system else messages
            if len(turns) != 2:
                skipped.append((rid, f"{len(turns) // 2} turns; Alpaca holds a single exchange"))
                continue
            body = {"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"]}
            rows.append(_table_row(rec, rid, {**body, "system": system}))
        else:
            rows.append(_table_row(rec, rid, {"messages": messages}))
    if not rows:
        why = f" ({len(skipped)} multi-turn records cannot be Alpaca)" if skipped else ""
        raise SelfloopError(f"no records to export to {out}{why}")
    if skipped:
        log.warning("left %d multi-turn records out of the Alpaca export", len(skipped))
    if fmt != "messages":  # one schema for every row, whichever keys a record lacks
        keys = list(dict.fromkeys(k for row in rows for k in row))
        rows = [{k: row.get(k) for k in keys} for row in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if fmt == "messages":
            _write_file(tmp, lambda f: f.writelines(_json_text(r) + "\n" for r in rows))
        elif fmt in ("alpaca", "sharegpt"):
            _write_file(tmp, lambda f: f.write(_json_text(rows) + "\n"))
        else:
            _write_dataset(rows, tmp, fmt)
        _commit(tmp, out, overwrite)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return ExportResult(path=out, format=fmt, written=len(rows), skipped=skipped)

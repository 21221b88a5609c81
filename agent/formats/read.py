"""Import: JSON, JSONL, CSV, Parquet and Hugging Face `datasets` files, read row by row into
validated `Example` records (`import_file`; see `agent.formats` for the whole picture)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import SelfloopError
from agent.formats.records import (
    CONVERTERS,
    MAPPABLE,
    RECORD_FORMATS,
    Invalid,
    Record,
    Row,
    detect_format,
    first_line,
    make_example,
)

log = logging.getLogger(__name__)

FILE_KINDS = ("json", "jsonl", "csv", "parquet", "hf")
IMPORT_FORMATS = ("auto", *RECORD_FORMATS, *FILE_KINDS)
_SUFFIX_KINDS = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip


@dataclass
class ImportResult:
    """What `import_file` read: records kept, bad ones skipped, exact repeats dropped."""

    path: Path
    format: str  # the record format: alpaca | sharegpt | messages | self-instruct
    kind: str  # the file kind: json | jsonl | csv | parquet | hf
    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (where, first seen at)


# --- file kinds -> rows ----------------------------------------------------------------------

_Rows = Iterator[tuple[str, Any]]  # (location: "line 7" | "row 3", a row dict or Invalid)


def _detect_kind(path: Path) -> str:
    if path.is_dir():
        return "hf"
    kind = _SUFFIX_KINDS.get(path.suffix.lower())
    if kind:
        return kind
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] in (b"[", b"{"):
        return "json"
    raise SelfloopError(
        f"{path}: cannot tell the file kind from its suffix {path.suffix!r} or its content; "
        f"name it as the format: {', '.join(FILE_KINDS)}"
    )


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SelfloopError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _object(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    return Invalid(f"expected a JSON object, got {type(value).__name__}")


def _jsonl_rows(path: Path, data: bytes) -> _Rows:
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:  # one badly encoded line is one bad record
            yield f"line {n}", Invalid(f"not UTF-8 text ({e.reason} at byte {e.start})")
            continue
        if not line.strip():
            continue
        try:
            yield f"line {n}", _object(json.loads(line))
        except json.JSONDecodeError as e:
            yield f"line {n}", Invalid(f"not valid JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            yield f"line {n}", Invalid("nested too deeply to be a record")


def _json_rows(path: Path, data: bytes) -> _Rows:
    text = _decode(path, data)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines in a .json file, a common mix-up
            yield from _jsonl_rows(path, data)
            return
        if not text.strip():
            return
        raise SelfloopError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})"
        ) from e
    except RecursionError:
        raise SelfloopError(f"{path}: nested too deeply to be a data file") from None
    if isinstance(doc, dict):  # a single record
        leading = text[: len(text) - len(text.lstrip())]
        yield f"line {leading.count(chr(10)) + 1}", doc
        return
    if not isinstance(doc, list):
        raise SelfloopError(f"{path}: expected a JSON list of records, got {type(doc).__name__}")
    # The document is valid, so walking it again with raw_decode finds where each item starts.
    decoder, pos, line, last = json.JSONDecoder(), text.index("[") + 1, 1, 0
    for _ in doc:
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", last, pos)
        last = pos
        item, pos = decoder.raw_decode(text, pos)
        yield f"line {line}", _object(item)


def unique_csv_header(path: Path, names: Sequence[str]) -> None:
    """A CSV header naming a column twice: DictReader would keep only the last column's values."""
    seen: dict[str, int] = {}
    for k, name in enumerate(names, 1):
        if name in seen:
            raise SelfloopError(
                f"{path}: the CSV header names column {name!r} twice (columns {seen[name]} and "
                f"{k}); rename one"
            )
        seen[name] = k


def _csv_rows(path: Path, data: bytes) -> _Rows:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long answers are normal
    reader = csv.DictReader(io.StringIO(_decode(path, data), newline=""))
    try:
        unique_csv_header(path, reader.fieldnames or [])
        for n, row in enumerate(reader, 1):
            if None in row:
                yield f"row {n}", Invalid(f"has more fields than the header's {len(row) - 1}")
            elif None in row.values():
                yield f"row {n}", Invalid("has fewer fields than the header")
            else:
                yield f"row {n}", row
    except csv.Error as e:
        raise SelfloopError(f"{path}: CSV line {reader.line_num}: {e}") from e


def _parquet_rows(path: Path) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SelfloopError(f"{path}: not a readable Parquet file ({first_line(e)})") from e
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


def _hf_rows(path: Path, split: str | None) -> _Rows:
    from datasets import DatasetDict, load_from_disk

    if not path.is_dir():
        raise SelfloopError(f"{path}: a Hugging Face dataset must be a directory (save_to_disk)")
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SelfloopError(
            f"{path}: not a Hugging Face datasets directory saved with save_to_disk "
            f"({first_line(e)})"
        ) from e
    if isinstance(ds, DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise SelfloopError(
                f"{path}: name one split of this DatasetDict ({', '.join(ds)}), got {split!r}"
            )
        ds = ds[split]
    elif split is not None:
        raise SelfloopError(f"{path}: a single Dataset has no splits, got split={split!r}")
    for n, row in enumerate(ds, 1):
        yield f"row {n}", row


def _rows(path: Path, kind: str, split: str | None) -> _Rows:
    if kind == "hf":
        return _hf_rows(path, split)
    if path.is_dir():
        raise SelfloopError(f"{path}: is a directory; only a Hugging Face dataset (hf) can be one")
    if kind == "parquet":
        return _parquet_rows(path)
    data = path.read_bytes()
    return {"json": _json_rows, "jsonl": _jsonl_rows, "csv": _csv_rows}[kind](path, data)


# --- import ----------------------------------------------------------------------------------


def _check_mapping(mapping: Mapping[str, str] | None) -> dict[str, str]:
    mapping = dict(mapping or {})
    for key, col in mapping.items():
        if key not in MAPPABLE:
            raise SelfloopError(f"mapping key {key!r} is not one of {', '.join(MAPPABLE)}")
        if not isinstance(col, str) or not col:
            raise SelfloopError(f"mapping {key!r} must name a column, got {col!r}")
    return mapping


def _jsonable(value: Any) -> Any:
    # Parquet/HF rows may hold dates, decimals or bytes; meta must stay plain JSON.
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def import_file(
    path: str | Path,
    fmt: str = "auto",
    mapping: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    split: str | None = None,
) -> ImportResult:
    """Read expert examples from `path` into validated `Example` records (`source: human`).

    `fmt` is "auto", a record format (alpaca, sharegpt, messages, self-instruct; the file kind
    then comes from the suffix) or a file kind (json, jsonl, csv, parquet, hf; the record format
    then comes from the first record's keys). `mapping` maps canonical field names (instruction,
    input, output, system, messages, conversations, instances) to the columns that hold them.
    `split` picks one split of a saved DatasetDict. Raises SelfloopError on an unreadable or empty
    file, and on any bad record unless `skip_invalid`, which skips and lists them instead.
    """
    path = Path(path)
    if fmt not in IMPORT_FORMATS:
        raise SelfloopError(
            f"unknown import format {fmt!r}; use one of {', '.join(IMPORT_FORMATS)}"
        )
    mapping = _check_mapping(mapping)
    if not path.exists():
        raise SelfloopError(f"data file not found: {path}")
    kind = fmt if fmt in FILE_KINDS else _detect_kind(path)
    record_fmt = fmt if fmt in RECORD_FORMATS else None
    result = ImportResult(path=path, format=record_fmt or "", kind=kind, records=[])
    seen: dict[str, str] = {}
    total = 0
    for loc, row in _rows(path, kind, split):
        where = f"{path}:{loc.removeprefix('line ')}"  # file:7 or file:row 3
        if isinstance(row, Invalid):
            outcomes: list[Any] = [row]
        else:
            if not result.format:  # the first readable record decides (and checks the mapping)
                missing = [f"{k}={c}" for k, c in mapping.items() if c not in row]
                if missing:
                    raise SelfloopError(
                        f"{where}: mapped column(s) {', '.join(missing)} not found; "
                        f"the record has: {', '.join(map(str, row)) or 'no fields'}"
                    )
                result.format = record_fmt or detect_format(Row(row, mapping).data) or ""
                if not result.format:
                    raise SelfloopError(
                        f"{where}: cannot tell the record format from the keys "
                        f"{', '.join(map(str, row)) or '(none)'}; expected 'messages', "
                        "'conversations' (ShareGPT), 'instances' (Self-Instruct) or "
                        "'instruction'/'input'/'output' (Alpaca); name the format or pass "
                        "a column mapping"
                    )
            convert, used = CONVERTERS[result.format]
            record = Row(row, mapping)
            try:
                outcomes = convert(record)
            except Invalid as e:
                outcomes = [e]
        for k, out in enumerate(outcomes):
            total += 1
            if isinstance(out, Invalid):
                result.skipped.append((where, str(out)))
                continue
            ex = make_example(out, meta={"format": result.format, "file": str(path)})
            ex["meta"]["location"] = loc if len(outcomes) == 1 else f"{loc}, instances[{k}]"
            rest = record.rest(used)
            if rest:
                ex["meta"]["fields"] = _jsonable(rest)
            if ex["id"] in seen:
                result.duplicates.append((where, seen[ex["id"]]))
                continue
            seen[ex["id"]] = where
            result.records.append(ex)
    if not total:
        raise SelfloopError(f"{path}: no records to import (the file is empty)")
    bad = len(result.skipped)
    if bad and not skip_invalid:
        where, why = result.skipped[0]
        keep = f"; skip-invalid would keep the {total - bad} valid ones" if bad < total else ""
        raise SelfloopError(
            f"{where}: {why} ({bad} of {total} records invalid, file rejected{keep})"
        )
    if not result.records and not result.duplicates:
        where, why = result.skipped[0]
        raise SelfloopError(f"{path}: no valid records ({bad} skipped; first: {where}: {why})")
    if result.skipped:
        log.warning("%s: skipped %d invalid records (first: %s)", path, bad, result.skipped[0][1])
    if result.duplicates:
        log.info("%s: dropped %d exact repeats", path, len(result.duplicates))
    return result

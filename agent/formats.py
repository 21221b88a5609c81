"""Expert data import and export: Alpaca, ShareGPT, chat messages, Self-Instruct seed tasks, CSV,
Parquet and Hugging Face `datasets` directories, to and from canonical `Example` records.

An imported record is an `agent.data.Example` as a plain dict: `{"id", "messages": [{"role",
"content"}...], "source", "round", "meta"}`. Imported examples get `source: "human"`, `round: None`
and the id `example_id(messages)`: `"h-"` + the first 16 hex digits of the SHA-256 of the (role,
content) pairs. The id depends on the conversation alone, so importing a file twice (or the same
data from two formats) yields the same ids and dedup never counts it twice; an exact repeat inside
one file is dropped and listed in `ImportResult.duplicates`. `meta` says where a record came from
(format, file, line or row) and keeps the record's other fields under `fields`.

Every record is validated: valid roles, an optional system message first, then user and assistant
turns alternating, each non-empty, ending with the assistant. A problem is reported as
`file:line` (JSON, JSONL) or `file:row N` (CSV, Parquet, HF; row 1 = the first record, a CSV
header not counted). A file with any bad record is rejected whole unless `skip_invalid=True`.

Export writes atomically (temporary path, then a rename) and refuses to replace an existing output
unless `overwrite=True`. Alpaca can only hold a single-turn exchange: multi-turn records are left
out and listed in `ExportResult.skipped`. In the Alpaca, ShareGPT, HF and Parquet exports `meta`
and any other provenance keys are JSON text columns, so every table has a fixed simple schema that
`datasets.load_dataset` (or pandas) reads whatever they hold; the messages JSONL keeps records as
they are.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import SelfloopError

log = logging.getLogger(__name__)

RECORD_FORMATS = ("alpaca", "sharegpt", "messages", "self-instruct")
FILE_KINDS = ("json", "jsonl", "csv", "parquet", "hf")
IMPORT_FORMATS = ("auto", *RECORD_FORMATS, *FILE_KINDS)
EXPORT_FORMATS = ("messages", "alpaca", "sharegpt", "hf", "parquet")
MAPPABLE = ("instruction", "input", "output", "system", "messages", "conversations", "instances")
ROLES = ("system", "user", "assistant")
_SUFFIX_KINDS = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
# ShareGPT speaker names seen in the wild (FastChat, axolotl, LLaMA-Factory, OpenHermes...).
_SPEAKERS = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip
_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


# An imported record: a plain dict that validates as `agent.data.Example` (the canonical record).
Record = dict[str, Any]


@dataclass
class ImportResult:
    """What `import_file` read: records kept, bad ones skipped, exact repeats dropped."""

    path: Path
    format: str  # the record format: alpaca | sharegpt | messages | self-instruct
    kind: str  # the file kind: json | jsonl | csv | parquet | hf
    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (where, first seen at)


@dataclass
class ExportResult:
    """What `export_records` wrote, and the records it left out (Alpaca: multi-turn)."""

    path: Path
    format: str
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id, why)


class _Invalid(Exception):
    """One bad record; the message says what is wrong, the caller adds where."""


def example_id(messages: Iterable[Mapping[str, Any]]) -> str:
    """A stable id from the conversation alone: the same messages always get the same id."""
    pairs = [[m["role"], m["content"]] for m in messages]
    blob = json.dumps(pairs, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return "h-" + hashlib.sha256(blob).hexdigest()[:16]


def make_example(
    messages: list[dict[str, str]],
    source: str = "human",
    round: int | None = None,
    meta: dict[str, Any] | None = None,
    id: str | None = None,
) -> Record:
    """A canonical record; the id defaults to `example_id(messages)`."""
    return {
        "id": id or example_id(messages),
        "messages": messages,
        "source": source,
        "round": round,
        "meta": dict(meta or {}),
    }


# --- validation ------------------------------------------------------------------------------


def _check_conversation(messages: list[dict[str, str]], what: str = "messages") -> None:
    if not messages:
        raise _Invalid(f"{what} is empty")
    expected = "user"
    for k, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise _Invalid(f"{what}[{k}] has role {role!r}, not one of {'|'.join(ROLES)}")
        if not content.strip():
            raise _Invalid(f"{what}[{k}] ({role}) has empty content")
        if role == "system":
            if k:
                raise _Invalid(f"{what}[{k}] is a system message after the start")
            continue
        if role != expected:
            raise _Invalid(f"{what}[{k}] is {role} where {expected} was expected")
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != "assistant":
        raise _Invalid(
            f"{what} must end with an assistant message, ends with {messages[-1]['role']}"
        )


class _Row:
    """One input record after the column mapping, with field access that explains failures."""

    def __init__(self, raw: Mapping[str, Any], mapping: Mapping[str, str]):
        self.raw, self.mapping = raw, mapping
        # A mapped field is read from its column only, never from a same-named other column.
        self.data = {k: v for k, v in raw.items() if k not in mapping}
        self.data.update({key: raw[col] for key, col in mapping.items() if col in raw})

    def label(self, key: str) -> str:
        col = self.mapping.get(key, key)
        return f"{col!r}" if col == key else f"{col!r} (mapped to {key})"

    def text(self, key: str, required: bool = True) -> str:
        # Optional fields may be null: Arrow and pandas store a missing cell that way.
        if key not in self.data or self.data[key] is None:
            if required:
                raise _Invalid(f"{self.label(key)} is {'null' if key in self.data else 'missing'}")
            return ""
        return _text(self.data[key], self.label(key), required)

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            raise _Invalid(f"{self.label(key)} is {'null' if key in self.data else 'missing'}")
        if isinstance(value, str):  # CSV cells hold nested data as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise _Invalid(f"{self.label(key)} is not valid JSON ({e.msg})") from e
            except RecursionError:
                raise _Invalid(f"{self.label(key)} is nested too deeply") from None
        if not isinstance(value, list):
            raise _Invalid(f"{self.label(key)} must be a list, got {type(value).__name__}")
        if not value:
            raise _Invalid(f"{self.label(key)} is an empty list")
        return value

    def rest(self, used: Iterable[str]) -> dict[str, Any]:
        used_cols = {self.mapping.get(k, k) for k in used}
        return {k: v for k, v in self.raw.items() if k not in used_cols}


def _text(value: Any, label: str, required: bool = True) -> str:
    if value is None:
        raise _Invalid(f"{label} is null")
    if not isinstance(value, str):
        raise _Invalid(f"{label} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _Invalid(f"{label} is empty")
    return value


def _content(value: Any, label: str) -> str:
    if isinstance(value, list):  # OpenAI content parts: only text can be trained on here
        texts = []
        for part in value:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise _Invalid(f"{label} has a non-text part ({kind})")
            texts.append(_text(part.get("text"), f"{label} text part"))
        value = "".join(texts)
    return _text(value, label, required=False)


# --- record formats -> messages --------------------------------------------------------------


def _from_alpaca(row: _Row) -> list[list[dict[str, str]] | _Invalid]:
    instruction = row.text("instruction")
    extra = row.text("input", required=False)
    output = row.text("output")
    system = row.text("system", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [
        [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    ]


def _from_messages(row: _Row) -> list[list[dict[str, str]] | _Invalid]:
    messages = []
    for k, m in enumerate(row.items("messages")):
        where = f"messages[{k}]"
        if not isinstance(m, Mapping):
            raise _Invalid(f"{where} must be an object, got {type(m).__name__}")
        role = m.get("role")
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise _Invalid(f"{where} has role {role!r}, not one of {'|'.join(ROLES)}")
        if "content" not in m:
            raise _Invalid(f"{where} has no 'content'")
        messages.append({"role": role, "content": _content(m["content"], f"{where}.content")})
    _check_conversation(messages)
    return [messages]


def _from_sharegpt(row: _Row) -> list[list[dict[str, str]] | _Invalid]:
    messages = []
    for k, turn in enumerate(row.items("conversations")):
        where = f"conversations[{k}]"
        if not isinstance(turn, Mapping):
            raise _Invalid(f"{where} must be an object, got {type(turn).__name__}")
        # Some ShareGPT-style files use chat keys (role/content) inside `conversations`.
        speaker_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        speaker = turn.get(speaker_key)
        role = _SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            known = ", ".join(_SPEAKERS)
            raise _Invalid(f"{where}.{speaker_key} is {speaker!r}, not one of {known}")
        if text_key not in turn:
            raise _Invalid(f"{where} has no {text_key!r}")
        messages.append({"role": role, "content": _content(turn[text_key], f"{where}.{text_key}")})
    system = row.text("system", required=False)
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    _check_conversation(messages, "conversations")
    return [messages]


def _from_self_instruct(row: _Row) -> list[list[dict[str, str]] | _Invalid]:
    instruction = row.text("instruction")
    out: list[list[dict[str, str]] | _Invalid] = []
    for k, inst in enumerate(row.items("instances")):
        try:
            if not isinstance(inst, Mapping):
                raise _Invalid(f"must be an object, got {type(inst).__name__}")
            inst_row = _Row(dict(inst), {})
            extra = inst_row.text("input", required=False)
            output = inst_row.text("output")
        except _Invalid as e:
            out.append(_Invalid(f"instances[{k}]: {e}"))
            continue
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": output}])
    return out


_CONVERTERS: dict[str, tuple[Callable[[_Row], list[Any]], tuple[str, ...]]] = {
    "alpaca": (_from_alpaca, ("instruction", "input", "output", "system")),
    "messages": (_from_messages, ("messages",)),
    "sharegpt": (_from_sharegpt, ("conversations", "system")),
    "self-instruct": (_from_self_instruct, ("instruction", "instances")),
}


def _detect_format(keys: Iterable[str]) -> str | None:
    keys = set(keys)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instances" in keys:
        return "self-instruct"
    # Any Alpaca field is enough: a first record missing `output` is then reported as exactly that.
    if keys & {"instruction", "input", "output"}:
        return "alpaca"
    return None


# --- file kinds -> rows ----------------------------------------------------------------------

_Rows = Iterator[tuple[str, Any]]  # (location: "line 7" | "row 3", a row dict or _Invalid)


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SelfloopError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _object(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    return _Invalid(f"expected a JSON object, got {type(value).__name__}")


def _jsonl_rows(path: Path, data: bytes) -> _Rows:
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:  # one badly encoded line is one bad record
            yield f"line {n}", _Invalid(f"not UTF-8 text ({e.reason} at byte {e.start})")
            continue
        if not line.strip():
            continue
        try:
            yield f"line {n}", _object(json.loads(line))
        except json.JSONDecodeError as e:
            yield f"line {n}", _Invalid(f"not valid JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            yield f"line {n}", _Invalid("nested too deeply to be a record")


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
                yield f"row {n}", _Invalid(f"has more fields than the header's {len(row) - 1}")
            elif None in row.values():
                yield f"row {n}", _Invalid("has fewer fields than the header")
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
        raise SelfloopError(f"{path}: not a readable Parquet file ({_first_line(e)})") from e
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
            f"({_first_line(e)})"
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
        if isinstance(row, _Invalid):
            outcomes: list[Any] = [row]
        else:
            if not result.format:  # the first readable record decides (and checks the mapping)
                missing = [f"{k}={c}" for k, c in mapping.items() if c not in row]
                if missing:
                    raise SelfloopError(
                        f"{where}: mapped column(s) {', '.join(missing)} not found; "
                        f"the record has: {', '.join(map(str, row)) or 'no fields'}"
                    )
                result.format = record_fmt or _detect_format(_Row(row, mapping).data) or ""
                if not result.format:
                    raise SelfloopError(
                        f"{where}: cannot tell the record format from the keys "
                        f"{', '.join(map(str, row)) or '(none)'}; expected 'messages', "
                        "'conversations' (ShareGPT), 'instances' (Self-Instruct) or "
                        "'instruction'/'input'/'output' (Alpaca); name the format or pass "
                        "a column mapping"
                    )
            convert, used = _CONVERTERS[result.format]
            record = _Row(row, mapping)
            try:
                outcomes = convert(record)
            except _Invalid as e:
                outcomes = [e]
        for k, out in enumerate(outcomes):
            total += 1
            if isinstance(out, _Invalid):
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
        raise SelfloopError(f"cannot write the records as {fmt}: {_first_line(e)}") from e
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
            messages = _from_messages(_Row(rec, {}))[0]
        except _Invalid as e:
            raise SelfloopError(f"cannot export record {rec.get('id') or n}: {e}") from e
        rid = str(rec.get("id") or example_id(messages))
        if fmt == "messages":
            rows.append({**rec, "id": rid, "messages": messages})
        elif fmt == "sharegpt":
            turns = [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages]
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


__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "ExportResult",
    "ImportResult",
    "example_id",
    "export_records",
    "import_file",
    "make_example",
]

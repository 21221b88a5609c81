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

from agent.formats.read import (
    FILE_KINDS,
    IMPORT_FORMATS,
    ImportResult,
    import_file,
    unique_csv_header,
)
from agent.formats.records import RECORD_FORMATS, Record, example_id, make_example
from agent.formats.write import EXPORT_FORMATS, ExportResult, export_records

__all__ = [
    "EXPORT_FORMATS",
    "FILE_KINDS",
    "IMPORT_FORMATS",
    "RECORD_FORMATS",
    "ExportResult",
    "ImportResult",
    "Record",
    "example_id",
    "export_records",
    "import_file",
    "make_example",
    "unique_csv_header",
]

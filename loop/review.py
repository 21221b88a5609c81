"""Human review of a round's kept examples (the expert-annotation path inside the loop).

With `run.review: true` the graph pauses after dedup and `write_review_files` puts the round's
kept candidates, with their judge scores, in `rounds/NNN/review.jsonl` and `review.csv`. A person
edits either file: a removed row rejects that example, an edited instruction/input/response
corrects it (the record is marked `source: human-edited`). `accept_review` validates the edited
file and writes `rounds/NNN/review/` (kept.jsonl, rejected.jsonl, stats.json) atomically; the
review node finds that directory on resume and the round goes on to tuning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from agent.data import parse_object, write_examples
from agent.errors import SelfloopError
from agent.formats import unique_csv_header
from loop.accounting import account
from loop.rundir import RunDir, atomic_write, write_json

log = logging.getLogger(__name__)

EDITABLE = ("instruction", "input", "response")
# rounds/NNN/review/: what the reviewer kept (the round's training data) and removed
KEPT, REJECTED, STATS = "kept.jsonl", "rejected.jsonl", "stats.json"
CSV_COLUMNS = ("id", "judge_score", "domain", "language", "source", *EDITABLE)


def review_paths(rundir: RunDir, n: int) -> tuple[Path, Path]:
    """The round's review files: (JSONL, CSV)."""
    return rundir.round_dir(n) / "review.jsonl", rundir.round_dir(n) / "review.csv"


def write_review_files(rundir: RunDir, n: int) -> tuple[Path, Path]:
    """Write the round's dedup-kept candidates for a person to edit (both formats, same rows)."""
    records = rundir.input_records(n, "review")
    jsonl, csv_path = review_paths(rundir, n)
    write_examples(jsonl, records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_COLUMNS})
    atomic_write(csv_path, buf.getvalue())
    return jsonl, csv_path


def pending_review(rundir: RunDir) -> int | None:
    """The round waiting for review (its review files exist, its review stage does not)."""
    rounds = rundir.root / "rounds"
    if not rounds.is_dir():
        return None
    for d in sorted(rounds.glob("[0-9][0-9][0-9]"), reverse=True):
        n = int(d.name)
        if review_paths(rundir, n)[0].exists() and not rundir.stage_done(n, "review"):
            return n
    return None


def _read_edited(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of an edited review file, JSONL or CSV by suffix."""
    if not path.is_file():
        raise SelfloopError(f"review file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets like to add a BOM
    except UnicodeDecodeError as e:
        raise SelfloopError(f"{path}: not UTF-8 text (byte {e.start})") from None
    out = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        unique_csv_header(path, reader.fieldnames or [])
        missing = [c for c in ("id", *EDITABLE) if c not in (reader.fieldnames or [])]
        if missing:
            raise SelfloopError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            out.append((f"{path}:{reader.line_num}", dict(row)))
        return out
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{k}", parse_object(line)))
        except ValueError as e:
            raise SelfloopError(f"{path}:{k}: {e}") from None
    return out


def _apply_edits(original: dict[str, Any], row: dict[str, Any], where: str) -> dict[str, Any]:
    rec = dict(original)
    changed = []
    for key in EDITABLE:
        if key not in row:
            continue
        value = row[key]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise SelfloopError(f"{where}: {key} must be text, got {type(value).__name__}")
        if value.strip() != str(original.get(key) or "").strip():
            rec[key] = value.strip()
            changed.append(key)
    for key in ("instruction", "response"):
        if not str(rec.get(key) or "").strip():
            raise SelfloopError(f"{where}: {key} is empty; delete the row to reject the example")
    if changed:
        rec["messages"] = _messages(original.get("messages"), rec)
        rec["source"] = "human-edited"
        rec["edited_fields"] = changed
        rec["original"] = {k: original.get(k) for k in changed}
    return rec


def _messages(old: Any, rec: dict[str, Any]) -> list[dict[str, str]]:
    """The record's chat with the first user turn and the last assistant turn replaced."""
    user = f"{rec['instruction']}\n\n{rec['input']}" if rec.get("input") else rec["instruction"]
    msgs = [dict(m) for m in old] if isinstance(old, list) and old else []
    users = [k for k, m in enumerate(msgs) if m.get("role") == "user"]
    answers = [k for k, m in enumerate(msgs) if m.get("role") == "assistant"]
    if not users or not answers:
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": rec["response"]},
        ]
    msgs[users[0]]["content"] = user
    msgs[answers[-1]]["content"] = rec["response"]
    return msgs


def accept_review(rundir: RunDir, n: int, path: str | Path) -> dict[str, Any]:
    """Take an edited review file back for round `n`; returns the counts written to stats.json.

    Every row must name an id of the round's candidates (once); nothing is written unless the
    whole file is valid, so a bad edit can be fixed and accepted again.
    """
    path = Path(path)
    if rundir.stage_done(n, "review"):
        raise SelfloopError(f"round {n} of {rundir.root} has already been reviewed")
    candidates = {r["id"]: r for r in rundir.input_records(n, "review")}
    kept, seen = [], set()
    for where, row in _read_edited(path):
        rid = str(row.get("id") or "").strip()
        if not rid:
            raise SelfloopError(f"{where}: row has no id")
        if rid not in candidates:
            raise SelfloopError(f"{where}: id {rid!r} is not one of round {n}'s candidates")
        if rid in seen:
            raise SelfloopError(f"{where}: id {rid!r} appears twice")
        seen.add(rid)
        kept.append(_apply_edits(candidates[rid], row, where))
    rejected = [{**r, "review": "removed"} for rid, r in candidates.items() if rid not in seen]
    stats = {
        "file": str(path),
        "candidates": len(candidates),
        "accepted": len(kept),
        "rejected": len(rejected),
        "edited": sum(1 for r in kept if r.get("source") == "human-edited"),
        "account": account("review", len(candidates), len(kept), {"removed": len(rejected)}),
    }
    with rundir.writing_stage(n, "review") as out:
        write_examples(out / KEPT, kept)
        write_examples(out / REJECTED, rejected)
        write_json(out / STATS, stats)
    log.info("round %d review: %s", n, json.dumps(stats))
    return stats

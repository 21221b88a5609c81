"""Human review in the loop: the run pauses after dedup, a person edits the review file (drops a
row, corrects another), `selfloop review --accept` takes it back and the run goes on with it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from agent.data import read_jsonl
from loop.config import load_config
from loop.graph import run
from tests.helpers import crash_config as _config
from tests.helpers import selfloop
from tuners.train import data_hash


@pytest.fixture
def paused(tiny_model_dir: Path, tmp_path: Path) -> Path:
    path = _config(tmp_path, tiny_model_dir)  # round 1 is promoted, so the pool shows the edits
    cfg = yaml.safe_load(path.read_text())
    cfg["run"]["review"] = True
    path.write_text(yaml.safe_dump(cfg))
    state = run(load_config(path), tmp_path / "run")
    assert state.get("stop") is None and state["round"] == 1  # paused, not finished
    return tmp_path / "run"


def test_review_round_trip_through_the_csv(paused: Path, tmp_path: Path) -> None:
    r1 = paused / "rounds" / "001"
    assert not (r1 / "adapter").exists()  # nothing trained before the review
    candidates = read_jsonl(r1 / "review.jsonl")
    assert candidates == read_jsonl(r1 / "dedup" / "kept.jsonl") and len(candidates) >= 3
    with (r1 / "review.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [c["id"] for c in candidates]
    assert all(r["judge_score"] for r in rows)  # the scores are there to decide by

    told = selfloop("review", str(paused))
    assert told.returncode == 0 and "review.csv" in told.stdout, told.stderr

    dropped, edited = rows[0]["id"], rows[1]["id"]
    rows = rows[1:]
    rows[0]["instruction"] = "Name the largest planet of the solar system, in one word."
    rows[0]["response"] = "Jupiter."
    edited_file = tmp_path / "edited.csv"
    with edited_file.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    done = selfloop("review", str(paused), "--accept", str(edited_file))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished:" in done.stdout

    kept = read_jsonl(r1 / "review" / "kept.jsonl")
    assert dropped not in {r["id"] for r in kept} and len(kept) == len(candidates) - 1
    fixed = next(r for r in kept if r["id"] == edited)
    assert fixed["source"] == "human-edited" and fixed["edited_fields"] == [
        "instruction",
        "response",
    ]
    assert fixed["messages"][-1] == {"role": "assistant", "content": "Jupiter."}
    assert fixed["messages"][0]["content"].startswith("Name the largest planet of the solar")
    unchanged = [r for r in kept if r["id"] != edited]
    assert all(r["source"] == "human" for r in unchanged)  # untouched rows keep their source
    stats = json.loads((r1 / "review" / "stats.json").read_text())
    assert stats == {**stats, "accepted": len(kept), "rejected": 1, "edited": 1}

    # The round trained on the reviewed set and, promoted, put it in the pool.
    trained = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
    assert trained["data_sha256"] == data_hash(kept)
    metrics = json.loads((paused / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["review"]["rejected"] == 1 and metrics["decision"]["decision"] == "promoted"
    pool = [json.loads(x) for x in (paused / "pool.jsonl").read_text().splitlines()]
    assert {p["id"] for p in pool} == {r["id"] for r in kept}
    assert any("largest planet of the solar system, in one word" in json.dumps(p) for p in pool)


def test_bad_review_edits_are_refused_and_nothing_is_written(paused: Path, tmp_path: Path) -> None:
    r1 = paused / "rounds" / "001"
    good = read_jsonl(r1 / "review.jsonl")
    cases = {
        "unknown.jsonl": (
            [good[0], {**good[1], "id": "no-such-id"}],
            "unknown.jsonl:2: id 'no-such-id' is not one of round 1's candidates",
        ),
        "twice.jsonl": ([good[0], good[0]], "twice.jsonl:2: id"),
        "empty.jsonl": ([{**good[0], "response": "  "}], "empty.jsonl:1: response is empty"),
        "badtype.jsonl": ([{**good[0], "response": 3}], "badtype.jsonl:1: response must be text"),
    }
    for name, (records, message) in cases.items():
        f = tmp_path / name
        f.write_text("".join(json.dumps(r) + "\n" for r in records))
        out = selfloop("review", str(paused), "--accept", str(f))
        assert out.returncode == 1 and message in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.splitlines()[-1].startswith("error: ")
        assert not (r1 / "review").exists() and not (r1 / "adapter").exists()
    # After the refusals the original file is still accepted (everything kept, nothing edited).
    ok = selfloop("review", str(paused), "--accept", str(r1 / "review.jsonl"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    stats = json.loads((r1 / "review" / "stats.json").read_text())
    assert stats["accepted"] == len(good) and stats["edited"] == 0 and stats["rejected"] == 0
    again = selfloop("review", str(paused), "--accept", str(r1 / "review.jsonl"))
    assert again.returncode == 1 and "no round waiting for review" in again.stderr

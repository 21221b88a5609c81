"""The canonical Example record: validated at every stage boundary, versioned, errors located."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.data import SCHEMA_VERSION, Example, read_examples, write_examples
from agent.errors import SelfloopError
from agent.formats import import_file

PROPOSAL = {
    "id": "r001-c000-00",
    "instruction": "Explain tides.",
    "input": "",
    "source": "self",
    "round": 1,
    "stage": "propose",
    "shown_ids": ["seed-1"],
    "model": "m",
}
RESPONSE = {
    **PROPOSAL,
    "id": "r001-c000-00-s0",
    "stage": "respond",
    "response": "The moon pulls the sea.",
    "messages": [
        {"role": "user", "content": "Explain tides."},
        {"role": "assistant", "content": "The moon pulls the sea."},
    ],
    "judge_score": 3.5,
    "filter_reason": None,
}


def test_stage_records_round_trip_with_a_schema_version(tmp_path: Path) -> None:
    path = write_examples(tmp_path / "x.jsonl", [PROPOSAL, RESPONSE])
    back = read_examples(path)
    assert [r["schema_version"] for r in back] == [SCHEMA_VERSION] * 2
    assert [{k: v for k, v in r.items() if k != "schema_version"} for r in back] == [
        PROPOSAL,
        RESPONSE,
    ]  # every stage's own keys ride along unchanged
    assert Example.model_validate(back[1]).messages[1].content == "The moon pulls the sea."


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**RESPONSE, "source": "robot"}, "record 2: source: Input should be"),
        ({k: v for k, v in RESPONSE.items() if k != "id"}, "record 2: id: Field required"),
        (
            {**RESPONSE, "messages": [{"role": "bot", "content": "hi"}]},
            "record 2: messages.0.role",
        ),
        ({**RESPONSE, "judge_score": "high"}, "record 2: judge_score"),
        ({"id": "e", "source": "human", "messages": []}, "needs messages or an instruction"),
    ],
)
def test_a_stage_writing_a_bad_record_fails_and_writes_nothing(
    tmp_path: Path, bad: dict, message: str
) -> None:
    path = tmp_path / "kept.jsonl"
    path.write_text("precious\n")
    with pytest.raises(SelfloopError, match=message.replace(".", r"\.")):
        write_examples(path, [PROPOSAL, bad])
    assert path.read_text() == "precious\n"


def test_reading_names_file_line_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "kept.jsonl"
    path.write_text(
        json.dumps(PROPOSAL) + "\n\n" + json.dumps({**RESPONSE, "schema_version": 99}) + "\n"
    )
    with pytest.raises(SelfloopError) as e:
        read_examples(path)
    assert str(e.value).startswith(f"{path}:3: schema_version 99 was written by a newer selfloop")
    path.write_text(json.dumps({**RESPONSE, "round": 0}) + "\n")
    with pytest.raises(SelfloopError, match=rf"{path}:1: round: Input should be greater"):
        read_examples(path)
    assert len(read_examples(write_examples(path, [PROPOSAL]))) == 1  # a good file reads back


def test_imported_expert_data_is_canonical(tmp_path: Path) -> None:
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi!"}]))
    records = import_file(src).records
    [back] = read_examples(write_examples(tmp_path / "imported.jsonl", records))
    assert back["source"] == "human" and back["messages"][-1]["content"] == "Hi!"

"""Expert data import/export: every format, auto-detection, exact error locations, round trips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from agent.errors import SelfloopError
from agent.formats import (
    EXPORT_FORMATS,
    example_id,
    export_records,
    import_file,
    make_example,
)


def _user(content: str) -> dict:
    return {"role": "user", "content": content}


def _bot(content: str) -> dict:
    return {"role": "assistant", "content": content}


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _messages(result) -> list[list[dict]]:
    return [r["messages"] for r in result.records]


QA = [
    {"question": "Capital of France?", "context": "", "answer": "Paris."},
    {"question": "Summarize.", "context": "Cats sleep a lot.", "answer": "Cats nap."},
]
QA_MAPPING = {"instruction": "question", "input": "context", "output": "answer"}
QA_MESSAGES = [
    [_user("Capital of France?"), _bot("Paris.")],
    [_user("Summarize.\n\nCats sleep a lot."), _bot("Cats nap.")],
]


# --- each import format ------------------------------------------------------------------------


def test_alpaca_json_list(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    data = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "category": "math"},
        {"instruction": "Say hi.", "output": "Hi!", "system": "Be brief."},
        {"instruction": "Say bye.", "input": "", "output": "Bye."},
    ]
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    result = import_file(path)
    assert (result.format, result.kind) == ("alpaca", "json")
    assert _messages(result) == [
        [_user("Add the numbers.\n\n2 and 3"), _bot("5")],
        [{"role": "system", "content": "Be brief."}, _user("Say hi."), _bot("Hi!")],
        [_user("Say bye."), _bot("Bye.")],
    ]
    first = result.records[0]
    assert first["source"] == "human" and first["round"] is None
    assert first["meta"]["fields"] == {"category": "math"}
    assert first["meta"]["location"] == "line 2"
    assert first["id"] == example_id(first["messages"])


def test_alpaca_jsonl_and_jsonl_inside_a_json_file(tmp_path: Path) -> None:
    records = [
        {"instruction": "Q1", "input": "", "output": "A1"},
        {"instruction": "Q2", "output": "A2"},
    ]
    expected = [[_user("Q1"), _bot("A1")], [_user("Q2"), _bot("A2")]]
    assert _messages(import_file(_jsonl(tmp_path / "a.jsonl", records))) == expected
    mislabelled = import_file(_jsonl(tmp_path / "a.json", records))
    assert mislabelled.format == "alpaca" and _messages(mislabelled) == expected


def test_sharegpt_with_variants(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    data = [
        {
            "id": "conv-1",
            "conversations": [
                {"from": "system", "value": "You are kind."},
                {"from": "human", "value": "Hello"},
                {"from": "gpt", "value": "Hi there"},
                {"from": "human", "value": "How are you?"},
                {"from": "gpt", "value": "Well, thanks."},
            ],
        },
        # chatml-like turns inside `conversations`, a top-level system prompt, other speaker names
        {
            "conversations": [
                {"role": "user", "content": "Ping"},
                {"role": "assistant", "content": "Pong"},
            ],
            "system": "Answer tersely.",
        },
        {"conversations": [{"from": "User", "value": "Q"}, {"from": "chatgpt", "value": "A"}]},
    ]
    path.write_text(json.dumps(data), encoding="utf-8")
    result = import_file(path)
    assert result.format == "sharegpt"
    assert _messages(result) == [
        [
            {"role": "system", "content": "You are kind."},
            _user("Hello"),
            _bot("Hi there"),
            _user("How are you?"),
            _bot("Well, thanks."),
        ],
        [{"role": "system", "content": "Answer tersely."}, _user("Ping"), _bot("Pong")],
        [_user("Q"), _bot("A")],
    ]
    assert result.records[0]["meta"]["fields"] == {"id": "conv-1"}


def test_messages_jsonl_openai_style(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": [_user("Hi"), _bot("Hello")]},
            {
                "messages": [
                    {"role": "developer", "content": "Be formal."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Greet "},
                            {"type": "text", "text": "me"},
                        ],
                    },
                    {"role": "assistant", "content": "Good day.", "weight": 1, "name": "bot"},
                ],
                "metadata": {"split": "train"},
            },
        ],
    )
    result = import_file(path)
    assert result.format == "messages"
    assert _messages(result) == [
        [_user("Hi"), _bot("Hello")],
        [{"role": "system", "content": "Be formal."}, _user("Greet me"), _bot("Good day.")],
    ]
    assert result.records[1]["meta"]["fields"] == {"metadata": {"split": "train"}}


def test_self_instruct_seed_tasks(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "seed_tasks.jsonl",
        [
            {
                "id": "seed_task_0",
                "name": "antonyms",
                "instruction": "Give the antonym.",
                "instances": [
                    {"input": "hot", "output": "cold"},
                    {"input": "up", "output": "down"},
                ],
                "is_classification": False,
            },
            {"instruction": "Tell a joke.", "instances": [{"input": "", "output": "Knock knock."}]},
        ],
    )
    result = import_file(path)
    assert result.format == "self-instruct"
    assert _messages(result) == [
        [_user("Give the antonym.\n\nhot"), _bot("cold")],
        [_user("Give the antonym.\n\nup"), _bot("down")],
        [_user("Tell a joke."), _bot("Knock knock.")],
    ]
    assert result.records[1]["meta"]["location"] == "line 1, instances[1]"
    assert result.records[0]["meta"]["fields"]["name"] == "antonyms"


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    rows = [[r["question"], r["context"], r["answer"]] for r in QA]
    path = _csv(tmp_path / "qa.csv", ["question", "context", "answer"], rows)
    result = import_file(path, mapping=QA_MAPPING)
    assert (result.format, result.kind) == ("alpaca", "csv")
    assert _messages(result) == QA_MESSAGES
    assert result.records[1]["meta"]["location"] == "row 2"


def test_csv_with_a_messages_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "chat.csv", ["dialog"], [[json.dumps([_user("A?"), _bot("B.")])]])
    result = import_file(path, mapping={"messages": "dialog"})
    assert _messages(result) == [[_user("A?"), _bot("B.")]]


def test_parquet_with_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(QA), path)
    result = import_file(path, mapping=QA_MAPPING)
    assert (result.format, result.kind) == ("alpaca", "parquet")
    assert _messages(result) == QA_MESSAGES


def test_hf_directory_with_column_mapping(tmp_path: Path) -> None:
    Dataset.from_list(QA).save_to_disk(str(tmp_path / "qa"))
    result = import_file(tmp_path / "qa", mapping=QA_MAPPING)
    assert (result.format, result.kind) == ("alpaca", "hf")
    assert _messages(result) == QA_MESSAGES


def test_hf_dataset_dict_split(tmp_path: Path) -> None:
    dd = DatasetDict({"train": Dataset.from_list(QA), "test": Dataset.from_list(QA[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert (
        _messages(import_file(tmp_path / "dd", mapping=QA_MAPPING, split="test")) == QA_MESSAGES[:1]
    )
    with pytest.raises(SelfloopError, match=r"name one split .*train, test"):
        import_file(tmp_path / "dd", mapping=QA_MAPPING)


# --- auto-detection --------------------------------------------------------------------------


def test_auto_detection_from_suffix_and_keys(tmp_path: Path) -> None:
    chat = [{"messages": [_user("x"), _bot("y")]}]
    unknown_suffix = _jsonl(tmp_path / "data.txt", chat)
    assert import_file(unknown_suffix).format == "messages"
    # A named file kind forces the reader; a named record format forces the schema.
    odd = _csv(tmp_path / "qa.tsvish", ["instruction", "output"], [["Q", "A"]])
    assert import_file(odd, fmt="csv").format == "alpaca"
    with pytest.raises(SelfloopError, match=r"qa\.tsvish: cannot tell the file kind.*'\.tsvish'"):
        import_file(odd)
    forced = import_file(
        _jsonl(tmp_path / "f.jsonl", [{"instruction": "Q", "output": "A"}]), "alpaca"
    )
    assert forced.format == "alpaca"


def test_auto_detection_failure_says_what_was_found(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "odd.jsonl", [{"prompt": "Q", "completion": "A"}])
    with pytest.raises(SelfloopError) as err:
        import_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: cannot tell the record format")
    assert "prompt, completion" in msg and "mapping" in msg and "\n" not in msg
    result = import_file(path, mapping={"instruction": "prompt", "output": "completion"})
    assert _messages(result) == [[_user("Q"), _bot("A")]]


def test_mapping_errors(tmp_path: Path) -> None:
    path = _csv(tmp_path / "qa.csv", ["question", "answer"], [["Q", "A"]])
    with pytest.raises(
        SelfloopError, match=r"qa\.csv:row 1: mapped column\(s\) output=reply not found"
    ):
        import_file(path, mapping={"instruction": "question", "output": "reply"})
    with pytest.raises(SelfloopError, match=r"mapping key 'answer' is not one of"):
        import_file(path, mapping={"answer": "answer"})


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [{"instruction": "Q", "output": "A"}])
    with pytest.raises(
        SelfloopError, match=r"unknown import format 'yaml'; use one of auto, alpaca"
    ):
        import_file(path, fmt="yaml")
    with pytest.raises(SelfloopError, match=r"unknown export format 'csv'; use one of messages"):
        export_records([make_example([_user("Q"), _bot("A")])], tmp_path / "x.csv", "csv")
    with pytest.raises(SelfloopError, match=r"data file not found: .*nope\.json"):
        import_file(tmp_path / "nope.json")


# --- bad records, with their exact location ----------------------------------------------------

GOOD = {"instruction": "Q", "output": "A"}
BAD_JSONL = [
    ({"instruction": "Q"}, "'output' is missing"),
    ({"instruction": "Q", "output": None}, "'output' is null"),
    ({"instruction": 3, "output": "A"}, "'instruction' must be a string, got int"),
    ({"instruction": "  ", "output": "A"}, "'instruction' is empty"),
    ({"instruction": "Q", "output": ""}, "'output' is empty"),
    ({"instruction": "Q", "output": "A", "input": 5}, "'input' must be a string, got int"),
    ({"messages": [_user("Q"), _bot("")]}, r"messages\[1\] \(assistant\) has empty content"),
    ({"messages": [_user(""), _bot("A")]}, r"messages\[0\] \(user\) has empty content"),
    ({"messages": [{"role": "bot", "content": "A"}]}, r"messages\[0\] has role 'bot'"),
    ({"messages": [_user("Q")]}, "messages must end with an assistant message, ends with user"),
    ({"messages": [_user("Q"), _user("Q"), _bot("A")]}, r"messages\[1\] is user where assistant"),
    ({"messages": [_bot("A")]}, r"messages\[0\] is assistant where user was expected"),
    (
        {"messages": [_user("Q"), {"role": "system", "content": "S"}, _bot("A")]},
        r"messages\[1\] is a system message after the start",
    ),
    (
        {"messages": [_user("Q"), {"role": "assistant", "content": None}]},
        r"messages\[1\]\.content is null",
    ),
    ({"messages": [_user("Q"), {"role": "assistant"}]}, r"messages\[1\] has no 'content'"),
    ({"messages": []}, "'messages' is an empty list"),
    ({"messages": "hi"}, "'messages' is not valid JSON"),
    (
        {"conversations": [{"from": "alien", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        r"conversations\[0\]\.from is 'alien'",
    ),
    (
        {"instruction": "Q", "instances": [{"input": "x", "output": "y"}, {"input": "z"}]},
        r"instances\[1\]: 'output' is missing",
    ),
]


@pytest.mark.parametrize(("bad", "why"), BAD_JSONL)
def test_bad_jsonl_record_names_file_line_and_problem(tmp_path: Path, bad: dict, why: str) -> None:
    # Six good records of the same format, then the bad one on line 7, then one more good one.
    good = GOOD
    if "messages" in bad:
        good = {"messages": [_user("Q"), _bot("A")]}
    elif "conversations" in bad:
        good = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    elif "instances" in bad:
        good = {"instruction": "Q", "instances": [{"input": "", "output": "A"}]}
    records = [good] * 6 + [bad, good]
    path = _jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(SelfloopError, match=rf"^{path}:7: {why}.*\(1 of \d+ records invalid") as e:
        import_file(path)
    assert "\n" not in str(e.value)


def test_bad_json_syntax_on_line_7(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD)] * 6 + ['{"instruction": "Q", "output": }', json.dumps(GOOD)]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SelfloopError, match=rf"^{path}:7: not valid JSON \(Expecting value"):
        import_file(path)
    result = import_file(path, skip_invalid=True)
    assert [w for w, _ in result.skipped] == [f"{path}:7"]
    # In a JSON document a syntax error stops the whole file, at its line.
    doc = tmp_path / "b.json"
    doc.write_text("[\n" + ",\n".join(lines[:6]) + ",\n{oops}\n]", encoding="utf-8")
    with pytest.raises(SelfloopError, match=rf"^{doc}:8: not valid JSON"):
        import_file(doc, skip_invalid=True)
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(SelfloopError, match=rf"^{path}:1: expected a JSON object, got list"):
        import_file(path)


def test_bad_record_in_a_json_list_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([GOOD, GOOD, {"instruction": "Q", "output": 7}], indent=2))
    # indent=2 puts each record over 4 lines after the opening bracket: starts at 2, 6, 10.
    with pytest.raises(SelfloopError, match=rf"^{path}:10: 'output' must be a string, got int"):
        import_file(path)


def test_wrong_encoding_names_the_line(tmp_path: Path) -> None:
    good = json.dumps(GOOD).encode()
    path = tmp_path / "latin1.jsonl"
    bad = json.dumps({"instruction": "café", "output": "A"}, ensure_ascii=False).encode("latin-1")
    path.write_bytes(b"\n".join([good, good, bad, good]) + b"\n")
    with pytest.raises(SelfloopError, match=rf"^{path}:3: not UTF-8 text"):
        import_file(path)
    assert len(import_file(path, skip_invalid=True).records) == 1  # the three good are identical
    doc = tmp_path / "latin1.json"
    doc.write_bytes(b"[\n" + good + b",\n" + bad + b"\n]")
    with pytest.raises(SelfloopError, match=rf"^{doc}:3: not UTF-8 text"):
        import_file(doc)


def test_bad_rows_in_tables_name_the_row(tmp_path: Path) -> None:
    rows = [["Q1", "", "A1"], ["Q2", "ctx", ""], ["Q3", "", "A3"]]
    path = _csv(tmp_path / "qa.csv", ["question", "context", "answer"], rows)
    with pytest.raises(
        SelfloopError, match=rf"^{path}:row 2: 'answer' \(mapped to output\) is empty"
    ):
        import_file(path, mapping=QA_MAPPING)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("instruction,output\nQ,A\nQ2,A2,extra\nQ3\n", encoding="utf-8")
    result = import_file(ragged, skip_invalid=True)
    assert result.skipped == [
        (f"{ragged}:row 2", "has more fields than the header's 2"),
        (f"{ragged}:row 3", "has fewer fields than the header"),
    ]
    table = [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q2", "output": None}]
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "t.parquet")
    with pytest.raises(SelfloopError, match=r"t\.parquet:row 2: 'output' is null"):
        import_file(tmp_path / "t.parquet")
    Dataset.from_list(table).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(SelfloopError, match=r"hf:row 2: 'output' is null \(1 of 2 records"):
        import_file(tmp_path / "hf")


def test_not_a_parquet_file_or_dataset_dir(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(SelfloopError, match=r"x\.parquet: not a readable Parquet file"):
        import_file(tmp_path / "x.parquet")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SelfloopError, match=r"plain: not a Hugging Face datasets directory"):
        import_file(tmp_path / "plain")


# --- reject whole vs skip invalid; empty files -------------------------------------------------


def test_reject_whole_by_default_skip_invalid_keeps_the_good(tmp_path: Path) -> None:
    records = [GOOD, {"instruction": "Q"}, {"instruction": "Q2", "output": "A2"}, {"output": "A"}]
    path = _jsonl(tmp_path / "a.jsonl", records)
    with pytest.raises(SelfloopError) as err:
        import_file(path)
    assert str(err.value) == (
        f"{path}:2: 'output' is missing (2 of 4 records invalid, file rejected; "
        "skip-invalid would keep the 2 valid ones)"
    )
    result = import_file(path, skip_invalid=True)
    assert _messages(result) == [[_user("Q"), _bot("A")], [_user("Q2"), _bot("A2")]]
    assert result.skipped == [
        (f"{path}:2", "'output' is missing"),
        (f"{path}:4", "'instruction' is missing"),
    ]
    all_bad = _jsonl(tmp_path / "bad.jsonl", [{"instruction": "Q"}])
    with pytest.raises(SelfloopError, match=r"bad\.jsonl: no valid records \(1 skipped; first: "):
        import_file(all_bad, skip_invalid=True)


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("e.json", "  \n\n"), ("e.json", "[]"), ("e.csv", "instruction,output\n")],
)
def test_empty_file_is_rejected(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SelfloopError, match=rf"^{path}: no records to import"):
        import_file(path)


def test_empty_parquet_is_rejected(tmp_path: Path) -> None:
    schema = pa.schema([("instruction", pa.string()), ("output", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "e.parquet")
    with pytest.raises(SelfloopError, match=r"e\.parquet: no records to import"):
        import_file(tmp_path / "e.parquet")


# --- ids ---------------------------------------------------------------------------------------


def test_ids_are_stable_across_imports_and_formats(tmp_path: Path) -> None:
    alpaca = _jsonl(tmp_path / "a.jsonl", [GOOD, {"instruction": "Q2", "output": "A2"}])
    first = [r["id"] for r in import_file(alpaca).records]
    second = [r["id"] for r in import_file(alpaca).records]
    assert first == second and len(set(first)) == 2
    conv = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    sharegpt = _jsonl(tmp_path / "s.jsonl", [{"conversations": conv}])
    assert import_file(sharegpt).records[0]["id"] == first[0]


def test_exact_repeats_in_one_file_are_listed_not_kept(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [GOOD, {"instruction": "Q2", "output": "A2"}, GOOD])
    result = import_file(path)
    assert len(result.records) == 2
    assert result.duplicates == [(f"{path}:3", f"{path}:1")]


# --- export ------------------------------------------------------------------------------------

RECORDS = [
    make_example([_user("What is 2+2?"), _bot("4")], source="self", round=2, meta={"score": 4.5}),
    make_example(
        [{"role": "system", "content": "Be brief."}, _user("Hi"), _bot("Hello")],
        source="teacher",
        meta={"model": "big", "scores": [1, 2]},
    ),
    {**make_example([_user("A"), _bot("B"), _user("C"), _bot("D")]), "stage": "judged"},
]


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_round_trip(tmp_path: Path, fmt: str) -> None:
    suffix = {"messages": ".jsonl", "alpaca": ".json", "sharegpt": ".json", "hf": ""}
    out = tmp_path / f"out{suffix.get(fmt, '.' + fmt)}"
    result = export_records(RECORDS, out, fmt)
    expected = [r["messages"] for r in RECORDS]
    if fmt == "alpaca":  # the multi-turn record cannot be expressed there
        expected = expected[:2]
        assert result.skipped == [(RECORDS[2]["id"], "2 turns; Alpaca holds a single exchange")]
    assert result.written == len(expected)
    back = import_file(out)
    assert _messages(back) == expected
    assert [r["id"] for r in back.records] == [r["id"] for r in RECORDS[: len(expected)]]
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_messages_export_keeps_provenance(tmp_path: Path) -> None:
    out = tmp_path / "pool.jsonl"
    export_records(RECORDS, out, "messages")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == RECORDS


@pytest.mark.parametrize(
    ("fmt", "builder"),
    [("messages", "json"), ("alpaca", "json"), ("sharegpt", "json"), ("parquet", "parquet")],
)
def test_exports_load_with_datasets(tmp_path: Path, fmt: str, builder: str) -> None:
    out = tmp_path / f"out.{fmt}"
    export_records(RECORDS[:2], out, fmt)
    ds = load_dataset(builder, data_files=str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == 2
    assert ds[0]["id"] == RECORDS[0]["id"] and ds[0]["round"] == 2
    if fmt != "messages":
        assert json.loads(ds[1]["meta"]) == {"model": "big", "scores": [1, 2]}


def test_hf_export_is_a_saved_dataset_with_provenance_columns(tmp_path: Path) -> None:
    export_records(RECORDS, tmp_path / "hf", "hf")
    ds = load_from_disk(str(tmp_path / "hf"))
    assert ds.column_names == ["messages", "id", "source", "round", "meta", "stage"]
    assert ds["source"] == ["self", "teacher", "human"]
    assert ds["stage"] == [None, None, '"judged"']


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    for fmt, name in [("messages", "a.jsonl"), ("hf", "hf-dir")]:
        out = tmp_path / name
        export_records(RECORDS[:1], out, fmt)
        before = sorted(p.read_bytes() for p in ([out] if out.is_file() else out.rglob("*.arrow")))
        with pytest.raises(SelfloopError, match=rf"^{out} already exists; pass --overwrite"):
            export_records(RECORDS, out, fmt)
        after = sorted(p.read_bytes() for p in ([out] if out.is_file() else out.rglob("*.arrow")))
        assert before == after
        export_records(RECORDS, out, fmt, overwrite=True)
        assert len(import_file(out, fmt="jsonl" if fmt == "messages" else "hf").records) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "hf-dir"]


def test_export_rejects_bad_records_and_nothing_to_write(tmp_path: Path) -> None:
    bad = {"id": "x-1", "messages": [_user("Q")]}
    with pytest.raises(SelfloopError, match=r"cannot export record x-1: .*end with an assistant"):
        export_records([bad], tmp_path / "o.jsonl", "messages")
    with pytest.raises(SelfloopError, match=r"no records to export .*\(1 multi-turn records"):
        export_records(RECORDS[2:], tmp_path / "o.json", "alpaca")
    with pytest.raises(SelfloopError, match=r"no records to export"):
        export_records([], tmp_path / "o.parquet", "parquet")
    assert not list(tmp_path.iterdir())


def test_export_of_unwritable_column_types_is_a_clear_error(tmp_path: Path) -> None:
    mixed = [{**RECORDS[0], "round": 1}, {**RECORDS[1], "round": "first"}]
    with pytest.raises(SelfloopError, match=r"cannot write the records as parquet: "):
        export_records(mixed, tmp_path / "o.parquet", "parquet")
    assert not list(tmp_path.iterdir())


def test_self_instruct_bad_instance_is_skipped_alone(tmp_path: Path) -> None:
    task = {"instruction": "Negate.", "instances": [{"input": "yes", "output": "no"}, {"input": 1}]}
    path = _jsonl(tmp_path / "seed.jsonl", [task])
    with pytest.raises(SelfloopError, match=r"seed\.jsonl:1: instances\[1\]: 'input' must be"):
        import_file(path)
    result = import_file(path, skip_invalid=True)
    assert _messages(result) == [[_user("Negate.\n\nyes"), _bot("no")]]
    assert result.skipped == [(f"{path}:1", "instances[1]: 'input' must be a string, got int")]

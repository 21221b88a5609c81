"""Hub-ready dataset directories (card + data/train.*) and the upload's errors, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SelfloopError
from loop.hub import dataset_card, push_to_hub, write_dataset_dir

RECORDS = [
    {
        "id": f"aug-{i}",
        "messages": [
            {"role": "user", "content": f"Name {i + 2} prime numbers. Answer in lowercase."},
            {"role": "assistant", "content": "two, three" + (", five" if i else "")},
        ],
        "language": "en" if i < 2 else "es",
        "domain": "general",
        "origin": "augment",
        "constraints": [{"type": "lowercase"}],
        "round": 1,
    }
    for i in range(3)
]
PAIRS = [
    {
        "prompt": [{"role": "user", "content": "Say hi in lowercase."}],
        "chosen": [{"role": "assistant", "content": "hi"}],
        "rejected": [{"role": "assistant", "content": "HI"}],
        "source": "verifier",
    }
]


def _card(records, fmt="messages", model="smollm2-135m-instruct") -> str:
    return dataset_card(records, fmt=fmt, run="run-a", model=model, rounds=[1], reviewed=False)


@pytest.mark.parametrize("fmt", ["messages", "alpaca", "sharegpt", "parquet"])
def test_a_dataset_dir_loads_with_datasets_and_its_card_with_huggingface_hub(
    tmp_path: Path, fmt: str
) -> None:
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    out = write_dataset_dir(RECORDS, tmp_path / "ds", fmt, _card(RECORDS, fmt), overwrite=False)
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"  # the bundled model's
    assert meta["language"] == ["en", "es"] and meta["size_categories"] == ["n<1K"]
    assert "selfloop" in meta["tags"] and "sft" in meta["tags"]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card.text
    assert "lowercase 3" in card.text and "No person reviewed" in card.text
    (data,) = meta["configs"][0]["data_files"]
    assert (out / data["path"]).is_file()
    ds = load_dataset(str(out), split="train")
    assert ds.num_rows == 3


def test_preference_pairs_in_hub_layout(tmp_path: Path) -> None:
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    card = _card(PAIRS, "preference", model="me/my-model")
    out = write_dataset_dir(PAIRS, tmp_path / "pairs", "preference", card, overwrite=False)
    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert "dpo" in meta["tags"] and meta["license"] == "other"  # an unknown model's license
    row = load_dataset(str(out), split="train")[0]
    assert row["chosen"][0]["content"] == "hi" and row["rejected"][0]["content"] == "HI"


def test_a_dataset_dir_replaces_only_its_own_kind(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_dataset_dir(RECORDS, out, "messages", _card(RECORDS), overwrite=False)
    with pytest.raises(SelfloopError, match="already exists; pass --overwrite"):
        write_dataset_dir(RECORDS[:1], out, "messages", _card(RECORDS[:1]), overwrite=False)
    write_dataset_dir(RECORDS[:1], out, "parquet", _card(RECORDS[:1], "parquet"), overwrite=True)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SelfloopError, match="not a selfloop dataset; refusing"):
        write_dataset_dir(RECORDS, mine, "messages", _card(RECORDS), overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(SelfloopError, match="for the Hub use parquet"):
        write_dataset_dir(RECORDS, tmp_path / "hf", "hf", _card(RECORDS), overwrite=False)


def test_push_to_hub_offline_and_bad_repo_ids_are_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # read at import; the conftest sets it too
    out = write_dataset_dir(RECORDS, tmp_path / "ds", "messages", _card(RECORDS), overwrite=False)
    with pytest.raises(SelfloopError, match="HF_HUB_OFFLINE is set") as e:
        push_to_hub(out, "me/selfloop-data", "dataset")
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert (out / "README.md").is_file()  # nothing written is lost
    with pytest.raises(SelfloopError, match="expected a repo id like user/name"):
        push_to_hub(out, "not a repo", "dataset")

"""Cards name a public base model where there is one; the bundled one says it was a GGUF."""

from __future__ import annotations

import json
from types import SimpleNamespace

from huggingface_hub import ModelCard

from tuners.card import GGUF_NOTE, model_card, portable_adapter_config, public_base
from tuners.config import TuneConfig
from tuners.train import TrainResult

BUNDLED = SimpleNamespace(kind="bundled", display_name="smollm2-135m-instruct")


def test_public_ids_where_known() -> None:
    assert public_base(BUNDLED) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", GGUF_NOTE)
    hub = SimpleNamespace(kind="hub", display_name="org/model")
    assert public_base(hub)[0] == "org/model"
    local = SimpleNamespace(kind="dir", display_name="mine")
    assert public_base(local)[0] is None and "local dir `mine`" in public_base(local)[2]


def test_the_bundled_card_parses_with_hub_metadata(tmp_path) -> None:
    cfg = TuneConfig(objective="rpo")
    result = TrainResult(out_dir="x", method="lora", steps=3, final_loss=0.5, examples=7)
    (tmp_path / "README.md").write_text(model_card(cfg, result, BUNDLED, 2))
    card = ModelCard.load(tmp_path / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"selfloop", "lora", "rpo", "trl"} <= set(meta["tags"])
    assert "dequantized" in card.text and "7 pairs" in card.text and "round: 2" in card.text
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/root/.cache/selfloop/models/x", "r": 8})
    )
    portable_adapter_config(tmp_path, BUNDLED)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 8}

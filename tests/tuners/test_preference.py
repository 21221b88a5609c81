"""DPO / RPO through trl's DPOTrainer on the tiny model: the preference moves the right way
against the reference, the artifact is the trained adapter only, bad pairs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agent.errors import SelfloopError
from tuners import TuneConfig
from tuners.preference import check_pairs, train_preference

PAIRS = [
    {
        "prompt": [{"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": good}],
        "rejected": [{"role": "assistant", "content": bad}],
        "prompt_id": f"p{k}",
    }
    for k, (q, good, bad) in enumerate(
        [
            ("Capital of France? Answer in lowercase.", "paris.", "Paris is the capital."),
            ("Two plus two? Answer in lowercase.", "four.", "The answer is Four."),
            ("Colour of the sky? Answer in lowercase.", "blue.", "It is Blue."),
            ("Opposite of hot? Answer in lowercase.", "cold.", "Cold, of course."),
        ]
    )
]


def _cfg(objective: str, **kw) -> TuneConfig:
    base = dict(
        objective=objective, max_steps=12, batch_size=2, learning_rate=5e-3, lora_dropout=0.0,
        warmup_ratio=0.0, lr_scheduler="constant", max_seq_len=128, save_steps=100, bf16=False,
    )  # fmt: skip
    return TuneConfig(**{**base, **kw})


def _margin(model_dir: Path, adapter: Path | None) -> float:
    """Mean log p(chosen) - log p(rejected) under the model (+ adapter), summed over tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()

    def logp(prompt: list, answer: str) -> float:
        head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tok(head + answer, return_tensors="pt", add_special_tokens=False).input_ids
        n = len(tok(head, add_special_tokens=False).input_ids)
        with torch.no_grad():
            lp = model(ids).logits[0, :-1].log_softmax(-1)
        return float(lp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum())

    return sum(
        logp(p["prompt"], p["chosen"][0]["content"])
        - logp(p["prompt"], p["rejected"][0]["content"])
        for p in PAIRS
    ) / len(PAIRS)


@pytest.mark.parametrize("objective", ["dpo", "rpo"])
def test_preference_training_moves_the_margin_and_lowers_the_loss(
    tiny_model_dir: Path, tmp_path: Path, objective: str
) -> None:
    before = _margin(tiny_model_dir, None)
    out = tmp_path / "adapter"
    r = train_preference(str(tiny_model_dir), PAIRS, out, _cfg(objective))
    losses = [loss for _, loss in r.losses]
    assert r.steps == 12 and r.objective == objective and r.examples == len(PAIRS)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert _margin(tiny_model_dir, out) > before + 1.0  # chosen made likelier than rejected
    assert r.preference["rewards/margins"] > 0
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["objective"] == objective and saved["preference"] == r.preference
    margins = saved["curves"]["rewards/margins"]
    assert len(margins) == 12 and margins[-1][1] == r.preference["rewards/margins"]
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()


def test_rpo_on_a_bfloat16_cpu_adds_the_adapters_updates_in_float32(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """trl's trainer gets the float32 sums too (tuners/precision.py): the LoRA products run in
    bfloat16 under autocast, the sums they join come out float32."""
    from peft.tuners.lora import LoraLayer
    from transformers import TrainerCallback

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    seen: dict[str, set[torch.dtype]] = {"product": set(), "sum": set()}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
            layer.lora_A["default"].register_forward_hook(
                lambda mod, inp, out: seen["product"].add(out.dtype)
            )
            layer.register_forward_hook(lambda mod, inp, out: seen["sum"].add(out.dtype))

    cfg = _cfg("rpo", max_steps=3, bf16=True)
    r = train_preference(str(tiny_model_dir), PAIRS, tmp_path / "a", cfg, callbacks=[Probe()])
    assert r.steps == 3 and all(loss == loss for _, loss in r.losses)
    assert seen == {"product": {torch.bfloat16}, "sum": {torch.float32}}
    assert r.precision == "bfloat16 autocast, float32 sums"


def test_warm_started_dpo_uses_the_starting_adapter_as_reference(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    first = tmp_path / "champion"
    train_preference(str(tiny_model_dir), PAIRS, first, _cfg("dpo", max_steps=6))
    r = train_preference(str(tiny_model_dir), PAIRS, tmp_path / "next", _cfg("dpo", max_steps=6),
                         init_adapter=first)  # fmt: skip
    # Against the champion as reference the first step's rewards start at zero, so the
    # first logged loss is log 2 (with the base as reference it would already be lower).
    assert r.losses[0][1] == pytest.approx(0.6931, abs=0.02)
    assert _margin(tiny_model_dir, tmp_path / "next") > _margin(tiny_model_dir, first)
    assert not (tmp_path / "next" / "ref").exists()


def test_bad_pairs_and_settings_are_refused_before_anything_is_written(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    same = [{**PAIRS[0], "rejected": PAIRS[0]["chosen"]}]
    with pytest.raises(SelfloopError, match=r"pair 1 \(p0\): chosen and rejected are the same"):
        check_pairs(same)
    no_user = [{**PAIRS[0], "prompt": [{"role": "assistant", "content": "hi"}]}]
    with pytest.raises(SelfloopError, match="pair 1 .*ending with the user's"):
        check_pairs(no_user)
    with pytest.raises(SelfloopError, match="no preference pairs"):
        train_preference(str(tiny_model_dir), [], tmp_path / "x", _cfg("dpo"))
    with pytest.raises(Exception, match="tune.objective=dpo trains a LoRA adapter"):
        _cfg("dpo", method="prefix")
    assert not list(tmp_path.iterdir())


def test_a_killed_dpo_run_resumes_to_the_uninterrupted_result(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from agent.data import write_jsonl
    from tests.helpers import kill_after_checkpoint

    settings = dict(objective="dpo", max_steps=24, save_steps=4, batch_size=2,
                    learning_rate=5e-3, lora_dropout=0.0, max_seq_len=128)  # fmt: skip
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out, ckpts = tmp_path / "adapter", tmp_path / "adapter.checkpoints"
    cmd = [sys.executable, "-m", "loop.cli", "tune", "--model", str(tiny_model_dir), "--data",
           str(data), "--out", str(out)]  # fmt: skip
    cmd += [x for k, v in settings.items() for x in ("--set", f"tune.{k}={v}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed_after = kill_after_checkpoint(cmd, ckpts, 8)
    assert not out.exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["resumed_from_step"] >= killed_after and result["steps"] == 24

    ref = train_preference(str(tiny_model_dir), PAIRS, tmp_path / "ref", TuneConfig(**settings))
    assert result["final_loss"] == pytest.approx(ref.final_loss, abs=1e-4)
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-4, k

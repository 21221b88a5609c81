"""bfloat16 training with float32 sums (tuners/precision.py): what autocast rounds away, kept."""

from __future__ import annotations

import pytest
import torch

from agent.errors import SelfloopError
from tuners import TuneConfig, precision


def _lora_layer_model() -> tuple[torch.nn.Module, torch.nn.Module]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 64))
    with torch.no_grad():
        base[0].weight.mul_(100)  # outputs of ~50: bfloat16's step there is 0.25
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["0"])
    )
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(1e-3)  # a young adapter: an update of ~1e-3
    return model, layer


def _with_and_without(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with model.disable_adapter():
            off = model(x)
        on = model(x)
    return off, on


def test_float32_sums_keep_the_update_plain_autocast_rounds_away() -> None:
    model, layer = _lora_layer_model()
    x = torch.randn(16, 64)
    with torch.no_grad():
        update = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    assert 1e-4 < update.abs().mean() < 0.05

    off, on = _with_and_without(model, x)
    assert on.dtype == torch.bfloat16
    # Plain autocast: the update is smaller than half a step of the output, so the sum rounds
    # back to the frozen layer's output nearly everywhere.
    assert (on == off).float().mean() > 0.9

    assert precision.float32_sums(model) == 1
    assert precision.float32_sums(model) == 0  # hooked once, however often it is called
    off, on = _with_and_without(model, x)
    assert on.dtype == torch.float32 and off.dtype == torch.float32
    # The frozen product is still computed in bfloat16 (its output is only widened), and the
    # update now survives whole, to bfloat16's own precision of the update.
    assert torch.equal(off, off.bfloat16().float())
    torch.testing.assert_close(on - off, update, rtol=2e-2, atol=1e-4)


def test_float32_sums_are_the_cpu_bfloat16_setting(monkeypatch) -> None:
    from tuners.guards import check_settings

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    assert check_settings(TuneConfig(bf16=True), "cpu", None).float32_sums is True
    assert check_settings(TuneConfig(bf16=False), "cpu", None).float32_sums is False
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "0")
    with pytest.raises(SelfloopError, match="tune.bf16=true needs"):
        check_settings(TuneConfig(bf16=True), "cpu", None)


def test_float32_sums_on_some_projections_only(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """LoRA on q and v only: their sums come out float32 beside k's bfloat16, and attention
    still runs (autocast casts its inputs alike) to finite losses."""
    from tests.helpers import TOY, cfg
    from tuners import train

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    r = train(
        str(tiny_model_dir),
        TOY,
        tmp_path / "qv",
        cfg("lora", bf16=True, max_steps=4, target_modules=["q_proj", "v_proj"]),
    )
    assert r.steps == 4 and all(loss == loss for _, loss in r.losses)


def test_auto_trains_lora_in_bfloat16_where_the_cpu_has_it(monkeypatch) -> None:
    from tuners.guards import check_settings

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    lora = check_settings(TuneConfig(), "cpu", None)
    assert (lora.bf16, lora.float32_sums, lora.precision) == (
        True, True, "bfloat16 autocast, float32 sums",
    )  # fmt: skip
    # not measured in bfloat16: float32
    for method in ("prefix", "full"):
        assert check_settings(TuneConfig(method=method), "cpu", None).bf16 is False
    grpo = TuneConfig(objective="grpo", batch_size=4, grpo_generations=4)
    assert check_settings(grpo, "cpu", None).bf16 is False
    assert check_settings(TuneConfig(objective="rpo"), "cpu", None).bf16 is True
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "0")
    assert check_settings(TuneConfig(), "cpu", None).precision == "float32"


def test_auto_resumes_in_the_precision_its_checkpoints_recorded(tmp_path, monkeypatch) -> None:
    import json

    from tuners.guards import check_settings

    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")
    ckpt = tmp_path / "adapter.checkpoints"
    ckpt.mkdir()
    fp = ckpt / "selfloop-train-args.json"
    fp.write_text(json.dumps({"precision": "float32"}))
    # killed before its first checkpoint: the fingerprint is compared all the same
    assert check_settings(TuneConfig(), "cpu", None, ckpt).precision == "float32"
    (ckpt / "checkpoint-4").mkdir()
    assert check_settings(TuneConfig(), "cpu", None, ckpt).precision == "float32"
    assert check_settings(TuneConfig(bf16=True), "cpu", None, ckpt).bf16 is True  # as asked
    fp.write_text(json.dumps({"precision": "bfloat16 autocast, float32 sums"}))
    assert check_settings(TuneConfig(method="full"), "cpu", None, ckpt).bf16 is True
    fp.write_text(json.dumps({"config": {}}))  # written before the precision was recorded,
    assert check_settings(TuneConfig(), "cpu", None, ckpt).bf16 is False  # when auto was float32


def test_a_float32_run_killed_before_its_first_checkpoint_resumes_in_float32(
    tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """A run whose `auto` trained in float32 (as it did on every CPU before), killed before its
    first checkpoint, goes on in float32 where `auto` now means bfloat16: not refused."""
    from transformers import TrainerCallback

    from tests.helpers import TOY
    from tests.helpers import cfg as tune_cfg
    from tuners.train import train

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise KeyboardInterrupt  # after the fingerprint is written, before a checkpoint

    out, ckpt = tmp_path / "adapter", tmp_path / "adapter.checkpoints"
    config = tune_cfg("lora", max_steps=2, bf16="auto")
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "0")  # auto resolves to float32
    with pytest.raises(KeyboardInterrupt):
        train(str(tiny_model_dir), TOY, out, config, callbacks=[Kill()])
    assert (ckpt / "selfloop-train-args.json").is_file() and not list(ckpt.glob("checkpoint-*"))
    monkeypatch.setenv("SELFLOOP_CPU_BF16", "1")  # ... and now to bfloat16
    result = train(str(tiny_model_dir), TOY, out, config)
    assert result.precision == "float32" and result.steps == 2


def test_an_unreadable_fingerprint_is_refused_by_name(tiny_model_dir, tmp_path) -> None:
    from tests.helpers import TOY
    from tests.helpers import cfg as tune_cfg
    from tuners.train import train

    ckpt = tmp_path / "adapter.checkpoints"
    ckpt.mkdir()
    (ckpt / "selfloop-train-args.json").write_text('{"config": ')
    with pytest.raises(SelfloopError, match="not a readable fingerprint"):
        train(str(tiny_model_dir), TOY, tmp_path / "adapter", tune_cfg("lora", max_steps=1))

"""Kill a real training subprocess mid-run, start it again, and get the uninterrupted result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from agent.data import write_jsonl
from tests.helpers import TOY, kill_after_checkpoint
from tuners import TuneConfig, train

SETTINGS = dict(
    max_steps=40, save_steps=4, batch_size=2, learning_rate=5e-3, lora_dropout=0.1,
    max_seq_len=128, bf16=False,
)  # fmt: skip


def _cmd(model: Path, data: Path, out: Path) -> list[str]:
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"tune.{k}={v}")]
    return [
        sys.executable,
        "-m",
        "loop.cli",
        "tune",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        *sets,
    ]


def test_kill_and_resume_matches_uninterrupted(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", TOY)
    out = tmp_path / "adapter"
    ckpts = tmp_path / "adapter.checkpoints"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed_after = kill_after_checkpoint(_cmd(tiny_model_dir, data, out), ckpts, 8)
    assert not out.exists()  # a killed run leaves no artifact

    resumed = subprocess.run(
        _cmd(tiny_model_dir, data, out), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["resumed_from_step"] is not None and result["resumed_from_step"] >= killed_after
    assert result["steps"] == 40

    ref = train(str(tiny_model_dir), TOY, tmp_path / "ref", TuneConfig(**SETTINGS))
    assert result["final_loss"] == pytest.approx(ref.final_loss, abs=1e-5)
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k


def test_resume_refuses_changed_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    from agent.errors import SelfloopError

    out = tmp_path / "a"
    ckpts = tmp_path / "a.checkpoints"
    ckpts.mkdir()
    (ckpts / "selfloop-train-args.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(SelfloopError, match="made with other settings"):
        train(str(tiny_model_dir), TOY, out, TuneConfig(**SETTINGS))


def _old_format(cfg: TuneConfig, digest: str = "d1") -> dict:
    """A fingerprint as written before loop-only settings were left out of it: every field but
    the logging/saving ones, and (as before `greedy_batch_size` existed) without that one."""
    dump = cfg.model_dump(exclude={"save_steps", "save_total_limit", "logging_steps"})
    dump.pop("greedy_batch_size")
    return {"base": "/m", "config": dump, "data": digest, "init_adapter": None}


def test_checkpoints_from_before_an_upgrade_still_resume(tmp_path: Path) -> None:
    from tuners.train import _fingerprint, changed_settings, resume_point

    cfg = TuneConfig(**SETTINGS)
    new = _fingerprint("/m", cfg, "d1", None, "float32")
    assert changed_settings(new, new) == []
    # loop-only (warm_start, greedy_batch_size: absent) and guard settings changed: resumable
    old = _old_format(cfg.model_copy(update={"warm_start": False, "abort_grad_norm": 5.0}))
    assert changed_settings(old, new) == []
    ckpts = tmp_path / "a.checkpoints"
    ckpts.mkdir()
    (ckpts / "selfloop-train-args.json").write_text(json.dumps(old))
    assert resume_point(ckpts, new) is None  # no checkpoint yet, and no refusal
    assert json.loads((ckpts / "selfloop-train-args.json").read_text()) == new


def test_a_changed_setting_is_named_in_the_refusal(tmp_path: Path) -> None:
    from agent.errors import SelfloopError
    from tuners.train import _fingerprint, changed_settings, resume_point

    cfg = TuneConfig(**SETTINGS)
    new = _fingerprint("/m", cfg, "d1", None, "float32")
    old = _old_format(cfg.model_copy(update={"batch_size": 8, "grad_accum": 2}), digest="d0")
    assert changed_settings(old, new) == [
        "the training data differ",
        "tune.batch_size 8 -> 2",
        "tune.grad_accum 2 -> 1",
    ]
    # a field the new side lacks, whose old value is not the default, is a change too
    added = {**new, "config": {**new["config"], "lora_r": 16}}
    trimmed = {**new, "config": {k: v for k, v in new["config"].items() if k != "lora_r"}}
    assert changed_settings(trimmed, added) == []
    assert changed_settings(trimmed, {**added, "config": {**added["config"], "lora_r": 4}}) == [
        "tune.lora_r 16 -> 4"
    ]
    # The precision tune.bf16 resolved to: `auto` on another machine is a change too.
    other = _fingerprint("/m", cfg, "d1", None, "bfloat16 autocast, float32 sums")
    assert changed_settings(new, other) == [
        "precision 'float32' -> 'bfloat16 autocast, float32 sums'"
    ]
    ckpts = tmp_path / "a.checkpoints"
    ckpts.mkdir()
    (ckpts / "selfloop-train-args.json").write_text(json.dumps(old))
    with pytest.raises(SelfloopError, match=r"tune\.batch_size 8 -> 2"):
        resume_point(ckpts, new)
    assert json.loads((ckpts / "selfloop-train-args.json").read_text()) == old  # left as it was


def test_checkpoints_from_before_the_bits_masks_resume_with_bernoulli() -> None:
    """A fingerprint written before `dropout_masks` existed trained with nn.Dropout's masks: it
    resumes under `bernoulli` (what a loop run saved then loads as, test below) and names the
    setting when asked to go on with `bits` (same distribution, another random stream)."""
    from tuners.train import _fingerprint, changed_settings

    cfg = TuneConfig(**SETTINGS)
    old = _fingerprint("/m", cfg, "d1", None, "float32")
    del old["config"]["dropout_masks"]
    bits = _fingerprint("/m", cfg, "d1", None, "float32")
    bernoulli = _fingerprint(
        "/m", cfg.model_copy(update={"dropout_masks": "bernoulli"}), "d1", None, "float32"
    )
    assert changed_settings(old, bernoulli) == []
    assert changed_settings(old, bits) == ["tune.dropout_masks 'bernoulli' -> 'bits'"]


def test_a_run_saved_before_the_bits_masks_loads_with_bernoulli(tmp_path: Path) -> None:
    import yaml

    from loop.config import dump_config, load_config

    saved = yaml.safe_load(dump_config(load_config(None)))
    assert saved["tune"]["dropout_masks"] == "bits"  # what a run saves now
    del saved["tune"]["dropout_masks"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
    assert load_config(tmp_path / "old.yaml").tune.dropout_masks == "bernoulli"
    # a config a person writes gets the default
    (tmp_path / "mine.yaml").write_text("tune:\n  lora_dropout: 0.1\n")
    assert load_config(tmp_path / "mine.yaml").tune.dropout_masks == "bits"

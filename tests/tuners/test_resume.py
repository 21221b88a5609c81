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
    max_steps=40, save_steps=4, batch_size=2, learning_rate=5e-3, lora_dropout=0.1, max_seq_len=128
)


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

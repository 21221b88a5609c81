"""CUDA-only paths of the trainer: bf16 + checkpointing, prefix tuning, qlora, FSDP over 2 GPUs.

Skipped without CUDA (bitsandbytes for qlora, two GPUs for FSDP).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TOY, cfg
from tuners import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, cuda]


def test_lora_on_cuda_reports_this_runs_gpu_peak(tiny_model_dir: Path, tmp_path: Path) -> None:
    hog = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB before the run
    del hog
    r = train(str(tiny_model_dir), TOY, tmp_path / "a", cfg("lora", max_steps=4))
    assert r.peak_memory_kind == "cuda_max_allocated"
    assert 0 < r.peak_memory_mb < 1024  # the tiny model's run, not the earlier 1 GiB
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_prefix_tuning_on_cuda_leaves_checkpointing_off(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # gradient_checkpointing auto is on for CUDA, but peft refuses it with prefix tuning.
    r = train(str(tiny_model_dir), TOY, tmp_path / "p", cfg("prefix", max_steps=4))
    assert r.steps == 4 and (tmp_path / "p" / "adapter_config.json").is_file()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_trains_on_cuda(tiny_model_dir: Path, tmp_path: Path) -> None:
    c = cfg("lora", max_steps=6).model_copy(update={"method": "qlora"})
    r = train(str(tiny_model_dir), TOY, tmp_path / "q", c)
    assert r.steps == 6 and (tmp_path / "q" / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fsdp_on_two_gpus_saves_the_whole_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from agent.data import write_jsonl
    from tuners import TuneConfig

    data = write_jsonl(tmp_path / "toy.jsonl", TOY * 2)
    common = dict(max_steps=8, learning_rate=5e-3, lora_dropout=0.0, max_seq_len=128, bf16=False)
    sets = [f"tune.{k}={v}" for k, v in {**common, "batch_size": 2, "fsdp": True}.items()]
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "loop.cli", "tune", "--model", str(tiny_model_dir), "--data", str(data)),
        *("--out", str(tmp_path / "fsdp"), *[x for s in sets for x in ("--set", s)]),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    sharded = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")][0]

    single = train(
        str(tiny_model_dir), TOY * 2, tmp_path / "one", TuneConfig(**common, batch_size=4)
    )
    a = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)  # gathered, not one rank's shard
    assert sharded["final_loss"] == pytest.approx(single.final_loss, rel=1e-2)

"""Two CPU processes (torchrun, gloo) train to the same adapter as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from agent.data import write_jsonl
from tests.helpers import TOY
from tuners import TuneConfig, train

# Global batch 4 either way: 1 process x 4, or 2 processes x 2. No dropout, so no RNG differences.
COMMON = dict(
    max_steps=12, learning_rate=5e-3, lora_dropout=0.0, max_seq_len=128, save_steps=100, bf16=False
)


def test_two_processes_match_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 12 distinct examples: the CLI reads --data like `data import`, which drops exact repeats
    toy = TOY + [
        {"id": f"{r['id']}b", "messages": [r["messages"][0], {"role": "assistant",
         "content": r["messages"][1]["content"] + " Indeed."}]} for r in TOY
    ]  # fmt: skip
    data = write_jsonl(tmp_path / "toy.jsonl", toy)
    sets = [x for k, v in {**COMMON, "batch_size": 2}.items() for x in ("--set", f"tune.{k}={v}")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "loop.cli",
        "tune",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "ddp"),
        *sets,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 2  # both ranks ran train() and returned
    ddp = lines[0]

    single = train(
        str(tiny_model_dir),
        toy,
        tmp_path / "one",
        TuneConfig(**COMMON, batch_size=4),
    )
    assert ddp["steps"] == single.steps == 12
    assert ddp["final_loss"] == pytest.approx(single.final_loss, rel=1e-3)
    a = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "adapter_model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst

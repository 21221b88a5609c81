"""Test helpers that build small real artifacts (models, adapters, servers) instead of mocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agent.data import write_jsonl
from agent.models import bundled_gguf_path


def bundled_tokenizer_dir(out: Path) -> Path:
    from transformers import AutoTokenizer

    gguf = bundled_gguf_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(out)
    return out


def tiny_config_kwargs(tok: Any) -> dict[str, Any]:
    """The tiny models' shape (2 layers, grouped-query attention) for any llama-like config."""
    return dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        initializer_range=0.2,
    )


def build_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random llama with the real tokenizer. Large init std keeps its logits peaked, so
    greedy decoding has clear winners and padding-equivalence tests are not decided by ties."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**tiny_config_kwargs(tok))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_lora_adapter(model_dir: Path, out: Path, seed: int = 0, scale: float = 0.5) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    peft_model.save_pretrained(out)
    return out


def mount_tmpfs(path: Path, options: str, why: str) -> Callable[[], None]:
    """Mount a tmpfs with `options` on the existing directory `path` and return its unmount.
    Root only: skips the test (saying `why` it needed the mount) where mounting is not allowed."""
    import shutil

    import pytest

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip(f"{why} needs a tmpfs mount (root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def unmount() -> None:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)

    return unmount


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    """Start `selfloop serve ARGS --port PORT` (output to `log`) and wait until /health answers."""
    import urllib.request

    with log.open("w") as out:  # a file, not a pipe: a pipe nobody reads would block the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "loop.cli", "serve", *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"selfloop serve exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"selfloop serve did not come up in {timeout}s:\n{log.read_text()}")


def selfloop(
    *args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`selfloop ARGS...` in a real subprocess (offline, in `cwd`), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "loop.cli", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def kill_after_checkpoint(cmd: list[str], ckpts: Path, step: int, timeout: float = 300) -> int:
    """Run a training command and SIGKILL it once a complete checkpoint at `step` or later is
    in `ckpts`; the step it was killed after. Fails if training ended first."""
    import signal

    from tuners.common import MARKER

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed_after = time.monotonic() + timeout, None
    while time.monotonic() < deadline and proc.poll() is None:
        done = sorted(int(p.parent.name.split("-")[1]) for p in ckpts.glob(f"*/{MARKER}"))
        if done and done[-1] >= step:
            proc.send_signal(signal.SIGKILL)
            killed_after = done[-1]
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_after is not None, (
        f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    )
    return killed_after


# ---------------------------------------------------------------- loop runs on the tiny model
EXPERT = [
    {
        "instruction": "Name the largest planet in the solar system.",
        "output": "Jupiter is the largest planet.",
    },
    {"instruction": "Give a synonym for the word quick.", "output": "Fast."},
    {
        "instruction": "What is the boiling point of water at sea level?",
        "output": "100 degrees Celsius.",
    },
    {"instruction": "Translate the word cat into Spanish.", "output": "Gato."},
    {
        "instruction": "How many days are there in a leap year?",
        "output": "A leap year has 366 days.",
    },
    {"instruction": "What colour do you get by mixing blue and yellow?", "output": "Green."},
]


# A paraphrase of the held-out helpfulness prompt help-005: must never be trained on.
PLANTED = {
    "instruction": "A train covers 180 km in 2.5 hours. What is its average speed?",
    "output": "72 km/h.",
}


def seed_copy() -> dict:
    """A bundled seed task as an expert example (one the heuristic filters let through)."""
    from agent.seeds import load_seed_tasks
    from judges.filters import FilterChain

    chain = FilterChain()
    for t in load_seed_tasks():
        rec = {"id": t.id, "instruction": t.instruction, "response": t.output, "language": "en"}
        short = len(t.output.split()) < 30  # the judge prompt must fit the tiny model's 512 tokens
        if (
            t.language == "en"
            and not t.input
            and not t.constraints
            and short
            and chain.check(rec) is None
        ):
            return {"instruction": t.instruction, "output": t.output}
    raise AssertionError("no seed passes the filters")


def write_config(tmp: Path, model_dir: Path, **run_extra) -> Path:
    data = tmp / "expert.jsonl"
    write_jsonl(data, [*EXPERT, seed_copy(), PLANTED])
    cfg = {
        "model": {"name": str(model_dir)},
        "run": {
            "max_rounds": 2,
            "patience": 2,
            "sources": ["import"],
            "import_files": [str(data)],
            "min_new_examples": 1,
            **run_extra,
        },
        "respond": {"n": 1, "sampling": {"max_tokens": 8}},
        "judge": {"min_score": 1.0, "keep_top": 1.0, "per_instruction": 1},
        "tune": {"max_steps": 3, "batch_size": 2, "max_seq_len": 256, "save_steps": 1},
        "eval": {"limit_per_suite": 2, "suite_limits": {}, "sampling": {"max_tokens": 8}},
        # The loop's mechanics, not dedup's quality (tests/judges): the small embedder, which
        # every run process of these tests loads and embeds the eval prompts with, in a fifth
        # of all-mpnet-base-v2's time. The default embedder runs end to end in
        # tests/test_bundled_model.py.
        "dedup": {"model": "all-minilm-l6-v2"},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def crash_config(tmp: Path, model_dir: Path) -> Path:
    """Two rounds; round 1 is promoted (reference NLL, which a few steps on English data lower)
    so the points after promotion are reached; round 2 has nothing new and is rejected."""
    path = write_config(tmp, model_dir, max_rounds=2)
    cfg = yaml.safe_load(path.read_text())
    cfg["tune"]["learning_rate"] = 5e-3  # a clear step down in NLL, not a coin toss on noise
    cfg["gate"] = {
        "primary": "helpfulness.reference_nll",
        "margin": 0.0,
        "require_ci": False,
        "guards": [],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------- crash and resume
# Figures that depend on the machine or on how much a process did itself (a resumed training
# process sees only the steps after its checkpoint): left out of the comparison.
VOLATILE = {"seconds", "tokens_per_second", "peak_memory_mb", "tokens"}


def _strip(x):  # noqa: ANN001, ANN202
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def run_outcome(run_dir: Path) -> dict:
    """Everything that must not differ between a killed-and-resumed run and a clean one."""
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    champion = run_dir / "champion"
    rounds = sorted((run_dir / "rounds").glob("[0-9][0-9][0-9]"))
    return {
        "metrics": _strip(metrics),
        "pool": (run_dir / "pool.jsonl").read_text() if (run_dir / "pool.jsonl").exists() else "",
        "champion": os.readlink(champion) if champion.is_symlink() else None,
        "decisions": [json.loads((r / "decision.json").read_text())["reasons"] for r in rounds],
        "kept": [(r / "dedup" / "kept.jsonl").read_text() for r in rounds],
        "leftovers": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*tmp-*")),
    }


# ---------------------------------------------------------------- tuning
TOY = [
    {
        "id": f"t{i}",
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
    }
    for i, (q, a) in enumerate(
        [
            ("Capital of France?", "Paris."),
            ("Two plus two?", "Four."),
            ("Colour of the sky?", "Blue."),
            ("Opposite of hot?", "Cold."),
            ("First letter of the alphabet?", "A."),
            ("Largest planet?", "Jupiter."),
        ]
    )
]


def cfg(method: str, **kw: Any) -> Any:
    """A TuneConfig that makes the toy set learnable by `method` in a few steps."""
    from tuners import TuneConfig

    lr = {"lora": 5e-3, "prefix": 1e-1, "full": 2e-3}[method]
    base = dict(
        method=method,
        max_steps=16,
        batch_size=3,
        learning_rate=lr,
        save_steps=100,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        lora_dropout=0.0,
        max_seq_len=128,
        # float32 on every CPU: the tests compare code paths at tight tolerances, and auto
        # would train in bfloat16 on one with AVX512-BF16 (the bf16 tests ask for it).
        bf16=False,
    )
    return TuneConfig(**{**base, **kw})

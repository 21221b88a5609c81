"""Test helpers that build small real artifacts (models, adapters, servers) instead of mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    *args: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`selfloop ARGS...` in a real subprocess (offline), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "loop.cli", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )

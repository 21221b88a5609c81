"""Shared fixtures: offline mode, a tiny random llama model with SmolLM2's real tokenizer."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import build_tiny_model, bundled_tokenizer_dir  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Model conversion caches go to a per-session dir unless the runner shares one on purpose
    # (CI sets SELFLOOP_CACHE_DIR so the real model is converted once per machine).
    if "SELFLOOP_CACHE_DIR" not in os.environ:
        os.environ["SELFLOOP_CACHE_DIR"] = str(tmp_path_factory.mktemp("selfloop-cache"))
    # The test runs register as model processes (agent.procs) in a registry of their own: the
    # runs the crash tests kill leave entries, and none must make a real run on this machine warn.
    os.environ["SELFLOOP_PROCS_DIR"] = str(tmp_path_factory.mktemp("selfloop-procs"))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer (with its chat template), read from the bundled GGUF once."""
    return bundled_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A 2-layer random llama model (a few MB) saved as a Hugging Face model directory."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir)

"""Generation backends behind one `Generator` protocol, and the config that selects one.

transformers  local model, batched, CPU or CUDA, PEFT adapters (default)
vllm          in-process vLLM on a GPU, LoRA adapters per request
openai        any OpenAI-compatible endpoint (vLLM serve, llama.cpp, selfloop serve, hosted APIs)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.backends.base import (
    Completion,
    GenerationResult,
    Generator,
    Message,
    Messages,
    SamplingParams,
    user,
)
from agent.models import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "BackendConfig",
    "Completion",
    "GenerationResult",
    "Generator",
    "Message",
    "Messages",
    "SamplingParams",
    "make_generator",
    "user",
]


class BackendConfig(BaseModel):
    """How a model is run. Fields for other kinds are ignored."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["transformers", "vllm", "openai", "auto"] = Field(
        "transformers",
        description="transformers (local, CPU/CUDA) | vllm (local GPU) | openai (HTTP) | auto "
        "(vllm where it is installed and a CUDA GPU is present, else transformers).",
    )
    batch_size: int = Field(64, ge=1, description="transformers: sequences decoded together.")
    max_batch_tokens: int | None = Field(
        None, ge=1, description="transformers: cap on rows x (prompt + new tokens) per batch."
    )
    batching: Literal["ragged", "static", "continuous"] = Field(
        "ragged",
        description="transformers: how rows share a batch. ragged (default): selfloop's decode "
        "loop over the KV cache (`agent/backends/refill.py`): an answer that ends leaves the "
        "batch and a queued prompt takes its place, and sampling skips the vocabulary-wide sort. "
        "static: `generate` on batches of similar prompt length, each decoded until its longest "
        "row stops. continuous: transformers' continuous batching (a paged KV cache; 0.65x "
        "static on 2 CPU cores, meant for CUDA). Calls with stop strings (the server's) always "
        "use static batches. Measured in bench/batching.py (bench/README.md).",
    )
    merge_adapters: bool | None = Field(
        None,
        description="transformers: decode under a LoRA adapter with a copy of the model that has "
        "it merged into its weights (one copy kept, for the adapter decoded last; scoring stays "
        "unmerged): 1.39x on 2 CPU cores (bench/adapters.py), for one more copy of the weights "
        "in memory. None (default): on CPU only.",
    )
    share_prefix: bool = Field(
        True,
        description="transformers: where prompts run together open with the same tokens (the "
        "judge's rubric; at least 64), run that prefix once and share its KV cache (scoring, "
        "and ragged decoding's prefill). Measured in bench/prefix.py (bench/README.md).",
    )
    lookahead: bool = Field(
        True,
        description="transformers, ragged batching, greedy decoding, full-attention models: an "
        "answer caught repeating a cycle (its last 32 tokens, or two whole cycles, periodic) has "
        "the cycle's continuation checked 64 tokens per forward pass, several answers together, "
        "keeping the tokens the model agrees with: the same answers, with fewer forward passes. "
        "Measured in bench/lookahead.py (bench/README.md).",
    )
    onednn_head: bool = Field(
        True,
        description="transformers, x86-64 CPU, float32: when decoding (ragged, static and "
        "streamed; not scoring), the output projection to the vocabulary runs through oneDNN, "
        "whose kernel was faster than MKL's for a few dozen rows on AMD EPYC "
        "(`agent/backends/head.py`). Measured in bench/head.py (bench/README.md).",
    )
    base_url: str | None = Field(
        None,
        description="openai: endpoint, e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL).",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: env var holding the API key.")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request.")
    max_retries: int = Field(3, ge=0, description="openai: retries with exponential backoff.")
    concurrency: int = Field(4, ge=1, description="openai: requests in flight.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vllm: share of GPU memory."
    )
    max_model_len: int | None = Field(None, ge=1, description="vllm: context length cap.")
    max_lora_rank: int = Field(64, ge=1, description="vllm: largest adapter rank it can serve.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs to shard the model over.")


def auto_kind() -> Literal["transformers", "vllm"]:
    """What `backend.kind: auto` runs here: vllm on a CUDA machine that has it installed."""
    from agent.backends.vllm_backend import vllm_available

    problem = vllm_available()
    if problem is None:
        return "vllm"
    log.info("backend auto: transformers (%s)", problem)
    return "transformers"


def make_generator(
    model: ModelSpec | str,
    backend: BackendConfig | None = None,
    adapters: dict[str, str | Path] | None = None,
) -> Generator:
    """The generator `backend.kind` names for `model` (for openai: the endpoint's model id)."""
    backend = backend or BackendConfig()
    spec = model if isinstance(model, ModelSpec) else ModelSpec(name=model)
    if backend.kind == "auto":
        backend = backend.model_copy(update={"kind": auto_kind()})
    if backend.kind == "transformers":
        from agent.backends.hf import TransformersGenerator

        return TransformersGenerator(
            spec,
            batch_size=backend.batch_size,
            max_batch_tokens=backend.max_batch_tokens,
            adapters=adapters,
            batching=backend.batching,
            merge_adapters=backend.merge_adapters,
            share_prefix=backend.share_prefix,
            lookahead=backend.lookahead,
            onednn_head=backend.onednn_head,
        )
    if backend.kind == "vllm":
        from agent.backends.vllm_backend import VLLMGenerator

        return VLLMGenerator(
            spec,
            adapters=adapters,
            gpu_memory_utilization=backend.gpu_memory_utilization,
            max_model_len=backend.max_model_len,
            max_lora_rank=backend.max_lora_rank,
            tensor_parallel_size=backend.tensor_parallel_size,
        )
    from agent.backends.openai_backend import OpenAIGenerator

    if adapters:
        from agent.errors import SelfloopError

        raise SelfloopError(
            "the openai backend cannot load adapters; serve them on the endpoint and pass the "
            "adapter's model id as `adapter=` when generating"
        )
    return OpenAIGenerator(
        spec.name,
        base_url=backend.base_url,
        api_key_env=backend.api_key_env,
        timeout=backend.timeout,
        max_retries=backend.max_retries,
        concurrency=backend.concurrency,
    )

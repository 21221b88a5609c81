"""The `vllm` backend: in-process vLLM on a CUDA GPU, with LoRA adapters per request.

Prompts are chat-templated with the model's own tokenizer (the same code path as the
transformers backend, so both see identical token ids) and handed to vLLM as token prompts.
Adapters are PEFT directories served through `LoRARequest`, switched per call without reloading
the base. Selecting this backend without vllm installed or without a GPU fails with a clear error.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.backends.base import (
    Completion,
    GenerationResult,
    Messages,
    Progress,
    SamplingParams,
    check_pairs,
    check_prompts,
)
from agent.errors import SelfloopError
from agent.models import ModelSpec, check_adapter_files, load_tokenizer, resolve

log = logging.getLogger(__name__)


def vllm_available() -> str | None:
    """None when the vllm backend can run here, else why not."""
    if importlib.util.find_spec("vllm") is None:
        return "the vllm backend needs the `vllm` package: pip install 'selfloop[vllm]'"
    import torch

    if not torch.cuda.is_available():
        return (
            "the vllm backend needs a CUDA GPU and none is visible; use backend.kind=transformers"
        )
    return None


class VLLMGenerator:
    """Generator over an in-process `vllm.LLM`."""

    name = "vllm"

    def __init__(
        self,
        model: ModelSpec | str,
        *,
        adapters: dict[str, str | Path] | None = None,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        max_lora_rank: int = 64,
        max_loras: int = 4,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
    ) -> None:
        problem = vllm_available()
        if problem:
            raise SelfloopError(problem)
        from vllm import LLM

        self.resolved = resolve(model)
        spec = self.resolved.spec
        self.model_name = self.resolved.display_name
        self.tokenizer = load_tokenizer(self.resolved)
        kwargs: dict[str, Any] = {
            "model": str(self.resolved.path),
            "enable_lora": True,
            "max_lora_rank": max_lora_rank,
            "max_loras": max_loras,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "trust_remote_code": spec.trust_remote_code,
            "enforce_eager": enforce_eager,
            "dtype": "auto" if spec.dtype == "auto" else spec.dtype,
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.adapters: dict[str, Any] = {}
        self._lora_ids = 0  # vLLM caches adapters by id: an id is never reused
        for adapter_name, path in (adapters or {}).items():
            self.load_adapter(path, adapter_name)

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        from vllm.lora.request import LoRARequest

        path = Path(path)
        check_adapter_files(path)
        name = name or path.name
        if name in self.adapters:
            raise SelfloopError(f"an adapter named {name!r} is already loaded")
        # vLLM identifies adapters by a positive integer id; names are ours.
        self._lora_ids += 1
        self.adapters[name] = LoRARequest(name, self._lora_ids, str(path.resolve()))
        return name

    def unload_adapter(self, name: str) -> None:
        req = self.adapters.pop(name, None)
        if req is None:
            raise SelfloopError(f"no adapter named {name!r} is loaded")
        self.llm.llm_engine.remove_lora(req.lora_int_id)

    def adapter_paths(self) -> dict[str, Path]:
        return {name: Path(req.lora_path) for name, req in self.adapters.items()}

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self.adapters:
            known = ", ".join(self.adapters) or "none loaded"
            raise SelfloopError(f"unknown adapter {adapter!r} (loaded: {known})")
        return self.adapters[adapter]

    def _prompt(self, messages: Messages) -> Any:
        from vllm.inputs import TokensPrompt

        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return TokensPrompt(
            prompt_token_ids=self.tokenizer(text, add_special_tokens=False)["input_ids"]
        )

    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams | None = None,
        *,
        adapter: str | None = None,
        progress: Progress | None = None,
    ) -> list[GenerationResult]:
        import vllm

        check_prompts(prompts)
        params = params or SamplingParams()
        sp = vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,
            max_tokens=params.max_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
        )
        outs = self.llm.generate(
            [self._prompt(m) for m in prompts], sp, lora_request=self._lora(adapter), use_tqdm=False
        )
        results = []
        for out in outs:
            comps = [
                Completion(
                    o.text, "length" if o.finish_reason == "length" else "stop", len(o.token_ids)
                )
                for o in out.outputs
            ]
            results.append(
                GenerationResult(completions=comps, prompt_tokens=len(out.prompt_token_ids))
            )
        if progress:
            progress(len(results), len(prompts))
        return results

    def next_token_logprobs(
        self, prompts: Sequence[Messages], candidates: Sequence[str], *, adapter: str | None = None
    ) -> list[dict[str, float]]:
        """From vLLM's top-20 first-token log-probabilities; a candidate outside them is -inf."""
        import vllm

        check_prompts(prompts)
        ids = {}
        for c in candidates:
            toks = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            if len(toks) != 1:
                raise SelfloopError(
                    f"candidate {c!r} is {len(toks)} tokens for this tokenizer, not one"
                )
            ids[c] = toks[0]
        sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
        outs = self.llm.generate(
            [self._prompt(m) for m in prompts], sp, lora_request=self._lora(adapter), use_tqdm=False
        )
        result = []
        for out in outs:
            top = out.outputs[0].logprobs[0]  # {token_id: Logprob}
            result.append({c: top[t].logprob if t in top else -math.inf for c, t in ids.items()})
        return result

    def continuation_logprobs(
        self,
        prompts: Sequence[Messages],
        continuations: Sequence[str],
        *,
        adapter: str | None = None,
    ) -> list[list[float]]:
        import vllm
        from vllm.inputs import TokensPrompt

        check_pairs(prompts, continuations, "continuations")
        full, lengths = [], []
        for m, c in zip(prompts, continuations):
            cont = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            full.append(TokensPrompt(prompt_token_ids=self._prompt(m)["prompt_token_ids"] + cont))
            lengths.append(len(cont))
        # prompt_logprobs=0 returns the log-probability of each actual prompt token.
        sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate(full, sp, lora_request=self._lora(adapter), use_tqdm=False)
        result = []
        for out, n, p in zip(outs, lengths, full):
            ids = p["prompt_token_ids"]
            tail = range(len(ids) - n, len(ids))
            result.append([out.prompt_logprobs[k][ids[k]].logprob for k in tail])
        return result

    def close(self) -> None:
        import gc

        import torch

        del self.llm
        gc.collect()
        torch.cuda.empty_cache()

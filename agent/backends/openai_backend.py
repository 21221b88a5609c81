"""The `openai` backend: any OpenAI-compatible chat-completions endpoint.

vLLM's server, llama.cpp's server, `selfloop serve` or a hosted API, through the official `openai`
client. The client retries connection errors, timeouts, 408/409/429 and 5xx answers with
exponential backoff (`max_retries`); what still fails is reported per prompt in
`GenerationResult.error`, never as empty text. Requests run concurrently in a thread pool.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.backends.base import (
    Completion,
    GenerationResult,
    Messages,
    Progress,
    SamplingParams,
    check_prompts,
)
from agent.errors import SelfloopError, UnsupportedError

log = logging.getLogger(__name__)


class OpenAIGenerator:
    """Generator over an OpenAI-compatible HTTP endpoint."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 4,
    ) -> None:
        try:
            import openai
        except ImportError as e:  # it is a core dependency; a broken env should still say so
            raise SelfloopError(
                "the openai backend needs the `openai` package (pip install openai)"
            ) from e
        if not model:
            raise SelfloopError("the openai backend needs a model name (the endpoint's model id)")
        self.model_name = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        # Local servers ignore the key, but the client refuses to start without one.
        key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
        self.concurrency = max(1, concurrency)
        self._openai = openai

    def _model_for(self, adapter: str | None) -> str:
        # OpenAI-compatible servers (vLLM, selfloop serve) expose each LoRA adapter as a model id.
        return adapter or self.model_name

    def _request(
        self, messages: Messages, params: SamplingParams, adapter: str | None
    ) -> GenerationResult:
        kwargs: dict[str, Any] = {
            "model": self._model_for(adapter),
            "messages": messages,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.top_k:
            kwargs["extra_body"] = {"top_k": params.top_k}  # vLLM and selfloop serve accept it
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except self._openai.APIError as e:
            return GenerationResult(error=self._describe(e))
        if len(resp.choices) != params.n:
            return GenerationResult(
                error=f"asked for n={params.n} completions, endpoint returned {len(resp.choices)}"
            )
        # usage counts all choices together (and some servers omit it: then 0); split it evenly.
        share = resp.usage.completion_tokens // len(resp.choices) if resp.usage else 0
        comps = []
        for choice in sorted(resp.choices, key=lambda c: c.index):
            if choice.message.content is None:
                return GenerationResult(
                    error=f"endpoint returned no content (finish_reason={choice.finish_reason})"
                )
            reason = "length" if choice.finish_reason == "length" else "stop"
            comps.append(Completion(choice.message.content, reason, share))
        prompt_tokens = resp.usage.prompt_tokens if resp.usage is not None else 0
        return GenerationResult(completions=comps, prompt_tokens=prompt_tokens)

    def _describe(self, e: Exception) -> str:
        o = self._openai
        if isinstance(e, o.APITimeoutError):
            return f"request to {self.base_url} timed out"
        if isinstance(e, o.APIConnectionError):
            return f"cannot reach {self.base_url}: {e}"
        if isinstance(e, o.APIStatusError):
            return f"{self.base_url} answered HTTP {e.status_code}: {_short(e.message)}"
        return f"{type(e).__name__}: {_short(str(e))}"

    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams | None = None,
        *,
        adapter: str | None = None,
        progress: Progress | None = None,
    ) -> list[GenerationResult]:
        check_prompts(prompts)
        params = params or SamplingParams()
        results: list[GenerationResult] = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            for r in pool.map(lambda m: self._request(m, params, adapter), prompts):
                results.append(r)
                if progress:
                    progress(len(results), len(prompts))
        failed = sum(not r.ok for r in results)
        if failed:
            log.warning("%d of %d requests to %s failed", failed, len(prompts), self.base_url)
        return results

    def next_token_logprobs(
        self, prompts: Sequence[Messages], candidates: Sequence[str], *, adapter: str | None = None
    ) -> list[dict[str, float]]:
        """From the endpoint's top-20 first-token logprobs; a candidate outside them is -inf."""
        check_prompts(prompts)
        if not candidates:
            raise SelfloopError("no candidate tokens given")

        def one(messages: Messages) -> dict[str, float]:
            try:
                resp = self.client.chat.completions.create(
                    model=self._model_for(adapter),
                    messages=messages,
                    max_tokens=1,
                    temperature=0.0,
                    logprobs=True,
                    top_logprobs=20,
                )
            except self._openai.APIError as e:
                raise SelfloopError(self._describe(e)) from e
            lp = resp.choices[0].logprobs
            if lp is None or not lp.content:
                raise UnsupportedError(
                    f"{self.base_url} returned no logprobs; it does not support them"
                )
            top = {t.token: t.logprob for t in lp.content[0].top_logprobs}
            return {c: top.get(c, -math.inf) for c in candidates}

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, prompts))

    def continuation_logprobs(
        self,
        prompts: Sequence[Messages],
        continuations: Sequence[str],
        *,
        adapter: str | None = None,
    ) -> list[list[float]]:
        raise UnsupportedError(
            "the openai backend cannot score a given continuation (chat completions only return "
            "log-probabilities of generated tokens); use the transformers or vllm backend"
        )

    def close(self) -> None:
        self.client.close()


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."

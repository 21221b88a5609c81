"""Failure injection for judge tests: a real generator behind a flaky link.

`Flaky` implements the Generator protocol by forwarding to a real backend (the tiny model) and
injecting the failures a remote judge shows in practice: the first `fail_calls` calls raise (a
dropped connection), calls whose prompts contain `fail_marker` always raise (a request the
backend chokes on), and prompts containing `blank_marker` get next-token rows where none of the
candidates has any probability (an endpoint whose top-logprobs list lacks them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.backends.base import Generator, Messages, SamplingParams


def _text(prompt: Messages) -> str:
    return "\n".join(m["content"] for m in prompt)


class Flaky:
    def __init__(
        self,
        inner: Generator,
        *,
        fail_calls: int = 0,
        fail_marker: str | None = None,
        blank_marker: str | None = None,
        error: type[Exception] = ConnectionError,
    ) -> None:
        self.inner = inner
        self.name = f"flaky-{inner.name}"
        self.model_name = inner.model_name
        self.fail_calls = fail_calls
        self.fail_marker = fail_marker
        self.blank_marker = blank_marker
        self.error = error
        self.calls = 0  # every call, failed or not
        self.prompts_asked = 0  # prompts in calls that did not raise
        self.params: list[SamplingParams | None] = []  # per generate() call that did not raise

    def _gate(self, prompts: Sequence[Messages]) -> None:
        self.calls += 1
        if self.calls <= self.fail_calls:
            raise self.error(f"connection reset (injected, call {self.calls})")
        if self.fail_marker and any(self.fail_marker in _text(p) for p in prompts):
            raise self.error("bad gateway (injected)")
        self.prompts_asked += len(prompts)

    def generate(self, prompts, params=None, *, adapter=None, progress=None) -> list[Any]:
        self._gate(prompts)
        self.params.append(params)
        return self.inner.generate(prompts, params, adapter=adapter, progress=progress)

    def next_token_logprobs(self, prompts, candidates, *, adapter=None) -> list[dict[str, float]]:
        self._gate(prompts)
        rows = self.inner.next_token_logprobs(prompts, candidates, adapter=adapter)
        return [
            {c: float("-inf") for c in candidates}
            if self.blank_marker and self.blank_marker in _text(p)
            else row
            for p, row in zip(prompts, rows)
        ]

    def continuation_logprobs(self, prompts, continuations, *, adapter=None) -> list[list[float]]:
        self._gate(prompts)
        return self.inner.continuation_logprobs(prompts, continuations, adapter=adapter)

    def close(self) -> None:
        self.inner.close()


class Suffixed(Flaky):
    """Also appends `suffix` to every completion sampled with temperature > 0: the greedy
    critique of the random tiny model never states a score, its sampled re-asks do."""

    def __init__(self, inner: Generator, suffix: str, **kw: Any) -> None:
        super().__init__(inner, **kw)
        self.suffix = suffix

    def generate(self, prompts, params=None, *, adapter=None, progress=None) -> list[Any]:
        results = super().generate(prompts, params, adapter=adapter, progress=progress)
        if params is None or params.greedy:
            return results
        for r in results:
            if r.ok:
                c = r.completions[0]
                r.completions[0] = type(c)(
                    c.text + self.suffix, c.finish_reason, c.completion_tokens
                )
        return results

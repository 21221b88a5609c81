"""The Generator protocol every backend implements, and the records it exchanges.

Chat messages go in; per prompt, `n` completions come out with text, finish reason and token
counts. A request that failed carries its error instead of completions: a failure is never
turned into empty text. Judges also need log-probabilities, so a backend exposes the
log-probabilities of given next tokens and of given continuations where it can; where it cannot
it raises `UnsupportedError` saying which backend can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.errors import SelfloopError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Messages = list[Message]
FinishReason = Literal["stop", "length"]
Progress = Callable[[int, int], None]  # (prompts done, prompts total)

_ROLES = {"system", "user", "assistant"}


class SamplingParams(BaseModel):
    """How to sample. temperature 0 means greedy decoding. Also the `sampling:` config section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(256, ge=1, description="Most new tokens per completion.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy; higher = more random.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0 = off.")
    n: int = Field(1, ge=1, description="Completions per prompt.")
    seed: int | None = Field(
        None, description="Seed for sampling; same seed, same inputs, same output."
    )
    stop: tuple[str, ...] = Field((), description="Strings that end a completion (not included).")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, v: object) -> object:
        # A lone string is one stop string, not a sequence of one-character stops.
        return (v,) if isinstance(v, str) else v

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def section_sampling(
    data: object, section: str, default: SamplingParams, flat: Sequence[str] = ()
) -> object:
    """A config section's `sampling:` block before validation: keys it leaves out keep the
    section's own defaults (`respond.sampling: {temperature: 1.0}` keeps respond's 320 tokens,
    not SamplingParams' 256), and its old flat keys (`propose.temperature`, `eval.max_tokens`)
    move into the block, so configs and run directories written before every section took one
    `sampling:` shape still load. A moved key logs a one-line deprecation notice; a key given
    both ways (an old run's saved config and a new `--set`) takes the `sampling:` one, saying
    so."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    given = data.get("sampling", {})
    if not isinstance(given, dict):
        return data  # not a mapping: let validation name it
    nested = {**default.model_dump(exclude_unset=True), **given}
    moved = [k for k in flat if k in data]
    import logging

    for key in moved:
        old = data.pop(key)
        if key in given:
            logging.getLogger("selfloop.config").warning(
                "config: %s.%s and %s.sampling.%s are both set; using %s.sampling.%s",
                *(section, key) * 3,
            )
            continue
        nested[key] = old
    if moved:
        logging.getLogger("selfloop.config").warning(
            "config: %s is deprecated; write it as %s",
            ", ".join(f"{section}.{k}" for k in moved),
            ", ".join(f"{section}.sampling.{k}" for k in moved),
        )
    data["sampling"] = nested
    return data


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass
class GenerationResult:
    """What one prompt got back: `n` completions, or an error saying why not."""

    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        """The first completion's text; raises if the request failed."""
        if self.error is not None:
            raise SelfloopError(self.error)
        return self.completions[0].text


@runtime_checkable
class Generator(Protocol):
    """A model that answers chat prompts: the transformers, vllm and openai backends."""

    name: str
    model_name: str

    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams | None = None,
        *,
        adapter: str | None = None,
        progress: Progress | None = None,
    ) -> list[GenerationResult]:
        """One result per prompt, in order. `adapter` names a loaded adapter (None = base model)."""
        ...

    def next_token_logprobs(
        self, prompts: Sequence[Messages], candidates: Sequence[str], *, adapter: str | None = None
    ) -> list[dict[str, float]]:
        """Per prompt, the log-probability of each candidate as the assistant's first token."""
        ...

    def continuation_logprobs(
        self,
        prompts: Sequence[Messages],
        continuations: Sequence[str],
        *,
        adapter: str | None = None,
    ) -> list[list[float]]:
        """Per prompt, the log-probability of each token of the given assistant continuation."""
        ...

    def close(self) -> None:
        """Release the model (GPU memory, connections)."""
        ...


@runtime_checkable
class AdapterHost(Protocol):
    """A generator that loads PEFT adapters next to its base model and generates with any of
    them by name (the transformers and vllm backends; an OpenAI endpoint cannot). Callers check
    `isinstance(gen, AdapterHost)`, never attributes."""

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Load the adapter directory `path` as `name` (default: its directory name)."""
        ...

    def unload_adapter(self, name: str) -> None: ...

    def adapter_paths(self) -> dict[str, Path]:
        """Loaded adapters: name -> adapter directory."""
        ...


def check_prompts(prompts: Sequence[Messages]) -> None:
    """Raise a one-line error for an empty prompt list or a malformed conversation."""
    if isinstance(prompts, (str, dict)):
        raise SelfloopError("prompts must be a list of conversations (lists of chat messages)")
    if len(prompts) == 0:
        raise SelfloopError("no prompts given (empty prompt list)")
    for i, msgs in enumerate(prompts):
        if not isinstance(msgs, list) or not msgs:
            raise SelfloopError(f"prompt {i}: expected a non-empty list of chat messages")
        for j, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise SelfloopError(
                    f"prompt {i} message {j}: expected {{'role': system|user|assistant, "
                    f"'content': str}}, got {m!r:.80}"
                )
        if msgs[-1]["role"] == "assistant":
            raise SelfloopError(
                f"prompt {i}: the last message is the assistant's; nothing to answer"
            )


def check_pairs(prompts: Sequence[Messages], others: Sequence, what: str) -> None:
    check_prompts(prompts)
    if len(prompts) != len(others):
        raise SelfloopError(f"{len(prompts)} prompts but {len(others)} {what}")


def user(text: str, system: str | None = None) -> Messages:
    """A one-turn conversation."""
    msgs: Messages = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": text}]

"""The `transformers` backend: batched generation and scoring with a local model, CPU or CUDA.

Prompts are chat-templated, sorted by token length and cut into batches (so a batch holds prompts
of similar length and little padding), left-padded, and decoded with the KV cache under
`torch.inference_mode()`. Results come back in the caller's order. PEFT adapters are loaded on top
of the one base model and switched per call without reloading it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

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
from agent.models import ModelSpec, load_model

log = logging.getLogger(__name__)


class TransformersGenerator:
    """Generator over a transformers causal LM, optionally with PEFT adapters."""

    name = "transformers"

    def __init__(
        self,
        model: ModelSpec | str,
        *,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        adapters: dict[str, str | Path] | None = None,
    ) -> None:
        if batch_size < 1:
            raise SelfloopError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.resolved = load_model(model)
        self.model_name = self.resolved.display_name
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer.padding_side = "left"
        self.device = self.model.device
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        self.adapters: dict[str, Path] = {}
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted({*eos, self.tokenizer.eos_token_id} - {None})
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        for adapter_name, path in (adapters or {}).items():
            self.load_adapter(path, adapter_name)

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Load a PEFT adapter from `path` under `name` (default: the directory name)."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise SelfloopError(
                f"adapter directory {path} has no adapter_config.json (not a PEFT adapter)"
            )
        name = name or path.name
        if name in self.adapters:
            raise SelfloopError(f"an adapter named {name!r} is already loaded")
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()
        self.adapters[name] = path
        log.info("loaded adapter %s from %s", name, path)
        return name

    def adapter_paths(self) -> dict[str, Path]:
        return dict(self.adapters)

    def unload_adapter(self, name: str) -> None:
        self._check_adapter(name)
        del self.adapters[name]
        if self.adapters:
            self.model.delete_adapter(name)
            self.model.set_adapter(next(iter(self.adapters)))  # never leave a deleted one active
        elif self.model.peft_config[name].is_prompt_learning:
            self.model = self.model.get_base_model()  # prefix tuning never touched the base
        else:
            # The last one: a PeftModel without adapters cannot generate, so take the LoRA
            # layers out again and run the plain base model.
            self.model = self.model.unload()

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            known = ", ".join(self.adapters) or "none loaded"
            raise SelfloopError(f"unknown adapter {adapter!r} (loaded: {known})")

    def _active(self, adapter: str | None) -> Any:
        """A context manager under which the model runs with `adapter` (None = the base model)."""
        import contextlib

        self._check_adapter(adapter)
        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ tokenization
    def encode_prompt(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _batches(
        self, lengths: list[int], rows_per_prompt: int, new_tokens: int
    ) -> list[list[int]]:
        """Index batches, longest prompts first, so each batch pads little."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        per_batch = max(1, self.batch_size // rows_per_prompt)
        batches: list[list[int]] = []
        for i in order:
            cur = batches[-1] if batches else None
            fits = cur is not None and len(cur) < per_batch
            if fits and self.max_batch_tokens:
                # The first index of a batch is its longest prompt: that sets the padded width.
                width = lengths[cur[0]] + new_tokens
                fits = (len(cur) + 1) * rows_per_prompt * width <= self.max_batch_tokens
            if fits:
                cur.append(i)
            else:
                batches.append([i])
        return batches

    def _pad_left(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ generation
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
        encoded = [self.encode_prompt(m) for m in prompts]
        results: list[GenerationResult | None] = [None] * len(prompts)
        runnable = []
        for i, ids in enumerate(encoded):
            if self.context and len(ids) + params.max_tokens > self.context:
                results[i] = GenerationResult(
                    prompt_tokens=len(ids),
                    error=f"prompt is {len(ids)} tokens; with max_tokens {params.max_tokens} it "
                    f"exceeds the model's context of {self.context}",
                )
            else:
                runnable.append(i)
        # Greedy decoding gives n identical samples: decode once and copy.
        rows = 1 if params.greedy else params.n
        lengths = [len(encoded[i]) for i in runnable]
        done = len(prompts) - len(runnable)
        fork = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork), self._active(adapter), torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for batch in self._batches(lengths, rows, params.max_tokens):
                idx = [runnable[b] for b in batch]
                outs = self._generate_batch([encoded[i] for i in idx], params, rows)
                for k, i in enumerate(idx):
                    comps = outs[k * rows : (k + 1) * rows]
                    if rows == 1 and params.n > 1:
                        comps = comps * params.n
                    results[i] = GenerationResult(completions=comps, prompt_tokens=len(encoded[i]))
                done += len(idx)
                log.debug("generated %d/%d prompts", done, len(prompts))
                if progress:
                    progress(done, len(prompts))
        return [r for r in results if r is not None]

    def _generate_batch(
        self, seqs: list[list[int]], params: SamplingParams, rows: int
    ) -> list[Completion]:
        ids, mask = self._pad_left(seqs)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "num_return_sequences": rows,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.eos_ids,
            "use_cache": True,
            "do_sample": not params.greedy,
        }
        if params.greedy:
            # Unset the sampling knobs a model's generation_config may carry, or transformers warns.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None
            )
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1] :].tolist()
        return [self._completion(toks, params) for toks in new]

    def _completion(self, toks: list[int], params: SamplingParams) -> Completion:
        eos = set(self.eos_ids)
        end = next((k for k, t in enumerate(toks) if t in eos), None)
        body = toks if end is None else toks[:end]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = [p for p in (text.find(s) for s in params.stop) if p >= 0]
        if cut:
            # Generation stopped at the end of the token holding the stop string; like the
            # OpenAI API, the stop string and what follows it are not part of the answer.
            return Completion(text[: min(cut)], "stop", len(body))
        reason = "stop" if end is not None else "length"
        return Completion(text, reason, len(body))

    # ------------------------------------------------------------------ scoring
    def next_token_logprobs(
        self, prompts: Sequence[Messages], candidates: Sequence[str], *, adapter: str | None = None
    ) -> list[dict[str, float]]:
        check_prompts(prompts)
        if not candidates:
            raise SelfloopError("no candidate tokens given")
        cand_ids = []
        for c in candidates:
            ids = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise SelfloopError(
                    f"candidate {c!r} is {len(ids)} tokens for this tokenizer, not one"
                )
            cand_ids.append(ids[0])
        out: list[dict[str, float]] = []
        for logps in self._score(
            [self.encode_prompt(m) for m in prompts], [[]] * len(prompts), adapter
        ):
            last = logps[-1]
            out.append({c: float(last[t]) for c, t in zip(candidates, cand_ids)})
        return out

    def continuation_logprobs(
        self,
        prompts: Sequence[Messages],
        continuations: Sequence[str],
        *,
        adapter: str | None = None,
    ) -> list[list[float]]:
        check_pairs(prompts, continuations, "continuations")
        prompt_ids = [self.encode_prompt(m) for m in prompts]
        cont_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        out = []
        for ids, logps in zip(cont_ids, self._score(prompt_ids, cont_ids, adapter)):
            out.append([float(logps[k][t]) for k, t in enumerate(ids)])
        return out

    def _score(
        self, prompt_ids: list[list[int]], cont_ids: list[list[int]], adapter: str | None
    ) -> list[torch.Tensor]:
        """Per pair, log-softmax rows predicting each continuation token, plus the next one.

        Rows are left-padded so every continuation ends at the last position; only the last
        `max continuation + 1` positions go through the LM head, which keeps memory at
        batch x (L+1) x vocab instead of batch x sequence x vocab.
        """
        seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
        if self.context:
            for i, s in enumerate(seqs):
                if len(s) > self.context:
                    raise SelfloopError(
                        f"pair {i} is {len(s)} tokens, over the model's context of {self.context}"
                    )
        results: list[torch.Tensor | None] = [None] * len(seqs)
        with self._active(adapter), torch.inference_mode():
            for batch in self._batches([len(s) for s in seqs], 1, 0):
                ids, mask = self._pad_left([seqs[i] for i in batch])
                keep = max(len(cont_ids[i]) for i in batch) + 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
                ).logits
                logps = torch.log_softmax(logits.float(), dim=-1).cpu()
                for r, i in enumerate(batch):
                    n = len(cont_ids[i])
                    results[i] = logps[r, keep - n - 1 :]
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

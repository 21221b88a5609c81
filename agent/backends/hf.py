"""The `transformers` backend: batched generation and scoring with a local model, CPU or CUDA.

Prompts are chat-templated, sorted by token length and cut into batches (so a batch holds prompts
of similar length and little padding), left-padded, and decoded with the KV cache under
`torch.inference_mode()`. How generation without stop strings shares a batch is `batching`:
`ragged` (default) is `refill.decode_ragged`, a decode loop where a row that ends leaves the batch
and a queued prompt takes its place; `static` is `generate` on the sorted batches, each decoded
until its longest row stops; `continuous` is transformers' continuous batching (`_continuous`,
a paged KV cache). Calls with stop strings, or under a prefix-tuning adapter, use static batches.
Results come back in the caller's order. PEFT adapters are loaded on top of the one base model
and switched per call without reloading it. With `merge_adapters` (default on CPU), decoding under
a LoRA adapter runs a copy of the model with the adapter merged into its weights (one copy kept,
for the adapter decoded last): the unmerged path runs two more small matmuls per layer and step,
1.3x slower on 2 CPU cores. Scoring (log-probs) always runs the unmerged adapter. On CPU in
float32, decoding (ragged, static, streamed) runs the output projection through oneDNN
(`onednn_head`, `agent/backends/head.py`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from agent.backends.base import (
    Completion,
    GenerationResult,
    Messages,
    Progress,
    SamplingParams,
    check_pairs,
    check_prompts,
)
from agent.backends.head import onednn_head
from agent.errors import SelfloopError
from agent.models import ModelSpec, check_adapter_files, load_model

log = logging.getLogger(__name__)

BATCHING = ("ragged", "static", "continuous")
_LOGPROB_FLOATS = 2**28  # per scoring batch: 1 GiB of float32 log-probs


class TransformersGenerator:
    """Generator over a transformers causal LM, optionally with PEFT adapters."""

    name = "transformers"

    def __init__(
        self,
        model: ModelSpec | str,
        *,
        batch_size: int = 64,  # BackendConfig.batch_size's default
        max_batch_tokens: int | None = None,
        adapters: dict[str, str | Path] | None = None,
        batching: str = "ragged",
        merge_adapters: bool | None = None,
        share_prefix: bool = True,
        lookahead: bool = True,
        onednn_head: bool = True,
    ) -> None:
        if batch_size < 1:
            raise SelfloopError(f"batch_size must be >= 1, got {batch_size}")
        if batching not in BATCHING:
            raise SelfloopError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self.model, self.tokenizer, self.resolved = load_model(model)
        self.model_name = self.resolved.display_name
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.batching = batching
        self.lookahead = lookahead
        self.onednn_head = onednn_head
        self.tokenizer.padding_side = "left"
        self.device = self.model.device
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        self.adapters: dict[str, Path] = {}
        # None: merge on CPU, where the LoRA path's small matmuls cost most; a merged copy is
        # one more copy of the weights, which a large model on a GPU may not have room for.
        on_cpu = self.device.type == "cpu"
        self.merge_adapters = on_cpu if merge_adapters is None else merge_adapters
        self._merged: tuple[str, Any] | None = None  # (adapter, model with it merged)
        from agent.backends.refill import can_share_prefix  # refill imports this module

        self.share_prefix = share_prefix and can_share_prefix(self.model)
        if share_prefix and not self.share_prefix:
            log.info(
                "share_prefix off: %s has sliding-window or non-attention layers", self.model_name
            )
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
        check_adapter_files(path)
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
        if self._merged and self._merged[0] == name:
            self._merged = None
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
        self._check_adapter(adapter)
        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _decoder(self, adapter: str | None) -> Any:
        """The model to decode with under `adapter`: with `merge_adapters`, a LoRA adapter's
        merged copy; else the model with `adapter` active."""
        self._check_adapter(adapter)
        if adapter is None or not self.merge_adapters or self._prompt_learning(adapter):
            with self._active(adapter):
                yield self.model
            return
        if self._merged is None or self._merged[0] != adapter:
            self._merged = None  # free the last copy before making the next
            # deepcopy takes every loaded adapter along; merge_and_unload keeps only this one,
            # added to the weights in their dtype (in bfloat16, W + BA is rounded once more).
            merged = copy.deepcopy(self.model).merge_and_unload(adapter_names=[adapter])
            self._merged = (adapter, merged.eval())
            log.info("decoding under adapter %s with a merged copy of the model", adapter)
        yield self._merged[1]

    def _prompt_learning(self, adapter: str | None) -> bool:
        return adapter is not None and self.model.peft_config[adapter].is_prompt_learning

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
        return pad_left(seqs, self.tokenizer.pad_token_id, self.device)

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
        encoded = [self.encode_prompt(m) for m in prompts]
        params = params or SamplingParams()
        return [r for r, _ in self._generate_encoded(encoded, params, adapter, progress)]

    def generate_from_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        *,
        adapter: str | None = None,
    ) -> list[tuple[GenerationResult, list[list[int]]]]:
        """`generate` for prompts that are token ids already: a raw-text prompt (the server's
        `/v1/completions`) goes in as it is, with no chat template.

        Per prompt it also returns, per completion, the token ids of the completion's text: the
        tokens generated, through the EOS that ended it, so a caller can score exactly what was
        generated; a completion cut at a stop string is its text re-tokenized (its last
        generated token holds the stop string, which is not part of the text).
        """
        if not prompt_ids:
            raise SelfloopError("no prompts given (empty prompt list)")
        if any(len(p) == 0 for p in prompt_ids):
            raise SelfloopError("a prompt is empty (no tokens)")
        encoded = [[int(t) for t in p] for p in prompt_ids]
        return self._generate_encoded(encoded, params or SamplingParams(), adapter, None)

    def _too_long(self, n_prompt: int, params: SamplingParams) -> str | None:
        if self.context and n_prompt + params.max_tokens > self.context:
            return (
                f"prompt is {n_prompt} tokens; with max_tokens {params.max_tokens} it "
                f"exceeds the model's context of {self.context}"
            )
        return None

    def _generate_encoded(
        self,
        encoded: list[list[int]],
        params: SamplingParams,
        adapter: str | None,
        progress: Progress | None,
    ) -> list[tuple[GenerationResult, list[list[int]]]]:
        results: list[tuple[GenerationResult, list[list[int]]] | None] = [None] * len(encoded)
        runnable = []
        for i, ids in enumerate(encoded):
            too_long = self._too_long(len(ids), params)
            if too_long:
                results[i] = (GenerationResult(prompt_tokens=len(ids), error=too_long), [])
            else:
                runnable.append(i)
        # Greedy decoding gives n identical samples: decode once and copy.
        rows = 1 if params.greedy else params.n
        lengths = [len(encoded[i]) for i in runnable]
        done = len(encoded) - len(runnable)
        # Prefix tuning feeds its virtual tokens through generate's cache handling: static only.
        self._check_adapter(adapter)
        prefix = self._prompt_learning(adapter)
        if self.batching != "static" and not params.stop and not prefix and runnable:
            seqs = [encoded[i] for i in runnable]
            report = progress and (lambda k, _: progress(done + k, len(encoded)))
            with self._rng(params.seed), self._decoder(adapter) as model:
                if self.batching == "continuous":
                    outs = self._continuous(model, seqs, params, rows, report)
                else:
                    outs = self._ragged(model, seqs, params, rows, report)
            for i, got in zip(runnable, outs):
                results[i] = _result(got, len(encoded[i]), params.n)
            return [r for r in results if r is not None]
        with self._static_decoding(params.seed, adapter) as model:
            for batch in self._batches(lengths, rows, params.max_tokens):
                idx = [runnable[b] for b in batch]
                outs = self._generate_batch(model, [encoded[i] for i in idx], params, rows)
                for k, i in enumerate(idx):
                    results[i] = _result(outs[k * rows : (k + 1) * rows], len(encoded[i]), params.n)
                done += len(idx)
                log.debug("generated %d/%d prompts", done, len(encoded))
                if progress:
                    progress(done, len(encoded))
        return [r for r in results if r is not None]

    @contextlib.contextmanager
    def _static_decoding(self, seed: int | None, adapter: str | None) -> Any:
        """What `generate`'s static and streamed calls decode under: the seeded RNG, the model
        for `adapter`, inference mode and the oneDNN head (ragged decoding sets the head
        itself, in `refill.decode_ragged`)."""
        with (
            self._rng(seed),
            self._decoder(adapter) as model,
            torch.inference_mode(),
            onednn_head(model, self.onednn_head),
        ):
            yield model

    def _rng(self, seed: int | None) -> Any:
        """A context manager under which sampling draws from `seed`; the caller's RNG state is
        restored afterwards, so a seeded call does not disturb anyone else's randomness."""

        @contextlib.contextmanager
        def forked():
            fork = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork):
                if seed is not None:
                    torch.manual_seed(seed)
                yield

        return forked()

    def _generate_kwargs(self, params: SamplingParams, rows: int) -> dict[str, Any]:
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
        return kwargs

    def _generate_batch(
        self, model: Any, seqs: list[list[int]], params: SamplingParams, rows: int
    ) -> list[tuple[Completion, list[int]]]:
        ids, mask = self._pad_left(seqs)
        if rows > 1:  # each prompt's rows side by side, as num_return_sequences lays them out
            ids, mask = ids.repeat_interleave(rows, dim=0), mask.repeat_interleave(rows, dim=0)
        out = model.generate(
            input_ids=ids, attention_mask=mask, **_drawn(self._generate_kwargs(params, 1), params)
        )
        new = out[:, ids.shape[1] :].tolist()
        return [self._completion(toks, params) for toks in new]

    def _ragged(
        self,
        model: Any,
        seqs: list[list[int]],
        params: SamplingParams,
        rows: int,
        progress: Progress | None,
    ) -> list[list[tuple[Completion, list[int]]]]:
        """`rows` completions of each of `seqs` through `refill.decode_ragged`: at most
        batch_size rows decode at once (fewer where max_batch_tokens caps rows x (longest
        prompt + max_tokens)); prompts enter longest first, so those admitted together pad
        little."""
        from agent.backends.refill import decode_ragged

        max_rows = self.batch_size
        if self.max_batch_tokens:
            width = max(len(s) for s in seqs) + params.max_tokens
            max_rows = max(rows, min(max_rows, self.max_batch_tokens // width))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        finished = 0

        def done(_: int) -> None:
            nonlocal finished
            finished += 1
            if progress:
                progress(finished, len(seqs))

        outs = decode_ragged(
            model,
            [seqs[i] for i in order],
            rows,
            params,
            max_rows=max_rows,
            eos_ids=self.eos_ids,
            pad_id=self.tokenizer.pad_token_id,
            on_prompt_done=done,
            share_prefix=self.share_prefix,
            look_ahead=self.lookahead,
            onednn_head=self.onednn_head,
        )
        back: list[list[tuple[Completion, list[int]]]] = [[] for _ in seqs]
        for i, toks in zip(order, outs):
            back[i] = [self._completion(t, params) for t in toks]
        return back

    def _continuous(
        self,
        model: Any,
        seqs: list[list[int]],
        params: SamplingParams,
        rows: int,
        progress: Progress | None,
    ) -> list[list[tuple[Completion, list[int]]]]:
        """`rows` completions of each of `seqs` through transformers' continuous batching: one
        request per prompt, its other samples forked from it (they share the prompt's KV
        blocks). Requests finish in their own order; results come back in the prompts' order.
        A request that fails, or a scheduler that stops early, is an error (transformers' own
        `generate_batch` only logs those)."""
        from transformers import ContinuousBatchingConfig, GenerationConfig

        kwargs = self._generate_kwargs(params, rows)
        kwargs.pop("use_cache")
        config = GenerationConfig(**kwargs)
        # At most batch_size requests decode together, as in a static batch (unbounded, the
        # scheduler took all of them at once: slower still on CPU). Flash attention exists on
        # CUDA only; elsewhere transformers would go looking for its kernels on the Hub.
        cb = ContinuousBatchingConfig(
            seed=params.seed,
            max_requests_per_batch=self.batch_size,
            auto_switch_to_flash=self.device.type == "cuda",
        )
        total, finished, prompts_done = len(seqs) * rows, {}, 0
        per_prompt: dict[str, int] = {}
        with model.continuous_batching_context_manager(
            generation_config=config, continuous_batching_config=cb, block=True, timeout=5
        ) as manager:
            ids = manager.add_requests(inputs=seqs, max_new_tokens=params.max_tokens)
            while len(finished) < total:
                out = manager.get_result(timeout=1)
                if out is None:
                    if not manager.is_running():
                        raise SelfloopError(
                            f"continuous batching stopped with {len(finished)} of {total} "
                            "answers (backend.batching: static or ragged do not use it)"
                        )
                    continue
                if not out.is_finished():
                    continue
                if out.error is not None:
                    raise SelfloopError(f"continuous batching: request failed: {out.error}")
                finished[out.request_id] = out
                parent = out.request_id.partition("__child#")[0]
                per_prompt[parent] = per_prompt.get(parent, 0) + 1
                if per_prompt[parent] == rows:
                    prompts_done += 1
                    if progress:
                        progress(prompts_done, len(seqs))
        return [
            [
                self._completion(list(finished[rid].generated_tokens), params)
                for rid in [*(f"{parent}__child#{k}" for k in range(rows - 1)), parent]
            ]
            for parent in ids
        ]

    def _completion(self, toks: list[int], params: SamplingParams) -> tuple[Completion, list[int]]:
        """The completion in the generated tokens `toks`, and the token ids of its text."""
        eos = set(self.eos_ids)
        end = next((k for k, t in enumerate(toks) if t in eos), None)
        body = toks if end is None else toks[:end]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = [p for p in (text.find(s) for s in params.stop) if p >= 0]
        if cut:
            # Generation stopped at the end of the token holding the stop string; like the
            # OpenAI API, the stop string and what follows it are not part of the answer.
            text = text[: min(cut)]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return Completion(text, "stop", len(body)), ids
        reason = "stop" if end is not None else "length"
        return Completion(text, reason, len(body)), toks if end is None else toks[: end + 1]

    def generate_stream(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        on_text: Callable[[str], None],
        *,
        adapter: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[Completion, list[int]]:
        """One completion of one tokenized prompt, handed to `on_text` piece by piece while the
        model decodes (a transformers streamer sees every new token); the pieces add up to the
        returned completion's text, which is what `generate_from_ids` returns for the same
        prompt, params and seed. `params.n` is not used: one completion.

        `should_stop` is asked after every token; True ends decoding there (a client that went
        away), and the completion is what was decoded so far.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        if not prompt_ids:
            raise SelfloopError("a prompt is empty (no tokens)")
        too_long = self._too_long(len(prompt_ids), params)
        if too_long:
            raise SelfloopError(too_long)
        streamer = _TextPieces(self, params, on_text)

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
                stop = bool(should_stop and should_stop())
                return torch.full((input_ids.shape[0],), stop, device=input_ids.device)

        ids, mask = self._pad_left([list(prompt_ids)])
        kwargs = _drawn(self._generate_kwargs(params, 1), params)
        # The same context as `generate_from_ids`'s static batches: the same answer.
        with self._static_decoding(params.seed, adapter) as model:
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                **kwargs,
            )
        completion, token_ids = self._completion(out[0, ids.shape[1] :].tolist(), params)
        streamer.finish(completion.text)
        return completion, token_ids

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
        batch x (L+1) x vocab instead of batch x sequence x vocab. Where a batch's rows open
        with the same tokens (the judge's rubric), those run once (`refill.prefill_shared`).
        """
        from agent.backends.refill import (
            after_prefix,
            cache_argument,
            prefill_shared,
            shared_prefix,
        )

        seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
        if self.context:
            for i, s in enumerate(seqs):
                if len(s) > self.context:
                    raise SelfloopError(
                        f"pair {i} is {len(s)} tokens, over the model's context of {self.context}"
                    )
        results: list[torch.Tensor | None] = [None] * len(seqs)
        # A prefix-tuning adapter brings its own past key values: no prefix cache beside them.
        share = self.share_prefix and not self._prompt_learning(adapter)
        with self._active(adapter), torch.inference_mode():
            for whole in self._batches([len(s) for s in seqs], 1, 0):
                # batch_size rows of long continuations can be gigabytes of log-probs: cap them.
                longest = max(len(cont_ids[i]) for i in whole) + 1
                rows = max(1, _LOGPROB_FLOATS // (longest * self.model.config.vocab_size))
                for start in range(0, len(whole), rows):
                    batch = whole[start : start + rows]
                    keep = max(len(cont_ids[i]) for i in batch) + 1
                    rows_seqs = [seqs[i] for i in batch]
                    # The positions read (each row's continuation and the one before) stay
                    # out of the shared prefix.
                    limit = min(len(seqs[i]) - len(cont_ids[i]) - 1 for i in batch)
                    shared = shared_prefix(rows_seqs, limit) if share else 0
                    extra = {}
                    if shared:
                        extra[cache_argument(self.model)] = prefill_shared(
                            self.model, rows_seqs[0][:shared], len(batch)
                        )
                    ids, mask, positions = after_prefix(
                        rows_seqs, shared, self.tokenizer.pad_token_id, self.device
                    )
                    logits = self.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        logits_to_keep=keep,
                        **extra,
                    ).logits
                    logps = torch.log_softmax(logits.float(), dim=-1).cpu()
                    for r, i in enumerate(batch):
                        n = len(cont_ids[i])
                        results[i] = logps[r, keep - n - 1 :]
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.model = self._merged = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def pad_left(
    seqs: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`seqs` left-padded to the longest with `pad_id`, and their attention mask, on `device`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _result(
    got: list[tuple[Completion, list[int]]], prompt_tokens: int, n: int
) -> tuple[GenerationResult, list[list[int]]]:
    """One prompt's result from its decoded rows (one row for greedy: copied to the n asked
    for), with the token ids of each completion."""
    got = got * n if len(got) == 1 and n > 1 else got
    return (
        GenerationResult(completions=[c for c, _ in got], prompt_tokens=prompt_tokens),
        [ids for _, ids in got],
    )


def _drawn(kwargs: dict[str, Any], params: SamplingParams) -> dict[str, Any]:
    """`generate`'s kwargs for one sequence per row, with a sampled token drawn as ragged
    decoding draws it (`refill.sample_tokens`) by a processor that leaves generate's greedy
    pick nothing else to choose. One draw per row from the same generator, so a seeded
    one-sample request gets the same answer streamed, in a static batch or decoded ragged
    (`torch.multinomial`, generate's own draw, consumes the generator otherwise)."""
    if params.greedy:
        return kwargs
    return {
        **kwargs,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "logits_processor": LogitsProcessorList([_Drawn(params)]),
    }


class _Drawn(LogitsProcessor):
    """A logits processor that draws each row's next token under `params` (temperature, top-k,
    top-p: `refill.sample_tokens`) and leaves it the only finite score."""

    def __init__(self, params: SamplingParams) -> None:
        from agent.backends.refill import sample_tokens  # refill imports this module

        self.params, self.sample = params, sample_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pick = self.sample(scores, self.params)
        return torch.full_like(scores, float("-inf")).scatter_(1, pick[:, None], 0.0)


class _TextPieces:
    """A transformers streamer that turns the tokens `generate` hands it, one step at a time,
    into text pieces for `on_text`.

    What it sends is always a prefix of the final text, so it holds back what a later token
    can still change: an incomplete UTF-8 character (decoded as U+FFFD), a tail that may be the
    start of a stop string, and, where the tokenizer cleans up spaces on decode (" ." -> "."),
    the last whitespace and what follows it.
    """

    def __init__(
        self, gen: TransformersGenerator, params: SamplingParams, on_text: Callable[[str], None]
    ) -> None:
        self.gen = gen
        self.stops = params.stop
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.eos = set(gen.eos_ids)
        self.cleans_spaces = bool(getattr(gen.tokenizer, "clean_up_tokenization_spaces", False))
        self.on_text = on_text
        self.tokens: list[int] = []
        self.sent = ""
        self.seen_prompt = False
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate's first call hands over the prompt
            self.seen_prompt = True
            return
        if self.ended:
            return
        for t in value.reshape(-1).tolist():
            if t in self.eos:
                self.ended = True
                break
            self.tokens.append(t)
        text = self.gen.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = [p for p in (text.find(s) for s in self.stops) if p >= 0]
        if cut:
            self.ended = True  # the rest is past a stop string: never sent
            text = text[: min(cut)]
        else:
            text = text[: max(len(text) - self.hold, 0)]
            if self.cleans_spaces:
                text = text[: max(text.rfind(" "), text.rfind("\n"), 0)]
            text = text.rstrip("\ufffd")
        self._send(text)

    def end(self) -> None:
        pass  # the final piece comes from `finish`, with the completion's own text

    def finish(self, final: str) -> None:
        if not final.startswith(self.sent):  # the rules above should make this impossible
            log.warning("streamed text %r is not a prefix of the completion %r", self.sent, final)
            return
        self._send(final)

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent) :], text
            self.on_text(piece)

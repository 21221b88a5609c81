"""Preference training: `train_preference(base, pairs, out_dir, config)` with trl's DPOTrainer.

`tune.objective: dpo` is DPO (Rafailov et al.) on chosen/rejected pairs; `rpo` adds an NLL term
on the chosen answer (trl's `loss_type=["sigmoid", "sft"]`, weighted `[1, rpo_alpha]`), which
keeps the chosen answers likely instead of only pushing the rejected ones down. The loss is
trl's, not selfloop's; selfloop keeps around it what `tuners.train` keeps around SFT:

- the reference is the adapter training starts from (the champion, which trl copies into a
  frozen "ref" adapter) or, for a fresh adapter, the base model (adapters disabled);
- the same guards (settings, finite loss and gradients every step, finite weights at the end),
  the same resumable checkpoints (`<out_dir>.checkpoints/`, complete-marker, fingerprint of
  settings + data) and the same artifact: `out_dir` appears whole, with the PEFT adapter (the
  trained one only), `train_metrics.json` (with the final reward margin and accuracy) and a card.

Pairs are TRL's conversational format (`judges.preference.trl_pair`): `prompt` a list of chat
messages, `chosen` / `rejected` one assistant message each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from agent.errors import SelfloopError
from agent.models import ModelSpec, load_tokenizer, pick_device, resolve
from tuners import precision
from tuners.config import TuneConfig
from tuners.logprobs import FIELDS, use_cpu_head
from tuners.train import (
    TrainResult,
    _context_of,
    _fingerprint,
    _load_model,
    _save_artifact,
    _this_device,
    resume_point,
    trainer_args,
)

log = logging.getLogger(__name__)

# DPO's logged figures kept in train_metrics.json (their last logged value).
PREFERENCE_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def check_pairs(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pairs as trl reads them (prompt, chosen, rejected); one-line error naming the pair."""
    if not pairs:
        raise SelfloopError("no preference pairs to train on")
    out = []
    for k, p in enumerate(pairs, 1):
        where = f"pair {k}" + (f" ({p.get('prompt_id')})" if isinstance(p, Mapping) else "")
        if not isinstance(p, Mapping):
            raise SelfloopError(f"{where}: expected an object with prompt, chosen and rejected")
        prompt = p.get("prompt")
        if (
            not isinstance(prompt, list)
            or not prompt
            or not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in prompt)
            or prompt[-1].get("role") != "user"
        ):
            raise SelfloopError(
                f"{where}: prompt must be a list of chat messages ending with the user's"
            )
        answers = []
        for side in ("chosen", "rejected"):
            msgs = p.get(side)
            if (
                not isinstance(msgs, list)
                or len(msgs) != 1
                or msgs[0].get("role") != "assistant"
                or not str(msgs[0].get("content", "")).strip()
            ):
                raise SelfloopError(f"{where}: {side} must be one non-empty assistant message")
            answers.append(msgs[0]["content"])
        if answers[0] == answers[1]:
            raise SelfloopError(f"{where}: chosen and rejected are the same answer")
        out.append({"prompt": list(prompt), "chosen": p["chosen"], "rejected": p["rejected"]})
    return out


def pairs_hash(pairs: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p["prompt"], p["chosen"], p["rejected"]], sort_keys=True).encode())
    return h.hexdigest()


def train_preference(
    base: ModelSpec | str,
    pairs: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    config: TuneConfig,
    *,
    init_adapter: str | Path | None = None,
    round_index: int | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """DPO / RPO on `pairs`; writes the adapter to `out_dir` (see the module docstring).
    Re-running with the same arguments after a kill resumes from the last complete checkpoint."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from tuners.guards import GuardLoss, StepGuard, check_finite_weights, check_settings
    from tuners.memory import PeakMemory

    cfg = config
    if cfg.objective == "sft":
        raise SelfloopError("train_preference needs tune.objective dpo or rpo (sft: tuners.train)")
    if problem := cfg.conflict():
        raise SelfloopError(problem)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SelfloopError(f"{out_dir} already exists; refusing to overwrite a finished artifact")
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    init = Path(init_adapter) if init_adapter else None

    rows = check_pairs(pairs)  # everything that can refuse comes before the first write
    resolved = resolve(base)
    device = pick_device(resolved.spec)
    settings = check_settings(cfg, device, init, ckpt_dir)
    tokenizer = load_tokenizer(resolved)
    if cfg.max_seq_len > _context_of(resolved):
        raise SelfloopError(f"tune.max_seq_len {cfg.max_seq_len} exceeds the model's context")
    digest = pairs_hash(rows)

    trained_in = settings.precision
    fingerprint = _fingerprint(
        str(resolved.path), cfg, digest, str(init) if init else None, trained_in
    )
    resume_from = resume_point(ckpt_dir, fingerprint)
    loss_type, weights = (
        (["sigmoid"], [1.0])
        if cfg.objective == "dpo"
        else (["sigmoid", "sft"], [1.0, cfg.rpo_alpha])
    )

    class GuardedDPOTrainer(GuardLoss, DPOTrainer):
        pass

    with PeakMemory(_this_device(device)) as memory:
        torch.manual_seed(cfg.seed)
        # trl copies a starting adapter into a frozen "ref" adapter: the reference
        packing = cfg.packing and cfg.method != "prefix"
        model, peft_config = trl_model(resolved, cfg, settings.grad_ckpt, init, packing=packing)
        model.config.use_cache = False
        guard = StepGuard(cfg.abort_grad_norm)
        grad_ckpt = settings.grad_ckpt and cfg.method != "qlora"
        args = DPOConfig(
            **trainer_args(cfg, ckpt_dir, len(rows), settings.bf16, grad_ckpt, device),
            beta=cfg.dpo_beta,
            loss_type=loss_type,
            loss_weights=weights,
            max_length=cfg.max_seq_len,
            dataset_num_proc=None,
            # tokens and tokens/s of train_metrics.json: the pairs' real tokens, not the padding
            include_num_input_tokens_seen="non_padding",
        )
        trainer = GuardedDPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[guard, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)
        if cfg.logprob_head == "selfloop" and device == "cpu":  # before _unpad, which wraps it
            # trl's DPOTrainer asks its head for all four FIELDS (its metrics read them)
            weighted = ("log_sum_sq_probs",) if trainer.use_weighting else ()
            use_cpu_head(trainer, (*FIELDS, *weighted))
        _unpad(trainer, packing, cfg.share_prompts)
        if settings.float32_sums:  # after trl has put a fresh adapter on
            precision.float32_sums(trainer.model)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        started = time.monotonic()
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.monotonic() - started
    check_finite_weights(trainer.model, args.device)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(unwrapped, "peft_config", {}):
        unwrapped.delete_adapter("ref")  # the artifact is the trained adapter, not its reference
    result = trl_result(
        trainer, out, guard, cfg, out_dir, seconds=seconds, memory=memory, trainable=trainable,
        resume_from=resume_from, digest=digest, examples=len(rows), keys=PREFERENCE_METRICS,
        trained_in=trained_in,
    )  # fmt: skip
    _save_artifact(trainer, tokenizer, cfg, out_dir, result, resolved, round_index)
    if trainer.is_world_process_zero():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


def trl_result(
    trainer: Any,
    out: Any,
    guard: Any,
    cfg: TuneConfig,
    out_dir: Path,
    *,
    seconds: float,
    memory: Any,
    trainable: int,
    resume_from: Path | None,
    digest: str,
    examples: int,
    keys: Sequence[str],
    trained_in: str = "float32",
) -> TrainResult:
    """The TrainResult of a finished trl run (DPO or GRPO): the loss curve, the last logged
    value of each of `keys` and its curve over the steps, tokens, time and memory."""
    history = trainer.state.log_history
    curve = [(int(e["step"]), float(e["loss"])) for e in history if "loss" in e] or guard.history
    last = {k: v for e in history for k, v in e.items() if k in keys}
    # Not the run's summary (train_loss, ...); per-step entries carry train_runtime too when
    # tokens are counted (transformers adds its speed metrics to every log).
    steps = [e for e in history if "step" in e and "train_loss" not in e]
    curves = {k: [(int(e["step"]), round(float(e[k]), 6)) for e in steps if k in e] for k in last}
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    first_step = int(resume_from.name.split("-")[1]) if resume_from else 0
    return TrainResult(
        out_dir=str(out_dir),
        method=cfg.method,
        steps=trainer.state.global_step,
        final_loss=curve[-1][1] if curve else float(out.training_loss),
        losses=curve,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        peak_memory_mb=memory.peak_mb,
        peak_memory_kind=memory.kind,
        trainable_params=trainable,
        resumed_from_step=first_step or None,
        data_sha256=digest,
        objective=cfg.objective,
        preference={k: round(float(v), 6) for k, v in last.items()},
        curves=curves,
        examples=examples,
        precision=trained_in,
    )


def _unpad(trainer: Any, packing: bool, share_prompts: bool = True) -> None:
    """Padding-free policy and reference forwards (`tuners.unpad`) where the model attends per
    sequence in a packed row, each pair's shared prompt run once; else trl's padded batches as
    they are."""
    from peft import PeftModel

    from agent.backends.refill import can_share_prefix
    from tuners.attention import NAME
    from tuners.unpad import unpad_forward

    if not packing:
        return
    model = trainer.model
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    # A separate reference model (never made here: the reference is an adapter of the policy's
    # model) would run padded beside a packed policy: same numbers, so only the speed differs.
    if getattr(base.config, "_attn_implementation", None) != NAME:
        log.info("preference batches stay padded: per-sequence attention is for SDPA models")
        return
    # A pair's prompt once, not twice, where every layer attends to all earlier tokens (a
    # sliding window or a recurrent layer would see the shortened row differently).
    unpad_forward(base, share_pairs=share_prompts and can_share_prefix(base))


def trl_model(
    resolved: Any, cfg: TuneConfig, grad_ckpt: bool, init: Path | None, packing: bool = False
) -> Any:
    """(model, peft_config) for a trl trainer: the base with the starting adapter loaded
    trainable, or the base and a fresh LoRA config for trl to apply. `packing` switches the
    model to per-sequence attention for packed rows (`tuners.attention`)."""
    from peft import LoraConfig, PeftModel, TaskType

    model = _load_model(resolved, cfg, grad_ckpt, packing=packing)
    if init is not None:
        return PeftModel.from_pretrained(model, init, is_trainable=True), None
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
    )
    return model, lora

"""The one training entry point: `train(base, data, out_dir, config) -> TrainResult`.

transformers' Trainer does the heavy lifting (optimizer, schedule, gradient accumulation,
checkpoints with optimizer/scheduler/RNG state, bf16, gradient checkpointing, and data-parallel
through accelerate/torchrun); selfloop adds what a self-improvement loop needs around it:

- chat formatting with assistant-only labels and padding-free packing (`tuners.data`);
- resumable runs: checkpoints go to `<out_dir>.checkpoints/`; a checkpoint counts only once its
  `selfloop-complete` marker is written after the Trainer finished saving it, and a restart with
  the same arguments continues from the newest complete one (different arguments are refused);
- guards (`tuners.guards`): empty data, over-long examples, an impossible sequence length and
  settings the hardware cannot run are refused before anything is written; a non-finite loss or
  gradient at any step, or an exploding gradient, aborts the run;
- the artifact: `out_dir` appears (atomic rename) only after training succeeded, holding the PEFT
  adapter (or full model), a model card `README.md` and `train_metrics.json`; under FSDP the
  sharded weights are gathered by the Trainer's collective save first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agent.atomic import atomic_write, check_parents
from agent.errors import SelfloopError
from agent.models import ModelSpec, load_tokenizer, loading_weights, pick_device, resolve
from tuners import precision
from tuners.attention import use_for as use_packed_attention
from tuners.card import model_card, portable_adapter_config
from tuners.common import FINGERPRINT, MARKER
from tuners.config import TuneConfig
from tuners.data import Collator, packed_loss, tokenize_dataset
from tuners.dropout import use_bits_dropout

log = logging.getLogger(__name__)

METRICS = "train_metrics.json"


@dataclass
class TrainResult:
    """What a training run produced, as plain data for the loop's metrics."""

    out_dir: str
    method: str
    steps: int
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    peak_memory_mb: float = 0.0  # during this run; what it measures: peak_memory_kind
    peak_memory_kind: str = ""  # cuda_max_allocated | rss_sampled | rss_process_lifetime
    trainable_params: int = 0
    resumed_from_step: int | None = None
    data_sha256: str = ""
    objective: str = "sft"
    examples: int = 0  # training examples (sft), pairs (dpo / rpo) or prompts (grpo)
    # dpo/rpo: last rewards and logps; grpo: last mean reward, its spread, answer lengths
    preference: dict[str, float] = field(default_factory=dict)
    # the same figures per logged step, [[step, value], ...]: whether the reward (grpo) or the
    # reward margin (dpo / rpo) climbed during the run, not just where it ended
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    precision: str = "float32"  # tuners.precision.describe: what `tune.bf16` resolved to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_hash(examples: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.get("messages"), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


# Settings a resumed run may change: how often it logs and saves, the gradient-norm guard
# (raised after an abort, the run goes on from its last checkpoint, which the abort never held)
# and how tokens are scored (logprob_head: the same figures to float32 rounding; share_prompts:
# the same log-probs, a pair's shared prompt one dropout draw).
_MAY_CHANGE = frozenset(
    {"save_steps", "save_total_limit", "logging_steps", "abort_grad_norm", "logprob_head"}
    | {"share_prompts"}
)
# Settings the trainer never reads: they choose a loop round's data (the data digest holds the
# choice) or configure the loop's greedy step, whose trainer gets them as its own objective,
# learning_rate, batch_size... (compared there).
_LOOP_ONLY = frozenset(
    {"replay", "anchor", "carry_rejected", "warm_start"}
    | {"greedy_pairs", "greedy_objective", "greedy_learning_rate", "greedy_epochs"}
    | {"greedy_batch_size", "greedy_match", "greedy_steps"}
)


def _fingerprint(
    base: str, cfg: TuneConfig, digest: str, init_adapter: str | None, trained_in: str
) -> dict:
    """What must match for checkpoints to be resumable (`changed_settings`). `trained_in` is
    the precision `tune.bf16` resolved to (`precision.describe`): `auto` resolves by the
    device, so a run resumed on another machine could otherwise change precision unseen."""
    keep = cfg.model_dump(exclude=set(_MAY_CHANGE | _LOOP_ONLY))
    return {
        "base": base,
        "config": keep,
        "data": digest,
        "init_adapter": init_adapter,
        "precision": trained_in,
    }


# What a fingerprint written before a setting existed trained with, where that is not the
# setting's default: checkpoints from before `dropout_masks` drew nn.Dropout's masks.
_BEFORE_ADDED = {"dropout_masks": "bernoulli"}


def changed_settings(old: dict, new: dict) -> list[str]:
    """What differs between two `_fingerprint`s, as `key old -> new` lines; empty = resumable.
    A setting only one side has is a field added (or retired) by an upgrade: no difference while
    its value is the default (or, in `_BEFORE_ADDED`, what runs before it did), so checkpoints
    made before an upgrade still resume. Fingerprints written before `_LOOP_ONLY` and
    `_MAY_CHANGE` were left out hold those: ignored, as is the precision of one written before
    it was recorded."""
    from tuners.config import TuneConfig

    changed = [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in ("base", "init_adapter")
        if old.get(k) != new.get(k)
    ]
    if "precision" in old and old["precision"] != new.get("precision"):
        changed.append(f"precision {old['precision']!r} -> {new.get('precision')!r}")
    if old.get("data") != new.get("data"):
        changed.append("the training data differ")
    a, b = old.get("config") or {}, new.get("config") or {}
    defaults = {**TuneConfig().model_dump(), **_BEFORE_ADDED}
    missing = object()
    for k in sorted((set(a) | set(b)) - _MAY_CHANGE - _LOOP_ONLY):
        x = a.get(k, defaults.get(k, missing))
        y = b.get(k, defaults.get(k, missing))
        if x is missing or y is missing or x != y:
            show = ["(none)" if v is missing else repr(v) for v in (x, y)]
            changed.append(f"tune.{k} {show[0]} -> {show[1]}")
    return changed


def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and (p / MARKER).is_file():
            found.append(p)
        elif p.is_dir():
            log.warning("ignoring incomplete checkpoint %s (killed while saving)", p)
            shutil.rmtree(p, ignore_errors=True)
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _load_model(resolved: Any, cfg: TuneConfig, grad_ckpt: bool, packing: bool) -> Any:
    from transformers import AutoModelForCausalLM

    trust = resolved.spec.trust_remote_code
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        # A quantized model is placed at load time and cannot be moved afterwards: without a
        # device_map every torchrun process would put its copy on GPU 0.
        with loading_weights(resolved):
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path,
                quantization_config=quant,
                dtype=torch.bfloat16,
                device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},
                trust_remote_code=trust,
            )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    else:
        # Master weights stay float32; bf16 is applied as autocast by the Trainer.
        with loading_weights(resolved):
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path, dtype=torch.float32, trust_remote_code=trust
            )
    # Packed rows attend per example where that is exact (tuners.attention); else the mask.
    if packing and not use_packed_attention(model, trust):
        log.info(
            "packed rows use %s attention with a block-diagonal mask (per-example attention is "
            "for models transformers runs on SDPA)",
            getattr(model.config, "_attn_implementation", "?"),
        )
    return model


def _wrap(model: Any, cfg: TuneConfig, init_adapter: Path | None) -> Any:
    from peft import LoraConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model

    if cfg.method == "full":
        return model
    if init_adapter is not None:  # checked by guards.check_settings: an adapter directory
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    if cfg.method == "prefix":
        return get_peft_model(
            model,
            PrefixTuningConfig(
                task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens
            ),
        )
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
    )
    return get_peft_model(model, lora)


def train(
    base: ModelSpec | str,
    data: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    config: TuneConfig | None = None,
    *,
    init_adapter: str | Path | None = None,
    round_index: int | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune `base` on chat examples; write the adapter (or full model) to `out_dir`.

    Re-running with the same arguments after a kill resumes from the last complete checkpoint.
    `out_dir` must not exist yet: a finished artifact is never overwritten. `callbacks` are extra
    transformers `TrainerCallback`s (progress displays, tests).
    """
    from transformers import PrinterCallback, TrainingArguments

    from tuners.guards import (
        GuardedTrainer,
        StepGuard,
        check_finite_weights,
        check_settings,
    )
    from tuners.memory import PeakMemory

    cfg = config or TuneConfig()
    if cfg.objective != "sft":
        raise SelfloopError(
            f"tune.objective={cfg.objective} trains on preference pairs: "
            "tuners.preference.train_preference"
        )
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SelfloopError(f"{out_dir} already exists; refusing to overwrite a finished artifact")
    check_parents(out_dir)  # before the model loads, not at the end when it is saved
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    init = Path(init_adapter) if init_adapter else None

    # Everything that can refuse the run comes before the first write to disk, so a refused
    # run leaves nothing behind (no checkpoint directory, no fingerprint).
    resolved = resolve(base)
    device = pick_device(resolved.spec)
    settings = check_settings(cfg, device, init, ckpt_dir)
    tokenizer = load_tokenizer(resolved)
    context = _context_of(resolved)
    if cfg.max_seq_len > context:
        raise SelfloopError(
            f"tune.max_seq_len {cfg.max_seq_len} exceeds the model's context of {context}"
        )
    items = tokenize_dataset(tokenizer, data, cfg.max_seq_len, context)
    digest = data_hash(data)
    packing = cfg.packing and cfg.method != "prefix"
    if cfg.packing and not packing:
        log.info("prefix tuning prepends virtual tokens to every row; training without packing")

    trained_in = settings.precision
    fingerprint = _fingerprint(
        str(resolved.path), cfg, digest, str(init) if init else None, trained_in
    )
    resume_from = resume_point(ckpt_dir, fingerprint)

    with PeakMemory(_this_device(device)) as memory:  # model, optimizer and steps
        torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG
        model = _load_model(resolved, cfg, settings.grad_ckpt, packing)
        # No KV cache in training; packing also needs it off (see tuners.data.pack_batch).
        model.config.use_cache = False
        model = _wrap(model, cfg, init)
        if cfg.dropout_masks == "bits" and device == "cpu":  # CUDA's dropout is one fused kernel
            use_bits_dropout(model)
        if settings.float32_sums:
            precision.float32_sums(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        collator = Collator(packing, tokenizer.pad_token_id)
        guard = StepGuard(cfg.abort_grad_norm)
        # qlora checkpoints through prepare_model_for_kbit_training, FSDP through its config.
        trainer_ckpt = settings.grad_ckpt and cfg.method != "qlora" and settings.fsdp_config is None

        args = TrainingArguments(
            **trainer_args(cfg, ckpt_dir, len(items), settings.bf16, trainer_ckpt, device),
            fsdp=settings.fsdp_config is not None,
            fsdp_config=settings.fsdp_config,
            remove_unused_columns=False,
            # Logs train_tokens_per_second per step; packed rows hold no padding to leave out.
            include_num_input_tokens_seen="all" if packing else "non_padding",
        )
        trainer = GuardedTrainer(
            model=model,
            args=args,
            train_dataset=items,
            data_collator=collator,
            compute_loss_func=packed_loss if packing else None,
            callbacks=[guard, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # StepGuard logs progress through `logging`
        started = time.monotonic()
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.monotonic() - started
    steps = trainer.state.global_step
    first_step = int(resume_from.name.split("-")[1]) if resume_from else 0
    tokens = collator.tokens_seen  # this process, this run (skipped batches of a resume excluded)
    # The whole curve: after a resume, the restored trainer state holds the steps before the kill.
    curve = [
        (int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e
    ] or guard.history
    final_loss = curve[-1][1] if curve else float(out.training_loss)
    check_finite_weights(trainer.model, args.device)
    result = TrainResult(
        out_dir=str(out_dir),
        method=cfg.method,
        steps=steps,
        final_loss=final_loss,
        losses=curve,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        peak_memory_mb=memory.peak_mb,
        peak_memory_kind=memory.kind,
        trainable_params=trainable,
        resumed_from_step=first_step or None,
        data_sha256=digest,
        examples=len(data),
        precision=trained_in,
    )
    _save_artifact(trainer, tokenizer, cfg, out_dir, result, resolved, round_index)
    if trainer.is_world_process_zero():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return result


def resume_point(ckpt_dir: Path, fingerprint: dict) -> Path | None:
    """Record the run's fingerprint in `ckpt_dir` and return the newest complete checkpoint to
    resume from; checkpoints made with another fingerprint are refused, not mixed in."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    fp_file = ckpt_dir / FINGERPRINT
    try:
        old = json.loads(fp_file.read_text()) if fp_file.is_file() else None
        changed = changed_settings(old, fingerprint) if old is not None else []
    except (ValueError, AttributeError) as e:  # cut short or edited: not a fingerprint
        raise SelfloopError(
            f"{fp_file} is not a readable fingerprint ({e}); delete {ckpt_dir} to start over"
        ) from e
    if changed:
        raise SelfloopError(
            f"checkpoints in {ckpt_dir} were made with other settings or data "
            f"({'; '.join(changed)}); delete that directory to start over, or restore the "
            "original settings to resume"
        )
    # Every torchrun rank writes it: atomically, so no rank ever reads a half-written file.
    atomic_write(fp_file, json.dumps(fingerprint, indent=2))
    resume = _complete_checkpoints(ckpt_dir)
    return resume[-1] if resume else None


def trainer_args(
    cfg: TuneConfig, ckpt_dir: Path, n_examples: int, bf16: bool, grad_ckpt: bool, device: str
) -> dict[str, Any]:
    """The Trainer arguments every objective shares (SFT's TrainingArguments, trl's DPOConfig):
    schedule, checkpoints, seeds, precision, device."""
    return {
        "output_dir": str(ckpt_dir),
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.lr(),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": _warmup_steps(cfg, n_examples),
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "logging_steps": cfg.logging_steps,
        # Log a NaN loss as NaN (the default replaces it by the mean); StepGuard aborts.
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": bf16,
        _ckpt_arg(): grad_ckpt,
        "use_cpu": not device.startswith("cuda"),
        "report_to": "none",
        "dataloader_num_workers": 0,
        "disable_tqdm": not os.isatty(2),
    }


def _ckpt_arg() -> str:
    # transformers 5.23 renamed TrainingArguments.gradient_checkpointing to
    # activation_checkpointing (the old name still works there, with a FutureWarning).
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )


def _this_device(device: str) -> str:
    """The CUDA device this process trains on (torchrun: one GPU per local rank)."""
    if device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _warmup_steps(cfg: TuneConfig, n_examples: int) -> int:
    """Warm-up steps as a share of the run, rounded down. transformers rounds a ratio up, so a
    round of 3 steps spent its first one at learning rate 0 (seen in a real quickstart round:
    losses 1.133, 1.133, 1.083 on the same batch)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(n_examples / (cfg.batch_size * world))
    total = cfg.max_steps or math.ceil(math.ceil(batches / cfg.grad_accum) * cfg.epochs)
    return int(cfg.warmup_ratio * total)


def _context_of(resolved: Any) -> int:
    cfg = json.loads((resolved.path / "config.json").read_text())
    return int(cfg.get("max_position_embeddings") or 2048)


def _save_artifact(
    trainer: Any,
    tokenizer: Any,
    cfg: TuneConfig,
    out_dir: Path,
    result: TrainResult,
    resolved: Any,
    round_index: int | None,
) -> None:
    """Called on every rank. Under FSDP the weights are sharded, so `trainer.save_model` gathers
    them collectively and rank 0 writes; rank 0 then adds the card and metrics and renames the
    directory into place, so `out_dir` appears whole or not at all."""
    # One name for all ranks: under FSDP a non-writing rank may still create the directory.
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    zero = trainer.is_world_process_zero()
    if zero:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
    if getattr(trainer, "is_fsdp_enabled", False):
        # Checkpoints may be sharded; the artifact must be whole (peft's FSDP saving recipe).
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(tmp))
    if not zero:
        return
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the card has the settings
    if cfg.method == "full":
        tokenizer.save_pretrained(tmp)
    (tmp / METRICS).write_text(json.dumps(result.to_dict(), indent=2))
    (tmp / "README.md").write_text(model_card(cfg, result, resolved, round_index))
    portable_adapter_config(tmp, resolved)
    os.rename(tmp, out_dir)
    log.info(
        "wrote %s (%s, %d steps, final loss %.4f)",
        out_dir,
        cfg.method,
        result.steps,
        result.final_loss,
    )

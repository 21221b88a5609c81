"""The one training entry point: `train(base, data, out_dir, config) -> TrainResult`.

transformers' Trainer does the heavy lifting (optimizer, schedule, gradient accumulation,
checkpoints with optimizer/scheduler/RNG state, bf16, gradient checkpointing, and data-parallel
through accelerate/torchrun); selfloop adds what a self-improvement loop needs around it:

- chat formatting with assistant-only labels and padding-free packing (`tuners.data`);
- resumable runs: checkpoints go to `<out_dir>.checkpoints/`; a checkpoint counts only once its
  `selfloop-complete` marker is written after the Trainer finished saving it, and a restart with
  the same arguments continues from the newest complete one (different arguments are refused);
- guards: empty data, over-long examples and an impossible sequence length are reported before
  any step; a non-finite loss or an exploding gradient aborts the run;
- the artifact: `out_dir` appears (atomic rename) only after training succeeded, holding the PEFT
  adapter (or full model), a model card `README.md` and `train_metrics.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agent.errors import SelfloopError
from agent.models import ModelSpec, load_tokenizer, pick_device, resolve
from tuners.config import TuneConfig
from tuners.data import Collator, packed_loss, tokenize_dataset

log = logging.getLogger(__name__)

MARKER = "selfloop-complete"
METRICS = "train_metrics.json"


class TrainingAborted(SelfloopError):
    """Training hit a non-finite loss or an exploding gradient."""


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
    peak_memory_mb: float = 0.0
    trainable_params: int = 0
    resumed_from_step: int | None = None
    data_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_hash(examples: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.get("messages"), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def _fingerprint(base: str, cfg: TuneConfig, digest: str, init_adapter: str | None) -> dict:
    # What must match for checkpoints to be resumable; logging/saving knobs may change.
    keep = cfg.model_dump(exclude={"save_steps", "save_total_limit", "logging_steps"})
    return {"base": base, "config": keep, "data": digest, "init_adapter": init_adapter}


def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and (p / MARKER).is_file():
            found.append(p)
        elif p.is_dir():
            log.warning("ignoring incomplete checkpoint %s (killed while saving)", p)
            shutil.rmtree(p, ignore_errors=True)
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _load_model(resolved: Any, cfg: TuneConfig, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    trust = resolved.spec.trust_remote_code
    if cfg.method == "qlora":
        if not device.startswith("cuda"):
            raise SelfloopError(
                "tune.method=qlora needs a CUDA GPU (4-bit bitsandbytes); use lora on CPU"
            )
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as e:
            raise SelfloopError(
                "tune.method=qlora needs bitsandbytes: pip install 'selfloop[gpu]'"
            ) from e
        from peft import prepare_model_for_kbit_training

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, quantization_config=quant, dtype=torch.bfloat16, trust_remote_code=trust
        )
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=_grad_ckpt(cfg, device)
        )
    # Master weights stay float32; bf16 is applied as autocast by the Trainer.
    return AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=torch.float32, trust_remote_code=trust
    )


def _grad_ckpt(cfg: TuneConfig, device: str) -> bool:
    return (
        device.startswith("cuda")
        if cfg.gradient_checkpointing == "auto"
        else cfg.gradient_checkpointing
    )


def _bf16(cfg: TuneConfig, device: str) -> bool:
    if cfg.bf16 == "auto":
        return device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if cfg.bf16 and not device.startswith("cuda"):
        raise SelfloopError("tune.bf16=true needs a CUDA GPU; use bf16: auto on CPU")
    return bool(cfg.bf16)


def _wrap(model: Any, cfg: TuneConfig, init_adapter: Path | None) -> Any:
    from peft import LoraConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model

    if cfg.method == "full":
        if init_adapter is not None:
            raise SelfloopError("tune.method=full cannot warm-start from an adapter")
        return model
    if init_adapter is not None:
        if not (init_adapter / "adapter_config.json").is_file():
            raise SelfloopError(f"warm-start adapter {init_adapter} has no adapter_config.json")
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
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    cfg = config or TuneConfig()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SelfloopError(f"{out_dir} already exists; refusing to overwrite a finished artifact")
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    init = Path(init_adapter) if init_adapter else None

    resolved = resolve(base)
    device = pick_device(resolved.spec)
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

    fingerprint = _fingerprint(str(resolved.path), cfg, digest, str(init) if init else None)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    fp_file = ckpt_dir / "selfloop-train-args.json"
    if fp_file.is_file() and json.loads(fp_file.read_text()) != fingerprint:
        raise SelfloopError(
            f"checkpoints in {ckpt_dir} were made with other settings or data; delete that "
            "directory to start over, or restore the original settings to resume"
        )
    fp_file.write_text(json.dumps(fingerprint, indent=2))
    resume = _complete_checkpoints(ckpt_dir)
    resume_from = resume[-1] if resume else None

    torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG
    model = _load_model(resolved, cfg, device)
    # No KV cache in training; packing also needs it off (see tuners.data.pack_batch).
    model.config.use_cache = False
    model = _wrap(model, cfg, init)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    collator = Collator(packing, tokenizer.pad_token_id)
    history: list[tuple[int, float]] = []

    class Guard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            loss, gnorm = logs.get("loss"), logs.get("grad_norm")
            if loss is not None:
                if not math.isfinite(loss):
                    raise TrainingAborted(
                        f"training aborted at step {state.global_step}: loss is {loss}"
                    )
                history.append((state.global_step, float(loss)))
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, loss)
            if gnorm is not None and (not math.isfinite(gnorm) or gnorm > cfg.abort_grad_norm):
                raise TrainingAborted(
                    f"training aborted at step {state.global_step}: gradient norm {gnorm:.3g} "
                    f"(tune.abort_grad_norm {cfg.abort_grad_norm:g}); lower the learning rate"
                )

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            if state.is_world_process_zero:
                marker = Path(args.output_dir) / f"checkpoint-{state.global_step}" / MARKER
                marker.write_text(json.dumps({"step": state.global_step}))

    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr(),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=_warmup_steps(cfg, len(items)),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=_bf16(cfg, device),
        activation_checkpointing=_grad_ckpt(cfg, device) and cfg.method != "qlora",
        use_cpu=not device.startswith("cuda"),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not os.isatty(2),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=items,
        data_collator=collator,
        compute_loss_func=packed_loss if packing else None,
        callbacks=[Guard(), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # Guard logs progress through `logging` instead
    started = time.monotonic()
    out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.monotonic() - started
    steps = trainer.state.global_step
    first_step = int(resume_from.name.split("-")[1]) if resume_from else 0
    tokens = collator.tokens_seen  # this process, this run (skipped batches of a resume excluded)
    # The whole curve: after a resume, the restored trainer state holds the steps before the kill.
    curve = [
        (int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e
    ] or history
    final_loss = curve[-1][1] if curve else float(out.training_loss)
    _check_finite(model)
    result = TrainResult(
        out_dir=str(out_dir),
        method=cfg.method,
        steps=steps,
        final_loss=final_loss,
        losses=curve,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        peak_memory_mb=_peak_memory_mb(device),
        trainable_params=trainable,
        resumed_from_step=first_step or None,
        data_sha256=digest,
    )
    if trainer.is_world_process_zero():
        _write_artifact(
            trainer.model, tokenizer, cfg, out_dir, result, resolved.display_name, round_index
        )
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return result


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


def _check_finite(model: Any) -> None:
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise TrainingAborted(f"training produced non-finite weights in {name}")


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _write_artifact(
    model: Any,
    tokenizer: Any,
    cfg: TuneConfig,
    out_dir: Path,
    result: TrainResult,
    base: str,
    round_index: int | None,
) -> None:
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if cfg.method == "full":
        tokenizer.save_pretrained(tmp)
    (tmp / METRICS).write_text(json.dumps(result.to_dict(), indent=2))
    (tmp / "README.md").write_text(_model_card(cfg, result, base, round_index))
    os.rename(tmp, out_dir)
    log.info(
        "wrote %s (%s, %d steps, final loss %.4f)",
        out_dir,
        cfg.method,
        result.steps,
        result.final_loss,
    )


def _model_card(cfg: TuneConfig, r: TrainResult, base: str, round_index: int | None) -> str:
    what = "full fine-tune" if cfg.method == "full" else f"{cfg.method} adapter"
    return (
        f"# selfloop {what}\n\n"
        f"- base model: {base}\n"
        f"- method: {cfg.method}\n"
        f"- round: {round_index if round_index is not None else 'n/a'}\n"
        f"- training data sha256: {r.data_sha256}\n"
        f"- steps: {r.steps}, final loss: {r.final_loss:.4f}, tokens: {r.tokens}\n"
        f"- trainable parameters: {r.trainable_params}\n\n"
        "Settings:\n\n```json\n"
        f"{json.dumps(cfg.model_dump(), indent=2)}\n```\n"
    )

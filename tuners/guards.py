"""What stops a training run: settings refused before anything is written, and the step guard.

`check_settings` turns a `TuneConfig` plus the device into the flags the Trainer gets, refusing
what cannot run (qlora without CUDA, bf16 without CUDA or native bfloat16, gradient
checkpointing with prefix tuning, FSDP on CPU, a warm start that cannot load) - all before
`train` writes its first byte to disk.

`StepGuard` watches every optimizer step, not just the logged ones: the loss of each micro-batch
(handed over by `GuardedTrainer.training_step`) and the gradients after clipping are checked for
NaN/inf right before the optimizer applies them, so a non-finite loss or gradient never reaches
the weights; the trained weights themselves are checked once more before the artifact is saved.
(transformers' `logging_nan_inf_filter`, on by default, would replace a NaN loss by the running
mean in the logs; `train` turns it off.) An exploding but
finite gradient norm is compared with `tune.abort_grad_norm` at each logging step, where the
Trainer reports the pre-clip norm; clipping keeps such a step finite meanwhile.

In a multi-process run every verdict is all-reduced, so all ranks abort together instead of
the healthy ones waiting forever in the next collective for the one that raised.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from agent.errors import SelfloopError
from agent.models import check_adapter_files, native_bf16
from tuners.common import FINGERPRINT, MARKER, TrainingAborted
from tuners.config import TuneConfig
from tuners.precision import describe

log = logging.getLogger("tuners.train")  # the training run's progress, one logger


@dataclass(frozen=True)
class Settings:
    """The hardware-dependent flags one run trains with."""

    bf16: bool
    grad_ckpt: bool
    fsdp_config: dict[str, Any] | None  # None = no FSDP
    # bfloat16 on CPU (tune.bf16: true, or auto for LoRA) adds the adapters' updates in float32
    # (tuners/precision.py); CUDA keeps plain autocast, where this was not measured.
    float32_sums: bool = False

    @property
    def precision(self) -> str:
        """What the run trains in, as train_metrics.json and the resume fingerprint record it."""
        return describe(self.bf16, self.float32_sums)


def check_settings(
    cfg: TuneConfig, device: str, init_adapter: Path | None, ckpt_dir: Path | None = None
) -> Settings:
    """Every refusal that needs no weights, so `train` can make it before writing anything.
    `ckpt_dir`: the run's checkpoints, whose recorded precision `bf16: auto` resumes in."""
    if problem := cfg.conflict():
        raise SelfloopError(problem)
    cuda = device.startswith("cuda")
    if cfg.method == "qlora":
        if not cuda:
            raise SelfloopError(
                "tune.method=qlora needs a CUDA GPU (4-bit bitsandbytes); use lora on CPU"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise SelfloopError(
                "tune.method=qlora needs bitsandbytes: pip install 'selfloop[gpu]'"
            ) from e
    if cfg.bf16 is True and not (cuda or native_bf16(device)):
        raise SelfloopError(
            "tune.bf16=true needs a CUDA GPU or a CPU with native bfloat16 (AVX512-BF16 / AMX); "
            "use bf16: auto"
        )
    if cfg.fsdp and not cuda:
        raise SelfloopError(
            "tune.fsdp needs CUDA GPUs (torchrun --nproc_per_node N ... --set tune.fsdp=true); "
            "on CPU drop tune.fsdp: torchrun alone trains data-parallel over gloo"
        )
    if cfg.fsdp and "LOCAL_RANK" not in os.environ:
        # accelerate enables FSDP only in a distributed launch: alone it would silently train
        # unsharded, and without gradient checkpointing (left to FSDP's config).
        raise SelfloopError(
            "tune.fsdp shards across processes: launch with torchrun --nproc_per_node N -m "
            "loop.cli tune ... --set tune.fsdp=true (a single process cannot shard)"
        )
    packs = cfg.packing and cfg.method != "prefix"
    if cuda and packs and "LOCAL_RANK" not in os.environ and torch.cuda.device_count() > 1:
        # The Trainer would wrap the model in nn.DataParallel, which splits every batch tensor
        # along dim 0: a packed row's 1-D logits_to_keep and cu_seq_lens would be cut apart.
        raise SelfloopError(
            f"{torch.cuda.device_count()} GPUs are visible to one process: launch with torchrun "
            "--nproc_per_node N (data parallel), or pick one GPU with CUDA_VISIBLE_DEVICES=0, "
            "or set tune.packing=false"
        )
    if init_adapter is not None:
        if cfg.method == "full":
            raise SelfloopError("tune.method=full cannot warm-start from an adapter")
        if not (init_adapter / "adapter_config.json").is_file():
            raise SelfloopError(f"warm-start adapter {init_adapter} has no adapter_config.json")
        check_adapter_files(init_adapter)

    if cfg.bf16 != "auto":
        bf16 = bool(cfg.bf16)
    elif cuda:
        bf16 = torch.cuda.is_bf16_supported()
    else:
        # A CPU with native bfloat16 trains LoRA in it, with the adapters' sums and the head in
        # float32 (tuners/precision.py): loss +0.0004 from float32's over a real round's 88 SFT
        # steps, 1.37x its tokens/s (the median of 2 alternating repeats, since LoRA dropout's
        # masks stopped costing both the same 15%), RPO 1.41x (bench/README.md). Prefix
        # tuning, full fine-tuning and GRPO (which generates as it trains) were not measured
        # in it: float32.
        bf16 = cfg.method == "lora" and cfg.objective != "grpo" and native_bf16(device)
        recorded = recorded_precision(ckpt_dir)
        if recorded is not None:  # checkpoints resume in what they were trained in
            bf16 = recorded != "float32" and native_bf16(device)
    if cfg.gradient_checkpointing == "auto":
        # peft refuses prefix tuning under gradient checkpointing (the prefix is a KV cache).
        grad_ckpt = cuda and cfg.method != "prefix"
    else:
        grad_ckpt = bool(cfg.gradient_checkpointing)
    fsdp = None
    if cfg.fsdp:
        fsdp = dict(cfg.fsdp_config)
        if grad_ckpt:  # FSDP's own checkpointing avoids the Trainer's redundant all-gather
            fsdp.setdefault("activation_checkpointing", True)
    return Settings(
        bf16=bf16, grad_ckpt=grad_ckpt, fsdp_config=fsdp, float32_sums=bf16 and not cuda
    )


def recorded_precision(ckpt_dir: Path | None) -> str | None:
    """The precision recorded in `ckpt_dir`'s fingerprint (`tuners.train.resume_point`), None
    without one. Read whether or not a checkpoint was saved yet: `resume_point` compares the
    fingerprint either way (RPO's 22 steps save none at the default save_steps). One written
    before the precision was recorded is float32's: `auto` meant float32 on CPU then."""
    fp_file = ckpt_dir / FINGERPRINT if ckpt_dir is not None else None
    if fp_file is None or not fp_file.is_file():
        return None
    try:
        recorded = json.loads(fp_file.read_text()).get("precision", "float32")
    except (OSError, ValueError, AttributeError):
        return None  # resume_point reports an unreadable fingerprint
    return recorded if isinstance(recorded, str) else None


def any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise max of `flags` over all processes (itself in a single process)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters and gradients are DTensors; each rank checks its own shard.
    return t.to_local() if hasattr(t, "to_local") else t


def _all_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor on `device`, without a host sync per tensor."""
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([torch.isfinite(_local(t)).all().to(device) for t in tensors]).all()


def check_finite_weights(model: Any, device: torch.device) -> None:
    """Raise if any trainable weight is NaN/inf on any rank (the last check before saving)."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trained:
        return
    names = [n for n, _ in trained]
    flags = torch.stack([~torch.isfinite(_local(p.detach())).all().to(device) for _, p in trained])
    bad = any_rank(flags.float()).bool().tolist()
    if any(bad):
        raise TrainingAborted(f"training produced non-finite weights in {names[bad.index(True)]}")


class StepGuard(TrainerCallback):
    """Aborts on a non-finite loss or gradient at every step; records the loss curve; marks a
    checkpoint complete once the Trainer has finished writing it."""

    def __init__(self, abort_grad_norm: float) -> None:
        self.abort_grad_norm = abort_grad_norm
        self.history: list[tuple[int, float]] = []
        self._bad_loss: torch.Tensor | None = None

    def note_loss(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss; flags accumulate on the device until the optimizer step."""
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = (
            bad if self._bad_loss is None else self._bad_loss | bad.to(self._bad_loss.device)
        )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):  # noqa: ANN001
        # After backward and clipping, before the optimizer applies the step: a NaN caught here
        # never reaches the weights, hence never a checkpoint.
        dev = args.device
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        bad_loss = (
            self._bad_loss.to(dev)
            if self._bad_loss is not None
            else torch.zeros((), device=dev, dtype=torch.bool)
        )
        self._bad_loss = None
        flags = torch.stack([bad_loss, ~_all_finite(grads, dev)]).float()
        loss_bad, grad_bad = any_rank(flags).bool().tolist()  # one host sync per step
        step = state.global_step + 1
        if loss_bad:
            raise TrainingAborted(
                f"training aborted at step {step}: the loss is not finite (nan/inf); lower the "
                "learning rate or check the data"
            )
        if grad_bad:
            raise TrainingAborted(
                f"training aborted at step {step}: the gradient is not finite (nan/inf); lower "
                "the learning rate"
            )

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        logs = logs or {}
        loss, gnorm = logs.get("loss"), logs.get("grad_norm")
        if loss is not None:
            if not math.isfinite(loss):
                raise TrainingAborted(
                    f"training aborted at step {state.global_step}: loss is {loss}"
                )
            self.history.append((state.global_step, float(loss)))
            log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, loss)
        if gnorm is not None and (not math.isfinite(gnorm) or gnorm > self.abort_grad_norm):
            raise TrainingAborted(
                f"training aborted at step {state.global_step}: gradient norm {gnorm:.3g} "
                f"(tune.abort_grad_norm {self.abort_grad_norm:g}); lower the learning rate"
            )

    def on_save(self, args, state, control, **kw):  # noqa: ANN001
        if state.is_world_process_zero:
            marker = Path(args.output_dir) / f"checkpoint-{state.global_step}" / MARKER
            marker.write_text(json.dumps({"step": state.global_step}))


class GuardLoss:
    """Mixed into a Trainer (or a trl trainer): hands each micro-batch's loss to the
    `StepGuard` among its callbacks."""

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, StepGuard):
                cb.note_loss(loss)
        return loss


class GuardedTrainer(GuardLoss, Trainer):
    """The Trainer with the step guard."""

"""Online RL with the verifier as the reward: `train_grpo(base, tasks, out_dir, config)`.

`tune.objective: grpo` is trl's GRPOTrainer (Shao et al., DeepSeekMath) on constrained tasks:
for each prompt it samples `tune.grpo_generations` answers, scores each by the share of the
prompt's verifiable constraints it passes (strict, `judges.verifiable`), and moves the policy
toward the answers that beat their group's mean. No fixed answers are needed - the model
learns from its own samples while training - which is how verifiable instruction following is
trained in the published recipes (Tulu 3's RLVR, IFBench). Answers cut off at
`tune.grpo_max_tokens` are left out of the loss. With `tune.grpo_beta` 0 (the default) there is
no reference model; above 0 the reference is the base (adapters disabled).

Around trl's loss selfloop keeps what it keeps for SFT and DPO: the same guards, resumable
checkpoints (fingerprint of settings + tasks), `train_metrics.json` (with the last mean reward)
and an adapter directory that appears whole with its card.

A task is `{"instruction": str, "constraints": [...]}` (what augment writes) or
`{"prompt": [chat messages], "constraints": [...]}`.
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
from judges.verifiable import check, validate_all
from tuners import precision
from tuners.config import TuneConfig
from tuners.dropout import use_bits_dropout
from tuners.logprobs import use_cpu_head
from tuners.preference import trl_model, trl_result
from tuners.train import (
    TrainResult,
    _context_of,
    _fingerprint,
    _save_artifact,
    _this_device,
    resume_point,
    trainer_args,
)

log = logging.getLogger(__name__)

# GRPO's logged figures kept in train_metrics.json (their last logged value).
GRPO_METRICS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio")  # fmt: skip


def check_tasks(tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tasks as GRPO rows: `prompt` (chat messages) and `constraints` (JSON text: one Arrow
    type whatever the constraints' keys). One-line error naming the task."""
    if not tasks:
        raise SelfloopError("no constrained tasks to train on")
    rows = []
    for k, t in enumerate(tasks, 1):
        name = (t.get("id") or t.get("prompt_id")) if isinstance(t, Mapping) else None
        where = f"task {k}" + (f" ({name})" if name else "")
        if not isinstance(t, Mapping):
            raise SelfloopError(f"{where}: expected an object with instruction and constraints")
        prompt = t.get("prompt")
        if prompt is None and isinstance(t.get("instruction"), str) and t["instruction"].strip():
            text = t["instruction"] + (f"\n\n{t['input']}" if t.get("input") else "")
            prompt = [{"role": "user", "content": text}]
        if (
            not isinstance(prompt, list)
            or not prompt
            or not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in prompt)
            or prompt[-1].get("role") != "user"
        ):
            raise SelfloopError(f"{where}: needs an instruction, or a prompt of chat messages")
        constraints = t.get("constraints")
        if not constraints:
            raise SelfloopError(f"{where}: no constraints: grpo's reward is the verifier's")
        try:
            checked = validate_all(constraints)
        except SelfloopError as e:
            raise SelfloopError(f"{where}: {e}") from None
        rows.append({"prompt": list(prompt), "constraints": json.dumps(checked)})
    return rows


def verifier_reward(
    prompts: Sequence[Any], completions: Sequence[Any], constraints: Sequence[str], **_: Any
) -> list[float]:
    """trl reward function: per completion, the share of its prompt's constraints it passes
    (strict). Conversational completions are `[{"role": "assistant", "content": ...}]`."""
    rewards = []
    for completion, cons in zip(completions, constraints):
        text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
        results = check(text, json.loads(cons), mode="strict")
        rewards.append(sum(r.passed for r in results) / len(results))
    return rewards


def tasks_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["prompt"], r["constraints"]], sort_keys=True).encode())
    return h.hexdigest()


def train_grpo(
    base: ModelSpec | str,
    tasks: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    config: TuneConfig,
    *,
    init_adapter: str | Path | None = None,
    round_index: int | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """GRPO on `tasks`; writes the adapter to `out_dir` (see the module docstring). Re-running
    with the same arguments after a kill resumes from the last complete checkpoint."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from tuners.guards import GuardLoss, StepGuard, check_finite_weights, check_settings
    from tuners.memory import PeakMemory

    cfg = config
    if cfg.objective != "grpo":
        raise SelfloopError("train_grpo needs tune.objective grpo")
    if problem := cfg.conflict():
        raise SelfloopError(problem)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SelfloopError(f"{out_dir} already exists; refusing to overwrite a finished artifact")
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    init = Path(init_adapter) if init_adapter else None

    rows = check_tasks(tasks)  # everything that can refuse comes before the first write
    resolved = resolve(base)
    device = pick_device(resolved.spec)
    settings = check_settings(cfg, device, init, ckpt_dir)
    tokenizer = load_tokenizer(resolved)
    if cfg.grpo_max_tokens > _context_of(resolved):
        raise SelfloopError(f"tune.grpo_max_tokens {cfg.grpo_max_tokens} exceeds the context")
    digest = tasks_hash(rows)
    trained_in = settings.precision
    fingerprint = _fingerprint(
        str(resolved.path), cfg, digest, str(init) if init else None, trained_in
    )
    resume_from = resume_point(ckpt_dir, fingerprint)

    class GuardedGRPOTrainer(GuardLoss, GRPOTrainer):
        pass

    with PeakMemory(_this_device(device)) as memory:
        torch.manual_seed(cfg.seed)
        model, peft_config = trl_model(resolved, cfg, settings.grad_ckpt, init)
        guard = StepGuard(cfg.abort_grad_norm)
        grad_ckpt = settings.grad_ckpt and cfg.method != "qlora"
        args = GRPOConfig(
            **trainer_args(
                cfg, ckpt_dir, len(rows) * cfg.grpo_generations, settings.bf16, grad_ckpt, device
            ),  # fmt: skip
            num_generations=cfg.grpo_generations,
            max_completion_length=cfg.grpo_max_tokens,
            temperature=cfg.grpo_temperature,
            beta=cfg.grpo_beta,
            mask_truncated_completions=True,
            remove_unused_columns=False,  # the reward reads the constraints column
        )
        trainer = GuardedGRPOTrainer(
            model=model,
            reward_funcs=verifier_reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[guard, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)
        # after trl has put a fresh adapter on (GRPO keeps dropout: trl's disable_dropout is off)
        if cfg.dropout_masks == "bits" and device == "cpu":
            use_bits_dropout(trainer.model)
        if cfg.logprob_head == "selfloop" and device == "cpu":
            use_cpu_head(trainer, ("log_probs", "entropy"), trainer.temperature)
        if settings.float32_sums:
            precision.float32_sums(trainer.model)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        started = time.monotonic()
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.monotonic() - started
    check_finite_weights(trainer.model, args.device)
    result = trl_result(
        trainer, out, guard, cfg, out_dir, seconds=seconds, memory=memory, trainable=trainable,
        resume_from=resume_from, digest=digest, examples=len(rows), keys=GRPO_METRICS,
        trained_in=trained_in,
    )  # fmt: skip
    _save_artifact(trainer, tokenizer, cfg, out_dir, result, resolved, round_index)
    if trainer.is_world_process_zero():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result

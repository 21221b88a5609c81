"""Per-token log-probabilities for trl's trainers on CPU: the fused LM head without its tiles.

trl's DPO and GRPO trainers score tokens through `add_fused_lm_head`: `model(...,
labels=..., fused_lm_head=True)` returns each position's log-probability of its label (plus the
entropy, the mean logit and whether the label is the argmax, for logging) without keeping
`(batch, length, vocab)` logits. Off Triton devices its kernel falls back to torch ops on tiles
of 4,096 tokens x 32,768 vocabulary entries, and two choices made for GPUs cost a CPU dearly:

- every position is scored, the prompt's included (a Triton device scores only labelled ones);
- each tile goes through more than a dozen full-size elementwise passes, several into fresh
  512 MB temporaries (the logit scale and temperature multiplied in even when 1, the `is_top1`
  comparison against every column), and backward recomputes the tile and makes about as many.

In a profile of the recipe's RPO step (`tune.greedy_pairs`: 2 pairs a forward pass, the
reference forward included) those tiles were half the step's time.

`cpu_fused_head(model)` wraps the forward trl installed: a fused-head call on CPU runs the
backbone as trl does and scores only the labelled positions with `TokenLogProbs`, an autograd
function that takes each chunk of 256 tokens' logits from one matrix product into a reused
buffer and gets log-probabilities, entropy and argmax from about seven passes over it. It keeps
the chunk's probabilities for backward (up to `keep_bytes`; beyond it they are recomputed), so
backward is one matrix product: d log p(t) / d h = w_t - sum_v p_v w_v, the gradient of each
row a scaled row of `W[targets] - P @ W` (plus a second product where a loss uses the entropy,
as GRPO's entropy bonus does). In float32 training the figures match trl's to float32 rounding
(tested). Under bfloat16 autocast this head still computes in float32, where trl's rounds the
logits to bfloat16 (unless `cast_lm_head_to_fp32`): as selfloop's own SFT head does
(`tuners/precision.py`). Calls this does not cover (a softcap or logit scale, a head with a
bias, fields it does not compute, pre-shifted labels, MoE router logits, CUDA) go to trl's
forward unchanged.
"""

from __future__ import annotations

import functools
import logging
import types
from typing import Any

import torch

log = logging.getLogger(__name__)

# Tokens a chunk: 256 x a 49,152-entry vocabulary is 48 MB of float32 logits, large enough for
# the matrix product to run at speed and small enough to be reused rather than re-allocated.
CHUNK = 256
# Probabilities kept from forward for backward, at most (bytes): 2 pairs of the greedy step
# (about 1,500 labelled tokens) keep 0.3 GB with SmolLM2's vocabulary.
KEEP_BYTES = 1 << 30
# What this head computes; trl asks for a subset (DPO: all four, GRPO: the first two).
FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")


class TokenLogProbs(torch.autograd.Function):
    """(log p(target), entropy, mean logit, target is the argmax) of each row of
    `hidden @ weight.T`, float32, `hidden` [N, H], `weight` [V, H], `targets` [N].

    The log-probabilities and the entropy carry gradients (DPO only logs the entropy; GRPO's
    entropy bonus trains on it); the mean logit and the argmax do not."""

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # float32 throughout, whatever the autocast around
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, keep_bytes: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)  # an output no loss reads sends None, not zeros
        n, vocab = hidden.size(0), weight.size(0)
        h = hidden.float()
        w = weight.float()
        keep = (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]) and n * vocab * 4 <= keep_bytes
        probs = torch.empty((n, vocab), dtype=torch.float32) if keep else None
        logits = torch.empty((min(n, CHUNK), vocab), dtype=torch.float32)
        scratch = None if keep else torch.empty_like(logits)
        log_probs = torch.empty(n, dtype=torch.float32)
        entropy = torch.empty(n, dtype=torch.float32)
        log_z = torch.empty(n, dtype=torch.float32)
        is_top1 = torch.empty(n, dtype=torch.bool)
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            y = logits[: e - s]
            torch.mm(h[s:e], w.t(), out=y)
            top, arg = y.max(dim=-1)
            y.sub_(top[:, None])  # y = z - max: exp cannot overflow
            p = probs[s:e] if probs is not None else scratch[: e - s]  # type: ignore[index]
            torch.exp(y, out=p)
            total = p.sum(dim=-1)
            log_total = total.log()
            t = targets[s:e]
            log_probs[s:e] = y.gather(1, t[:, None]).squeeze(1) - log_total
            # H = log S - sum_v e_v y_v / S with e = exp(y), S = sum e: one dot a row, no temporary
            entropy[s:e] = log_total - torch.bmm(p[:, None, :], y[:, :, None]).view(-1) / total
            log_z[s:e] = top + log_total
            is_top1[s:e] = arg == t  # max's index is the first maximum, as trl's is_top1 asks
            if probs is not None:
                p.div_(total[:, None])
        mean_logits = h @ (w.sum(dim=0) / vocab)  # the mean of a row of h @ W.T, one product
        ctx.save_for_backward(hidden, weight, targets, log_z, entropy, probs)
        ctx.mark_non_differentiable(mean_logits, is_top1)
        return log_probs, entropy, mean_logits, is_top1

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor | None, grad_entropy: torch.Tensor | None, *_: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        hidden, weight, targets, log_z, entropy, probs = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[:2]
        if (grad is None and grad_entropy is None) or not (want_h or want_w):
            return None, None, None, None
        h, w = hidden.float(), weight.float()
        g = grad.float() if grad is not None else torch.zeros_like(log_z)
        n = h.size(0)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(w) if want_w else None
        buf = None if probs is not None else torch.empty((min(n, CHUNK), w.size(0)))
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            if probs is not None:
                p = probs[s:e]
            else:  # recompute: p = exp(z - log Z)
                p = buf[: e - s]  # type: ignore[index]
                torch.mm(h[s:e], w.t(), out=p)
                p.sub_(log_z[s:e, None]).exp_()
            t, gs = targets[s:e], g[s:e, None]
            # d log p_t / dz = onehot(t) - p; the row scale g commutes with the products
            if grad_h is not None:
                grad_h[s:e] = gs * (w[t] - p @ w)
            if grad_w is not None:
                gh = gs * h[s:e]
                grad_w.index_add_(0, t, gh)
                grad_w.sub_(p.t() @ gh)
            if grad_entropy is not None:
                # dH / dz = -p (log p + H); xlogy keeps p = 0 at 0
                q = torch.xlogy(p, p).add_(p * entropy[s:e, None])
                ge = grad_entropy[s:e, None].float()
                if grad_h is not None:
                    grad_h[s:e] -= ge * (q @ w)
                if grad_w is not None:
                    grad_w.sub_(q.t() @ (ge * h[s:e]))
        return (
            grad_h.to(hidden.dtype) if grad_h is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            None,
            None,
        )


def token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    keep_bytes: int = KEEP_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`TokenLogProbs` of the logits `hidden @ weight.T / temperature`."""
    if temperature != 1.0:
        hidden = hidden / temperature  # scales the logits: an [N, H] pass, not [N, V]
    # Without grad mode no backward comes, whatever requires grad: keep nothing for it.
    keep = keep_bytes if torch.is_grad_enabled() else 0
    return TokenLogProbs.apply(hidden, weight, targets, keep)


def cpu_fused_head(model: Any, temperature: float = 1.0, outputs: tuple[str, ...] = FIELDS) -> bool:
    """Route `model`'s CPU fused-head calls through `TokenLogProbs` (module docstring).

    `model` is what trl patched with `add_fused_lm_head` (under PEFT, its base model), with the
    same `temperature` and `outputs`. Returns False, and leaves the model alone, where the head
    is not one this computes exactly (bias, softcap, logit scale, fields it lacks)."""
    from trl.trainer.utils import FusedCausalLMOutput

    cfg = model.config.get_text_config()
    head = model.get_output_embeddings()
    scaled = any(
        getattr(cfg, k, None) not in (None, 1.0)
        for k in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    )
    if (
        head is None
        or getattr(head, "bias", None) is not None
        or getattr(cfg, "final_logit_softcapping", None) is not None
        or scaled
        or not set(outputs) <= set(FIELDS)
        or getattr(cfg, "output_router_logits", False)
    ):
        return False
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        weight = self.get_output_embeddings().weight
        if (
            not fused_lm_head
            or labels is None
            or weight.device.type != "cpu"
            or kwargs.get("shift_labels") is not None
            or kwargs.get("output_router_logits")  # an MoE's aux loss: trl's head adds it
        ):
            extra = {"labels": labels, "num_items_in_batch": num_items_in_batch}
            return inner(*args, fused_lm_head=fused_lm_head, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:]
        mask = labels != -100
        fields = token_log_probs(hidden[mask], weight, labels[mask], temperature)
        # masked_scatter keeps an all-masked batch connected to the graph, as trl's head does
        full = [x.new_zeros(mask.shape).masked_scatter(mask, x) for x in fields]
        log_probs = full[0]
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        picked = dict(zip(FIELDS, full, strict=True))
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            label_mask=mask,
            **{k: (picked[k] if k in outputs or k == "log_probs" else None) for k in FIELDS},
        )

    model.forward = types.MethodType(forward, model)
    return True


def use_cpu_head(trainer: Any, outputs: tuple[str, ...], temperature: float = 1.0) -> None:
    """`cpu_fused_head` on the model a trl trainer patched (its base model under PEFT), with
    the `outputs` and `temperature` the trainer gave `add_fused_lm_head`. A separate reference
    model (never made here: the reference is an adapter of the policy's model) keeps trl's."""
    from peft import PeftModel

    if getattr(trainer, "ref_model", None) is not None:
        log.info("the separate reference model scores with trl's head")
    model = trainer.model
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not cpu_fused_head(base, temperature, outputs):
        log.info("tokens are scored by trl's head: its head or fields are not ones this computes")

"""bfloat16 training that learns as float32 does: autocast, with the adapters' sums in float32.

Under autocast every linear layer returns bfloat16, so a LoRA layer adds its update to the
frozen layer's output in bfloat16 - 8 bits of mantissa, a step of 0.4-0.8% of the output. A
young adapter's update is smaller than that, and part of it is rounded away at every layer; the
output layer's logits, rounded to bfloat16 too (a step of 0.125 at a logit of 20), blur the
loss. On a real round's data (`bench/precision.py`, bench/README.md) plain autocast ended its
88 SFT steps 0.008 nats above float32; with the sums and the head in float32 its loss stayed
+0.0004 from float32's on average (at most +0.0022). Once LoRA dropout's masks stopped costing
both the same 15% of a step (tuners/dropout.py) it ran SFT at 1.37x float32's tokens/s, so this
is what `tune.bf16: auto` trains LoRA in on a CPU with native bfloat16, and what `true` runs
there.
The frozen layers' products stay in bfloat16, where the speed is; only their outputs are
widened before the adapter's update joins them. The gain is kept where a float32 op reads the
sum (the residual adds after o_proj and down_proj, the elementwise ops); a sum that feeds
another product (q, k, v, gate, up) is rounded again there. The head, frozen under an
adapter, runs in float32 (on the positions the loss reads, `tuners.data.pack_batch`). trl's
trainers (the greedy step's RPO) score on CPU through `tuners.logprobs`, float32 too; trl's
own fused head (`tune.logprob_head: trl`, and on GPUs) reads the weight directly and keeps
autocast, and there only the sums are float32 (RPO on a real round's pairs, measured with
trl's head: the same final loss and reward margin).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch

log = logging.getLogger("tuners.train")


def describe(bf16: bool, sums: bool) -> str:
    """The precision a run trained in, as train_metrics.json records it."""
    return "float32" if not bf16 else "bfloat16 autocast" + (", float32 sums" if sums else "")


def _widen(_module: Any, _inputs: Any, output: Any) -> Any:
    low = (torch.bfloat16, torch.float16)
    return output.float() if torch.is_tensor(output) and output.dtype in low else output


def _head_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.linear(x.float(), self.weight.float(), bias)


def float32_sums(model: Any) -> int:
    """Make every LoRA layer of `model` add its update to a float32 copy of the frozen layer's
    output (a forward hook on the base layer), and a frozen output layer compute in float32;
    returns how many LoRA layers were hooked. Idempotent."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not getattr(module, "_selfloop_f32", False):
            module.get_base_layer().register_forward_hook(_widen)
            module._selfloop_f32 = True
            n += 1
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # Only a frozen head: a trained one (full fine-tuning) keeps autocast like every weight.
    if (
        isinstance(head, torch.nn.Linear)
        and not head.weight.requires_grad
        and not getattr(head, "_selfloop_f32", False)
    ):
        head.forward = types.MethodType(_head_forward, head)  # same module: weights stay tied
        head._selfloop_f32 = True
        log.info("bfloat16 autocast: the output layer computes in float32")
    if n:
        log.info("bfloat16 autocast: float32 sums in %d LoRA layers", n)
    return n

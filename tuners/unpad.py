"""Padding-free forward passes for trl's trainers that batch with right padding (DPO / RPO).

trl's DPO collator pads every chosen and rejected sequence of a batch to the longest of them
(its own `padding_free` option is disabled in trl 1.16). On the greedy step's pairs - short
verified answers against rejected ones cut off at the length limit - 45% of a padded batch's
positions were padding, and every one of them went through the model, its attention mask and,
on CPU, the LM head (trl's fused head scores every position off-GPU).

`unpad_forward` wraps the model's forward (the one trl's `add_fused_lm_head` installed): a
call with `fused_lm_head=True` and a right-padded `attention_mask` is run as one packed row -
the real tokens back to back, positions restarting per sequence, the sequence boundaries as the
varlen kwargs `tuners.attention` attends by (per sequence, no mask) - and every per-token
output is put back into the padded (batch, length - 1) layout trl reads, zero where it was
padding, as trl's own fused head leaves ignored labels. The label that crosses a boundary (a
sequence's last token predicting the next one's first) is set to -100. Any other call
(generation, a call with inputs this does not know) goes to the wrapped forward unchanged; a
batch it cannot pack (left padding) too, with a warning once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from typing import Any

import torch

# Keyword arguments a padded trl call may carry that packing keeps the meaning of (PEFT passes
# others as None: inputs_embeds, return_dict, ...).
_PACKABLE = {"input_ids", "attention_mask", "labels", "use_cache", "fused_lm_head"}

log = logging.getLogger(__name__)


def pack_padded(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(packed model kwargs, index, valid) for a right-padded batch.

    `index[i, j]` is where, in the packed row's (length - 1) next-token outputs, the output of
    padded position (i, j) is; `valid` says which padded positions are real (not the last real
    token of a row, whose next token does not exist in the padded layout either)."""
    dev = input_ids.device
    lengths = attention_mask.sum(dim=1).to(torch.long)
    keep = attention_mask.bool()
    if not bool((keep == (torch.arange(keep.size(1), device=dev) < lengths[:, None])).all()):
        raise ValueError("unpad: the batch is not right-padded")
    ends = torch.cumsum(lengths, 0)
    starts = ends - lengths
    total, longest = (int(x) for x in (ends[-1], lengths.max()))  # the only host syncs
    if total < 2:
        raise ValueError("unpad: fewer than two real tokens")
    cols = torch.arange(input_ids.size(1) - 1, device=dev)
    index = (starts[:, None] + cols[None, :]).clamp(max=total - 2)
    valid = cols[None, :] < (lengths[:, None] - 1)
    cu = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
    positions = torch.arange(total, device=dev) - starts.repeat_interleave(
        lengths, output_size=total
    )
    packed_labels = labels[keep]
    # A sequence's last token predicts the next one's first: never a target (trl's prompts are
    # -100 there anyway; every output at such a place is also outside `valid`).
    packed_labels[starts[lengths > 0]] = -100
    packed = {
        "input_ids": input_ids[keep][None, :],
        "labels": packed_labels[None, :],
        "position_ids": positions[None, :],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }
    return packed, index, valid


def _unpack(x: torch.Tensor | None, index: torch.Tensor, valid: torch.Tensor) -> Any:
    if x is None:
        return None
    out = x[0][index]  # gathers keep the gradient to the packed outputs
    return out & valid if out.dtype == torch.bool else out.masked_fill(~valid, 0)


_warned: list[bool] = []  # a batch that could not be packed is said once per process


def unpad_forward(model: Any) -> None:
    """Run `model`'s fused-head calls on padded batches as packed rows (module docstring).
    `model` is the object trl patched with `add_fused_lm_head` (under PEFT, its base model)."""
    inner = model.forward

    # The class's signature, so what inspects `model.forward` (generate's checks for
    # position_ids and logits_to_keep) sees the model's arguments, not (*args, **kwargs).
    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attention_mask")
        if (
            args
            or not kwargs.get("fused_lm_head")
            or mask is None
            or kwargs.get("labels") is None
            or not {k for k, v in kwargs.items() if v is not None} <= _PACKABLE
            or bool(mask.all())  # nothing to take out
        ):
            return inner(*args, **kwargs)
        try:
            packed, index, valid = pack_padded(kwargs["input_ids"], mask, kwargs["labels"])
        except ValueError as e:  # left padding, holes: not a batch this knows how to pack
            if not _warned:
                _warned.append(True)
                log.warning("%s: running padded batches as they are", e)
            return inner(*args, **kwargs)
        out = inner(**packed, use_cache=False, fused_lm_head=True)
        # Per-token fields are (1, packed length - 1); the loss and aux loss are scalars.
        per_token = (1, packed["input_ids"].size(1) - 1)
        fields = {
            k: _unpack(v, index, valid)
            if isinstance(v, torch.Tensor) and v.shape == per_token
            else v
            for k, v in ((f.name, getattr(out, f.name)) for f in dataclasses.fields(out))
        }
        return type(out)(**fields)

    model.forward = types.MethodType(forward, model)

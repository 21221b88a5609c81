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

A batch of trl's DPO holds each pair's chosen answer in the first half of its rows and the
rejected one in the second, both behind the same prompt. Where the model attends with full
attention in every layer, a rejected row enters the packed row without the tokens it shares
with its chosen row (the prompt, and any opening the two answers share) but the last of them:
it attends to the chosen row's keys for those (`shared_prefixes`, `tuners.attention`), and its
outputs there are the chosen row's, which saw the same tokens. The prompt then runs once per
pair, not twice, in the policy's forward and backward and in the reference's forward. The
per-token outputs are then the padded forward's; the scalar `loss` the wrapped forward returns
(which trl's DPO does not read) counts shared answer tokens once, and training's dropout draws
one mask for a shared token where the two rows drew two.
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
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    share_pairs: bool = False,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(packed model kwargs, index, valid) for a right-padded batch.

    `index[i, j]` is where, in the packed row's (length - 1) next-token outputs, the output of
    padded position (i, j) is; `valid` says which padded positions are real (not the last real
    token of a row, whose next token does not exist in the padded layout either).

    With `share_pairs` (an even number of rows), row i + rows/2 enters without the leading
    tokens it shares with row i but the last of them: its index there points into row i, and
    the kwargs carry `shared_prefixes`, per sequence of the packed row (packed start of the
    keys it attends to first, how many; 0 for none)."""
    dev = input_ids.device
    rows = input_ids.size(0)
    lengths = attention_mask.sum(dim=1).to(torch.long)
    keep = attention_mask.bool()
    cols = torch.arange(keep.size(1), device=dev)
    if not bool((keep == (cols < lengths[:, None])).all()):
        raise ValueError("unpad: the batch is not right-padded")
    skip = torch.zeros_like(lengths)
    source = torch.arange(rows, device=dev)
    if share_pairs and rows % 2 == 0:
        half = rows // 2
        # Shared only where the labels are too: the outputs read from the other row must be
        # scored against the same targets (trl's pairs always agree there).
        common = (
            (input_ids[:half] == input_ids[half:])
            & (labels[:half] == labels[half:])
            & (cols < torch.minimum(lengths[:half], lengths[half:])[:, None])
        )
        common = common.long().cumprod(dim=1).sum(dim=1)
        # The last shared token stays: its output scores the row's own next token.
        skip[half:] = (common - 1).clamp(min=0)
        source[half:] -= half
    kept = lengths - skip
    keep &= cols >= skip[:, None]
    ends = torch.cumsum(kept, 0)
    starts = ends - kept
    total, longest, shares = int(ends[-1]), int(kept.max()), int(skip.sum())  # host syncs
    if total < 2:
        raise ValueError("unpad: fewer than two real tokens")
    out_cols = cols[:-1]
    own = starts[:, None] + out_cols[None, :] - skip[:, None]
    index = torch.where(out_cols[None, :] >= skip[:, None], own, starts[source][:, None] + out_cols)
    index = index.clamp(min=0, max=total - 2)
    valid = out_cols[None, :] < (lengths[:, None] - 1)
    cu = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
    positions = torch.arange(total, device=dev) - (starts - skip).repeat_interleave(
        kept, output_size=total
    )
    packed_labels = labels[keep]
    # A sequence's first token is predicted by the one before it in the packed row, the end of
    # another sequence: never a target (trl's prompts are -100 there anyway; a shortened row's
    # first token is a shared one, already scored in its source row; every output at such a
    # place is also outside `valid`).
    packed_labels[starts[kept > 0]] = -100
    packed = {
        "input_ids": input_ids[keep][None, :],
        "labels": packed_labels[None, :],
        "position_ids": positions[None, :],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }
    if shares:
        packed["shared_prefixes"] = [
            (s, n) if n else (0, 0) for s, n in zip(starts[source].tolist(), skip.tolist())
        ]
    return packed, index, valid


def _unpack(x: torch.Tensor | None, index: torch.Tensor, valid: torch.Tensor) -> Any:
    if x is None:
        return None
    out = x[0][index]  # gathers keep the gradient to the packed outputs
    return out & valid if out.dtype == torch.bool else out.masked_fill(~valid, 0)


_warned: list[bool] = []  # a batch that could not be packed is said once per process


def unpad_forward(model: Any, share_pairs: bool = False) -> None:
    """Run `model`'s fused-head calls on padded batches as packed rows (module docstring).
    `model` is the object trl patched with `add_fused_lm_head` (under PEFT, its base model).
    `share_pairs`: a batch's rows are DPO's pairs (chosen rows, then rejected rows), whose
    shared leading tokens run once (`pack_padded`); only for a model with full attention in
    every layer, switched to `tuners.attention`."""
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
            or (bool(mask.all()) and not share_pairs)  # nothing to take out
        ):
            return inner(*args, **kwargs)
        try:
            packed, index, valid = pack_padded(
                kwargs["input_ids"], mask, kwargs["labels"], share_pairs
            )
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

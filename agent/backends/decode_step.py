"""A ragged decode step made cheaper without changing what it computes.

Two parts, both measured in `bench/decode_step.py` (README):

- **Attention over row blocks** (`row_blocks`, `plan`). Ragged decoding keeps every row's keys
  and values in one rectangular buffer, right-aligned: a row that joined late is left-padded to
  the columns of the oldest one, and the slab's spare columns sit at the end. A decode step's
  attention reads every column of every row, masked or not, and on 2 CPU cores it is memory
  bound: in the evaluation's workload 46% of the columns it read were masked. Rows join at the
  end of the batch and keep their order, so neighbouring rows start near each other; `plan`
  cuts the rows into contiguous blocks (a dynamic program trading the columns a block reads
  against a fixed cost per block) and the step's attention runs SDPA once per block on the
  columns from the block's first attended one to the last filled one. The model runs it through
  transformers' `AttentionInterface` (`install` switches a loaded SDPA model to it); a call
  without `row_blocks` (prefill, scoring, `generate`, lookahead's chunks) is plain SDPA.
- **The output projection through oneDNN** (`onednn_head`). On CPU in float32, the projection
  to the vocabulary (49,152 x 576 for the bundled model, a fifth of a token's multiply-adds) is
  the one matmul of the step where MKL's kernel is slow for a few dozen rows: 63 GFLOP/s
  against oneDNN's 120 at 64 rows on 2 AMD EPYC cores (the layers' matmuls are as fast in
  MKL). For the length of a decode call the head multiplies with a copy of its weight in
  oneDNN's layout; the model itself is restored after.

Masked columns add exact zeros to SDPA's sums, and a block only drops columns every one of its
rows masks, so the answers are the same up to the order floating-point sums are taken in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

NAME = "selfloop_row_blocks"
# A block's fixed cost in row x column reads: SDPA's per-call overhead on 2 CPU cores is about
# what reading 440 columns of one row costs (a probe: 4.6 ms for 64 rows x 520 columns).
OVERHEAD = 440.0

# Attention variants a block's columns cannot honour (a bias or sinks over every column): with
# any of them the step is plain SDPA over the whole cache (as `tuners.attention` does).
_NEEDS_EVERY_COLUMN = ("softcap", "s_aux", "position_bias")

Block = tuple[int, int, int, int]  # rows [a, b) attend within columns [start, end)


def plan(mask: torch.Tensor, overhead: float = OVERHEAD) -> list[Block]:
    """Contiguous row blocks of `mask` (rows x columns, nonzero = attended; the columns past it,
    a slab's spare ones, are not read), each with the first column one of its rows attends to,
    minimising the columns read (a block reads from its first attended column to the mask's
    end) plus `overhead` per block. Exact over every split; quadratic in rows (about a
    millisecond for 64, once per step)."""
    rows, width = mask.shape
    attended = mask.bool()
    starts = torch.where(attended.any(1), attended.int().argmax(1), width - 1).tolist()
    best = [0.0] + [float("inf")] * rows
    cut = [0] * (rows + 1)
    for b in range(1, rows + 1):
        first = width
        for a in range(b - 1, -1, -1):
            first = min(first, starts[a])
            cost = best[a] + (b - a) * (width - first) + overhead
            if cost < best[b]:
                best[b], cut[b] = cost, a
    blocks: list[Block] = []
    b = rows
    while b > 0:
        a = cut[b]
        blocks.append((a, b, min(starts[a:b]), width))
        b = a
    return blocks[::-1]


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    row_blocks: Sequence[Block] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention; for a decode step given `row_blocks`, once per block on
    the block's rows and columns."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        row_blocks is None
        or query.shape[2] != 1
        or attention_mask is None
        or any(kwargs.get(k) is not None for k in _NEEDS_EVERY_COLUMN)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outs = [
        sdpa_attention_forward(
            module,
            query[a:b],
            key[a:b, :, s:e],
            value[a:b, :, s:e],
            attention_mask[a:b, ..., s:e],
            **kwargs,
        )[0]
        for a, b, s, e in row_blocks
    ]
    return torch.cat(outs), None


def install(model: Any, trust_remote_code: bool = False) -> bool:
    """Switch `model` to `attention` where that is exact: models transformers itself runs on
    SDPA with full attention in every layer (not remote code, which may read the
    implementation's name itself); whether it runs it now. Registered with transformers under
    `NAME` with SDPA's mask function; process-local, like `tuners.attention`'s."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    from agent.backends.refill import can_share_prefix

    if installed(model):
        return True
    sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
    if trust_remote_code or not sdpa or not can_share_prefix(model):
        return False
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)  # a model that cannot switch warns and stays
    return installed(model)


def installed(model: Any) -> bool:
    return getattr(model.config, "_attn_implementation", None) == NAME


def onednn_available(model: Any) -> bool:
    """Whether `onednn_head` would act on `model`: CPU, float32, a plain linear head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        model.device.type == "cpu"
        and model.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and type(head) is torch.nn.Linear
    )


@contextlib.contextmanager
def onednn_head(model: Any, on: bool = True) -> Iterator[None]:
    """For the block's length, `model`'s output projection multiplies with a snapshot of its
    weight in oneDNN's layout (CPU, float32, a plain `nn.Linear` head; else nothing changes).
    Decoding only: the snapshot does not follow changes to the weight, and a call that needs
    gradients runs the head as it is."""
    if not on or not onednn_available(model):
        yield
        return
    head = model.get_output_embeddings()
    weight = head.weight.detach().to_mkldnn()
    bias = None if head.bias is None else head.bias.detach().to_mkldnn()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or head.weight.requires_grad):
            return torch.nn.functional.linear(x, head.weight, head.bias)
        flat = x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn()
        out = torch._C._nn.mkldnn_linear(flat, weight, bias).to_dense()
        return out.view(*x.shape[:-1], out.shape[-1])

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # the class's forward again

"""Attention for packed rows that costs what the examples cost, not what the row costs.

A packed row holds several examples back to back. transformers' SDPA path keeps them apart
with a block-diagonal causal mask over the whole row, so attention still computes every
(query, key) pair of the row and throws most away: for a row of k examples of length n that is
(kn)^2 scores where k*n^2 are needed. `packed_attention` runs SDPA once per example instead
(causal, no mask), from the example boundaries `tuners.data.pack_batch` passes as the standard
flash-attention varlen kwargs `cu_seq_lens_q`/`cu_seq_lens_k`. The results are the same as the
masked row's; forward plus backward of SmolLM2-135M + LoRA on rows of 8 chat examples
(~1,300 tokens) took 0.70x the time on 2 CPU cores (`bench/tuning.py` measures the training
effect end to end).

Without those kwargs (padded batches, evaluation, generation) it is plain transformers SDPA,
mask included, so a model loaded with this implementation behaves normally everywhere else.
The name is process-local: it is not written into a saved model's config.json.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "selfloop_packed"

# cu_seq_lens as Python ints, reused by all layers of one forward (and its recomputation under
# gradient checkpointing): converting the tensor in every layer would synchronise a GPU 30
# times per forward pass.
_bounds: tuple[Any, list[int]] | None = None


def _boundaries(cu_seq_lens: torch.Tensor) -> list[int]:
    global _bounds
    if _bounds is None or _bounds[0] is not cu_seq_lens:
        _bounds = (cu_seq_lens, [int(b) for b in cu_seq_lens.tolist()])
    return _bounds[1]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: (batch, heads, seq, dim) in, (batch, seq,
    heads, dim) out. Per-example causal SDPA when the row is packed (batch of one, boundaries
    given, no KV cache: keys as long as queries); transformers' SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Self-attention without a cache: keys follow the queries' boundaries (cu_seq_lens_k is
    # the same list; comparing the two would cost a GPU sync per layer).
    packed = cu_seq_lens_q is not None and query.shape[0] == 1 and key.shape[2] == query.shape[2]
    if not packed:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    bounds = _boundaries(cu_seq_lens_q)
    if bounds[0] != 0 or bounds[-1] != query.shape[2]:
        raise ValueError(
            f"cu_seq_lens_q {bounds[:3]}...{bounds[-1:]} does not span the row of "
            f"{query.shape[2]} tokens"
        )
    gqa = key.shape[1] != query.shape[1]
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            dropout_p=dropout,
            scale=scaling,
            is_causal=True,
            enable_gqa=gqa,
        )
        for s, e in zip(bounds[:-1], bounds[1:])
        if e > s
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `NAME` a valid `attn_implementation` in this process (idempotent); returns it.
    Its mask function is transformers' SDPA mask, used by the unpacked fallback."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME

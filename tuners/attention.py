"""Attention for packed rows that costs what the examples cost, not what the row costs.

A packed row holds several examples back to back. transformers' SDPA path keeps them apart
with a block-diagonal causal mask over the whole row, so attention still computes every
(query, key) pair of the row and throws most away: for a row of k examples of length n that is
(kn)^2 scores where k*n^2 are needed. `packed_attention` runs SDPA once per example instead
(causal, no mask), from the example boundaries `tuners.data.pack_batch` passes as the standard
flash-attention varlen kwargs `cu_seq_lens_q`/`cu_seq_lens_k`. The results are the same as the
masked row's (tested); `bench/tuning.py` measures the effect on training end to end. A
sequence may also attend first to another one's leading keys (`shared_prefixes`: a DPO pair's
rejected answer to its chosen row's prompt, `tuners.unpad`), with a mask over that prefix and
its own tokens.

Without those kwargs (padded batches, evaluation, generation), or where the model's attention
needs the mask (a sliding window shorter than an example) or something SDPA per slice would drop
(softcap, attention sinks, ALiBi bias), it is plain transformers SDPA over the row, mask
included. `use_for` switches a loaded model to it only where transformers chose SDPA itself.
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

# Attention variants the per-example path cannot honour; with any of them the call falls back
# to transformers' SDPA over the whole row with its mask (which raises on softcap itself).
_NEEDS_THE_MASK = ("softcap", "s_aux", "position_bias")


def _boundaries(cu_seq_lens: torch.Tensor) -> list[int]:
    global _bounds
    cached = _bounds  # read once: another thread may replace it meanwhile
    if cached is None or cached[0] is not cu_seq_lens:
        cached = (cu_seq_lens, [int(b) for b in cu_seq_lens.tolist()])
        _bounds = cached
    return cached[1]


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
    given, no KV cache: keys as long as queries, cu_seq_lens_k then the same list) and nothing
    needs the mask; transformers' SDPA over the row with its mask otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (
        cu_seq_lens_q is not None
        and query.shape[0] == 1
        and key.shape[2] == query.shape[2]
        and not any(kwargs.get(k) is not None for k in _NEEDS_THE_MASK)
    )
    bounds = _boundaries(cu_seq_lens_q) if packed else []
    if packed:
        if bounds[0] != 0 or bounds[-1] != query.shape[2]:
            raise ValueError(
                f"cu_seq_lens_q {bounds[:3]}...{bounds[-1:]} does not span the row of "
                f"{query.shape[2]} tokens"
            )
        # A sliding window shorter than an example changes its attention: the mask has it.
        window = kwargs.get("sliding_window")
        longest = max(e - s for s, e in zip(bounds[:-1], bounds[1:]))
        packed = window is None or longest <= window
    if not packed:
        if kwargs.get("shared_prefixes"):  # the row's mask would not know them
            raise ValueError("shared prefixes need per-example attention over a packed row")
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
    # Each example alone, causal and unmasked: transformers' own SDPA call (its GQA handling).
    # An example with a shared prefix attends to that first: its keys and values are another
    # example's leading ones (`tuners.unpad`), its mask all of them and its own causally.
    shared = kwargs.pop("shared_prefixes", None) or [(0, 0)] * (len(bounds) - 1)
    parts = []
    for (s, e), (src, n) in zip(zip(bounds[:-1], bounds[1:]), shared, strict=True):
        if e == s:
            continue
        k, v, mask = key[:, :, s:e], value[:, :, s:e], None
        if n:
            k = torch.cat([key[:, :, src : src + n], k], dim=2)
            v = torch.cat([value[:, :, src : src + n], v], dim=2)
            mask = torch.ones(e - s, n + e - s, dtype=torch.bool, device=query.device)
            mask[:, n:] = torch.ones(e - s, e - s, dtype=torch.bool, device=query.device).tril()
            mask = mask[None, None]
        parts.append(
            sdpa_attention_forward(
                module,
                query[:, :, s:e],
                k,
                v,
                mask,
                dropout=dropout,
                scaling=scaling,
                is_causal=mask is None,
                **kwargs,
            )[0]
        )
    return torch.cat(parts, dim=1), None


def register() -> str:
    """Make `NAME` a valid `attn_implementation` in this process (idempotent); returns it.
    Its mask function is transformers' SDPA mask: the fallback uses it, and transformers still
    builds it once per forward pass - a (row x row) boolean tensor that the per-example path
    never reads: 10 MB for the recipe's rows of about 3,000 tokens, but 256 MB at 16,000 (a
    mask that skips it must know the call will not fall back: not done)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_for(model: Any, trust_remote_code: bool) -> bool:
    """Switch `model` to per-example attention for packed training, where that is exact: only
    models transformers itself runs on SDPA (not eager-only ones such as Gemma-2 with softcap
    or gpt-oss with sinks, not remote code that may read the implementation's name itself)."""
    if trust_remote_code or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(register())  # a model that cannot switch warns and stays
    return model.config._attn_implementation == NAME

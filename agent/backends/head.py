"""The output projection of a decode step through oneDNN, on CPU in float32.

The projection to the vocabulary (49,152 x 576 for the bundled model, a fifth of a token's
multiply-adds) is the one matmul of a decode step where MKL, torch's CPU BLAS, is slow for a few
dozen rows: 63 GFLOP/s against oneDNN's 120 at 64 rows on 2 AMD EPYC cores (a probe; the
layers' matmuls are as fast in MKL, 110-120). For the length of a decode call, `onednn_head`
has the head multiply with a copy of its weight in oneDNN's layout; the model is as it was after.
Ragged (`refill.decode_ragged`), static and streamed (`generate`) decoding run under it
(`backend.onednn_head`); scoring, whose rows are whole sequences, does not. Measured in
`bench/head.py` (bench/README.md). Another kernel sums in another order, so a near-tie
between two tokens can tip: one of the evaluation's 594 greedy answers did. Measured on AMD
EPYC only, so it acts on x86-64 alone (elsewhere torch's BLAS is not MKL). The snapshot is one
more copy of the head during the call (113 MB for the bundled model's tied 49,152 x 576
embedding).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from typing import Any

import torch


def applies(model: Any) -> bool:
    """Whether `onednn_head` acts on `model`: a plain `nn.Linear` head (not one a LoRA adapter
    wraps) in float32 on an x86-64 CPU, oneDNN built into torch."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        type(head) is torch.nn.Linear
        and head.weight.device.type == "cpu"
        and head.weight.dtype == torch.float32
        and platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
    )


@contextlib.contextmanager
def onednn_head(model: Any, on: bool = True) -> Iterator[None]:
    """For the block's length, `model`'s output projection multiplies with a snapshot of its
    weight in oneDNN's layout (CPU, float32, a plain `nn.Linear` head; else nothing changes).
    Decoding only: the snapshot does not follow changes to the weight, and a call that needs
    gradients runs the head as it is."""
    head = model.get_output_embeddings() if on and applies(model) else None
    # Off, or a head whose forward is patched already (an outer block, or someone else's hook).
    if head is None or "forward" in vars(head):
        yield
        return
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

"""LoRA dropout with cheaper masks on CPU: 16 random bits an element, from 64-bit draws.

peft's LoRA layers apply `nn.Dropout` to their input (`tune.lora_dropout`, 0.05), a new mask
for each of the bundled model's 210 LoRA layers at every step. On CPU torch draws that mask
through its per-element Bernoulli sampler and then scales and multiplies in two more passes: in
a profile of an SFT step the masks (`aten::bernoulli_`) alone were 14-15% of the step, and SFT
without dropout ran 1.36x as fast - but a round trained so lost 7 points of response-language
accuracy in both seeds, so dropout stays (bench/README.md). `BitsDropout` keeps dropout and
draws its mask for less: one 64-bit integer from torch's generator (`torch.randint`) per four
elements, 16 bits of it per element, an element kept when its bits fall below a threshold. On a
real round's SFT that is 1.07x `nn.Dropout`'s tokens/s (median of 3 alternating repeats,
`bench/precision.py`).

- The same distribution as `nn.Dropout`, up to `p` rounded to a multiple of 1/65,536 (0.05 ->
  0.0500031); kept elements are scaled by 1 / (1 - that p), so the expectation is exact.
- A different random stream: a run trained with these masks does not repeat, number for
  number, one trained with `nn.Dropout`'s (`tune.dropout_masks: bernoulli` does). So a run
  or checkpoint from before the setting existed resumes with `bernoulli` (`loop/config.py`,
  `tuners.train._BEFORE_ADDED`).
- Seeded like every other draw (`tune.seed`; the Trainer saves and restores the generator's
  state with each checkpoint, so a resumed run draws what it would have).
- Backward reads a boolean mask (1 byte an element, where `nn.Dropout` keeps a float32 one).
- Only on CPU: CUDA's dropout is one fused kernel already, so there it is `nn.Dropout`'s own.
- It subclasses `nn.Dropout`, so what looks for dropout modules finds it (trl's
  `disable_dropout` sets `p = 0`, which this honours at every call).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger("tuners.train")

_LEVELS = 1 << 16  # 16 bits an element


def keep_threshold(p: float) -> int:
    """How many of the 65,536 values of an element's 16 bits keep it: (1 - p) rounded."""
    return round((1.0 - p) * _LEVELS)


def _random_words(n: int, device: torch.device) -> torch.Tensor:
    """`n` random 64-bit integers from torch's generator (`tune.seed`). randint's range is one
    value short of 2^64 (its upper bound is exclusive): a bias of 2^-64, none in practice."""
    return torch.randint(-(1 << 63), (1 << 63) - 1, (n,), dtype=torch.int64, device=device)


class BitsDropout(nn.Dropout):
    """`nn.Dropout` whose CPU training masks come from 16 random bits an element (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = keep_threshold(self.p)
        # nn.Dropout's own path: CUDA (one fused kernel there), in-place dropout, and a p that
        # rounds to "keep all" or "drop all" (p <= 2^-17 or p >= 1 - 2^-17), where the rounding
        # would change what dropout does.
        if x.device.type != "cpu" or not 0 < keep < _LEVELS or self.inplace:
            return super().forward(x)
        n = x.numel()
        words = _random_words((n + 3) // 4, x.device)
        # Four signed 16-bit fields a word, each uniform over [-32768, 32767]: an element is
        # dropped when its field, counted from -32768, is `keep` or more.
        drop = words.view(torch.int16)[:n].view(x.shape) >= keep - _LEVELS // 2
        return (x * (_LEVELS / keep)).masked_fill_(drop, 0)


def use_bits_dropout(model: Any) -> int:
    """Swap every `nn.Dropout` of `model`'s LoRA layers for a `BitsDropout` of the same p; returns
    how many were swapped. Modules already swapped, and dropout outside LoRA, stay as they are."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name, drop in module.lora_dropout.items():
            if type(drop) is nn.Dropout and drop.p > 0:
                module.lora_dropout[name] = BitsDropout(drop.p).train(drop.training)
                n += 1
    if n:
        log.info("LoRA dropout: 16-bit masks in %d layers (tune.dropout_masks: bits)", n)
    return n

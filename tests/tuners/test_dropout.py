"""LoRA dropout's 16-bit masks (tuners/dropout.py): nn.Dropout's distribution, drawn for less."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.helpers import TOY, cfg
from tuners import train
from tuners.dropout import BitsDropout, keep_threshold, use_bits_dropout

N = 1 << 20


def _dropped(p: float, shape: tuple[int, ...] = (N,), seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return BitsDropout(p).train()(torch.ones(shape)) == 0


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_is_p_in_each_of_a_draws_four_fields(p: float) -> None:
    dropped = _dropped(p).view(-1, 4).float()
    # 2^18 elements per field: the rate's standard error is at most 0.001
    for field, rate in enumerate(dropped.mean(dim=0).tolist()):
        assert rate == pytest.approx(p, abs=0.005), (field, rate)


def test_neighbours_drop_independently() -> None:
    """Elements sharing a 64-bit draw, and the next draw's, are dropped independently: both of
    a pair at p^2 (one field read for several elements would give p)."""
    p = 0.2
    d = _dropped(p).float()
    for gap in (1, 2, 3, 4, 5):
        both = (d[:-gap] * d[gap:]).mean().item()
        assert both == pytest.approx(p * p, abs=0.004), (gap, both)


def test_kept_elements_scaled_so_the_expectation_is_exact() -> None:
    p = 0.05
    torch.manual_seed(1)
    x = torch.rand(N) + 0.5
    y = BitsDropout(p).train()(x)
    kept = y != 0
    scale = 65536 / keep_threshold(p)
    assert torch.equal(y[kept], (x * scale)[kept])
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.003)


def test_backward_passes_the_kept_scaled_and_the_dropped_nothing() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 48, requires_grad=True)
    y = BitsDropout(0.3).train()(x)
    y.sum().backward()
    kept = (y != 0).float()
    assert torch.allclose(x.grad, kept * (65536 / keep_threshold(0.3)))
    assert 0.2 < 1 - kept.mean().item() < 0.4


def test_seeded_identity_off_training_and_at_p_zero() -> None:
    assert torch.equal(_dropped(0.1, (64, 100), seed=3), _dropped(0.1, (64, 100), seed=3))
    assert not torch.equal(_dropped(0.1, (64, 100), seed=3), _dropped(0.1, (64, 100), seed=4))
    x = torch.randn(5, 7)
    assert BitsDropout(0.1).eval()(x) is x
    assert BitsDropout(0.0).train()(x) is x
    # an odd size: the last draw's unused fields are not read
    assert BitsDropout(0.1).train()(torch.ones(3, 5)).shape == (3, 5)
    # bfloat16 in, bfloat16 out
    assert BitsDropout(0.1).train()(x.bfloat16()).dtype == torch.bfloat16


def test_the_threshold_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fields counted from -32768: below `keep` kept, `keep` and above dropped."""
    from tuners import dropout

    keep = keep_threshold(0.05)
    edge = keep - 32768
    fields = torch.tensor([edge - 1, edge, edge + 1, -32768, 32767, edge - 1], dtype=torch.int16)
    words = torch.cat([fields, fields.new_zeros(2)]).view(torch.int64)
    monkeypatch.setattr(dropout, "_random_words", lambda n, device: words[:n])
    y = BitsDropout(0.05).train()(torch.ones(2, 3))
    assert (y != 0).flatten().tolist() == [True, False, False, True, False, True]


@pytest.mark.parametrize("p, inplace", [(1e-6, False), (1 - 1e-6, False), (0.1, True)])
def test_nn_dropouts_own_path_where_the_bits_would_change_it(
    p: float, inplace: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A p that rounds to keep-all or drop-all, and in-place dropout, draw as nn.Dropout does."""
    from tuners import dropout

    def refuse(n: int, device: torch.device) -> torch.Tensor:
        raise AssertionError("bits drawn")

    monkeypatch.setattr(dropout, "_random_words", refuse)
    x = torch.randn(64, 64)
    torch.manual_seed(5)
    y = BitsDropout(p, inplace=inplace).train()(x.clone())
    torch.manual_seed(5)
    assert torch.equal(y, torch.nn.Dropout(p, inplace=inplace).train()(x.clone()))


def _lora_model(p: float) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    nn = torch.nn
    base = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 4))
    return get_peft_model(base, LoraConfig(r=2, lora_dropout=p, target_modules=["0", "2"]))


def test_swap_touches_lora_dropout_only_and_trl_can_turn_it_off() -> None:
    from trl.trainer.utils import disable_dropout_in_model

    model = _lora_model(0.1)
    model.eval()
    assert use_bits_dropout(model) == 2
    assert use_bits_dropout(model) == 0  # already swapped
    assert not any(m.training for m in model.modules() if isinstance(m, BitsDropout))
    kinds = [type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert kinds.count(BitsDropout) == 2 and kinds.count(torch.nn.Dropout) == 1  # not LoRA's
    assert use_bits_dropout(_lora_model(0.0)) == 0  # peft's Identity: nothing to draw
    disable_dropout_in_model(model)  # what trl's DPO trainer does
    drop = next(m for m in model.modules() if isinstance(m, BitsDropout)).train()
    x = torch.randn(8, 16)
    assert torch.equal(drop(x), x)


@pytest.mark.parametrize("masks", ["bits", "bernoulli"])
def test_training_draws_the_configured_masks(
    masks: str, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tuners.train"):
        result = train(
            str(tiny_model_dir), TOY, tmp_path / "a",
            cfg("lora", max_steps=2, lora_dropout=0.1, dropout_masks=masks),
        )  # fmt: skip
    assert result.steps == 2
    swapped = [r for r in caplog.records if "16-bit masks" in r.getMessage()]
    assert bool(swapped) == (masks == "bits")

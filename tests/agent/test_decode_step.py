"""A ragged decode step's two savings (`agent/backends/decode_step.py`): attention over row
blocks and the output projection through oneDNN leave every greedy answer as it was."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from agent.backends import SamplingParams, decode_step
from agent.backends.hf import TransformersGenerator
from agent.backends.refill import decode_ragged
from agent.models import ModelSpec
from tests.agent.test_hf_backend import PROMPTS


def _cost(blocks: list[tuple[int, int, int, int]], overhead: float) -> float:
    return sum((b - a) * (e - s) + overhead for a, b, s, e in blocks)


def _starts(mask: torch.Tensor) -> list[int]:
    return [int(row.nonzero()[0]) for row in mask]


def test_plan_covers_every_row_once_and_reads_every_attended_column() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows, width = int(torch.randint(1, 9, (1,))), int(torch.randint(2, 30, (1,)))
        mask = torch.rand(rows, width, generator=gen) < 0.6
        mask[:, -1] = True  # every row attends its pending token's column
        overhead = float(torch.randint(0, 40, (1,)))
        blocks = decode_step.plan(mask, overhead)
        assert [a for a, *_ in blocks] == [0] + [b for _, b, *_ in blocks[:-1]]
        assert blocks[-1][1] == rows
        starts = _starts(mask)
        for a, b, s, e in blocks:
            assert e == width and s == min(starts[a:b])
        # Optimal: no split of the rows into contiguous blocks reads less (brute force).
        best = min(
            _cost(
                [(a, b, min(starts[a:b]), width) for a, b in zip((0, *cuts), (*cuts, rows))],
                overhead,
            )
            for n in range(rows)
            for cuts in itertools.combinations(range(1, rows), n)
        )
        assert _cost(blocks, overhead) == pytest.approx(best)


def test_plan_splits_where_rows_start_far_apart() -> None:
    # Four rows attending 100 columns, then four that joined late (the last 10): two blocks.
    mask = torch.zeros(8, 100, dtype=torch.bool)
    mask[:4] = True
    mask[4:, 90:] = True
    assert decode_step.plan(mask, overhead=50) == [(0, 4, 0, 100), (4, 8, 90, 100)]
    # A block costs more than the columns a split would save: one block.
    assert decode_step.plan(mask, overhead=10_000) == [(0, 8, 0, 100)]


def test_blocked_attention_equals_sdpa() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    rows, width = 6, 40
    q = torch.randn(rows, 4, 1, 8)
    k, v = torch.randn(rows, 2, width, 8), torch.randn(rows, 2, width, 8)
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for r, s in enumerate([0, 3, 3, 20, 25, 31]):
        mask[r, s:32] = True  # columns 32.. are a slab's spare ones
    mask[1, 10:14] = False  # masked columns inside a row (lookahead's rejected drafts)
    full = mask[:, None, None, :]
    ref, _ = sdpa_attention_forward(module, q, k, v, full, scaling=0.3)
    blocks = decode_step.plan(mask[:, :32], overhead=4)
    assert len(blocks) > 1
    got, _ = decode_step.attention(module, q, k, v, full, row_blocks=blocks, scaling=0.3)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    # Without blocks, or for more than one query token, it is SDPA itself.
    same, _ = decode_step.attention(module, q, k, v, full, scaling=0.3)
    assert torch.equal(same, ref)


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="float32"))


def test_the_generator_installs_the_blocked_attention(
    gen: TransformersGenerator, tiny_model_dir: Path
) -> None:
    assert decode_step.installed(gen.model)
    off = TransformersGenerator(ModelSpec(name=str(tiny_model_dir)), row_blocks=False)
    assert off.model.config._attn_implementation == "sdpa"
    static = TransformersGenerator(ModelSpec(name=str(tiny_model_dir)), batching="static")
    assert not decode_step.installed(static.model)
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not decode_step.install(eager)


@pytest.mark.parametrize("grow", [0, 3])
def test_row_blocks_and_the_onednn_head_keep_greedy_answers(
    gen: TransformersGenerator, grow: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts of different lengths join a batch of at most 3 rows as others end (tokens the
    answers reach at different points count as EOS): rows start far apart, steps run in several
    blocks, and every answer equals the one decoded with neither part, token for token."""
    params = SamplingParams(max_tokens=40)
    enc = [gen.encode_prompt(m) for m in PROMPTS] * 2
    eos = list(gen.eos_ids)

    def decode(row_blocks: bool, onednn_head: bool) -> list[list[int]]:
        outs = decode_ragged(
            gen.model,
            enc,
            1,
            params,
            max_rows=3,
            eos_ids=eos,
            pad_id=0,
            slab_grow=grow,
            look_ahead=False,
            row_blocks=row_blocks,
            onednn_head=onednn_head,
        )
        return [o[0] for o in outs]

    first = decode(False, False)
    eos += [first[0][11], first[2][24], first[4][6]]
    ref = decode(False, False)
    assert len({len(r) for r in ref}) > 2
    seen: list[int] = []
    real = decode_step.plan

    def counted(mask: torch.Tensor, overhead: float = decode_step.OVERHEAD) -> list:
        blocks = real(mask, overhead=4.0)  # a small block cost: several blocks per step
        seen.append(len(blocks))
        return blocks

    monkeypatch.setattr(decode_step, "plan", counted)
    assert decode(True, False) == ref
    assert max(seen) > 1
    assert decode(True, True) == ref
    assert decode(False, True) == ref


def test_onednn_head_matches_the_linear_head_and_is_undone(gen: TransformersGenerator) -> None:
    model = gen.model
    head = model.get_output_embeddings()
    assert decode_step.onednn_available(model)
    x = torch.randn(3, 5, head.in_features)
    with torch.inference_mode():
        ref = head(x)
        with decode_step.onednn_head(model):
            assert "forward" in vars(head)
            got = head(x)
    assert "forward" not in vars(head)  # the class's forward again
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with decode_step.onednn_head(model, on=False):
        assert "forward" not in vars(head)
    # A call that needs gradients runs the linear head itself.
    with decode_step.onednn_head(model):
        y = head(x.requires_grad_())
    assert y.grad_fn is not None


def test_onednn_head_does_nothing_outside_cpu_float32(tiny_model_dir: Path) -> None:
    bf16 = TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="bfloat16"))
    assert not decode_step.onednn_available(bf16.model)
    with decode_step.onednn_head(bf16.model):
        assert "forward" not in vars(bf16.model.get_output_embeddings())

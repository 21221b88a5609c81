"""The output projection through oneDNN (`agent/backends/head.py`): the same logits as the
linear head, the same greedy answers from ragged decoding, and the model as it was after."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.backends import SamplingParams, head
from agent.backends.hf import TransformersGenerator
from agent.backends.refill import decode_ragged
from agent.models import ModelSpec
from tests.agent.test_hf_backend import PROMPTS


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="float32"))


@pytest.mark.parametrize("grow", [0, 3])
def test_the_onednn_head_keeps_greedy_answers(gen: TransformersGenerator, grow: int) -> None:
    """Prompts of different lengths join a batch of at most 3 rows as others end (tokens the
    answers reach at different points count as EOS), with slabs and `DynamicCache`: every
    answer decoded through the oneDNN head equals the linear head's, token for token, and every
    forward of the call went through it."""
    params = SamplingParams(max_tokens=40)
    enc = [gen.encode_prompt(m) for m in PROMPTS] * 2
    eos = list(gen.eos_ids)
    lm_head = gen.model.get_output_embeddings()
    swapped: list[bool] = []
    hook = lm_head.register_forward_hook(lambda m, *_: swapped.append("forward" in vars(m)))

    def decode(onednn_head: bool) -> list[list[int]]:
        swapped.clear()
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
            onednn_head=onednn_head,
        )
        return [o[0] for o in outs]

    try:
        first = decode(False)
        eos += [first[0][11], first[2][24], first[4][6]]
        ref = decode(False)
        assert len({len(r) for r in ref}) > 2 and not any(swapped)
        assert decode(True) == ref
        assert swapped and all(swapped)
    finally:
        hook.remove()
    assert "forward" not in vars(lm_head)


def test_onednn_head_matches_the_linear_head_and_is_undone(gen: TransformersGenerator) -> None:
    model = gen.model
    lm_head = model.get_output_embeddings()
    assert head.applies(model)
    x = torch.randn(3, 5, lm_head.in_features)
    with torch.inference_mode():
        ref = lm_head(x)
        with head.onednn_head(model):
            assert "forward" in vars(lm_head)
            got = lm_head(x)
    assert "forward" not in vars(lm_head)  # the class's forward again
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with head.onednn_head(model, on=False):
        assert "forward" not in vars(lm_head)
    # A call that needs gradients runs the linear head itself: the snapshot is detached, so
    # only the weight's own path gives the output a gradient function.
    assert lm_head.weight.requires_grad
    with head.onednn_head(model):
        y = lm_head(x)
    assert y.grad_fn is not None
    # A block inside another leaves the outer one's head in place.
    with head.onednn_head(model):
        outer = vars(lm_head)["forward"]
        with head.onednn_head(model):
            assert vars(lm_head)["forward"] is outer
        assert vars(lm_head)["forward"] is outer
    assert "forward" not in vars(lm_head)
    # An exception inside the block still restores the head.
    with pytest.raises(RuntimeError), head.onednn_head(model):
        raise RuntimeError("boom")
    assert "forward" not in vars(lm_head)


def test_onednn_head_does_nothing_outside_cpu_float32(tiny_model_dir: Path) -> None:
    bf16 = TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="bfloat16"))
    assert not head.applies(bf16.model)
    with head.onednn_head(bf16.model):
        assert "forward" not in vars(bf16.model.get_output_embeddings())


def test_static_batches_decode_through_the_onednn_head_too(tiny_model_dir: Path) -> None:
    """`generate`'s static batches (stop strings, prefix adapters, `batching: static`) run the
    head through oneDNN as well, with the linear head's answers."""
    static = TransformersGenerator(
        ModelSpec(name=str(tiny_model_dir), dtype="float32"), batching="static", batch_size=3
    )
    lm_head = static.model.get_output_embeddings()
    swapped: list[bool] = []
    hook = lm_head.register_forward_hook(lambda m, *_: swapped.append("forward" in vars(m)))
    params = SamplingParams(max_tokens=24)
    try:
        static.onednn_head = False
        ref = [r.text for r in static.generate(PROMPTS, params)]
        assert swapped and not any(swapped)
        swapped.clear()
        static.onednn_head = True
        assert [r.text for r in static.generate(PROMPTS, params)] == ref
        assert swapped and all(swapped)
    finally:
        hook.remove()


class _Stub(torch.nn.Module):
    """A model whose head has a bias (the tiny llama's, tied, has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.lm_head = torch.nn.Linear(8, 16, bias=True)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head


def test_onednn_head_with_a_bias_and_odd_inputs() -> None:
    torch.manual_seed(0)
    model = _Stub()
    assert head.applies(model)
    x = torch.randn(8, 6).t()  # 2D and not contiguous
    with torch.inference_mode():
        ref = model.lm_head(x)
        with head.onednn_head(model):
            got = model.lm_head(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_onednn_head_leaves_a_lora_wrapped_head_alone(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert head.applies(base)
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["lm_head"]))
    assert not head.applies(wrapped)


def test_make_generator_passes_onednn_head_through(tiny_model_dir: Path) -> None:
    from agent.backends import BackendConfig, make_generator

    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32")
    assert make_generator(spec, BackendConfig()).onednn_head is True
    assert make_generator(spec, BackendConfig(onednn_head=False)).onednn_head is False

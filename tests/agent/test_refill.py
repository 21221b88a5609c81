"""Ragged batch decoding (`backend.batching: ragged`): its sampler against transformers' warpers,
and its decode loop against `generate` on a tiny random llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from agent.backends import SamplingParams, refill, user
from agent.backends.hf import TransformersGenerator
from agent.backends.refill import (
    SHARED_PREFIX_MIN,
    SlabLayer,
    _Batch,
    _draw,
    argmax,
    can_share_prefix,
    decode_ragged,
    nucleus,
    shared_prefix,
    uses_slab,
)
from agent.errors import SelfloopError
from agent.models import ModelSpec
from tests.agent.test_hf_backend import PROMPTS
from tests.helpers import make_lora_adapter


def _warped(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """What `generate` samples from: its warpers, in its order, then softmax."""
    warpers = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    for w in warpers:
        logits = w(None, logits)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize(
    "scale,knobs",
    [
        (6.0, {"temperature": 0.9, "top_p": 0.95}),  # peaked: the nucleus is in the shortlist
        (0.3, {"temperature": 0.9, "top_p": 0.95}),  # flat: thousands of tokens, full sort
        (0.3, {"temperature": 0.7, "top_k": 300, "top_p": 0.8}),
        (2.0, {"temperature": 1.3, "top_k": 40}),
        (1.0, {"temperature": 1.0}),
    ],
)
def test_nucleus_is_the_distribution_transformers_samples_from(scale: float, knobs: dict) -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 3000) * scale
    logits[0, :4] = 20.0  # one row with a tie at the top
    params = SamplingParams(max_tokens=1, **knobs)
    weights, index = nucleus(logits, params)
    got = torch.zeros_like(logits)
    cols = index if index is not None else torch.arange(logits.shape[1]).expand_as(logits)
    got.scatter_(1, cols, weights)
    got = got / got.sum(dim=-1, keepdim=True)
    want = _warped(logits, params)
    assert torch.allclose(got, want, atol=1e-6)
    assert ((got > 0) == (want > 0)).all()


def test_draw_follows_the_weights() -> None:
    torch.manual_seed(0)
    weights = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).expand(40_000, 4)
    index = torch.tensor([[7, 8, 9, 10]]).expand(40_000, 4)
    picks = _draw(weights, index)
    freq = torch.bincount(picks, minlength=11)[7:].float() / len(picks)
    assert torch.allclose(freq, torch.tensor([0.5, 0.0, 0.3, 0.2]), atol=0.01)


def test_draw_never_picks_a_zero_weight_at_either_end() -> None:
    torch.manual_seed(1)
    weights = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(20_000, 5)
    picks = _draw(weights, None)
    freq = torch.bincount(picks, minlength=5).float() / len(picks)
    assert freq[[0, 2, 4]].sum() == 0
    assert abs(freq[1] - 0.5) < 0.02


def test_a_draw_at_the_very_top_picks_the_last_positive_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should uniform x total round up to the total, the pick is the last candidate with
    weight, not the row's last one (a top-p row ends in cut candidates)."""
    weights = torch.tensor([[0.2, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    index = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    monkeypatch.setattr(torch, "rand", lambda n, _, **kw: torch.ones(n, 1, **kw))
    assert _draw(weights, index).tolist() == [6, 12]


def test_draw_keeps_the_share_of_many_tiny_weights() -> None:
    """A vocabulary's long tail: 2^18 tokens of weight 2^-25 after one of 1.0 hold 2^-7 of the
    mass. A running sum accumulated in float32 (a float32 scan on CUDA) would lose every one of
    them, each below half a float32 ulp of 1.0, as would a shortlist of the likeliest tokens;
    the draw must take the tail at about its share. (torch's CPU cumsum accumulates float32 in
    double, so on CPU this guards the draw's exactness, not the float64 sum.)"""
    torch.manual_seed(2)
    row = torch.full((1 + 2**18,), 2.0**-25)
    row[0] = 1.0
    weights = row.expand(64, -1)
    tail = sum(int((_draw(weights, None) > 0).sum()) for _ in range(100))
    share = 2.0**-7 / (1 + 2.0**-7)  # 6,400 draws: 49.6 expected, sd 7
    assert 25 <= tail <= 80, (tail, 6400 * share)


def test_argmax_of_bfloat16_logits_is_their_own_with_ties_to_the_first() -> None:
    torch.manual_seed(3)
    logits = (torch.randn(8, 5, 3000) * 4).bfloat16()
    logits[0, 0, [7, 11]] = 100.0  # equal maxima: the first wins, as torch's argmax has it
    got = argmax(logits)
    assert got.shape == (8, 5)
    assert torch.equal(got, logits.argmax(dim=-1))
    assert int(got[0, 0]) == 7


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(
        ModelSpec(name=str(tiny_model_dir), dtype="float32"), batch_size=5, batching="static"
    )


def test_greedy_ragged_equals_generate_at_every_batch_width(gen: TransformersGenerator) -> None:
    """Rows leaving and prompts joining (left-padded to the batch's cache, padding trimmed) do
    not change a greedy answer: at widths 1, 2 and 5 it is what `generate` alone says."""
    params = SamplingParams(max_tokens=16)
    want = [r.text for r in gen.generate(PROMPTS, params)]
    enc = [gen.encode_prompt(m) for m in PROMPTS]
    for width in (1, 2, 5):
        outs = decode_ragged(
            gen.model, enc, 1, params, max_rows=width, eos_ids=gen.eos_ids, pad_id=0
        )
        assert [gen._completion(o[0], params)[0].text for o in outs] == want
        assert all(1 <= len(o[0]) <= 16 for o in outs)


@pytest.mark.parametrize("grow", [0, 1, 3])
@pytest.mark.parametrize("trim", [1, refill.TRIM_MIN])
def test_greedy_ragged_with_slab_buffers_equals_generate(
    gen: TransformersGenerator, grow: int, trim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's cache in slabs that fill and grow every `grow` steps (0: transformers'
    DynamicCache) while rows leave (their places taken by the last rows) and join (into spare
    rows), the unused leading columns trimmed as soon as there is one or only when the buffers
    grow, gives `generate`'s greedy answers."""
    monkeypatch.setattr(refill, "TRIM_MIN", trim)
    assert uses_slab(gen.model)
    params = SamplingParams(max_tokens=16)
    want = [r.text for r in gen.generate(PROMPTS, params)]
    enc = [gen.encode_prompt(m) for m in PROMPTS]
    for width in (2, 5):
        outs = decode_ragged(
            gen.model,
            enc,
            1,
            params,
            max_rows=width,
            eos_ids=gen.eos_ids,
            pad_id=0,
            slab_grow=grow,
        )
        assert [gen._completion(o[0], params)[0].text for o in outs] == want


def test_slab_layer_writes_in_place_and_grows_when_full() -> None:
    torch.manual_seed(0)
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    layer = SlabLayer(torch.cat([k, torch.zeros(2, 3, 1, 8)], 2), torch.zeros(2, 3, 5, 8), 4, 2)
    layer.values[:, :, :4] = v
    buf = layer.keys
    step = [torch.randn(2, 3, 1, 8) for _ in range(2)]
    keys, _ = layer.update(step[0], step[0])
    assert keys is buf and layer.length == 5 and layer.width == 5  # the spare column, in place
    keys, values = layer.update(step[1], step[1])
    assert keys is not buf and layer.width == 8 and layer.length == 6  # full: +1 +2 spare
    assert torch.equal(keys[:, :, :6], torch.cat([k, step[0], step[1]], 2))
    assert torch.equal(values[:, :, :4], v)
    assert not keys[:, :, 6:].any()  # spare columns are zeros, never garbage
    assert layer.get_seq_length() == 6 and layer.get_mask_sizes(1) == (8, 0)


def _rows(lengths: list[int], owner0: int, dim: int = 4) -> _Batch:
    """A batch of one-layer rows (DynamicCache) whose cache columns hold (owner, column) codes,
    right-aligned: row i attends to its last `lengths[i]` columns."""
    width = max(lengths)
    b = _Batch()
    keys = torch.zeros(len(lengths), 1, width, dim)
    for i, n in enumerate(lengths):
        for c in range(n):
            keys[i, 0, width - n + c] = 100 * (owner0 + i) + c
    b.cache = DynamicCache([(keys, -keys)])
    b.mask = torch.tensor([[0] * (width - n) + [1] * (n + 1) for n in lengths])
    b.pos = torch.tensor(lengths)
    b.last = torch.arange(len(lengths)) + owner0
    b.owner = [(owner0 + i, 0) for i in range(len(lengths))]
    return b


def _attended(b: _Batch) -> dict[int, list[float]]:
    """Per owner: the codes of the cache columns its row attends to (keys; values are their
    negation), checked against the mask and the position."""
    layer = b.cache.layers[0]
    assert layer.keys.shape[0] == len(b) and layer.length == b.mask.shape[1] - 1
    out = {}
    for r, (i, _) in enumerate(b.owner):
        cols = b.mask[r, :-1].nonzero().squeeze(1)
        assert torch.equal(layer.values[r, 0, cols], -layer.keys[r, 0, cols])
        assert int(b.last[r]) == i and int(b.pos[r]) == len(cols)
        out[i] = layer.keys[r, 0, cols, 0].tolist()
    return out


def test_slab_rows_leave_and_join_without_copying_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row that leaves a slab batch is replaced by a later row (only that row is copied); rows
    that join fill spare rows of the same buffers; every row keeps the columns it attends to."""
    monkeypatch.setattr(refill, "TRIM_MIN", 2)
    b = _Batch(grow=2, capacity=6)
    b.join(_rows([2, 4, 3, 1, 2], 0))
    want = _attended(b)
    assert want[1] == [100, 101, 102, 103]
    buffers = b.cache.layers[0].buffers
    assert buffers[0].shape[:3] == (6, 1, 4 + 2)
    b.keep([0, 2, 4])  # row 4 moves to place 1
    assert [o for o, _ in b.owner] == [0, 4, 2]
    assert b.cache.layers[0].buffers is buffers  # no new buffers
    assert _attended(b) == {i: want[i] for i in (0, 2, 4)}
    # Owner 1 (the only one attending to column 0) is gone, but one unused column is below
    # TRIM_MIN: it stays, masked.
    assert b.mask.shape[1] == 5 and not b.mask[:, 0].any()
    b.join(_rows([3, 2], 10))  # fits: 5 rows in 6, 3 columns in 4
    assert b.cache.layers[0].buffers is buffers
    got = _attended(b)
    assert got[10] == [1000, 1001, 1002] and got[11] == [1100, 1101]
    assert {i: got[i] for i in (0, 2, 4)} == {i: want[i] for i in (0, 2, 4)}
    b.keep([1])  # owner 4 alone: 2 unused leading columns, trimmed (new buffers)
    assert b.cache.layers[0].buffers is not buffers and b.mask.shape[1] == 3
    assert _attended(b) == {4: want[4]}


def test_a_longer_or_larger_join_rebuilds_the_slab_right_aligned() -> None:
    b = _Batch(grow=1, capacity=2)
    b.join(_rows([2, 1], 0))
    want = _attended(b)
    b.join(_rows([4], 5))  # longer and past the capacity
    layer = b.cache.layers[0]
    assert layer.capacity == 3 and layer.length == 4 and layer.width == 4 + 1
    got = _attended(b)
    assert got[5] == [500, 501, 502, 503] and {i: got[i] for i in (0, 1)} == want
    # Making room for a step when the buffers are full drops the unused leading columns too.
    b.keep([0, 1])
    assert layer.length == 4  # 2 unused columns, below TRIM_MIN
    b.reserve(2)
    assert layer.length == 2 and layer.width == 2 + 2 + 1
    assert _attended(b) == want


def test_only_sdpa_full_attention_models_use_slabs(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not uses_slab(eager)
    # Eager attention adds its mask: a slab's boolean mask there would change the answers.
    params = SamplingParams(max_tokens=8)
    enc = [[1, 5, 9, 12, 40, 41], [1, 7, 3], [1, 30, 31, 32, 33], [1, 8]]
    got = decode_ragged(eager, enc, 1, params, max_rows=2, eos_ids=[2], pad_id=0)
    for prompt, out in zip(enc, got):
        ids = torch.tensor([prompt])
        alone = eager.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=2)
        assert out[0] == alone[0, len(prompt) :].tolist()


def test_ragged_samples_rows_and_reports_prompts(gen: TransformersGenerator) -> None:
    """n samples per prompt through refills, reproducible from a seed, each ending at EOS or at
    max_tokens; every prompt is reported done exactly once."""
    params = SamplingParams(max_tokens=9, temperature=1.0, n=3, seed=3)
    enc = [gen.encode_prompt(m) for m in PROMPTS]
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        done: list[int] = []
        runs.append(
            decode_ragged(
                gen.model,
                enc,
                3,
                params,
                max_rows=7,
                eos_ids=gen.eos_ids,
                pad_id=0,
                on_prompt_done=done.append,
            )
        )
        assert sorted(done) == list(range(len(PROMPTS)))
    assert runs[0] == runs[1]
    eos = set(gen.eos_ids)
    for per_prompt in runs[0]:
        assert len(per_prompt) == 3 and len({tuple(t) for t in per_prompt}) > 1
        for toks in per_prompt:
            assert len(toks) == 9 or toks[-1] in eos
            assert not eos & set(toks[:-1])


def test_generator_batching_choice(tiny_model_dir: Path) -> None:
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32")
    with pytest.raises(SelfloopError, match="batching must be one of"):
        TransformersGenerator(spec, batching="paged")


def test_prefix_tuning_adapter_decodes_in_static_batches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A prefix-tuning adapter's virtual tokens go through generate's cache handling, which the
    ragged loop does not have: under one, a ragged generator answers as a static one."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    peft.save_pretrained(tmp_path / "p1")
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32")
    answers = []
    for batching in ("static", "ragged"):
        gen = TransformersGenerator(
            spec, batch_size=3, adapters={"p1": tmp_path / "p1"}, batching=batching
        )
        answers.append(
            [r.text for r in gen.generate(PROMPTS, SamplingParams(max_tokens=8), adapter="p1")]
        )
    assert answers[0] == answers[1]
    # Scoring under it shares no rubric prefix (the adapter's virtual tokens are the cache).
    cands = ["1", "2"]
    batched = gen.next_token_logprobs(RUBRIC_PROMPTS, cands, adapter="p1")
    alone = [gen.next_token_logprobs([m], cands, adapter="p1")[0] for m in RUBRIC_PROMPTS]
    assert batched == [pytest.approx(a, abs=1e-4) for a in alone]


# A judge-like batch: one long rubric, then each prompt's own question.
RUBRIC = (
    "Review the question and the response with the additive five point scale below.\n"
    "- Add a point if the response is relevant to the question, even if incomplete.\n"
    "- Add another if it addresses a substantial part of the question.\n"
    "- Add a third if it answers the basic elements of the question in a useful way.\n"
    "- Add a fourth if it is clearly written from an assistant's view, and well organized.\n"
    "- Add a fifth if it is impeccably tailored to the question, with expert knowledge.\n"
    "Then reply with the score alone.\n\nQuestion: "
)
RUBRIC_PROMPTS = [
    user(RUBRIC + q)
    for q in ("Hi", "What is 2 + 2?", "Write a haiku about rain.", "ok", "Name three rivers.")
]


def test_shared_prefix_length() -> None:
    m = SHARED_PREFIX_MIN
    a = list(range(m + 40))
    assert shared_prefix([a, a[: m + 30] + [-1] * 5, a[: m + 25] + [-7]], limit=500) == m + 25
    assert shared_prefix([a, a[: m + 30] + [-1]], limit=m + 20) == m + 20  # rows keep a tail
    assert shared_prefix([a, a], limit=m - 1) == 0  # too short to pay
    assert shared_prefix([a[: m - 1] + [1] * 30, a[: m - 1] + [2] * 30], limit=500) == 0
    assert shared_prefix([a], limit=500) == 0 and shared_prefix([], limit=500) == 0
    assert shared_prefix([a, a + [1]], limit=500) == len(a)  # the limit is the shorter row


def _prefix_calls(model: torch.nn.Module) -> tuple[list[tuple[int, int]], object]:
    """The (rows, width) of every forward pass of `model`, and the hook's handle."""
    seen: list[tuple[int, int]] = []

    def hook(_mod: object, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(tuple(ids.shape))

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_shared_prefix_runs_once_and_decodes_the_same(gen: TransformersGenerator) -> None:
    """Prompts admitted together that open with the same rubric have it prefilled once (a
    one-row pass) and its cache repeated; the rows then see what they would alone: greedy
    answers equal generate's, with and without refills."""
    params = SamplingParams(max_tokens=12)
    want = [r.text for r in gen.generate(RUBRIC_PROMPTS, params)]
    enc = [gen.encode_prompt(m) for m in RUBRIC_PROMPTS]
    common = shared_prefix(enc, min(len(e) for e in enc) - 1)
    assert common >= SHARED_PREFIX_MIN
    for width in (2, 5):
        seen, handle = _prefix_calls(gen.model)
        try:
            outs = decode_ragged(
                gen.model, enc, 1, params, max_rows=width, eos_ids=gen.eos_ids, pad_id=0
            )
        finally:
            handle.remove()
        assert [gen._completion(o[0], params)[0].text for o in outs] == want
        # the shared prefix's own pass (prompts admitted in twos may share more of it)
        assert any(rows == 1 and w >= common for rows, w in seen)
    # All five admitted at once: no row ran the prefix again.
    assert max(w for rows, w in seen if rows > 1) == max(len(e) for e in enc) - common


def test_scoring_with_a_shared_prefix_matches_each_prompt_alone(
    gen: TransformersGenerator,
) -> None:
    """The judge's rubric is run once per batch; each prompt's scores are those it gets alone
    (a one-row batch shares nothing)."""
    cands = ["1", "2", "3", "4", "5"]
    seen, handle = _prefix_calls(gen.model)
    try:
        batched = gen.next_token_logprobs(RUBRIC_PROMPTS, cands)
        conts = ["Four.", "x", "Rain on the roof.", "Fine, thanks", "Nile, Amazon, Rhine."]
        cont_batched = gen.continuation_logprobs(RUBRIC_PROMPTS, conts)
    finally:
        handle.remove()
    assert any(rows == 1 and w >= SHARED_PREFIX_MIN for rows, w in seen)
    for i, msgs in enumerate(RUBRIC_PROMPTS):
        alone = gen.next_token_logprobs([msgs], cands)[0]
        assert batched[i] == pytest.approx(alone, abs=1e-4)
        cont_alone = gen.continuation_logprobs([msgs], [conts[i]])[0]
        assert cont_batched[i] == pytest.approx(cont_alone, abs=1e-4)


def test_scoring_under_a_lora_adapter_shares_the_prefix_too(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With adapters loaded the model is a PeftModel: under a LoRA adapter and with it
    disabled (the base), batched scores with the shared rubric are each prompt's alone, and
    differ between the two (the adapter is in the shared pass too)."""
    adapter = make_lora_adapter(tiny_model_dir, tmp_path / "a1")
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32")
    g = TransformersGenerator(spec, batch_size=5, adapters={"a1": adapter})
    conts = ["Four.", "x", "Rain on the roof.", "Fine, thanks", "Nile, Amazon, Rhine."]
    got = {}
    for name in ("a1", None):
        seen, handle = _prefix_calls(g.model)
        try:
            batched = g.continuation_logprobs(RUBRIC_PROMPTS, conts, adapter=name)
        finally:
            handle.remove()
        assert any(rows == 1 and w >= SHARED_PREFIX_MIN for rows, w in seen)
        alone = [
            g.continuation_logprobs([m], [c], adapter=name)[0]
            for m, c in zip(RUBRIC_PROMPTS, conts)
        ]
        assert batched == [pytest.approx(a, abs=1e-4) for a in alone]
        got[name] = batched
    assert got["a1"] != got[None]


def test_only_full_attention_models_share_a_prefix(gen: TransformersGenerator) -> None:
    """A sliding window counts distance in cache columns, and linear-attention layers carry
    state: the padding between a shared prefix and a row's own tokens would change what they
    see, so those models run every row whole."""
    from types import SimpleNamespace

    from transformers import MistralConfig, Qwen2Config

    assert can_share_prefix(gen.model) and gen.share_prefix
    assert can_share_prefix(SimpleNamespace(config=Qwen2Config()))  # window off by default
    assert not can_share_prefix(SimpleNamespace(config=Qwen2Config(use_sliding_window=True)))
    assert not can_share_prefix(SimpleNamespace(config=MistralConfig(sliding_window=4096)))
    hybrid = SimpleNamespace(layer_types=["full_attention", "linear_attention"])
    assert not can_share_prefix(SimpleNamespace(config=hybrid))

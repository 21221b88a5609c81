"""The transformers backend on a tiny random llama: batching, sampling, stops, adapters, scoring."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from agent.backends import BackendConfig, SamplingParams, make_generator, user
from agent.backends.hf import TransformersGenerator
from agent.errors import SelfloopError
from agent.models import ModelSpec
from tests.helpers import make_lora_adapter

PROMPTS = [
    user("Hi"),
    user("Write a haiku about the sea and the long grey evening light."),
    user("What is 2 + 2?", system="You are terse."),
    user("List three colours."),
    user("Explain photosynthesis to a ten year old in two sentences, please, with an example."),
    user("ok"),
    [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another one?"},
    ],
]


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    # float32 pinned: these tests check batching and scoring logic to 1e-4, tighter than
    # bfloat16 (what `auto` picks on a CPU with native bfloat16) holds across batch shapes.
    return TransformersGenerator(ModelSpec(name=str(tiny_model_dir), dtype="float32"), batch_size=4)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a1")


def test_batched_greedy_equals_one_at_a_time(gen: TransformersGenerator) -> None:
    params = SamplingParams(max_tokens=12)
    batched = [r.text for r in gen.generate(PROMPTS, params)]
    single = [gen.generate([p], params)[0].text for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts really got different answers


def test_matches_plain_model_generate(gen: TransformersGenerator) -> None:
    """The backend's batching must not change what model.generate alone would say."""
    ids = gen.encode_prompt(PROMPTS[1])
    with torch.inference_mode():
        out = gen.model.generate(
            torch.tensor([ids]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=gen.tokenizer.pad_token_id,
        )
    expected = gen.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    batched = gen.generate(PROMPTS, SamplingParams(max_tokens=12))
    assert batched[1].text == expected


def test_results_in_input_order_with_counts(gen: TransformersGenerator) -> None:
    res = gen.generate(PROMPTS, SamplingParams(max_tokens=5))
    assert len(res) == len(PROMPTS)
    for msgs, r in zip(PROMPTS, res):
        assert r.prompt_tokens == len(gen.encode_prompt(msgs))
        c = r.completions[0]
        assert 0 <= c.completion_tokens <= 5
        if c.finish_reason == "length":
            assert c.completion_tokens == 5


def test_length_finish_reason(gen: TransformersGenerator) -> None:
    r = gen.generate([PROMPTS[0]], SamplingParams(max_tokens=3))[0]
    c = r.completions[0]
    # A random model rarely emits EOS within 3 tokens; either way the reason must fit the count.
    assert (c.finish_reason, c.completion_tokens) in {("length", 3)} or c.completion_tokens < 3


def test_n_samples_with_seed_are_reproducible(gen: TransformersGenerator) -> None:
    params = SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=123)
    a = gen.generate(PROMPTS[:3], params)
    b = gen.generate(PROMPTS[:3], params)
    assert [[c.text for c in r.completions] for r in a] == [
        [c.text for c in r.completions] for r in b
    ]
    assert all(len(r.completions) == 3 for r in a)
    assert any(len({c.text for c in r.completions}) > 1 for r in a)  # really sampled
    other = gen.generate(PROMPTS[:3], params.model_copy(update={"seed": 124}))
    assert [[c.text for c in r.completions] for r in other] != [
        [c.text for c in r.completions] for r in a
    ]


def test_greedy_n_gives_identical_copies(gen: TransformersGenerator) -> None:
    r = gen.generate([PROMPTS[2]], SamplingParams(max_tokens=6, n=2))[0]
    assert len(r.completions) == 2 and r.completions[0] == r.completions[1]


def test_stop_string_cuts_and_reports_stop(gen: TransformersGenerator) -> None:
    full = gen.generate([PROMPTS[1]], SamplingParams(max_tokens=20))[0].text
    assert len(full) > 4
    stop = full[2:4]
    r = gen.generate([PROMPTS[1]], SamplingParams(max_tokens=20, stop=stop))[0].completions[0]
    assert r.finish_reason == "stop"
    assert r.text == full[: full.index(stop)]


def test_stream_pieces_add_up_to_the_batched_answer(gen: TransformersGenerator) -> None:
    ids = gen.encode_prompt(PROMPTS[1])
    full = gen.generate([PROMPTS[1]], SamplingParams(max_tokens=20))[0].text
    for params in (
        SamplingParams(max_tokens=20),
        SamplingParams(max_tokens=20, temperature=1.0, seed=3),
        SamplingParams(max_tokens=20, stop=("e",)),
        # Longer than the first pieces: what may start a stop string is held back, not sent.
        SamplingParams(max_tokens=20, stop=(full[8:20],)),
    ):
        pieces: list[str] = []
        streamed, streamed_ids = gen.generate_stream(ids, params, pieces.append)
        (result, token_ids), *_ = gen.generate_from_ids([ids], params)
        assert streamed == result.completions[0] and streamed_ids == token_ids[0]
        assert "".join(pieces) == streamed.text
        if not params.stop:
            assert len(pieces) >= streamed.completion_tokens - 3  # token by token
            assert gen.tokenizer.decode(streamed_ids) == streamed.text


def test_stream_stops_when_asked(gen: TransformersGenerator) -> None:
    pieces: list[str] = []
    c, _ = gen.generate_stream(
        gen.encode_prompt(PROMPTS[0]),
        SamplingParams(max_tokens=50),
        pieces.append,
        should_stop=lambda: len(pieces) >= 3,
    )
    assert c.completion_tokens < 10 and "".join(pieces) == c.text


def test_empty_prompt_list_is_an_error(gen: TransformersGenerator) -> None:
    with pytest.raises(SelfloopError, match="no prompts"):
        gen.generate([])


def test_malformed_messages_are_errors(gen: TransformersGenerator) -> None:
    with pytest.raises(SelfloopError, match="prompt 0 message 0"):
        gen.generate([[{"role": "robot", "content": "x"}]])


def test_prompt_over_context_is_a_per_prompt_error(gen: TransformersGenerator) -> None:
    long = user("word " * 600)
    res = gen.generate([PROMPTS[0], long], SamplingParams(max_tokens=4))
    assert res[0].ok and not res[1].ok and "context" in res[1].error
    with pytest.raises(SelfloopError):
        _ = res[1].text


def test_adapter_switching_without_reloading_base(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    g = TransformersGenerator(str(tiny_model_dir), batch_size=4)
    params = SamplingParams(max_tokens=10)
    base = [r.text for r in g.generate(PROMPTS[:4], params)]
    g.load_adapter(adapter_dir, "a1")
    second = make_lora_adapter(tiny_model_dir, tmp_path / "a2", seed=1)
    g.load_adapter(second, "a2")
    with_a1 = [r.text for r in g.generate(PROMPTS[:4], params, adapter="a1")]
    with_a2 = [r.text for r in g.generate(PROMPTS[:4], params, adapter="a2")]
    again_base = [r.text for r in g.generate(PROMPTS[:4], params)]
    again_a1 = [r.text for r in g.generate(PROMPTS[:4], params, adapter="a1")]
    assert with_a1 != base and with_a2 != with_a1
    assert again_base == base and again_a1 == with_a1
    with pytest.raises(SelfloopError, match="unknown adapter 'nope'"):
        g.generate(PROMPTS[:1], params, adapter="nope")


def test_unloading_adapters_goes_back_to_the_base_model(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    g = TransformersGenerator(str(tiny_model_dir), batch_size=4)
    params = SamplingParams(max_tokens=10)
    base = [r.text for r in g.generate(PROMPTS[:3], params)]
    g.load_adapter(adapter_dir, "a1")
    g.load_adapter(make_lora_adapter(tiny_model_dir, tmp_path / "a2", seed=1), "a2")
    with_a2 = [r.text for r in g.generate(PROMPTS[:3], params, adapter="a2")]
    g.generate(PROMPTS[:1], params, adapter="a1")  # a1 active, then deleted
    g.unload_adapter("a1")
    assert [r.text for r in g.generate(PROMPTS[:3], params)] == base
    assert [r.text for r in g.generate(PROMPTS[:3], params, adapter="a2")] == with_a2
    g.unload_adapter("a2")  # the last one: the plain base model again, and it still generates
    assert g.adapters == {} and [r.text for r in g.generate(PROMPTS[:3], params)] == base
    assert not any("lora" in n for n, _ in g.model.named_parameters())
    g.load_adapter(adapter_dir, "again")  # and an adapter loads onto it as at the start
    assert [r.text for r in g.generate(PROMPTS[:3], params, adapter="again")] != base


def test_merged_adapter_decodes_as_the_unmerged_one(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """merge_adapters (the CPU default) decodes under a LoRA adapter with a merged copy of the
    model: the same greedy answers as the adapter run unmerged, for each adapter in turn and
    through static batches, ragged rows and the stream; one copy is kept, and unloading its
    adapter drops it (a new adapter under the old name is not served the old weights)."""
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32")
    second = make_lora_adapter(tiny_model_dir, tmp_path / "a2", seed=1)
    adapters = {"a1": adapter_dir, "a2": second}
    merged = TransformersGenerator(spec, batch_size=4, adapters=adapters)
    plain = TransformersGenerator(spec, batch_size=4, adapters=adapters, merge_adapters=False)
    assert merged.merge_adapters and not plain.merge_adapters
    params = SamplingParams(max_tokens=12)
    for adapter in ("a1", "a2", None, "a1"):
        want = [r.text for r in plain.generate(PROMPTS, params, adapter=adapter)]
        for batching in ("ragged", "static"):
            merged.batching = batching
            assert [r.text for r in merged.generate(PROMPTS, params, adapter=adapter)] == want
        if adapter is not None:
            assert merged._merged is not None and merged._merged[0] == adapter
            assert not any("lora" in n for n, _ in merged._merged[1].named_parameters())
        pieces: list[str] = []
        ids = merged.encode_prompt(PROMPTS[0])
        done, _ = merged.generate_stream(ids, params, pieces.append, adapter=adapter)
        assert done.text == "".join(pieces) == want[0]
    assert plain._merged is None  # merging off: never copied
    # the adapters' own weights stay in place for scoring, which runs unmerged
    assert any("lora" in n for n, _ in merged.model.named_parameters())
    pairs = [user("Hi")], ["there"]
    got = merged.continuation_logprobs(*pairs, adapter="a1")[0]
    assert got == plain.continuation_logprobs(*pairs, adapter="a1")[0]
    merged.unload_adapter("a1")
    assert merged._merged is None
    merged.load_adapter(second, "a1")  # the old name, other weights
    with_new = [r.text for r in merged.generate(PROMPTS, params, adapter="a1")]
    assert with_new == [r.text for r in plain.generate(PROMPTS, params, adapter="a2")]
    assert make_generator(spec, BackendConfig(merge_adapters=False)).merge_adapters is False


def test_adapter_dir_must_be_peft(gen: TransformersGenerator, tmp_path: Path) -> None:
    with pytest.raises(SelfloopError, match="adapter_config.json"):
        gen.load_adapter(tmp_path)


def test_next_token_logprobs_match_a_full_forward(gen: TransformersGenerator) -> None:
    cands = ["1", "2", "3", "4", "5"]
    got = gen.next_token_logprobs(PROMPTS, cands)
    for msgs, lp in zip(PROMPTS, got):
        ids = gen.encode_prompt(msgs)
        with torch.inference_mode():
            logits = gen.model(torch.tensor([ids])).logits[0, -1]
        ref = torch.log_softmax(logits.float(), -1)
        for c in cands:
            t = gen.tokenizer(c, add_special_tokens=False)["input_ids"][0]
            assert lp[c] == pytest.approx(float(ref[t]), abs=1e-4)


def test_multi_token_candidate_is_rejected(gen: TransformersGenerator) -> None:
    with pytest.raises(SelfloopError, match="not one"):
        gen.next_token_logprobs(PROMPTS[:1], ["photosynthesis"])


def test_continuation_logprobs_agree_with_greedy_and_batching(gen: TransformersGenerator) -> None:
    conts = ["The sea is grey.", "Four.", "Red, green and blue, as you asked.", "x"]
    batched = gen.continuation_logprobs(PROMPTS[:4], conts)
    single = [gen.continuation_logprobs([p], [c])[0] for p, c in zip(PROMPTS[:4], conts)]
    for b, s, c in zip(batched, single, conts):
        assert len(b) == len(gen.tokenizer(c, add_special_tokens=False)["input_ids"])
        assert b == pytest.approx(s, abs=1e-4)
        assert all(x <= 0 for x in b)
    # A one-token continuation scores exactly what next_token_logprobs says of that token.
    cont = gen.continuation_logprobs(PROMPTS[:3], ["7"] * 3)
    nxt = gen.next_token_logprobs(PROMPTS[:3], ["7"])
    assert [c[0] for c in cont] == pytest.approx([n["7"] for n in nxt], abs=1e-4)
    assert not any(math.isnan(c[0]) for c in cont)


def test_make_generator_selects_transformers(tiny_model_dir: Path) -> None:
    g = make_generator(str(tiny_model_dir))
    assert g.name == "transformers" and g.model_name == tiny_model_dir.name


@pytest.mark.parametrize("batching", ["ragged", "continuous"])
def test_batching_agrees_with_static_batches(
    tiny_model_dir: Path, adapter_dir: Path, batching: str
) -> None:
    """backend.batching ragged (selfloop's refill loop) and continuous (transformers') give the
    static path's greedy answers, prompt by prompt in the caller's order (with and without an
    adapter), n samples per prompt reproducibly from a seed, progress per finished prompt, and
    leave the model as it was for static calls (stop strings, scoring) after them."""
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32")
    static = TransformersGenerator(
        spec, batch_size=4, adapters={"a1": adapter_dir}, batching="static"
    )
    cont = TransformersGenerator(
        spec, batch_size=4, adapters={"a1": adapter_dir}, batching=batching
    )
    greedy = SamplingParams(max_tokens=12)
    for adapter in (None, "a1"):
        want = [r.text for r in static.generate(PROMPTS, greedy, adapter=adapter)]
        seen: list[tuple[int, int]] = []
        got = cont.generate(
            PROMPTS, greedy, adapter=adapter, progress=lambda d, t, seen=seen: seen.append((d, t))
        )
        assert [r.text for r in got] == want
        assert [r.prompt_tokens for r in got] == [len(cont.encode_prompt(m)) for m in PROMPTS]
        assert seen[-1] == (len(PROMPTS), len(PROMPTS)) and len(seen) == len(PROMPTS)
    sampled = SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=7)
    a, b = (cont.generate(PROMPTS[:3], sampled) for _ in range(2))
    texts = [[c.text for c in r.completions] for r in a]
    assert texts == [[c.text for c in r.completions] for r in b]
    assert all(len(t) == 3 for t in texts) and any(len(set(t)) > 1 for t in texts)
    for r in a:
        for c in r.completions:
            assert c.completion_tokens <= 10
            assert c.finish_reason == "stop" or c.completion_tokens == 10
    # stop strings stay with static batches: the static path answers those, as before
    full = static.generate([PROMPTS[1]], SamplingParams(max_tokens=20))[0].text
    stop = SamplingParams(max_tokens=20, stop=full[2:4])
    assert cont.generate([PROMPTS[1]], stop)[0].text == static.generate([PROMPTS[1]], stop)[0].text
    pairs = [user("Hi")], ["there"]
    [got_lp], [want_lp] = cont.continuation_logprobs(*pairs), static.continuation_logprobs(*pairs)
    assert got_lp == pytest.approx(want_lp, abs=1e-5)
    assert make_generator(spec, BackendConfig(batching=batching)).batching == batching

"""Lookahead (`agent/backends/lookahead.py`): greedy rows caught in a cycle have the cycle's
continuation checked a chunk per forward pass; the answers stay `generate`'s."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.backends import SamplingParams, lookahead, refill
from agent.backends.hf import TransformersGenerator
from agent.backends.lookahead import cycle, draft
from agent.backends.refill import decode_ragged
from agent.models import ModelSpec
from tests.agent.test_hf_backend import PROMPTS


def test_cycle_finds_the_shortest_period_over_the_span() -> None:
    loop = [5, 6, 7] * 12
    assert cycle([1, 2, 3, *loop], span=32, max_period=64) == 3
    assert cycle([9] * 40, span=32, max_period=64) == 1
    # Repeated, but over fewer tokens than the span: not trusted yet.
    assert cycle([1, 2] + [5, 6, 7] * 10, span=32, max_period=64) == 0
    # One token off inside the span breaks the cycle.
    broken = list(loop)
    broken[-20] = 0
    assert cycle(broken, span=32, max_period=64) == 0
    # A period longer than max_period, or one that did not repeat twice, is not found.
    long = list(range(40)) * 3
    assert cycle(long, span=32, max_period=64) == 40
    assert cycle(long, span=32, max_period=39) == 0
    assert cycle(list(range(60)) + list(range(30)), span=32, max_period=64) == 0


def test_draft_continues_the_cycle() -> None:
    assert draft([1, 2, 3, 4, 2, 3, 4], 3, 7) == [2, 3, 4, 2, 3, 4, 2]
    assert draft([8, 8], 1, 3) == [8, 8, 8]


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(
        ModelSpec(name=str(tiny_model_dir), dtype="float32"), batch_size=5, batching="static"
    )


@pytest.mark.parametrize("grow,early_eos", [(0, False), (3, False), (3, True)])
def test_followed_rows_keep_generates_greedy_answers(
    gen: TransformersGenerator, grow: int, early_eos: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random tiny model never loops, so the cycle finder is told a cycle began at every
    5th token, and the draft is the true greedy continuation spoiled at a varying place: the
    model agrees with a whole chunk, with part of it, or with none. Rows leave the batch, are
    followed a few chunks (of 4, 2 rows at most together), come back or end; every answer is
    still `generate`'s token for token, a row that comes back has consistent bookkeeping, and
    no forward pass holds more rows than the batch may. With `early_eos`, tokens the answers
    reach mid-way count as EOS, so answers also end inside a followed chunk."""
    params = SamplingParams(max_tokens=40)
    enc = [gen.encode_prompt(m) for m in PROMPTS]

    def plain(eos: list[int]) -> list[list[int]]:
        outs = decode_ragged(
            gen.model, enc, 1, params, max_rows=3, eos_ids=eos, pad_id=0, look_ahead=False
        )
        return [o[0] for o in outs]

    eos = list(gen.eos_ids)
    ref = plain(eos)
    assert [gen._completion(r, params)[0].text for r in ref] == [
        r.text for r in gen.generate(PROMPTS, params)
    ]
    if early_eos:
        eos += [ref[0][21], ref[3][13]]
        ref = plain(eos)
        assert sum(len(r) < 40 for r in ref) >= 2
    spoiled = {"none": 0, "part": 0, "all": 0}

    def oracle(seq: list[int], period: int, k: int) -> list[int]:
        truth = next(r for r in ref if r[: len(seq)] == seq)[len(seq) : len(seq) + k]
        truth += [7] * (k - len(truth))
        at = len(seq) % (k + 2)  # k, k + 1: nothing spoiled
        if at < k:
            truth[at] += 1
        spoiled["none" if at >= k else "all" if at == 0 else "part"] += 1
        return truth

    calls = {"followed": 0, "ended": 0, "came back": 0}
    real = refill.follow_cycles

    def counted(model, group, periods, out, *args):
        assert len(group) <= lookahead.GROUP
        calls["followed"] += len(group)
        ended, back = real(model, group, periods, out, *args)
        calls["ended"] += len(ended)
        calls["came back"] += len(back)
        width = back.cache.layers[0].keys.shape[2] if len(back) else 0
        for r, (i, k) in enumerate(back.owner):
            # One mask column per cache column and one for the pending token, which is the
            # answer's last; the attended columns are the prompt and the answer before it.
            assert back.mask.shape[1] == width + 1
            assert (
                int(back.mask[r, :-1].sum()) == int(back.pos[r]) == len(enc[i]) + len(out[i][k]) - 1
            )
            assert int(back.last[r]) == out[i][k][-1]
        return ended, back

    rows_seen: list[int] = []
    forward = gen.model.forward

    def recorded(*args, **kwargs):
        rows_seen.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(lookahead, "CHUNK", 4)
    monkeypatch.setattr(lookahead, "cycle", lambda seq, span, most: 1 if len(seq) % 5 == 0 else 0)
    monkeypatch.setattr(lookahead, "draft", oracle)
    monkeypatch.setattr(lookahead, "GROUP", 2)
    monkeypatch.setattr(refill, "follow_cycles", counted)
    monkeypatch.setattr(gen.model, "forward", recorded)
    for width, n in ((1, 1), (3, 1), (7, 1), (4, 2)):
        rows_seen.clear()
        outs = decode_ragged(
            gen.model,
            enc,
            n,
            params,
            max_rows=width,
            eos_ids=eos,
            pad_id=0,
            slab_grow=grow,
        )
        assert outs == [[r] * n for r in ref]
        assert max(rows_seen) <= width
    assert min(calls.values()) > 0, calls
    assert min(spoiled.values()) > 0, spoiled


def test_lookahead_only_for_greedy_full_attention_decoding(
    gen: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampled answer's cycle is no prediction of its next tokens, and a sliding window or a
    recurrent layer would see the rejected drafts a followed row keeps masked: no lookahead for
    either, nor when it is turned off."""
    monkeypatch.setattr(lookahead, "cycle", lambda seq, span, most: 1)
    monkeypatch.setattr(refill, "follow_cycles", lambda *a, **k: pytest.fail("followed"))
    enc = [gen.encode_prompt(m) for m in PROMPTS[:3]]
    greedy = SamplingParams(max_tokens=12)
    run = dict(max_rows=4, eos_ids=gen.eos_ids, pad_id=0)
    decode_ragged(gen.model, enc, 2, SamplingParams(max_tokens=12, temperature=1.0), **run)
    decode_ragged(gen.model, enc, 1, greedy, look_ahead=False, **run)
    monkeypatch.setattr(refill, "can_share_prefix", lambda model: False)
    decode_ragged(gen.model, enc, 1, greedy, **run)
    monkeypatch.undo()
    with pytest.raises(pytest.fail.Exception):  # the same calls do follow by default
        monkeypatch.setattr(lookahead, "cycle", lambda seq, span, most: 1)
        monkeypatch.setattr(refill, "follow_cycles", lambda *a, **k: pytest.fail("followed"))
        decode_ragged(gen.model, enc, 1, greedy, **run)

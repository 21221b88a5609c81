"""Padding-free preference batches (`tuners.unpad`): on the tiny model a padded batch run as one
packed row gives the padded forward's per-token log-probs and gradients, and DPO trains the
same with and without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tuners.test_preference import PAIRS, _cfg
from tuners.preference import train_preference
from tuners.unpad import pack_padded, unpad_forward

FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what trl's DPO asks the head for


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The real tokens of every batch `unpad_forward` packed (not of those it gave up on)."""
    import tuners.unpad

    rows: list[int] = []

    def spy(input_ids, attention_mask, labels, *args):
        out = pack_padded(input_ids, attention_mask, labels, *args)
        rows.append(int(attention_mask.sum()))
        return out

    monkeypatch.setattr(tuners.unpad, "pack_padded", spy)
    return rows


def _model(model_dir: Path, packed: bool, share_pairs: bool = False):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from tuners.attention import NAME, use_for

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=FIELDS)
    if packed:
        assert use_for(model, False) and model.config._attn_implementation == NAME
        unpad_forward(model, share_pairs)
    return model


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = [7, 12, 3, 12, 9]
    ids = torch.zeros(len(lengths), 12, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(5, 200, (n,), generator=g)
        mask[r, :n] = 1
        labels[r, 2:n] = ids[r, 2:n]  # the first two tokens are the "prompt"
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_pack_padded_maps_every_real_position_back() -> None:
    b = _batch()
    packed, index, valid = pack_padded(b["input_ids"], b["attention_mask"], b["labels"])
    lengths = b["attention_mask"].sum(1)
    assert packed["input_ids"].shape == (1, int(lengths.sum()))
    assert packed["cu_seq_lens_q"].tolist() == [0, 7, 19, 22, 34, 43]
    assert packed["position_ids"][0, 7:19].tolist() == list(range(12))
    assert valid.sum(1).tolist() == (lengths - 1).tolist()
    # the packed next-token output at index[i, j] predicts padded token (i, j + 1)
    row = packed["input_ids"][0]
    for i, j in valid.nonzero().tolist():
        assert row[index[i, j] + 1] == b["input_ids"][i, j + 1]
    with pytest.raises(ValueError, match="not right-padded"):
        pack_padded(b["input_ids"], b["attention_mask"].flip(1), b["labels"])


def test_a_packed_forward_gives_the_padded_log_probs_and_gradients(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _batch()
    packed_rows = _spy(monkeypatch)
    with torch.no_grad():  # some labels the model's top token, so is_top1 is not all False
        top = _model(tiny_model_dir, False)(b["input_ids"], attention_mask=b["attention_mask"])
    top = top.logits.argmax(-1)
    b["labels"][:, 3::2] = torch.where(b["labels"][:, 3::2] >= 0, top[:, 2:-1:2], -100)
    outs, grads = [], []
    for packed in (False, True):
        torch.manual_seed(0)
        model = _model(tiny_model_dir, packed)
        out = model(**b, use_cache=False, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        outs.append(out)
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    padded, packed = outs
    assert packed_rows == [43]  # the second model really packed the batch
    assert packed.log_probs.shape == padded.log_probs.shape == (5, 11)
    assert torch.allclose(packed.log_probs, padded.log_probs, atol=1e-5)
    assert torch.allclose(packed.entropy, padded.entropy, atol=1e-5)
    assert torch.allclose(packed.mean_logits, padded.mean_logits, atol=1e-5)
    assert packed.is_top1.dtype == torch.bool and torch.equal(packed.is_top1, padded.is_top1)
    assert packed.is_top1.any()  # not vacuous: some real positions are the model's top token
    assert torch.equal(packed.label_mask, padded.label_mask)
    assert (packed.log_probs[padded.label_mask == 0] == 0).all()
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert float(packed.loss.detach()) == pytest.approx(float(padded.loss.detach()), abs=1e-5)


def _pairs() -> dict[str, torch.Tensor]:
    """DPO's layout: 3 chosen rows, then the 3 rejected rows behind the same prompts. Pair 0's
    answers open with the same 2 tokens; pair 2's rejected row is its prompt and one token."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 200, (n,), generator=g) for n in (4, 6, 2)]
    answers = [torch.randint(5, 200, (n,), generator=g) for n in (5, 3, 6, 4, 7, 1)]
    answers[3][:2] = answers[0][:2]
    ids = torch.zeros(6, 13, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for r in range(6):
        prompt, answer = prompts[r % 3], answers[r]
        n = len(prompt) + len(answer)
        ids[r, :n] = torch.cat([prompt, answer])
        mask[r, :n] = 1
        labels[r, len(prompt) : n] = answer
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_a_pair_shares_its_prompt_in_the_packed_row() -> None:
    b = _pairs()
    packed, index, valid = pack_padded(b["input_ids"], b["attention_mask"], b["labels"], True)
    lengths = b["attention_mask"].sum(1)
    # Rejected rows skip their shared tokens but the last: prompt + 2 - 1, 6 - 1, 2 - 1.
    skip = [0, 0, 0, 5, 5, 1]
    assert packed["input_ids"].shape == (1, int(lengths.sum()) - sum(skip))
    starts = packed["cu_seq_lens_q"].tolist()[:-1]
    assert packed["shared_prefixes"] == [(0, 0)] * 3 + [
        (starts[0], 5),
        (starts[1], 5),
        (starts[2], 1),
    ]
    assert packed["position_ids"][0, starts[3] : starts[3] + 3].tolist() == [5, 6, 7]
    assert valid.sum(1).tolist() == (lengths - 1).tolist()
    row, labels = packed["input_ids"][0], packed["labels"][0]
    for i, j in valid.nonzero().tolist():
        assert row[index[i, j] + 1] == b["input_ids"][i, j + 1]
        assert labels[index[i, j] + 1] == b["labels"][i, j + 1]
    # Labels that differ on a shared token end the shared part there.
    other = dict(b, labels=b["labels"].clone())
    other["labels"][3, 4] = -100  # pair 0's first answer token, unscored in its rejected row
    assert pack_padded(*other.values(), True)[0]["shared_prefixes"][3] == (starts[0], 3)
    # Without pairs (an odd number of rows, or not asked) nothing is shared.
    assert "shared_prefixes" not in pack_padded(*b.values())[0]
    assert "shared_prefixes" not in pack_padded(*(x[:5] for x in b.values()), True)[0]


def test_a_shared_prompt_gives_the_padded_log_probs_and_gradients(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuners.unpad

    b = _pairs()
    packed_lengths: list[int] = []

    def spy(*args):
        out = pack_padded(*args)
        packed_lengths.append(out[0]["input_ids"].size(1))
        return out

    monkeypatch.setattr(tuners.unpad, "pack_padded", spy)
    outs, grads = [], []
    for packed in (False, True):
        torch.manual_seed(0)
        model = _model(tiny_model_dir, packed, share_pairs=packed)
        out = model(**b, use_cache=False, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        outs.append(out)
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    padded, packed = outs
    assert packed_lengths == [int(b["attention_mask"].sum()) - 11]  # packed, 5 + 5 + 1 shared
    assert packed.log_probs.shape == padded.log_probs.shape == (6, 12)
    assert int(padded.label_mask.sum()) == 5 + 3 + 6 + 4 + 7 + 1  # every answer token scored
    assert torch.allclose(packed.log_probs, padded.log_probs, atol=1e-5)
    assert torch.allclose(packed.entropy, padded.entropy, atol=1e-5)
    assert torch.allclose(packed.mean_logits, padded.mean_logits, atol=1e-5)
    assert torch.equal(packed.is_top1, padded.is_top1)
    assert torch.equal(packed.label_mask, padded.label_mask)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_a_generation_call_passes_through(tiny_model_dir: Path) -> None:
    b = _batch()
    plain, packed = _model(tiny_model_dir, False), _model(tiny_model_dir, True)
    args = {"input_ids": b["input_ids"][:1, :7], "attention_mask": b["attention_mask"][:1, :7]}
    a = plain.generate(**args, max_new_tokens=4, do_sample=False)
    assert torch.equal(a, packed.generate(**args, max_new_tokens=4, do_sample=False))


def test_dpo_trains_the_same_with_and_without_padding(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed_rows = _spy(monkeypatch)  # the packed run must really pack
    runs = {
        packing: train_preference(
            str(tiny_model_dir),
            PAIRS,
            tmp_path / f"p{packing}",
            _cfg("rpo", max_steps=4, packing=packing),
        )  # fmt: skip
        for packing in (False, True)
    }
    padded, packed = runs[False], runs[True]
    assert packed.tokens == padded.tokens > 0  # the real tokens either way
    # 4 steps x 2 pairs: a policy and a reference forward each, packed in the second run only
    assert len(packed_rows) == 8
    assert [s for s, _ in packed.losses] == [s for s, _ in padded.losses]
    for (_, a), (_, b) in zip(padded.losses, packed.losses, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    margin = padded.preference["rewards/margins"]
    assert abs(margin) > 1e-3  # a relative comparison of something that moved
    assert packed.preference["rewards/margins"] == pytest.approx(margin, rel=1e-3)


def test_a_left_padded_batch_runs_as_it_is_and_says_so(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import inspect

    import tuners.unpad

    monkeypatch.setattr(tuners.unpad, "_warned", [])
    packed_rows = _spy(monkeypatch)
    b = {k: v.flip(1) for k, v in _batch().items()}  # the padding now comes first
    plain, packed = _model(tiny_model_dir, False), _model(tiny_model_dir, True)
    with caplog.at_level("WARNING", logger="tuners.unpad"):
        outs = [m(**b, use_cache=False, fused_lm_head=True) for m in (plain, packed)]
    assert packed_rows == []
    assert "not right-padded" in caplog.text
    assert torch.allclose(outs[0].log_probs, outs[1].log_probs, atol=1e-6)
    # what inspects the forward (generate) sees the model's own arguments
    assert "position_ids" in inspect.signature(packed.forward).parameters

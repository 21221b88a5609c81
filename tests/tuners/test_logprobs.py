"""The CPU fused head (tuners/logprobs.py) against trl's: the same log-probabilities, entropy,
mean logits, argmax and gradients, on its own and inside a model trl patched and a DPO run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trl.kernels.chunked_logprob import ChunkedLogProbFunction

from tests.tuners.test_preference import PAIRS, _cfg
from tuners import logprobs
from tuners.logprobs import FIELDS, cpu_fused_head, token_log_probs
from tuners.preference import train_preference


def _trl(hidden, weight, targets, temperature=1.0):
    lp, ent, _, mean, top = ChunkedLogProbFunction.apply(
        hidden, weight, None, targets, temperature, 32768, None, 1.0, FIELDS
    )
    return lp, ent, mean, top


def _inputs(n=600, h=32, v=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


@pytest.mark.parametrize("keep_bytes", [logprobs.KEEP_BYTES, 0])  # probabilities kept / recomputed
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_trls_head_and_its_gradients(keep_bytes: int, temperature: float) -> None:
    hidden, weight, targets = _inputs()  # 600 rows: three chunks, the last one partial
    scale = torch.linspace(0.5, 1.5, hidden.size(0))
    results = []
    for fn in (_trl, lambda *a: token_log_probs(*a, keep_bytes=keep_bytes)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        lp, ent, mean, top = fn(h, w, targets, temperature)
        # a loss of both, as GRPO's entropy bonus makes (DPO's reads the log-probs alone)
        (lp * scale - 0.3 * ent * scale.flip(0)).sum().backward()
        results.append((lp.detach(), ent, mean, top, h.grad, w.grad))
    ours, theirs = results[1], results[0]
    for name, a, b in zip(("log_probs", "entropy", "mean", "grad h", "grad w"),
                          (*ours[:3], *ours[4:]), (*theirs[:3], *theirs[4:])):  # fmt: skip
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    assert torch.equal(ours[3], theirs[3])
    assert 0 < int(ours[3].sum()) < len(targets)  # some targets are the argmax, not all
    # log-probabilities are log-probabilities: the full softmax's, checked directly
    z = hidden @ weight.t() / temperature
    assert torch.allclose(ours[0], z.log_softmax(-1).gather(1, targets[:, None])[:, 0], atol=1e-4)


def test_a_tie_with_an_earlier_column_is_not_the_argmax() -> None:
    hidden, weight, _ = _inputs(n=4, v=50)
    weight[7] = weight[3]  # columns 3 and 7 score alike in every row
    hidden[:] = weight[3] * 10  # ... and highest
    targets = torch.tensor([3, 7, 3, 7])
    ours = token_log_probs(hidden, weight, targets)[3]
    assert ours.tolist() == [True, False, True, False]
    assert torch.equal(ours, _trl(hidden, weight, targets)[3])


def test_the_entropy_alone_has_a_gradient() -> None:
    hidden, weight, targets = _inputs(n=40, v=300)
    grads = []
    for fn in (_trl, token_log_probs):
        h = hidden.clone().requires_grad_()
        fn(h, weight, targets)[1].sum().backward()
        grads.append(h.grad)
    assert grads[1].abs().sum() > 0
    assert torch.allclose(grads[1], grads[0], atol=1e-4)


def test_probabilities_are_kept_only_for_a_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, targets = _inputs(n=300)
    kept = []
    apply = logprobs.TokenLogProbs.apply
    monkeypatch.setattr(logprobs.TokenLogProbs, "apply", lambda *a: kept.append(a[3]) or apply(*a))
    h = hidden.clone().requires_grad_()  # requires grad, as a trained input does
    with torch.no_grad():  # ... but no backward can come: the reference's forward
        out = token_log_probs(h, weight, targets)
    token_log_probs(h, weight, targets)
    assert kept == [0, logprobs.KEEP_BYTES]
    assert not any(x.requires_grad for x in out)
    assert torch.allclose(out[0], _trl(hidden, weight, targets)[0], atol=1e-5)


def test_under_bfloat16_autocast_it_computes_in_float32() -> None:
    hidden, weight, targets = _inputs(n=300)
    h = hidden.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = token_log_probs(h, weight, targets)[0]
    lp.sum().backward()
    assert lp.dtype == torch.float32 and h.grad.dtype == torch.bfloat16
    exact = (h.detach().float() @ weight.t()).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(lp, exact, atol=1e-4)  # the float32 logits of the bfloat16 input


def _patched(model_dir: Path, ours: bool, temperature: float = 1.0, outputs=FIELDS):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    add_fused_lm_head(model, temperature=temperature, outputs=outputs)
    if ours:
        assert cpu_fused_head(model, temperature, outputs)
    return model


# DPO's fields, and GRPO's at a sampling temperature
@pytest.mark.parametrize("temperature, outputs", [(1.0, FIELDS), (0.8, FIELDS[:2])])
def test_a_patched_model_scores_as_trls_head_does(
    tiny_model_dir: Path, temperature: float, outputs: tuple[str, ...]
) -> None:
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :9] = -100  # the prompt: not scored
    labels[1, 20:] = -100  # padding
    outs, grads = [], []
    for ours in (False, True):
        model = _patched(tiny_model_dir, ours, temperature, outputs)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (out.loss - 0.1 * out.entropy.sum()).backward()
        outs.append(out)
        # a layer's gradient, and the head's own (the weight gradient's path)
        grads.append(model.model.layers[0].mlp.down_proj.weight.grad)
        grads.append(model.get_output_embeddings().weight.grad)
        plain = model(input_ids=ids).logits  # not a fused-head call: the model's own forward
        assert plain.shape == (2, 24, model.config.vocab_size)
    trl_out, our_out = outs
    for k in ("loss", *FIELDS[:3]):
        if k in ("loss", *outputs):
            assert torch.allclose(getattr(our_out, k), getattr(trl_out, k), atol=1e-4), k
        else:  # a field not asked for is None, as trl leaves it
            assert getattr(our_out, k) is None and getattr(trl_out, k) is None, k
    if "is_top1" in outputs:
        assert torch.equal(our_out.is_top1, trl_out.is_top1)
    assert torch.equal(our_out.label_mask, trl_out.label_mask)
    assert bool((our_out.log_probs[~our_out.label_mask] == 0).all())
    assert torch.allclose(grads[2], grads[0], atol=1e-5)
    assert grads[3].abs().sum() > 0 and torch.allclose(grads[3], grads[1], atol=1e-5)


def test_a_batch_with_nothing_labelled_still_backpropagates(tiny_model_dir: Path) -> None:
    model = _patched(tiny_model_dir, ours=True)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(2))
    out = model(input_ids=ids, labels=torch.full_like(ids, -100), fused_lm_head=True)
    out.loss.backward()  # a zero loss, still connected to the model
    assert float(out.loss.detach()) == 0.0 and not bool(out.label_mask.any())
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_heads_it_does_not_compute_stay_trls(tiny_model_dir: Path) -> None:
    model = _patched(tiny_model_dir, ours=False)
    trl_forward = model.forward
    assert not cpu_fused_head(model, outputs=(*FIELDS, "log_sum_sq_probs"))
    model.config.final_logit_softcapping = 30.0
    assert not cpu_fused_head(model)
    model.config.final_logit_softcapping = None
    model.config.logit_scale = 2.0
    assert not cpu_fused_head(model)
    model.config.logit_scale = None
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    assert not cpu_fused_head(model)
    assert model.forward == trl_forward


def test_calls_it_does_not_compute_go_to_trls_forward(tiny_model_dir: Path) -> None:
    model = _patched(tiny_model_dir, ours=False)
    seen = []
    model.forward = lambda *a, **kw: seen.append(sorted(k for k, v in kw.items() if v is not None))
    assert cpu_fused_head(model)
    ids = torch.randint(0, 1000, (1, 8))
    model.forward(input_ids=ids, labels=ids, fused_lm_head=True, output_router_logits=True)
    model.forward(input_ids=ids, labels=ids, fused_lm_head=True, shift_labels=ids)
    model.forward(input_ids=ids)  # generation and plain calls
    assert seen == [
        ["fused_lm_head", "input_ids", "labels", "output_router_logits"],
        ["fused_lm_head", "input_ids", "labels", "shift_labels"],
        ["fused_lm_head", "input_ids"],
    ]


def test_dpo_trains_the_same_with_either_head(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return token_log_probs(*args, **kwargs)

    monkeypatch.setattr(logprobs, "token_log_probs", counted)
    used = {}
    runs = {}
    for head in ("trl", "selfloop"):
        calls.clear()
        cfg = _cfg("rpo", max_steps=4, logprob_head=head)
        runs[head] = train_preference(str(tiny_model_dir), PAIRS, tmp_path / head, cfg)
        used[head] = len(calls)
    # 4 steps of a policy and a reference forward each
    assert used == {"trl": 0, "selfloop": 8}
    a, b = runs["trl"], runs["selfloop"]
    assert [s for s, _ in a.losses] == [s for s, _ in b.losses] and len(a.losses) == 4
    for (_, x), (_, y) in zip(a.losses, b.losses, strict=True):
        assert abs(x - y) < 1e-3
    for k in ("rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert abs(a.preference[k] - b.preference[k]) < 1e-3, k


def test_grpo_scores_with_the_head_it_is_set_to(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny model's completions all run to the token limit, and GRPO masks those out: its
    # loss is 0 either way, so this checks the wiring; the numbers are checked above.
    from tests.tuners.test_grpo import TASKS
    from tuners import TuneConfig
    from tuners.grpo import train_grpo

    temperatures = []

    def counted(*args, **kwargs):
        temperatures.append(args[3])
        return token_log_probs(*args, **kwargs)

    monkeypatch.setattr(logprobs, "token_log_probs", counted)
    used = {}
    for head in ("trl", "selfloop"):
        temperatures.clear()
        cfg = TuneConfig(
            objective="grpo", max_steps=2, batch_size=4, grpo_generations=4, grpo_max_tokens=12,
            learning_rate=5e-3, lora_dropout=0.0, warmup_ratio=0.0, save_steps=100,
            grpo_temperature=0.8, logprob_head=head,
        )  # fmt: skip
        train_grpo(str(tiny_model_dir), TASKS, tmp_path / head, cfg)
        used[head] = sorted(set(temperatures))
    assert used == {"trl": [], "selfloop": [0.8]}

"""Chat formatting, assistant-only labels and padding-free packing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent.errors import SelfloopError
from tuners.data import (
    IGNORE,
    pack_batch,
    packed_loss,
    pad_batch,
    tokenize_dataset,
    tokenize_example,
)

MULTI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "And a vegetable?"},
        {"role": "assistant", "content": "Carrot, of course."},
    ]
}


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_labels_cover_exactly_the_assistant_turns(tok) -> None:
    item = tokenize_example(tok, MULTI)
    ids, labels = item["input_ids"], item["labels"]
    assert len(ids) == len(labels)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    text = tok.decode(trained)
    # Both answers and their end-of-turn markers, nothing from system/user turns.
    assert text.startswith("Apple.<|im_end|>") and "Carrot, of course.<|im_end|>" in text
    for prompt_word in ("Be brief", "Name a fruit", "vegetable", "user", "system"):
        assert prompt_word not in text
    # The model learns to stop: <|im_end|> after each answer is trained.
    assert trained.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2


def test_prompt_tokens_masked_in_single_turn(tok) -> None:
    ex = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    }
    item = tokenize_example(tok, ex)
    prompt = tok.apply_chat_template(ex["messages"][:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(lab == IGNORE for lab in item["labels"][:n_prompt])
    assert all(lab != IGNORE for lab in item["labels"][n_prompt : n_prompt + 2])


def test_an_answer_that_opens_with_whitespace_is_located(tok) -> None:
    """A sampled answer may open with spaces and a newline: tokenized with the prompt, they
    merge with the template's last newline and the prompt's tokens are no longer a prefix (a
    loop run died on one in round 3). The answer is tokenized after the prompt, as generated:
    the prompt's tokens come first, then exactly the answer's and the end-of-turn marker."""
    answer = "        \n *Do not use commas.\n*Keep it short."
    ex = {
        "id": "aug-1",
        "messages": [
            {"role": "user", "content": "Any tricks? Do not use any commas."},
            {"role": "assistant", "content": answer},
        ],
    }
    prompt = tok.apply_chat_template(ex["messages"][:1], tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(ex["messages"], tokenize=False)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    # The trap: tokenized whole, the conversation does not start with the prompt's tokens.
    assert tok(whole, add_special_tokens=False)["input_ids"][: len(prompt_ids)] != prompt_ids
    item = tokenize_dataset(tok, [ex], 512, 2048)[0]
    assert item["input_ids"][: len(prompt_ids)] == prompt_ids
    assert all(lab == IGNORE for lab in item["labels"][: len(prompt_ids)])
    trained = [lab for lab in item["labels"] if lab != IGNORE]
    assert trained == item["input_ids"][len(prompt_ids) :]
    assert tok.decode(trained) == whole[len(prompt) :]  # the answer and <|im_end|>, all of it


def test_bad_examples_are_errors(tok) -> None:
    with pytest.raises(SelfloopError, match="no assistant message"):
        tokenize_example(tok, {"messages": [{"role": "user", "content": "x"}]}, where="ex 3")
    with pytest.raises(SelfloopError, match="training data is empty"):
        tokenize_dataset(tok, [], 128, 512)
    long = {
        "id": "long-1",
        "messages": [
            {"role": "user", "content": "word " * 300},
            {"role": "assistant", "content": "ok"},
        ],
    }
    with pytest.raises(
        SelfloopError, match=r"1 example\(s\) exceed tune.max_seq_len of 64 tokens: long-1"
    ):
        tokenize_dataset(tok, [MULTI, long], 64, 512)


def test_packed_and_padded_batches_give_the_same_loss(tiny_model_dir: Path, tok) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [
        MULTI,
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there, friend."},
            ]
        },
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    items = [tokenize_example(tok, e) for e in examples]
    # Some transformers versions convert the GGUF tokenizer without a pad token (load_tokenizer
    # then uses eos); the pad id does not matter here, those positions are masked.
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packed, padded = pack_batch(items), pad_batch(items, pad)
    assert packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].shape[1] == sum(len(i["input_ids"]) for i in items)  # no padding
    assert packed["position_ids"][0].tolist().count(0) == len(items)  # positions restart
    labels = packed.pop("labels")
    with torch.no_grad():
        # Logits only where a trained token follows; the loss from those alone.
        a = packed_loss(model(**packed, use_cache=False), labels)
        b = model(**padded, use_cache=False).loss
        full = model(
            **{k: v for k, v in packed.items() if k != "logits_to_keep"},
            labels=labels,
            use_cache=False,
        )
    assert float(a) == pytest.approx(float(b), abs=1e-5)
    assert float(full.loss) == pytest.approx(float(b), abs=1e-5)


def test_packing_without_restarts_would_differ(tiny_model_dir: Path, tok) -> None:
    """The equality above is not an accident: attending across examples changes the loss."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    items = [tokenize_example(tok, MULTI), tokenize_example(tok, MULTI)]
    packed = pack_batch(items)
    packed.pop("logits_to_keep")
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    with torch.no_grad():
        a = model(**packed, use_cache=False).loss
        assert abs(float(a) - float(model(**leaky, use_cache=False).loss)) > 1e-4


def _three_items(tok) -> list[dict]:
    return [
        tokenize_example(tok, MULTI),
        tokenize_example(
            tok,
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hey."},
                ]
            },
        ),
        tokenize_example(
            tok,
            {
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            },
        ),
    ]


def test_per_example_attention_matches_the_padded_batch_in_loss_and_gradients(
    tiny_model_dir: Path, tok
) -> None:
    """tuners.attention runs SDPA per example of a packed row: same loss and same gradients as
    the padded batch through transformers' own SDPA."""
    from tuners.attention import register

    items = _three_items(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packed, padded = pack_batch(items), pad_batch(items, pad)
    assert packed["cu_seq_lens_q"].tolist() == [
        0,
        *torch.tensor([len(i["input_ids"]) for i in items]).cumsum(0).tolist(),
    ]
    labels = packed.pop("labels")

    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register())
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    a = packed_loss(ours(**packed, use_cache=False), labels)
    b = ref(**padded, use_cache=False).loss
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name

    # The boundaries are what keeps examples apart: one boundary around the whole row leaks.
    whole = torch.tensor([0, packed["input_ids"].shape[1]], dtype=torch.int32)
    with torch.no_grad():
        leaky = packed_loss(
            ours(**{**packed, "cu_seq_lens_q": whole, "cu_seq_lens_k": whole}, use_cache=False),
            labels,
        )
    assert abs(float(leaky) - float(b)) > 1e-4


def test_per_example_attention_falls_back_to_sdpa_without_boundaries(
    tiny_model_dir: Path, tok
) -> None:
    """A model loaded for packed training still runs padded batches and generates normally,
    and the implementation's name is not saved into the model's config."""
    from tuners.attention import register

    items = _three_items(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    padded = pad_batch(items, pad)
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register())
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    with torch.no_grad():
        assert float(ours(**padded).loss) == pytest.approx(float(ref(**padded).loss), abs=1e-6)
    prompt = torch.tensor([items[0]["input_ids"][:12]])
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": pad}
    assert ours.generate(prompt, **kw).tolist() == ref.generate(prompt, **kw).tolist()
    assert "selfloop_packed" not in ours.config.to_json_string()


def test_per_example_attention_refuses_boundaries_that_do_not_span_the_row(
    tiny_model_dir: Path, tok
) -> None:
    from tuners.attention import register

    packed = pack_batch(_three_items(tok))
    packed.pop("labels")
    short = torch.tensor([0, 5], dtype=torch.int32)
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register())
    with pytest.raises(ValueError, match="does not span the row"):
        ours(**{**packed, "cu_seq_lens_q": short, "cu_seq_lens_k": short}, use_cache=False)


def test_per_example_attention_only_where_transformers_chose_sdpa(
    tiny_model_dir: Path, tok
) -> None:
    from tuners.attention import NAME, use_for

    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_for(sdpa, trust_remote_code=False) and sdpa.config._attn_implementation == NAME
    # Eager-only models (softcap, sinks) and remote code keep what they had.
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_for(eager, trust_remote_code=False)
    assert eager.config._attn_implementation == "eager"
    remote = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert not use_for(remote, trust_remote_code=True)
    assert remote.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("window", [4, 4096])
def test_a_sliding_window_shorter_than_an_example_keeps_the_mask(
    tmp_path: Path, tok, window: int
) -> None:
    """Mistral-style sliding-window layers: attending to a whole example would be wrong when
    the window is shorter; the packed path then falls back to the masked row. Either way the
    loss is the padded batch's."""
    from transformers import MistralConfig, MistralForCausalLM

    from tests.helpers import tiny_config_kwargs
    from tuners.attention import register

    torch.manual_seed(0)
    config = MistralConfig(**tiny_config_kwargs(tok), sliding_window=window)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    items = _three_items(tok)
    assert max(len(i["input_ids"]) for i in items) > 4
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packed, padded = pack_batch(items), pad_batch(items, pad)
    labels = packed.pop("labels")
    ours = MistralForCausalLM.from_pretrained(tmp_path, attn_implementation=register())
    ref = MistralForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    with torch.no_grad():
        a = packed_loss(ours(**packed, use_cache=False), labels)
        b = ref(**padded, use_cache=False).loss
    assert float(a) == pytest.approx(float(b), abs=1e-5)

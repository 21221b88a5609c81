"""Chat examples -> token ids and labels, with the loss on assistant tokens only; the collators.

An example is `{"messages": [{"role", "content"}, ...]}` (extra keys are carried along and ignored
here). It is rendered with the model's own chat template. Each assistant turn is located by
rendering the conversation up to that turn twice, with and without the answer: the text in
between is the answer plus the end-of-turn marker, tokenized on its own (as it was generated,
after the prompt's tokens), and only its tokens carry labels. Every assistant
turn of a multi-turn example is trained on. Prompt, system and user tokens are -100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from agent.errors import SelfloopError

IGNORE = -100


def _text(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def tokenize_example(tokenizer: Any, example: Mapping[str, Any], where: str = "") -> dict:
    """{"input_ids", "labels"} for one chat example; labels are -100 outside assistant turns."""
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SelfloopError(f"{where}: example has no 'messages' list")
    turns = [k for k, m in enumerate(messages) if m.get("role") == "assistant"]
    if not turns:
        raise SelfloopError(f"{where}: example has no assistant message to learn from")
    for k in turns:
        content = messages[k].get("content")
        if not isinstance(content, str) or not content.strip():
            raise SelfloopError(f"{where}: messages[{k}] (assistant) has empty content")
    full = _text(tokenizer, messages[: turns[-1] + 1], generation_prompt=False)
    ids: list[int] = []
    labels: list[int] = []
    done = 0  # characters of `full` tokenized so far
    for k in turns:
        before = _text(tokenizer, messages[:k], generation_prompt=True)
        through = _text(tokenizer, messages[: k + 1], generation_prompt=False)
        # Templates render a conversation prefix-stably; if one does not, masks would be wrong.
        if not (full.startswith(through) and through.startswith(before)) or len(before) < done:
            raise SelfloopError(
                f"{where}: the chat template does not render turn {k} as a prefix of the whole "
                "conversation; cannot locate the assistant tokens"
            )
        # The prompt and the answer are tokenized apart, as the answer was generated: after
        # the prompt's tokens. Tokenized together, an answer that opens with whitespace
        # (sampled answers do) merges with the template's last newline into other tokens.
        for text, learn in (
            (full[done : len(before)], False),
            (full[len(before) : len(through)], True),
        ):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if learn else [IGNORE] * len(piece)
        done = len(through)
    return {"input_ids": ids, "labels": labels}


def tokenize_dataset(
    tokenizer: Any, examples: Sequence[Mapping[str, Any]], max_seq_len: int, context: int | None
) -> list[dict]:
    """Tokenize all examples; an example over max_seq_len (or the model's context) is an error."""
    if not examples:
        raise SelfloopError("training data is empty: nothing to tune on")
    limit = min(max_seq_len, context) if context else max_seq_len
    out = []
    too_long = []
    for i, ex in enumerate(examples, 1):
        name = f"example {i}" + (f" (id {ex['id']})" if ex.get("id") else "")
        item = tokenize_example(tokenizer, ex, where=name)
        if len(item["input_ids"]) > limit:
            too_long.append((ex.get("id") or f"example {i}", len(item["input_ids"])))
        out.append(item)
    if too_long:
        first = ", ".join(f"{i} ({n} tokens)" for i, n in too_long[:3])
        what = "tune.max_seq_len" if limit == max_seq_len else "the model's context"
        raise SelfloopError(
            f"{len(too_long)} example(s) exceed {what} of {limit} tokens: {first}; raise "
            "tune.max_seq_len (within the context) or drop them"
        )
    return out


def pack_batch(items: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor | int]:
    """Padding-free: all examples in one row, positions restart at 0 at each example.

    transformers' attention masking detects the restarts in `position_ids` and builds a
    block-diagonal causal mask, so no token attends across an example boundary - but only when
    the forward pass runs without a KV cache (`use_cache=False`; `train` sets it). The first label
    of each example is dropped to -100 so the shifted loss never predicts one example from the
    previous one's last token.

    `logits_to_keep` lists the positions whose next token is trained: only those go through the
    LM head (for chat data a third or more of the tokens are prompt, and the head is a fifth of
    the model's FLOPs), and `packed_loss` scores them.

    The example boundaries go along as the flash-attention varlen kwargs (`cu_seq_lens_q/_k`,
    `max_length_q/_k`): `tuners.attention` (and flash-attention) then attend within each
    example instead of masking the whole row; other attention implementations ignore them.
    """
    ids, labels, pos, cu = [], [], [], [0]
    for it in items:
        n = len(it["input_ids"])
        ids += it["input_ids"]
        labels += [IGNORE] + list(it["labels"][1:])
        pos += list(range(n))
        cu.append(cu[-1] + n)
    labels_t = torch.tensor([labels])
    keep = (labels_t[0, 1:] != IGNORE).nonzero().flatten()
    longest = max(b - a for a, b in zip(cu, cu[1:]))
    cu_t = torch.tensor(cu, dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids]),
        "labels": labels_t,
        "position_ids": torch.tensor([pos]),
        "logits_to_keep": keep,
        "cu_seq_lens_q": cu_t,
        "cu_seq_lens_k": cu_t,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def packed_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy of a packed row whose logits exist only at `logits_to_keep` positions.

    Sums over trained tokens and divides by `num_items_in_batch` (the trained tokens of the whole
    accumulated, all-process batch, as the Trainer counts them) or else by this row's count:
    the same normalisation transformers applies to a padded batch.
    """
    targets = labels[0, 1:]
    targets = targets[targets != IGNORE]
    logits = outputs.logits[0]
    if logits.shape[0] != targets.shape[0]:
        raise SelfloopError(
            f"packed batch has {logits.shape[0]} kept logits for {targets.shape[0]} labels"
        )
    total = torch.nn.functional.cross_entropy(
        logits.float(), targets.to(logits.device), reduction="sum"
    )
    denom = num_items_in_batch if num_items_in_batch is not None else max(int(targets.numel()), 1)
    return total / denom


def pad_batch(items: Sequence[Mapping[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """The classic padded batch (right padding), for comparison and for packing=false."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id)
    labels = torch.full((len(items), width), IGNORE)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n] = torch.tensor(it["input_ids"])
        labels[r, :n] = torch.tensor(it["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class Collator:
    """Trainer data collator: packed or padded batches; counts the real (non-pad) tokens it made."""

    def __init__(self, packing: bool, pad_id: int) -> None:
        self.packing, self.pad_id = packing, pad_id
        self.tokens_seen = 0

    def __call__(self, items: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        self.tokens_seen += sum(len(it["input_ids"]) for it in items)
        return pack_batch(items) if self.packing else pad_batch(items, self.pad_id)

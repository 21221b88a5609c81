"""Greedy answers caught in a loop, checked a chunk at a time instead of decoded a token at a time.

A small model decoding greedily often falls into an exact cycle ("*Welcome to the Grand Canyon.*
*Welcome to the Grand Canyon.* ...") and stays in it until `max_tokens`. In the evaluation's
greedy answers from the bundled 135M model, 245 of 594 ran to the 400-token limit and about a
third of all generated tokens were the tail of such a cycle, after it had already repeated
twice. Decoding that tail costs a full batch step per token.

Lookahead is prompt-lookup (n-gram) speculative decoding with the answer itself as the draft:
once a row's last `SPAN` tokens (or two whole cycles) repeat with a period of at most
`MAX_PERIOD`, the row leaves the batch; rows that wait are fed their cycle's continuation
together, `CHUNK` tokens per forward pass (`refill.follow_cycles`), and each keeps the draft
tokens the model's own argmax agrees with, plus the model's first disagreeing token. So the
answer is the one greedy decoding gives (up to float order: a forward over a chunk sums in a
different order than one over a single token, as any change of batch shape does).

On 2 CPU cores a decode step is compute-bound, so a followed token is cheaper, not free: in a
probe (float32), one more row in a 64-row step at 400 columns cost 5.1 ms, a 64-token chunk of one
row 4.1 ms per token, and rows followed together (`GROUP`) share the forward's fixed cost of
reading the weights. `bench/lookahead.py` measures the evaluation's generation (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

SPAN = 32  # tokens a cycle must have repeated over before it is trusted as a draft
MAX_PERIOD = 64  # longest cycle looked for (the evaluation's median is 20 tokens)
CHUNK = 64  # draft tokens checked per forward pass; a wrong draft wastes at most this many
GROUP = 8  # rows followed together: a forward's fixed cost (reading the weights) shared


def cycle(seq: Sequence[int], span: int, max_period: int) -> int:
    """The shortest period p <= `max_period` with which the last max(`span`, 2p) tokens of
    `seq` repeat (each equals the token p before it), or 0 when there is none."""
    n = len(seq)
    if n < span:
        return 0
    last = seq[-1]
    for p in range(1, min(max_period, n // 2) + 1):
        width = max(span, 2 * p)
        if width > n:
            break
        # The last token's check first: almost every period fails it, without a slice.
        if seq[-1 - p] == last and seq[n - width + p :] == seq[n - width : n - p]:
            return p
    return 0


def draft(seq: Sequence[int], period: int, k: int) -> list[int]:
    """The next `k` tokens of `seq` if its last `period` tokens keep repeating."""
    start = len(seq) - period
    return [seq[start + i % period] for i in range(k)]

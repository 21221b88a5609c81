"""Ragged batch decoding over transformers' KV cache: finished rows leave, queued prompts refill.

`model.generate` on a static batch decodes every row until the longest one stops: a row that
ended after 40 tokens keeps costing a row's compute for the other 280 steps of a 320-token
batch. The respond and evaluate stages have exactly that shape (sampled answers of very
different lengths). `decode_ragged` runs its own decode loop over the KV cache:

- a row that emits EOS or reaches `max_tokens` leaves the batch at once (its cache rows are
  dropped);
- queued prompts take the free places: they are prefilled together, each prompt's cache is
  repeated for its n samples (one prefill per prompt, not per sample), left-padded to the
  batch's cache length and appended; leading cache columns that every row masks are trimmed,
  so attention does not go on paying for the padding a departed row left behind;
- prompts admitted together that open with the same tokens (a judge's rubric, a long system
  prompt: at least `SHARED_PREFIX_MIN`) have that prefix run once and its cache repeated for
  each of them (`prefill_shared`): a row is then [prefix][padding][its own tokens], the
  padding masked, positions counted as if it were not there (models with full attention in
  every layer only: `can_share_prefix`);
- sampling draws from the distribution `generate`'s temperature / top-k / top-p warpers leave,
  without sorting the vocabulary each step, one uniform per row against the running sum of
  its weights (`sample_tokens`); greedy decoding is the argmax.
  Positions are explicit per row, so a refilled row sees the positions it would have in a batch
  of its own.
- the batch's keys and values live in buffers with spare columns at the end (`SlabLayer`): a
  decode step writes its column in place, where transformers' `DynamicCache` concatenates, i.e.
  copies the whole cache, at every step of every layer (a probe on 2 cores, float32: 524 against
  409 ms a step at 64 rows x 400 columns, 1,276 against 752 at 128 rows; `bench/kvcache.py`
  measures whole runs). The spare columns are masked (a 4D mask as wide as the buffer), so
  attention reads a contiguous tensor: an earlier try that attended to a strided view of a
  preallocated cache was slower than the copy. Models with SDPA and full attention in every
  layer only (`uses_slab`); others keep `DynamicCache`. The buffers also keep room for the
  batch's capacity of rows: the places of rows that leave are taken by rows from the end of
  the batch, a row that joins takes a spare one, and the unused leading columns are trimmed
  once there are `TRIM_MIN` of them or the buffers are full (a copy of the whole cache each
  time a row left or joined cost 4-6% of a decode step: `bench/slab_rows.py`).
- greedy rows caught in a cycle leave the batch and are followed together a chunk per forward
  pass (`follow_cycles`, `agent/backends/lookahead.py`); those that leave their cycle rejoin.

transformers' continuous batching (`backend.continuous`) does the same scheduling with a paged
cache, but on CPU its paged attention costs more than the idle rows it saves (0.65x of static
batches on 2 cores, `bench/batching.py`); this loop keeps the dense SDPA attention of a plain
forward pass. Stop strings stay with `generate` (its `StopStringCriteria`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from agent.backends import head, lookahead
from agent.backends.base import SamplingParams
from agent.backends.hf import pad_left

_SHORTLIST = 256  # tokens a sampling step looks at before it sorts the whole vocabulary
# A shared prefix shorter than this is left alone: the chat template's opening (SmolLM2's
# default system prompt is about 20 tokens) is shared by every prompt, and sharing it would
# save little prefill beside the decoding while changing the float order of every answer.
SHARED_PREFIX_MIN = 64
# Spare columns a slab buffer gains when it is full: one copy of the cache per this many steps
# (instead of one per step), and at most this many masked columns that attention reads for nothing.
SLAB_GROW = 64
# Leading columns that no row of a slab batch attends to any more (left by rows that have gone)
# are trimmed, a copy of the whole cache, once there are this many: attention reads fewer for
# nothing at less cost than the copy.
TRIM_MIN = 32


def shared_prefix(seqs: Sequence[Sequence[int]], limit: int) -> int:
    """How many leading tokens all of `seqs` share, at most `limit` (each row must keep the
    tokens whose outputs the caller reads); 0 for a single row or below `SHARED_PREFIX_MIN`."""
    if len(seqs) < 2:
        return 0
    limit = min(limit, *(len(s) for s in seqs))
    if limit < SHARED_PREFIX_MIN:
        return 0
    first, rest = seqs[0], seqs[1:]
    n = 0
    while n < limit and all(s[n] == first[n] for s in rest):
        n += 1
    return n if n >= SHARED_PREFIX_MIN else 0


def can_share_prefix(model: Any) -> bool:
    """Whether `model` sees a row [prefix][padding][its own tokens] as it sees the row without
    the padding: plain full attention in every layer. A sliding window counts its distance in
    cache columns (the padding would push prefix tokens out of it), and linear-attention or
    recurrent layers would carry the padding in their state: no sharing for those."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    types = getattr(cfg, "layer_types", None) or []
    return all(t == "full_attention" for t in types) and not getattr(cfg, "sliding_window", None)


def prefill_shared(model: Any, prefix: Sequence[int], rows: int) -> DynamicCache:
    """The KV cache of `prefix` run once, repeated for `rows` rows."""
    cache = DynamicCache()
    ids = torch.tensor([list(prefix)], device=model.device)
    model(
        input_ids=ids,
        position_ids=torch.arange(len(prefix), device=model.device)[None],
        **{cache_argument(model): cache},
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(rows)
    return cache


def after_prefix(
    seqs: Sequence[Sequence[int]], shared: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tokens of `seqs` after their `shared` first ones, left-padded; the attention mask
    over the shared prefix and them; their positions (counted from the prefix's end)."""
    ids, mask = pad_left([list(s[shared:]) for s in seqs], pad_id, device)
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, torch.cat([mask.new_ones(len(seqs), shared), mask], dim=1), positions


def sample_tokens(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One token per row of `logits` (rows x vocab) under `params`: the argmax for greedy, else
    a draw from `nucleus`."""
    if params.greedy:
        return argmax(logits)
    return _draw(*nucleus(logits, params))


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """The index of the largest logit along the last dimension (the first of equal maxima).
    bfloat16 logits are widened first: on CPU torch's argmax over bfloat16 took 5 ms for 64 x
    49,152 where widening and a float32 argmax took 1 ms together (5% of a greedy decode step
    in a profile), and widening is exact, so the pick is the same."""
    return logits.float().argmax(dim=-1)


def nucleus(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distribution `generate` samples from, as (weights, token ids) per row (ids None:
    column = token id; weights unnormalized, zero = cut): temperature, then top-k, then top-p (a
    token stays while the mass of the tokens above it is below top_p, transformers'
    `TopPLogitsWarper` rule).

    transformers' top-p warper sorts the whole vocabulary every step, and `torch.multinomial`
    draws over it: on 2 CPU cores the two took 29% of a 16-row decode step (49k-token
    vocabulary). Here the nucleus is looked for among the `_SHORTLIST` most likely tokens
    (`torch.topk`): exact whenever the shortlist holds every row's nucleus (its last token is
    cut), else all k are sorted.
    """
    logits = logits.float()
    if params.temperature != 1.0:  # a vocabulary-wide pass saved at the recipe's 1.0
        logits = logits / params.temperature
    vocab = logits.shape[-1]
    k = min(vocab, params.top_k or vocab)
    # The distribution top-k leaves: renormalized over the k best (all of them without top-k).
    values, index = logits.topk(k) if k < vocab else (logits, None)
    norm = torch.logsumexp(values, dim=-1, keepdim=True)
    if params.top_p >= 1.0:
        return torch.exp(values - norm), index
    short = min(k, _SHORTLIST)
    if short < k:
        head, head_index = values.topk(short)
        probs = torch.exp(head - norm)
        above = probs.cumsum(dim=-1) - probs
        if bool((above[:, -1] >= params.top_p).all()):
            index = head_index if index is None else index.gather(-1, head_index)
            return probs * (above < params.top_p), index
    values, order = values.sort(dim=-1, descending=True)
    index = order if index is None else index.gather(-1, order)
    probs = torch.exp(values - norm)
    return probs * ((probs.cumsum(dim=-1) - probs) < params.top_p), index


def _draw(weights: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """A token per row with probability proportional to `weights` (rows x candidates, not all
    zero); `index` maps candidates to token ids (None: candidate = token id). Inverse CDF: one
    uniform per row against the running sum of its weights, in float64 so that a 49k-token
    vocabulary's many small weights keep their share. A candidate of weight 0 adds nothing to
    the sum and is never the first whose sum exceeds the draw. The exponential races this
    replaced drew one variate per candidate: 48 ms a step for 64 rows x 49,152 tokens on 2 CPU
    cores, a third of a respond decode step (untruncated sampling scores every token); the
    running sum is 2 ms."""
    cum = weights.double().cumsum(dim=-1)
    total = cum[:, -1:].contiguous()  # searchsorted warns of (and copies) a strided input
    u = torch.rand(len(cum), 1, dtype=cum.dtype, device=cum.device) * total
    pick = torch.searchsorted(cum, u, right=True)
    # u < the total (rand < 1). Should the product round up to it, the pick is the last
    # candidate of positive weight (the first whose running sum reaches the total), not the
    # row's last, which may be a cut one.
    pick = torch.minimum(pick, torch.searchsorted(cum, total))
    return (pick if index is None else index.gather(-1, pick)).squeeze(-1)


class SlabLayer(DynamicLayer):
    """One layer's keys and values (rows x heads x columns x dim) in buffers with spare rows and
    spare columns at the end: `keys` and `values` are views of the first `rows` rows (the rows
    in use; a contiguous view), `length` columns are filled, an update writes the next ones in
    place and grows the buffers by `grow` spare columns (one copy) only when they are full.
    `update` returns the views whole, so the attention mask must be as wide as they are
    (`width`) and mask the spare columns; spare rows and columns hold zeros or an earlier row's
    values, never uninitialized memory (a masked NaN still poisons softmax)."""

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        length: int,
        grow: int,
        rows: int | None = None,
    ) -> None:
        super().__init__()
        self.buffers = (keys, values)
        self.length, self.grow = length, grow
        self.resize(keys.shape[0] if rows is None else rows)
        self.device = keys.device
        self.is_initialized = True

    @property
    def width(self) -> int:
        return self.buffers[0].shape[-2]

    @property
    def capacity(self) -> int:
        """Rows the buffers hold."""
        return self.buffers[0].shape[0]

    def resize(self, rows: int) -> None:
        """Use the first `rows` rows of the buffers (no copy)."""
        self.keys, self.values = self.buffers[0][:rows], self.buffers[1][:rows]

    def rebuild(self, start: int, width: int, capacity: int | None = None) -> None:
        """New zero buffers `width` columns wide (`capacity` rows, default the same) holding
        columns `start`..`length` of the rows in use: one copy."""
        rows = self.keys.shape[0]
        capacity = max(rows, capacity or self.capacity)
        self.buffers = tuple(
            _widened(x[:, :, start : self.length], width, capacity)
            for x in (self.keys, self.values)
        )
        self.length -= start
        self.resize(rows)

    def reserve(self, n: int) -> None:
        """Room for `n` more columns; a full buffer is copied into one `grow` columns wider."""
        if self.length + n > self.width:
            self.rebuild(0, self.length + n + self.grow)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        self.reserve(n)
        self.keys[:, :, self.length : self.length + n] = key_states
        self.values[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.width, 0

    # DynamicLayer's versions would treat the spare columns as filled ones; the decode loop
    # selects and trims rows itself (`_Batch.keep`).
    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SlabLayer: crop is not supported")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SlabLayer: batch_repeat_interleave is not supported")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("SlabLayer: batch_select_indices is not supported")


def _widened(x: torch.Tensor, width: int, rows: int | None = None) -> torch.Tensor:
    """A zero buffer `width` columns wide (and `rows` rows, default `x`'s) whose first rows and
    columns are `x`'s."""
    out = x.new_zeros(rows or x.shape[0], x.shape[1], width, x.shape[3])
    out[: x.shape[0], :, : x.shape[2]] = x
    return out


def uses_slab(model: Any) -> bool:
    """Whether ragged decoding keeps `model`'s cache in slabs: SDPA (the slab's 4D boolean
    mask is SDPA's convention; eager attention adds a float mask) over full attention in every
    layer (a hybrid cache's other layer kinds are not plain keys and values)."""
    impl = getattr(model.config, "_attn_implementation", None)
    return impl == "sdpa" and can_share_prefix(model)


class _Batch:
    """The rows decoding now: their cache, attention mask, next positions and owners. With
    `grow` > 0 the cache's layers are `SlabLayer`s (that many spare columns) once rows joined,
    with room for `capacity` rows: the places of rows that leave are taken by rows from the end
    of the batch and a row that joins writes into a spare one, where copying the whole cache
    each time cost 4-6% of a decode step (`bench/slab_rows.py`)."""

    def __init__(self, grow: int = 0, capacity: int = 0) -> None:
        self.grow, self.capacity = grow, capacity
        self.cache: Cache = DynamicCache()
        self.mask: torch.Tensor | None = None  # rows x cache length (+ the pending token)
        self.pos: torch.Tensor | None = None  # rows: position of the pending token
        self.last: torch.Tensor | None = None  # rows: the pending (sampled, not yet fed) token
        self.owner: list[tuple[int, int]] = []  # rows: (prompt index, sample index)

    def __len__(self) -> int:
        return len(self.owner)

    @property
    def slabs(self) -> bool:
        return bool(self.grow and self.owner)

    def unused(self) -> int:
        """Leading cache columns no row attends to (padding left by rows that have gone); the
        pending token's column (the last) is always attended."""
        used = self.mask[:, :-1].any(dim=0).nonzero()
        return int(used[0]) if len(used) else self.mask.shape[1] - 1

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices into the batch), then trim columns no row attends to. A
        slab batch keeps them in another order: the rows that stay past the new end move into
        the places of those that left (a copy of the moved rows only), and the unused columns
        are trimmed once there are `TRIM_MIN` of them."""
        if len(rows) == len(self.owner):
            return
        if not rows:
            self.__init__(self.grow, self.capacity)
            return
        order = self._close_gaps(rows) if self.slabs else rows
        self.owner = [self.owner[r] for r in order]
        idx = torch.tensor(order, device=self.mask.device)
        self.mask, self.pos, self.last = self.mask[idx], self.pos[idx], self.last[idx]
        start = self.unused()
        if self.slabs:
            if start >= TRIM_MIN:
                self.mask = self.mask[:, start:]
                for layer in self.cache.layers:
                    layer.rebuild(start, layer.width - start)
            return
        # One copy drops the rows that left and the leading columns.
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx, :, start:], layer.values[idx, :, start:]

    def _close_gaps(self, rows: list[int]) -> list[int]:
        """Move the slab rows of `rows` that lie past `len(rows)` into the places below it that
        no kept row holds; returns the old row now at each place."""
        n, kept = len(rows), set(rows)
        holes = [p for p in range(n) if p not in kept]
        movers = [r for r in rows if r >= n]
        order = list(range(n))
        for h, m in zip(holes, movers):
            order[h] = m
        if holes:
            to = torch.tensor(holes, device=self.mask.device)
            src = torch.tensor(movers, device=self.mask.device)
        for layer in self.cache.layers:
            if holes:
                for buf in layer.buffers:
                    buf[to] = buf[src]
            layer.resize(n)
        return order

    def reserve(self, n: int) -> None:
        """Room in a slab batch's buffers for `n` more columns: when they are full, one copy
        into buffers `grow` columns wider drops the unused leading columns too."""
        first = self.cache.layers[0]
        if first.length + n <= first.width:
            return
        start = self.unused()
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.rebuild(start, layer.length - start + n + self.grow)

    def row(self, r: int) -> _Batch:
        """Row `r` alone (a copy): its cache a `DynamicCache` of only the columns it attends to,
        its mask all ones. Positions are explicit, so for full attention (the only kind
        lookahead runs on) dropping masked columns changes nothing the row computes."""
        mask = self.mask[r]
        used = mask[:-1].nonzero().squeeze(1)  # not the pending token's column (the last)
        alone = _Batch()
        alone.cache = DynamicCache(
            [(x.keys[r : r + 1, :, used], x.values[r : r + 1, :, used]) for x in self.cache.layers]
        )
        alone.mask = mask.new_ones(1, len(used) + 1)
        alone.pos, alone.last = self.pos[r : r + 1], self.last[r : r + 1]
        alone.owner = [self.owner[r]]
        return alone

    def join(self, other: _Batch) -> None:
        """Append `other`'s rows (whose cache is a `DynamicCache`), left-padding the shorter
        cache with masked columns. A slab batch writes them into its spare rows when they fit
        (no copy of its own rows), else into new buffers."""
        if not other.owner:
            return
        if not self.owner:
            self.cache, self.mask, self.pos, self.last = (
                other.cache,
                other.mask,
                other.pos,
                other.last,
            )
            self.owner = other.owner
            if self.grow:  # one copy into buffers with spare rows and columns
                self.cache = Cache(
                    layers=[
                        _slab(x.keys, x.values, self.grow, self.capacity)
                        for x in other.cache.layers
                    ]
                )
            return
        a, b = self.mask.shape[1], other.mask.shape[1]
        width = max(a, b)
        rows, more = len(self.owner), len(other.owner)
        if self.grow:
            fits = b <= a and rows + more <= self.cache.layers[0].capacity
            for mine, theirs in zip(self.cache.layers, other.cache.layers):
                if not fits:
                    # Both caches right-aligned in new buffers, replaced layer by layer so that
                    # the peak is the cache plus one layer, not two caches.
                    mine.rebuild(0, width - 1 + self.grow, max(self.capacity, rows + more))
                    if width > a:  # this batch's rows move right, behind zero columns
                        for buf in mine.buffers:
                            buf[:rows, :, width - a : width - 1] = buf[:rows, :, : a - 1].clone()
                            buf[:rows, :, : width - a] = 0
                        mine.length = width - 1
                # The new rows right-aligned in spare rows: their columns left of that are an
                # earlier row's values or zeros, masked.
                for buf, new in zip(mine.buffers, (theirs.keys, theirs.values)):
                    buf[rows : rows + more, :, width - b : width - 1] = new
                mine.resize(rows + more)
        else:
            for mine, theirs in zip(self.cache.layers, other.cache.layers):
                mine.keys = torch.cat(
                    [_pad_time(mine.keys, width - a), _pad_time(theirs.keys, width - b)]
                )
                mine.values = torch.cat(
                    [_pad_time(mine.values, width - a), _pad_time(theirs.values, width - b)]
                )
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)], dim=0)
        self.pos = torch.cat([self.pos, other.pos])
        self.last = torch.cat([self.last, other.last])
        self.owner += other.owner


def _slab(keys: torch.Tensor, values: torch.Tensor, grow: int, capacity: int = 0) -> SlabLayer:
    """A slab holding `keys` and `values`, with `grow` spare columns and room for `capacity`
    rows (at least theirs)."""
    n, rows = keys.shape[2], keys.shape[0]
    capacity = max(rows, capacity)
    return SlabLayer(
        _widened(keys, n + grow, capacity), _widened(values, n + grow, capacity), n, grow, rows
    )


def _pad_time(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` (batch, heads, time, dim) with `n` zero columns added at the start of time."""
    if n == 0:
        return x
    return torch.cat([x.new_zeros(*x.shape[:2], n, x.shape[3]), x], dim=2)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    n = width - mask.shape[1]
    return mask if n == 0 else torch.cat([mask.new_zeros(mask.shape[0], n), mask], dim=1)


def follow_cycles(
    model: Any,
    group: _Batch,
    periods: dict[tuple[int, int], int],
    out: list[list[list[int]]],
    max_tokens: int,
    eos: set[int],
    cache_arg: str,
) -> tuple[list[int], _Batch]:
    """Extend each row of `group` (rows of greedy decoding whose answers in `out` end in a cycle
    of `periods[owner]`, see `lookahead`) along its cycle for as long as the model's argmax
    agrees: a forward pass feeds every row `lookahead.CHUNK` draft tokens, and each row keeps
    those the model agrees with plus the model's first own token. Rows go on chunk after chunk
    until they end (EOS or `max_tokens`) or leave their cycle. Returns the prompt index of each
    row that ended, and the rows that left their cycle, as one batch that decodes on."""
    ended: list[int] = []
    back = _Batch()
    while len(group):
        seqs = [out[i][k] for i, k in group.owner]
        k = min(lookahead.CHUNK, max(max_tokens - len(s) for s in seqs))
        guesses = [
            lookahead.draft(s, periods[o], min(k, max_tokens - len(s)))
            for s, o in zip(seqs, group.owner)
        ]
        # Each row's pending token (its answer's last, not yet fed) and its draft but the last:
        # the logits after input j are the model's choice for draft token j. A row with less
        # than a chunk left pads with its pending token; those outputs are never read.
        ids = torch.tensor(
            [[s[-1], *g[:-1], *[s[-1]] * (k - len(g))] for s, g in zip(seqs, guesses)],
            device=group.mask.device,
        )
        # The padding repeats its row's last real position: never past the answer's limit (a
        # model with learned absolute positions has none there).
        steps = torch.arange(k, device=ids.device)[None, :]
        last_step = torch.tensor([len(g) - 1 for g in guesses], device=ids.device)[:, None]
        choice = argmax(
            model(
                input_ids=ids,
                attention_mask=torch.cat([group.mask, group.mask.new_ones(len(seqs), k - 1)], 1),
                position_ids=group.pos[:, None] + torch.minimum(steps, last_step),
                **{cache_arg: group.cache},
                use_cache=True,
            ).logits
        ).tolist()  # rows x chunk x vocab logits: not kept past this line
        stay, leave, fed, pending = [], [], [], []
        for r, (seq, guess, mine) in enumerate(zip(seqs, guesses, choice)):
            n, done = 0, False
            for tok, want in zip(mine, guess):
                n += 1
                seq.append(tok)
                if tok in eos or len(seq) >= max_tokens:
                    done = True
                    break
                if tok != want:
                    break
            fed.append(n)
            pending.append(tok)
            if done:
                ended.append(group.owner[r][0])
            elif tok != want:
                leave.append(r)
            else:
                stay.append(r)
        # The chunk's columns a row kept stay attended (its pending token's, now filled, and
        # `fed` - 1 draft tokens'); the rest are masked for good. Then the new pending token.
        kept = torch.tensor(fed, device=ids.device)[:, None] - 1
        drafts = torch.arange(k - 1, device=ids.device)[None, :] < kept
        ones = group.mask.new_ones(len(seqs), 1)
        group.mask = torch.cat([group.mask, drafts.to(group.mask.dtype), ones], dim=1)
        group.pos = group.pos + kept[:, 0] + 1
        group.last = torch.tensor(pending, device=ids.device)
        for r in leave:
            back.join(group.row(r))
        group.keep(stay)
    return ended, back


def cache_argument(model: Any) -> str:
    """The forward argument that takes the KV cache: `cache` from the transformers release that
    renamed it (`past_key_values` then warns it is deprecated), `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def decode_ragged(
    model: Any,
    prompts: Sequence[list[int]],
    rows: int,
    params: SamplingParams,
    *,
    max_rows: int,
    eos_ids: Sequence[int],
    pad_id: int,
    on_prompt_done: Callable[[int], None] | None = None,
    share_prefix: bool = True,
    slab_grow: int = SLAB_GROW,
    look_ahead: bool = True,
    onednn_head: bool = True,
) -> list[list[list[int]]]:
    """`rows` completions of each of `prompts` (token ids), decoded with at most `max_rows`
    rows at once (at least one prompt's `rows`). Per prompt, per sample: the generated tokens,
    through the EOS that ended it (an answer cut at `max_tokens` has none). Prompts enter in
    the given order; `on_prompt_done(i)` is called when prompt i's last sample ends. With
    `share_prefix`, prompts admitted together prefill the tokens they all open with once.
    `slab_grow` > 0 keeps the batch's cache in `SlabLayer`s with that many spare columns where
    the model allows (`uses_slab`); 0 = transformers' `DynamicCache` (the baseline it is
    measured against). With `look_ahead` (greedy decoding only), a row caught in a cycle has
    the cycle's continuation checked a chunk per forward pass (`agent/backends/lookahead.py`).
    `onednn_head` runs the output projection through oneDNN where that applies (CPU, float32:
    `agent/backends/head.py`)."""
    device = model.device
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    cache_arg = cache_argument(model)
    out: list[list[list[int]]] = [[[] for _ in range(rows)] for _ in prompts]
    left = [rows] * len(prompts)
    queue = list(range(len(prompts)))
    capacity = max(1, max_rows // rows) * rows
    # Buffers no larger than the call needs (a few prompts, a 64-row capacity).
    room = min(capacity, len(prompts) * rows)
    batch = _Batch(slab_grow if slab_grow > 0 and uses_slab(model) else 0, room)
    # Rows caught in a cycle, waiting to be followed together (`follow_cycles`): one forward
    # over a chunk of several rows costs less per token than one row's.
    parked = _Batch()
    periods: dict[tuple[int, int], int] = {}

    def admit(idx: list[int]) -> _Batch:
        seqs = [prompts[i] for i in idx]
        new = _Batch()
        # Every row keeps at least its last prompt token: its logits give the first sample.
        shared = shared_prefix(seqs, min(len(s) for s in seqs) - 1) if share else 0
        if shared:
            new.cache = prefill_shared(model, seqs[0][:shared], len(seqs))
        ids, mask, positions = after_prefix(seqs, shared, pad_id, device)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{cache_arg: new.cache},
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        if rows > 1:
            new.cache.batch_repeat_interleave(rows)
            logits, mask = logits.repeat_interleave(rows, dim=0), mask.repeat_interleave(rows, 0)
        new.last = sample_tokens(logits, params)
        new.mask = torch.cat([mask, mask.new_ones(len(new.last), 1)], dim=1)
        new.pos = mask.sum(dim=1)
        new.owner = [(i, k) for i in idx for k in range(rows)]
        return new

    def finish(i: int) -> None:
        left[i] -= 1
        if left[i] == 0 and on_prompt_done:
            on_prompt_done(i)

    def settle(batch: _Batch) -> None:
        """Record each row's pending token; rows that ended leave the batch. With lookahead,
        rows caught in a cycle leave too, for `parked`."""
        keep, loops = [], []
        tokens = batch.last.tolist()
        ended = torch.isin(batch.last, eos).tolist()
        for r, ((i, k), tok) in enumerate(zip(batch.owner, tokens)):
            seq = out[i][k]
            seq.append(tok)
            if ended[r] or len(seq) >= params.max_tokens:
                finish(i)
            elif follow and (period := lookahead.cycle(seq, lookahead.SPAN, lookahead.MAX_PERIOD)):
                periods[i, k] = period
                loops.append(r)
            else:
                keep.append(r)
        for r in loops:
            parked.join(batch.row(r))
        batch.keep(keep)

    full_attention = can_share_prefix(model)
    share = share_prefix and full_attention
    # Rejected draft columns stay masked in a row's cache: harmless to full attention only.
    follow = look_ahead and params.greedy and full_attention
    eos_set = set(eos_ids)
    with torch.inference_mode(), head.onednn_head(model, onednn_head):
        while queue or len(batch) or len(parked):
            # Parked rows hold places too: a batch never holds more than `capacity` rows.
            free = (capacity - len(batch) - len(parked)) // rows
            # Follow when enough rows wait, or when as many wait as still decode and no queued
            # prompt can take a place (the tail of a call, or every place parked).
            if parked.owner and (
                len(parked) >= lookahead.GROUP
                or (len(parked) >= len(batch) and (not queue or free < 1))
            ):
                group, parked = parked, _Batch()
                if len(group) > lookahead.GROUP:  # a forward's logits grow with rows x chunk
                    for r in range(lookahead.GROUP, len(group)):
                        parked.join(group.row(r))
                    group.keep(list(range(lookahead.GROUP)))
                done, back = follow_cycles(
                    model, group, periods, out, params.max_tokens, eos_set, cache_arg
                )
                for i in done:
                    finish(i)
                batch.join(back)
                continue
            if queue and free > 0:
                take, queue = queue[:free], queue[free:]
                new = admit(take)
                settle(new)
                batch.join(new)
                continue
            mask = batch.mask
            if batch.grow:
                # The step's column must fit before the forward, so the mask can be as wide as
                # the buffers the layers will attend to (spare columns masked). Making room may
                # trim the mask's leading columns.
                batch.reserve(1)
                spare = batch.cache.layers[0].width - batch.mask.shape[1]
                mask = torch.nn.functional.pad(batch.mask, (0, spare)).bool()[:, None, None, :]
            logits = model(
                input_ids=batch.last[:, None],
                attention_mask=mask,
                position_ids=batch.pos[:, None],
                **{cache_arg: batch.cache},
                use_cache=True,
            ).logits[:, -1]
            batch.last = sample_tokens(logits, params)
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
            batch.pos = batch.pos + 1
            settle(batch)
    return out

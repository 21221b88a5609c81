"""The dedup decision: which candidates are kept against the pool and each other (see
`judges.dedup`), and `near`, the same neighbour search against a fixed list of texts."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np

from agent.errors import SelfloopError
from judges.dedup.config import DedupConfig, Record, record_id, record_text
from judges.dedup.pool import Pool, index_kind_for, new_index, search
from judges.embed import Embedder

log = logging.getLogger(__name__)

_CHUNK = 256  # candidates decided per step: one (chunk x kept) search + one (chunk x chunk) product


Where = Literal["pool", "batch"]  # the neighbour was accepted earlier, or kept in this batch
Nearest = tuple[float, str, Where]  # (similarity, neighbour id, where)


class Drop(NamedTuple):
    record: Record
    neighbour_id: str  # the kept example it duplicates
    similarity: float
    where: Where


@dataclass
class DedupReport:
    kept: list[Record] = field(default_factory=list)  # input order, already_in_pool included
    kept_vectors: np.ndarray | None = None  # rows aligned with `kept`; pass to Pool.add
    # similarity to the nearest example each kept one was checked against; None when it was
    # already in the pool or there was nothing to compare with (first of an empty pool)
    kept_nearest: list[float | None] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    already_in_pool: list[str] = field(default_factory=list)
    # kept although at or above the threshold: (id, neighbour id, similarity, why they differ)
    contrasted: list[tuple[str, str, float, str]] = field(default_factory=list)
    no_neighbour: int = 0  # decided with nothing to compare against
    threshold: float = 0.0
    paraphrase_threshold: float | None = None
    pool_size: int = 0
    index_kind: str = "flat"
    histogram_bins: int = 10
    samples: int = 5

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.dropped)

    def dropped_records(self) -> list[dict[str, Any]]:
        """Dropped records with their nearest kept neighbour, similarity and where it was."""
        return [
            {
                **d.record,
                "dedup_neighbour": d.neighbour_id,
                "dedup_similarity": round(d.similarity, 4),
                "dedup_where": d.where,
            }
            for d in self.dropped
        ]

    def summary(self) -> dict[str, Any]:
        """Plain JSON data for metrics: counts, drop rate, nearest-similarity histogram, samples.

        The histogram counts, for every candidate that was decided, its similarity to the
        nearest example it was checked against (pool, or kept earlier in the batch); negative
        similarities fall in the first bin. Candidates already in the pool are not in it.
        """
        sims = [d.similarity for d in self.dropped]
        sims += [s for s in self.kept_nearest if s is not None]
        edges = np.linspace(0.0, 1.0, self.histogram_bins + 1)
        counts, _ = np.histogram(np.clip(np.asarray(sims, dtype=np.float64), 0.0, 1.0), edges)
        return {
            "total": self.total,
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            "already_in_pool": len(self.already_in_pool),
            "dropped_vs_pool": sum(d.where == "pool" for d in self.dropped),
            "dropped_vs_batch": sum(d.where == "batch" for d in self.dropped),
            "drop_rate": len(self.dropped) / self.total if self.total else 0.0,
            # dropped from the paraphrase band: below the threshold, the differing words alike
            "dropped_as_paraphrase": sum(d.similarity < self.threshold for d in self.dropped),
            "kept_by_contrast": len({c[0] for c in self.contrasted}),
            "contrast_samples": [
                {"id": a, "neighbour_id": b, "similarity": round(s, 4), "why": why}
                for a, b, s, why in self.contrasted[: self.samples]
            ],
            "threshold": self.threshold,
            "paraphrase_threshold": self.paraphrase_threshold,
            "pool_size": self.pool_size,
            "index": self.index_kind,
            "nearest_similarity": {
                "edges": [round(float(e), 4) for e in edges],
                "counts": [int(c) for c in counts],
                "mean": float(np.mean(sims)) if sims else None,
                "no_neighbour": self.no_neighbour,
            },
            "samples": [
                {
                    "id": record_id(d.record, 0),
                    "neighbour_id": d.neighbour_id,
                    "similarity": round(d.similarity, 4),
                    "where": d.where,
                }
                for d in self.dropped[: self.samples]
            ],
        }


# ---- guard: near a fixed list of texts ----


def near(
    records: Sequence[Record],
    texts: Sequence[tuple[str, str]],
    embedder: Embedder,
    config: DedupConfig,
) -> dict[str, dict[str, Any]]:
    """Records whose text (the configured `text_fields`, as dedup embeds them) is within the
    dedup threshold of one of `texts` ((id, text) pairs, e.g. eval prompts or seed tasks):
    record id -> the nearest text's id, the text and the similarity. The same embedding and
    threshold as the pool's dedup; the paraphrase band below the threshold is not applied
    here (the guards were measured without it), so a rewording of an eval prompt at 0.5-0.85
    passes the guard though dedup would drop it as a duplicate of a pool example."""
    if not records or not texts:
        return {}
    a = embedder.encode([record_text(r, config.text_fields, i) for i, r in enumerate(records)])
    sims = np.asarray(a @ embedder.encode_kept([t for _, t in texts]).T)
    best = sims.argmax(axis=1)
    return {
        record_id(r, i): {
            "guard_neighbour": texts[j][0],
            "guard_text": texts[j][1],
            "guard_similarity": round(float(sims[i, j]), 4),
        }
        for i, (r, j) in enumerate(zip(records, best))
        if sims[i, j] >= config.threshold
    }


def pair_is_duplicate(
    similarity: float, a: str, b: str, config: DedupConfig, embedder: Embedder | None = None
) -> bool:
    """The rule dedup applies to one pair: at or above the threshold, or in the paraphrase band
    with the words that differ embedding alike (`embedder` encodes them), and, with the contrast
    stage on, not told apart by judges.contrast. (For benches and tests of labelled pairs.)"""
    from judges.contrast import contrast

    if similarity < config.floor:
        return False
    if config.contrast and contrast(a, b) is not None:
        return False
    if config.paraphrase_threshold is None:
        return True  # at or above the threshold
    if embedder is None:
        raise SelfloopError("pair_is_duplicate: the paraphrase band needs the embedder")
    parts = Parts(embedder, config)
    return (
        parts.differ(a, b) if similarity < config.threshold else parts.sentence_swapped(a, b)
    ) is None


# A sentence of fewer words is a courtesy or a filler ("Please explain."), not a request of its own.
_SENTENCE_WORDS = 4
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The sentences of `text` that make a request of their own (`_SENTENCE_WORDS` words or
    more)."""
    from judges.contrast import words

    return [x.strip() for x in _SENTENCE.split(text) if len(words(x)) >= _SENTENCE_WORDS]


class Parts:
    """The paraphrase band's test, for a pair whose whole texts embed at the band's floor or more:
    whether what tells them apart embeds alike too. Both checks that apply must pass:

    - the texts share a frame (a common opening or ending, or a run of 3 words or more: judges.
      contrast.differing_parts): the words outside it must embed alike. A reworded task rewords
      its content too; a template with its content swapped ("Write a SQL query that returns the
      latest orders" / "... that deletes cancelled orders") or two tasks behind one constraint
      sentence share the frame, and what is left means different things;
    - either text makes more than one request: every sentence of each (of 4 words or more)
      must have one in the other at the floor or more, frame or not. Two tasks with constraints
      attached ("How many ways can 3 of 10 be chosen? Start your response with ..." / "How
      should three roommates split chores? Do not use any commas ...") score 0.5 as wholes on
      the constraints' likeness; their task sentences do not.

    Only texts in `paraphrase_languages` are compared this way: an English embedder places any
    two texts of a script it barely knows close together (two unrelated Chinese questions at
    0.71). The vectors are memoised; `prefetch` encodes many in one batch."""

    def __init__(self, embedder: Embedder, config: DedupConfig) -> None:
        self.embedder, self.floor = embedder, config.floor
        self.languages = config.paraphrase_languages
        self.vectors: dict[str, np.ndarray] = {}

    @staticmethod
    def _needs(a: str, b: str) -> list[str]:
        from judges.contrast import differing_parts

        need = [x for x in differing_parts(a, b) or () if x]
        sa, sb = sentences(a), sentences(b)
        return [*need, *sa, *sb] if len(sa) > 1 or len(sb) > 1 else need

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._encode([x for a, b in pairs for x in self._needs(a, b)])

    def _encode(self, texts: Iterable[str]) -> None:
        """Encode, in one batch, those of `texts` not encoded yet."""
        todo = [x for x in dict.fromkeys(texts) if x not in self.vectors]
        if todo:
            self.vectors.update(zip(todo, self.embedder.encode(todo)))

    def _sim(self, x: str, y: str) -> float:
        return float(self.vectors[x] @ self.vectors[y])

    def sentence_swapped(self, a: str, b: str) -> str | None:
        """For a pair at or above the threshold: why they are two tasks when they share a
        sentence word for word and the sentences they do not share (4 words or more on each
        side) embed unlike each other - one task with two different constraints ("... Include
        the keywords ..." / "... Your response must have 2 sections."), which the shared
        sentence's weight in the whole texts hides. None otherwise: rewording within a sentence
        is the contrast checks' to read."""
        from judges.contrast import words

        split_a, split_b = (
            [(x, tuple(words(x))) for x in _SENTENCE.split(t) if x.strip()] for t in (a, b)
        )
        shared = {w for _, w in split_a if len(w) >= _SENTENCE_WORDS} & {w for _, w in split_b}
        if not shared:
            return None
        rest_a = " ".join(x for x, w in split_a if w not in shared)
        rest_b = " ".join(x for x, w in split_b if w not in shared)
        if min(len(words(rest_a)), len(words(rest_b))) < _SENTENCE_WORDS:
            return None
        self._encode((rest_a, rest_b))
        sim = self._sim(rest_a, rest_b)
        if sim < self.floor:
            return f"the same request with other sentences ({rest_a[:40]!r} / " \
                   f"{rest_b[:40]!r}: {sim:.2f})"  # fmt: skip
        return None

    def differ(self, a: str, b: str) -> str | None:
        """Why `a` and `b` are two tasks although their whole texts are in the band, or None (a
        paraphrase)."""
        from judges import lang
        from judges.contrast import LANGUAGE_CONFIDENCE, differing_parts

        for text in (a, b):
            code, prob = lang.detect(text)
            if prob >= LANGUAGE_CONFIDENCE and not any(
                lang.same_language(code, x) for x in self.languages
            ):
                return f"the paraphrase band reads {', '.join(self.languages)} only ({code})"
        self.prefetch([(a, b)])
        parts = differing_parts(a, b)
        if parts is not None and (parts[0] or parts[1]):  # both empty: the same words
            xa, xb = parts
            if not xa or not xb:
                return f"one adds words to the other ({xa or xb})"
            sim = self._sim(xa, xb)
            if sim < self.floor:
                return f"the words that differ mean different things ({xa} / {xb}: {sim:.2f})"
        sa, sb = sentences(a), sentences(b)
        if len(sa) <= 1 and len(sb) <= 1:
            return None  # one request each: the whole texts' (or the parts') similarity says it
        for xs, ys in ((sa, sb), (sb, sa)):
            for x in xs:
                best = max((self._sim(x, y) for y in ys), default=0.0)
                if best < self.floor:
                    return f"a sentence has no counterpart ({x[:60]!r}: {best:.2f})"
        return None


# ---- dedup ----


def dedup(
    candidates: Iterable[Record],
    pool: Pool,
    config: DedupConfig | None = None,
    scores: Mapping[str, float] | None = None,
) -> DedupReport:
    """Drop candidates that duplicate the pool or a better/earlier candidate of the batch.

    `scores` (id -> judge score, higher is better) picks which one of a near-duplicate group
    survives; without it the first in input order does. The pool is not changed: call
    `pool.add(report.kept, report.kept_vectors)` once the round's output is safely written.
    """
    config = config or pool.config
    if (config.model, config.text_fields) != (pool.config.model, pool.config.text_fields):
        raise SelfloopError("dedup config and pool disagree on the embedding model or text fields")
    records = list(candidates)
    ids = [record_id(r, i) for i, r in enumerate(records)]
    texts = [record_text(r, config.text_fields, i) for i, r in enumerate(records)]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SelfloopError(f"dedup: id {dup!r} appears twice in the candidates")
    already = [i for i, rid in enumerate(ids) if rid in pool]
    for i in already:
        pool._check_same(ids[i], texts[i])
    report = DedupReport(
        threshold=config.threshold,
        paraphrase_threshold=config.paraphrase_threshold,
        pool_size=len(pool),
        index_kind=pool.index_kind,
        histogram_bins=config.histogram_bins,
        samples=config.samples,
        already_in_pool=[ids[i] for i in already],
    )
    vectors = pool.embedder.encode(texts)
    in_pool = set(already)
    fresh = [i for i in range(len(records)) if i not in in_pool]
    if scores is not None:
        score = {str(k): float(v) for k, v in scores.items()}

        def priority(i: int) -> tuple[float, int]:
            s = score.get(ids[i], -math.inf)  # unscored candidates yield to scored ones
            return (-s if not math.isnan(s) else math.inf, i)

        fresh.sort(key=priority)

    decision = _decide(fresh, ids, texts, vectors, pool, config)
    kept_rows = []
    for i, rec in enumerate(records):
        if i in in_pool:
            kept_rows.append(i)
            report.kept_nearest.append(None)
            continue
        d = decision[i]
        if d.duplicate_of is not None:
            dup = d.duplicate_of
            report.dropped.append(Drop(rec, dup[1], dup[0], dup[2]))
        else:
            kept_rows.append(i)
            report.kept_nearest.append(None if d.nearest is None else d.nearest[0])
            report.no_neighbour += int(d.nearest is None)
            report.contrasted += [(ids[i], nid, sim, why) for nid, sim, why in d.contrasts]
    report.kept = [records[i] for i in kept_rows]
    report.kept_vectors = vectors[kept_rows]
    log.info(
        "dedup: kept %d of %d (%d dropped vs pool, %d vs batch, %d already in pool)",
        len(report.kept),
        report.total,
        sum(d.where == "pool" for d in report.dropped),
        sum(d.where == "batch" for d in report.dropped),
        len(already),
    )
    return report


# Neighbours checked per candidate when the contrast stage is on: a near-miss may be the
# nearest while a true duplicate is the next one.
_NEIGHBOURS = 4


class Decision(NamedTuple):
    nearest: Nearest | None  # the most similar example it was checked against
    duplicate_of: Nearest | None  # the kept example it duplicates, None: kept
    contrasts: list[tuple[str, float, str]]  # (neighbour id, similarity, why) told apart


def _decide(
    order: list[int],
    ids: list[str],
    texts: list[str],
    vectors: np.ndarray,
    pool: Pool,
    config: DedupConfig,
) -> dict[int, Decision]:
    """The greedy pass: for each row of `order` (priority order), what it was checked against
    (the pool, or rows kept before it). A row is a duplicate of the most similar of those at or
    above the threshold that the contrast stage (when on) and, with the band on, the sentence
    check do not tell apart from it, or in the paraphrase band with what differs embedding alike
    (`Parts`)."""
    from judges.contrast import contrast

    k = _NEIGHBOURS if config.contrast or config.paraphrase_threshold is not None else 1
    floor = config.floor
    parts = Parts(pool.embedder, config)
    empty = (np.zeros((0, k)), np.zeros((0, k), dtype=np.int64))
    pool_sims, pool_rows = pool.search(vectors[order], k) if order else empty
    pool_sims, pool_rows = pool_sims.reshape(len(order), k), pool_rows.reshape(len(order), k)
    decision: dict[int, Decision] = {}
    kept_index: faiss.Index | None = None  # rows kept so far, in earlier chunks
    kept_rows: list[int] = []  # their candidate rows, in index order
    for start in range(0, len(order), _CHUNK):
        chunk = order[start : start + _CHUNK]
        cv = vectors[chunk]
        batch_sims, batch_rows = search(kept_index, cv, k)
        batch_sims, batch_rows = batch_sims.reshape(len(chunk), k), batch_rows.reshape(-1, k)
        inner = cv @ cv.T  # the chunk against itself, for rows kept earlier in this chunk
        kept_here = np.zeros(len(chunk), dtype=bool)
        if floor < config.threshold:  # the band's pairs this chunk may check, in one batch
            band = _band_pairs(chunk, start, texts, pool, (pool_sims, pool_rows),
                               (batch_sims, batch_rows), kept_rows, inner, k, config)  # fmt: skip
            parts.prefetch(band)
        for pos, i in enumerate(chunk):
            at = start + pos
            found: list[tuple[float, str, Where, str]] = [
                (float(pool_sims[at, j]), pool.ids[r], "pool", pool.texts[r])
                for j, r in enumerate(pool_rows[at]) if r >= 0
            ]  # fmt: skip
            found += [
                (float(batch_sims[pos, j]), ids[kept_rows[r]], "batch", texts[kept_rows[r]])
                for j, r in enumerate(batch_rows[pos]) if r >= 0
            ]  # fmt: skip
            here = np.flatnonzero(kept_here)
            if len(here):
                top = here[np.argsort(-inner[pos, here], kind="stable")[:k]]
                found += [(float(inner[pos, j]), ids[chunk[j]], "batch", texts[chunk[j]])
                          for j in top]  # fmt: skip
            found.sort(key=lambda f: -f[0])
            nearest = found[0][:3] if found else None
            duplicate_of, contrasts = None, []
            for sim, nid, where, ntext in found:
                if sim < floor:
                    break
                why = contrast(texts[i], ntext) if config.contrast else None
                if why is None and sim < config.threshold:
                    why = parts.differ(texts[i], ntext)
                    if why is not None:
                        continue  # below the threshold: two tasks, not a contrast to report
                elif why is None and config.paraphrase_threshold is not None:
                    why = parts.sentence_swapped(texts[i], ntext)
                if why is None:
                    duplicate_of = (sim, nid, where)
                    break
                if sim >= config.threshold:
                    contrasts.append((nid, sim, why))
            decision[i] = Decision(nearest, duplicate_of, contrasts)
            kept_here[pos] = duplicate_of is None
        new_kept = [i for pos, i in enumerate(chunk) if kept_here[pos]]
        if new_kept:
            if kept_index is None:
                kind = index_kind_for(config, len(order))
                kept_index = new_index(kind, vectors.shape[1], config, vectors[order])
            kept_index.add(vectors[new_kept])
            kept_rows.extend(new_kept)
    return decision


def _band_pairs(
    chunk: list[int],
    start: int,
    texts: list[str],
    pool: Pool,
    pool_hits: tuple[np.ndarray, np.ndarray],
    batch_hits: tuple[np.ndarray, np.ndarray],
    kept_rows: list[int],
    inner: np.ndarray,
    k: int,
    config: DedupConfig,
) -> list[tuple[str, str]]:
    """Every (candidate, neighbour) text pair of the chunk in the paraphrase band that its
    decision may check: pool and earlier chunks' neighbours, and up to k earlier rows of the
    chunk (whether they are kept is not known yet). At most 3k pairs a candidate, so the
    band's embedding cost stays linear in the candidates."""
    lo, hi = config.floor, config.threshold
    (pool_sims, pool_rows), (batch_sims, batch_rows) = pool_hits, batch_hits
    out = []
    for pos, i in enumerate(chunk):
        for s, r in zip(pool_sims[start + pos], pool_rows[start + pos]):
            if r >= 0 and lo <= s < hi:
                out.append((texts[i], pool.texts[r]))
        for s, r in zip(batch_sims[pos], batch_rows[pos]):
            if r >= 0 and lo <= s < hi:
                out.append((texts[i], texts[kept_rows[r]]))
        if pos:
            top = np.argsort(-inner[pos, :pos], kind="stable")[:k]
            out += [(texts[i], texts[chunk[j]]) for j in top if lo <= inner[pos, j] < hi]
    return out

"""Dedup settings (model, threshold, what is embedded, which FAISS index) and the text a
record is embedded by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import SelfloopError
from judges.embed import DEFAULT_EMBEDDING_MODEL, EmbedDtype

Record = Mapping[str, Any]


class HNSWParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    m: int = Field(32, ge=4, le=256, description="Graph links per vector (recall vs memory).")
    ef_construction: int = Field(
        200, ge=8, description="Candidate list size while building (recall vs build time)."
    )
    ef_search: int = Field(
        128, ge=1, description="Candidate list size while searching (recall vs search time)."
    )


class IVFParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nlist: int | None = Field(
        None,
        ge=1,
        description="Number of clusters; null = 4*sqrt(pool size), capped so each cluster trains "
        "on 39+ vectors, and retrained when the pool has grown enough to double it.",
    )
    nprobe: int = Field(16, ge=1, description="Clusters visited per search (recall vs time).")


class DedupConfig(BaseModel):
    """Embedding dedup: model, threshold, what is embedded, and which FAISS index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        description="Embedding model: 'all-minilm-l6-v2' (bundled) or a local "
        "sentence-transformers directory. Hub ids are refused (runs are offline).",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N for the embedding model.")
    batch_size: int = Field(64, ge=1, description="Texts per embedding forward pass.")
    dtype: EmbedDtype = Field(
        "auto",
        description="Embedding precision: auto = bfloat16 autocast where the hardware has "
        "bfloat16 natively (CUDA; CPUs with AVX512-BF16 or AMX), else float32. The vectors "
        "differ from float32 ones by ~1e-5 in cosine (judges/embed.py), so pools mix freely.",
    )
    threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Cosine similarity at or above which a candidate duplicates a kept example "
        "(unless the contrast stage tells them apart). 0.85 measured best on "
        "tests/judges/data/dedup_pairs.jsonl with all-MiniLM-L6-v2 (precision 0.93, recall "
        "0.92; at 0.90: 0.96 and 0.81); all-mpnet-base-v2 scores those pairs alike.",
    )
    paraphrase_threshold: float | None = Field(
        0.5,
        gt=0,
        lt=1,
        description="The paraphrase band's floor: a pair below `threshold` but at or above this "
        "is a duplicate when no contrast check tells them apart (with `contrast` on) and the "
        "words they do not share at their opening and end embed at this similarity or more "
        "too - a reworded task, not a template with its content swapped ('a string is a "
        "palindrome' / 'a number is prime'). Reworded tasks score 0.5-0.85 "
        "(bench/dedup_quality.py). null = off: the threshold alone.",
    )
    paraphrase_languages: tuple[str, ...] = Field(
        ("en",),
        min_length=1,
        description="Languages (judges.lang codes) the paraphrase band compares: the ones the "
        "embedding model reads well. all-mpnet-base-v2 is English; it places unrelated texts "
        "of other scripts close together. A pair with a text confidently in another language "
        "is decided by the threshold alone.",
    )
    contrast: bool = Field(
        True,
        description="Second stage: a pair at or above the threshold is still two tasks when "
        "judges.contrast tells them apart (numbers, a negation, opposites, word order, one "
        "word or name swapped); the next-nearest neighbours are checked too.",
    )
    text_fields: tuple[str, ...] = Field(
        ("instruction", "input"),
        min_length=1,
        description="Record fields embedded, joined by a newline (missing or empty ones skipped).",
    )
    index: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto",
        description="flat = exact inner-product search; hnsw / ivf = approximate; auto = flat up "
        "to `approximate_above` vectors, hnsw beyond.",
    )
    approximate_above: int = Field(
        50_000,
        ge=1,
        description="Pool (or batch) size above which `auto` uses HNSW. Exact search costs "
        "size x dim per query: at 50,000 x 384 it is a few ms on 2 CPU cores, about what "
        "embedding one candidate costs, so below that exact search is free and beyond it the "
        "pool, not the model, would dominate.",
    )
    hnsw: HNSWParams = Field(default_factory=HNSWParams, description="HNSW index parameters.")
    ivf: IVFParams = Field(default_factory=IVFParams, description="IVF index parameters.")
    histogram_bins: int = Field(
        10, ge=1, description="Bins over [0, 1] of the nearest-neighbour similarity histogram."
    )
    samples: int = Field(5, ge=0, description="Dropped examples shown in the summary.")

    @model_validator(mode="after")
    def _band_below_threshold(self) -> DedupConfig:
        if self.paraphrase_threshold is not None and self.paraphrase_threshold >= self.threshold:
            raise ValueError(
                f"paraphrase_threshold ({self.paraphrase_threshold}) must be below threshold "
                f"({self.threshold}), or null to turn the paraphrase band off"
            )
        return self

    @property
    def floor(self) -> float:
        """The lowest similarity that can make a duplicate: the band's floor, or the threshold."""
        return self.threshold if self.paraphrase_threshold is None else self.paraphrase_threshold


def record_id(rec: Record, i: int) -> str:
    if not isinstance(rec, Mapping):
        raise SelfloopError(f"dedup input {i}: expected a record mapping, got {rec!r:.60}")
    rid = rec.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
        raise SelfloopError(f"dedup input {i}: record needs an 'id' (string), got {rid!r:.60}")
    return str(rid)


def record_text(rec: Record, fields: Sequence[str], i: int = 0) -> str:
    """The text of `rec` that dedup embeds: the non-empty `fields`, stripped, newline-joined."""
    parts = []
    for name in fields:
        v = rec.get(name)
        if v is None:
            continue
        if not isinstance(v, str):
            raise SelfloopError(f"record {rec.get('id', i)!r}: {name!r} must be a string")
        if v.strip():
            parts.append(v.strip())
    if not parts:
        raise SelfloopError(f"record {rec.get('id', i)!r}: nothing to embed in {list(fields)}")
    return "\n".join(parts)

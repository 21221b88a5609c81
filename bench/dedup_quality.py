"""Dedup quality on the labelled pairs: the old default (all-MiniLM-L6-v2, cosine 0.85 + contrast)
against the default (all-mpnet-base-v2, + the paraphrase band), and the band's floor swept.

    python bench/dedup_quality.py [--floors 0.45 0.5 0.55 0.6]

Five labelled sets of instruction pairs (tests/judges/data/):
- `dedup_pairs.jsonl`: the 253 pairs the 0.85 threshold was chosen on;
- `dedup_hard_pairs.jsonl` (467), written later to be hard: paraphrases with little word overlap
  (duplicates), near-misses that differ in one number, a negation, an order or one entity, and
  translations (distinct: a task in another language trains answering in it);
- `dedup_check_pairs.jsonl` (240), written afterwards by someone who had read neither the
  contrast rules nor the other sets: high-overlap duplicates and near-misses. The rules changed
  from what it showed (bench/README.md gives both scores);
- `dedup_heldout_pairs.jsonl` (320), written after the paraphrase band and the language check
  were chosen (on the first three), by someone who had read neither them nor the other sets:
  low- and mid-overlap paraphrases, translations, templates with their content swapped, same
  topic with another task, one-detail near-misses. The clean check of the band;
- `dedup_heldout2_pairs.jsonl` (320), the same kinds, written the same way after the operator
  and for / against checks were added (once the first held-out set had been read): their clean
  check.

Each configuration decides every pair with `judges.dedup.pair_is_duplicate` (the rule `dedup`
applies); per set: precision and recall of "duplicate", and per kind the share called
duplicate. Each model embeds every text once, in float32, in this run; the embedding times of
the two models on the same texts are printed as a ratio (the band's extra embeddings, of the
words that differ, are in the second figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from judges.dedup import DedupConfig, pair_is_duplicate  # noqa: E402
from judges.embed import Embedder  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "judges" / "data"
SETS = {
    "tuned-on (253)": DATA / "dedup_pairs.jsonl",
    "hard": DATA / "dedup_hard_pairs.jsonl",
    "check": DATA / "dedup_check_pairs.jsonl",
    "held-out": DATA / "dedup_heldout_pairs.jsonl",
    "held-out 2": DATA / "dedup_heldout2_pairs.jsonl",
}
OLD_MODEL = "all-minilm-l6-v2"


def load(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def scores(pred: list[bool], actual: list[bool]) -> tuple[float, float]:
    tp = sum(p and a for p, a in zip(pred, actual))
    return tp / max(1, sum(pred)), tp / max(1, sum(actual))


class Memo:
    """An embedder whose vectors are kept: the band's differing words repeat across configs."""

    def __init__(self, spec: str) -> None:
        self.inner = Embedder(spec, device="cpu", dtype="float32")
        self.vectors: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if todo:
            started = time.perf_counter()
            self.vectors.update(zip(todo, self.inner.encode(todo)))
            self.seconds += time.perf_counter() - started
        return np.stack([self.vectors[t] for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--floors", type=float, nargs="+", default=[0.45, 0.5, 0.55, 0.6])
    args = ap.parse_args()
    default = DedupConfig()
    sets = {name: load(path) for name, path in SETS.items() if path.is_file()}
    texts = list(
        dict.fromkeys(t for pairs in sets.values() for p in pairs for t in (p["a"], p["b"]))
    )
    models = {m: Memo(m) for m in dict.fromkeys([OLD_MODEL, default.model])}
    for memo in models.values():
        memo.encode(texts)
    whole = {m: memo.seconds for m, memo in models.items()}
    old = default.model_copy(update={"model": OLD_MODEL, "paraphrase_threshold": None})
    configs = [
        ("old default: MiniLM, 0.85 + contrast", old),
        ("MiniLM + band", old.model_copy(update={"paraphrase_threshold": default.floor})),
        ("mpnet, 0.85 + contrast", default.model_copy(update={"paraphrase_threshold": None})),
    ]
    configs += [
        (f"mpnet + band {f:.2f}" + (" <- default" if f == default.floor else ""),
         DedupConfig(**{**default.model_dump(), "paraphrase_threshold": f}))  # validated
        for f in args.floors
    ]  # fmt: skip
    for name, pairs in sets.items():
        actual = [p["label"] == "duplicate" for p in pairs]
        kinds = sorted({p["kind"] for p in pairs})
        n_dup = sum(actual)
        print(f"\n{name}: {len(pairs)} pairs ({n_dup} duplicate, {len(pairs) - n_dup} distinct)")
        print(f"  {'configuration':38} {'precision':>9} {'recall':>7}  called duplicate, per kind")
        for label, cfg in configs:
            memo = models[cfg.model]
            pred = [
                pair_is_duplicate(
                    float(memo.vectors[p["a"]] @ memo.vectors[p["b"]]), p["a"], p["b"], cfg, memo
                )
                for p in pairs
            ]
            prec, rec = scores(pred, actual)
            per = "  ".join(
                f"{k} {np.mean([x for x, p in zip(pred, pairs) if p['kind'] == k]):.2f}"
                for k in kinds
            )
            print(f"  {label:38} {prec:9.3f} {rec:7.3f}  {per}")
        for m, memo in models.items():
            sims = np.array([float(memo.vectors[p["a"]] @ memo.vectors[p["b"]]) for p in pairs])
            med = "  ".join(
                f"{k} {np.median(sims[[p['kind'] == k for p in pairs]]):.2f}" for k in kinds
            )
            print(f"  median cosine per kind, {m}: {med}")
    a, b = whole[OLD_MODEL], whole[default.model]
    print(
        f"\nembedding the {len(texts)} texts once, float32, this machine: {OLD_MODEL} {a:.1f} s, "
        f"{default.model} {b:.1f} s ({b / a:.2f}x); with the band's differing words: "
        f"{models[default.model].seconds:.1f} s"
    )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/dedup_quality.py")

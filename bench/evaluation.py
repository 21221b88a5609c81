"""One evaluation of the base model on the loop's suites: the old generation against the new.

Baseline: what each round's evaluation did before this bench: a `generate` call per suite (a
ragged batch that fills and drains five times) over transformers' `DynamicCache` (every decode
step copies the cache) with 64 rows (`backend.batch_size`'s old default). Candidate: the runner
now, every suite's answers in one call, the KV cache in slab buffers (`refill.SlabLayer`), at
`--rows` rows (the new default 128). Both score everything the loop scores (the reference
answers' NLL included), with the loop's evaluation settings: greedy, max 400 tokens, the IF,
domain and multilingual suites whole and 24 prompts of the others (`--scale` takes that share of
each). Same loaded model, baseline first, no cache between them.

Prints each path's time, tokens generated and tokens/s, the ratio, how many answers are
identical and the IF suite's prompt-level loose pass rate of each (a different batch makes
other float sums: in float32 a few greedy answers part, which the paired gate sees on both sides).

    python bench/evaluation.py [--rows 128] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from judges.evals import load_suites
from judges.evals.runner import evaluate
from loop.config import SelfloopConfig


def tokens(cache_dir: Path) -> int:
    return sum(
        json.loads(line).get("completion_tokens", 0)
        for f in cache_dir.glob("outputs-*.jsonl")
        for line in f.open(encoding="utf-8")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=128, help="the candidate's batch_size")
    ap.add_argument("--scale", type=float, default=1.0, help="share of each suite's prompts")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = ap.parse_args()
    ev = SelfloopConfig().eval
    names = ev.suites
    limits = {
        n: max(1, round((lim or len(recs)) * args.scale))
        for n, lim in ev.limits().items()
        for recs in [load_suites([n])[n][1]]
    }
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    common = {"sampling": ev.sampling, "held_out_types": SelfloopConfig().augment.held_out_types}
    print(
        f"suites {limits}, max {ev.sampling.max_tokens} tokens, {gen.dtype}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    results, rates = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("baseline", "candidate"):
            cache = Path(tmp) / name
            t0 = time.perf_counter()
            if name == "baseline":
                gen.batch_size, gen.slab_grow = 64, 0
                suites = {}
                for s in names:
                    one = evaluate(gen, [s], cache_dir=cache, limit_per_suite={s: limits[s]},
                                   **common)  # fmt: skip
                    suites.update(one["suites"])
            else:
                from agent.backends.refill import SLAB_GROW

                gen.batch_size, gen.slab_grow = args.rows, SLAB_GROW
                suites = evaluate(gen, names, cache_dir=cache, limit_per_suite=limits,
                                  **common)["suites"]  # fmt: skip
            seconds = time.perf_counter() - t0
            n = tokens(cache)
            results[name], rates[name] = suites, n / seconds
            loose = suites["if"]["metrics"]["prompt_loose"]["overall"]["value"]
            print(
                f"{name:9s}: {seconds / 60:5.1f} min, {n} tokens, {n / seconds:6.1f} tok/s "
                f"(generation and scoring), IF prompt_loose {loose:.3f}",
                flush=True,
            )
    same = total = 0
    for s in names:
        for a, b in zip(results["baseline"][s]["items"], results["candidate"][s]["items"]):
            total += 1
            same += a.get("response") == b.get("response")
    print(f"identical answers: {same}/{total}")
    print(
        f"ratio candidate/baseline tokens per second: {rates['candidate'] / rates['baseline']:.2f}"
    )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/evaluation.py")

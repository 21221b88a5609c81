"""How the transformers backend shares a batch (`backend.batching`), on the respond workload.

Baseline: static batches of 16 rows (`batching: static, batch_size: 16`, the loop's setting
before ragged decoding): prompts sorted by length, each batch decoded by `generate` until its
longest row stops. Candidates: `ragged` (`agent/backends/refill.py`: an answer that ends leaves
the batch, a queued prompt takes its place, sampling without the vocabulary-wide sort) at each
of `--rows`; with `--continuous`, transformers' continuous batching too. Same loaded model, the
same chat-templated prompts (the first `--tasks` seed tasks), the loop's respond sampling (`--n`
samples per prompt at temperature 0.9, top_p 0.95, max 320 tokens, seed 0). Each path runs
`--repeats` times, alternating, the best kept (these machines drift); prints tokens/s of each
and its ratio to the baseline.

    python bench/batching.py [--tasks 12] [--n 8] [--rows 16,64] [--dtype auto] [--continuous]
"""

from __future__ import annotations

import argparse
import time

import torch

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from agent.seeds import load_seed_tasks


def run(
    gen: TransformersGenerator, prompts: list, params: SamplingParams
) -> tuple[int, int, float]:
    """(tokens generated, answers cut at max_tokens, seconds)."""
    t0 = time.perf_counter()
    results = gen.generate(prompts, params)
    seconds = time.perf_counter() - t0
    comps = [c for r in results for c in r.completions]
    return (
        sum(c.completion_tokens for c in comps),
        sum(c.finish_reason == "length" for c in comps),
        seconds,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (the loop's respond.n)")
    ap.add_argument("--rows", default="16,64", help="ragged batch sizes to measure")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--continuous", action="store_true", help="also transformers' continuous")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    prompts = [user(t.instruction) for t in load_seed_tasks()[: args.tasks]]
    params = SamplingParams(max_tokens=320, temperature=0.9, top_p=0.95, n=args.n, seed=0)
    print(
        f"{len(prompts)} prompts x {args.n} samples, {gen.dtype}, {torch.get_num_threads()} threads"
    )
    gen.generate(prompts[:2], SamplingParams(max_tokens=8, temperature=0.0))  # warm-up
    paths = [("static", 16)] + [("ragged", int(r)) for r in args.rows.split(",")]
    paths += [("continuous", 16)] if args.continuous else []
    best: dict[str, float] = {}
    for rep in range(args.repeats):
        for batching, rows in paths:
            gen.batching, gen.batch_size = batching, rows
            name = f"{batching} x{rows}"
            tokens, cut, seconds = run(gen, prompts, params)
            rate = tokens / seconds
            best[name] = max(best.get(name, 0.0), rate)
            print(
                f"{name:14s} run {rep + 1}: {tokens:6d} tokens {seconds:6.1f} s {rate:6.1f} tok/s "
                f"({cut} of {len(prompts) * args.n} answers reached max_tokens)",
                flush=True,
            )
    base = best["static x16"]
    for name, rate in best.items():
        print(f"best {name:14s} {rate:6.1f} tok/s  ratio to static x16: {rate / base:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/batching.py")

"""Ragged decoding with the output projection through MKL (torch's default) and through oneDNN.

Baseline: `backend.onednn_head: false`. Candidate: `onednn_head: true` (the default;
`agent/backends/head.py`: CPU float32 only, elsewhere the two paths are the same). Same loaded
model (`TransformersGenerator`, the loop's other backend defaults: ragged, 64 rows, slabs,
lookahead), the evaluation's sampling and prompts
(`loop.config.EvalConfig`'s defaults: greedy, max 400 tokens, the subsets the evaluation takes),
a generate call per suite as the evaluation makes them. `--suites` picks suites and `--prompts`
caps each (evenly spread). Each path runs `--repeats` times in turn, the baseline first, the best
kept (these machines drift). Prints each path's time, tokens/s and ratio to the baseline, and
how many answers the candidate left identical to the baseline's (oneDNN sums in another
floating-point order, so a near-tie could tip).

    python bench/head.py [--suites if,multilingual] [--prompts 128] [--repeats 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from agent.backends import user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from judges.evals import SUITES, load_suite
from judges.evals.runner import STRATA, subset
from loop.config import EvalConfig

PATHS = {"MKL head": False, "oneDNN head": True}  # name: onednn_head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--suites", default=None, help="comma-separated (default: the evaluation's)")
    ap.add_argument("--prompts", type=int, default=None, help="at most this many per suite")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    config = EvalConfig()
    limits = config.limits()
    names = args.suites.split(",") if args.suites else list(limits)
    suites = {}
    for name in names:
        limit = min(filter(None, (limits.get(name), args.prompts)), default=None)
        suites[name] = subset(load_suite(name), limit, STRATA.get(SUITES[name]))
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    from agent.backends import head

    params = config.sampling
    print(
        f"{sum(map(len, suites.values()))} prompts ("
        + ", ".join(f"{k} {len(v)}" for k, v in suites.items())
        + f"), greedy, max {params.max_tokens} tokens, {gen.dtype}, "
        f"{torch.get_num_threads()} threads, {gen.batch_size} rows; the oneDNN head "
        f"{'applies' if head.applies(gen.model) else 'does not apply here'}",
        flush=True,
    )
    gen.generate([user("Hi")], params.model_copy(update={"max_tokens": 4}))  # warm-up
    best: dict[str, float] = {}
    answers: dict[str, dict[str, list]] = {}
    for rep in range(args.repeats):
        for name, on in PATHS.items():
            gen.onednn_head = on
            t0 = time.perf_counter()
            outs = {
                suite: [
                    r.completions[0]
                    for r in gen.generate([user(x["prompt"]) for x in recs], params)
                ]
                for suite, recs in suites.items()
            }
            seconds = time.perf_counter() - t0
            tokens = sum(c.completion_tokens for cs in outs.values() for c in cs)
            best[name] = max(best.get(name, 0.0), tokens / seconds)
            answers[name] = outs
            print(
                f"{name:12s} run {rep + 1}: {tokens:6d} tokens {seconds:7.1f} s "
                f"{tokens / seconds:6.1f} tok/s",
                flush=True,
            )
    base, new = best["MKL head"], best["oneDNN head"]
    same = sum(
        x.text == y.text
        for suite in suites
        for x, y in zip(answers["MKL head"][suite], answers["oneDNN head"][suite])
    )
    print(
        f"best: MKL head (baseline) {base:.1f} tok/s, oneDNN head {new:.1f} tok/s, ratio "
        f"{new / base:.2f}; identical answers {same}/{sum(map(len, suites.values()))}"
    )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/head.py")

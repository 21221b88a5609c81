"""The ragged decode loop's KV cache: transformers' `DynamicCache` against slab buffers.

Baseline: `refill.decode_ragged(..., slab_grow=0)`, the batch's cache a `DynamicCache`, which
concatenates every layer's keys and values with the new column at every step (a copy of the
whole cache per step). Candidate: the default, `SlabLayer` buffers with `SLAB_GROW` spare
columns written in place, attended through a mask as wide as the buffer. Workloads:

- `eval` (default): the evaluation's, greedy answers to `--prompts` of the project's IF suite
  (evenly spaced through it), max `--max-tokens` (400);
- `respond`: the first `--prompts` seed tasks x 8 samples at temperature 0.9, top_p 0.95, max 320
  tokens, seed 0 (the loop's respond sampling).

Same loaded model and prompts (longest first, as the backend admits them), at each of `--rows`;
each path runs `--repeats` times, alternating, the best kept (these machines drift). Prints
tokens/s of each path and the ratio slab/dynamic per row count; for `eval`, also how many greedy
answers the two caches left identical and the strict IF pass rates' paired difference (the
masked spare columns change the float order of attention's sums, as any change of batch shape
does).

    python bench/kvcache.py [--workload eval] [--prompts 96] [--rows 64,128] [--repeats 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from dtype import strict_difference  # bench/ is on sys.path: run as a script

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.backends.refill import SLAB_GROW, decode_ragged, uses_slab
from agent.models import ModelSpec
from agent.seeds import load_seed_tasks
from judges.evals import load_suite
from judges.evals.runner import subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--workload", default="eval", choices=["eval", "respond"])
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=400, help="eval workload's answer limit")
    ap.add_argument("--rows", default="64,128", help="batch sizes (rows decoded at once)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    row_counts = [int(r) for r in args.rows.split(",")]
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    if not uses_slab(gen.model):
        raise SystemExit("bench/kvcache.py: this model does not decode with slabs (uses_slab)")
    if args.workload == "eval":
        suite = subset(load_suite("if"), args.prompts)
        messages = [user(r["prompt"]) for r in suite]
        params, n = SamplingParams(max_tokens=args.max_tokens, temperature=0.0), 1
    else:
        suite = []
        messages = [user(t.instruction) for t in load_seed_tasks()[: args.prompts]]
        params, n = SamplingParams(max_tokens=320, temperature=0.9, top_p=0.95, seed=0), 8
    enc = [gen.encode_prompt(m) for m in messages]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    print(
        f"{args.workload}: {len(enc)} prompts x {n}, max {params.max_tokens} tokens, "
        f"{gen.dtype}, {torch.get_num_threads()} threads, slab grows by {SLAB_GROW} columns",
        flush=True,
    )
    gen.generate(messages[:2], SamplingParams(max_tokens=4))  # warm-up
    best: dict[tuple[str, int], float] = {}
    answers: dict[tuple[str, int], list] = {}
    for rep in range(args.repeats):
        for rows in row_counts:
            for name, grow in (("dynamic", 0), ("slab", SLAB_GROW)):
                torch.manual_seed(0)
                t0 = time.perf_counter()
                outs = decode_ragged(
                    gen.model,
                    [enc[i] for i in order],
                    n,
                    params,
                    max_rows=rows,
                    eos_ids=gen.eos_ids,
                    pad_id=gen.tokenizer.pad_token_id,
                    slab_grow=grow,
                )
                seconds = time.perf_counter() - t0
                tokens = sum(len(t) for per in outs for t in per)
                rate = tokens / seconds
                best[name, rows] = max(best.get((name, rows), 0.0), rate)
                back = [None] * len(enc)
                for i, per in zip(order, outs):
                    back[i] = gen._completion(per[0], params)[0]
                answers[name, rows] = back
                print(
                    f"{name:8s} x{rows:<4d} run {rep + 1}: {tokens:6d} tokens {seconds:6.1f} s "
                    f"{rate:6.1f} tok/s",
                    flush=True,
                )
    for rows in row_counts:
        dyn, slab = best["dynamic", rows], best["slab", rows]
        print(f"x{rows}: dynamic {dyn:6.1f} tok/s, slab {slab:6.1f} tok/s, ratio {slab / dyn:.2f}")
        if suite:
            a, b = answers["dynamic", rows], answers["slab", rows]
            same = sum(x.text == y.text for x, y in zip(a, b))
            print(f"  identical greedy answers: {same}/{len(a)}")
            print("  " + strict_difference(suite, ("dynamic", a), ("slab", b)))
    first = row_counts[0]
    for (name, rows), rate in best.items():
        print(
            f"best {name} x{rows}: {rate:6.1f} tok/s, ratio to dynamic x{first}: "
            f"{rate / best['dynamic', first]:.2f}"
        )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/kvcache.py")

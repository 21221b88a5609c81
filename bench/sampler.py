"""Drawing a sampled token: exponential races against the inverse CDF, on the respond workload.

The ragged decode loop draws each row's token from the distribution `refill.nucleus` leaves.
Untruncated sampling (the recipe's respond stage: temperature 1.0, top_p 1.0) leaves the
whole vocabulary, 49,152 tokens for the bundled model. Baseline: the exponential races the
loop drew with before (argmax of w / E over every candidate, E ~ Exp(1): one exponential
variate per token per row per step, `race` below). Candidate: `refill._draw`, one uniform per
row against the running sum of its weights. Both draw exactly the given distribution; only the
random stream differs, so answers differ and the token counts with them: the bench prints each
side's mean answer length and cut-off share next to its tokens/s (the same distribution should
show them close). Same loaded model, the first `--tasks` seed tasks x `--n` samples, max 320
tokens, `--rows` rows decoded at once; `--repeats` alternating runs, the best of each kept.

    python bench/sampler.py [--tasks 16] [--n 8] [--rows 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from agent.backends import SamplingParams, refill, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from agent.seeds import load_seed_tasks


def race(weights: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The baseline: the draw `refill._draw` replaced, exponential races."""
    pick = (weights / torch.empty_like(weights).exponential_()).argmax(dim=-1, keepdim=True)
    return (pick if index is None else index.gather(-1, pick)).squeeze(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    enc = [gen.encode_prompt(user(t.instruction)) for t in load_seed_tasks()[: args.tasks]]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, top_p=1.0)
    print(
        f"{len(enc)} prompts x {args.n}, max {args.max_tokens} tokens, {args.rows} rows, "
        f"{gen.dtype}, {torch.get_num_threads()} threads",
        flush=True,
    )
    gen.generate([user("Hello")], SamplingParams(max_tokens=4))  # warm-up
    draws = {"race": race, "cdf": refill._draw}
    best: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, draw in draws.items():
            refill._draw = draw  # decode_ragged looks the function up at each step
            try:
                torch.manual_seed(rep)
                t0 = time.perf_counter()
                outs = refill.decode_ragged(
                    gen.model,
                    enc,
                    args.n,
                    params,
                    max_rows=args.rows,
                    eos_ids=gen.eos_ids,
                    pad_id=gen.tokenizer.pad_token_id,
                )
                seconds = time.perf_counter() - t0
            finally:
                refill._draw = draws["cdf"]
            lengths = [len(t) for per in outs for t in per]
            cut = sum(n >= args.max_tokens for n in lengths) / len(lengths)
            rate = sum(lengths) / seconds
            best[name] = max(best.get(name, 0.0), rate)
            print(
                f"{name:5s} run {rep + 1}: {sum(lengths):6d} tokens {seconds:6.1f} s "
                f"{rate:6.1f} tok/s, mean answer {sum(lengths) / len(lengths):5.1f} tokens, "
                f"cut off {cut:.1%}",
                flush=True,
            )
    print(
        f"best: race {best['race']:.1f} tok/s, cdf {best['cdf']:.1f} tok/s, "
        f"ratio cdf/race {best['cdf'] / best['race']:.2f}"
    )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/sampler.py")

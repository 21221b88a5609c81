"""bfloat16 against float32 generation on the bundled model: speed, token agreement, IF pass rate.

Baseline: the transformers backend with `model.dtype: float32`. Candidate: the same backend with
`model.dtype: bfloat16` (what `auto` picks on a CPU with AVX512-BF16 or AMX, or a CUDA GPU of
compute capability 8+). Same prompts (`--prompts` of the project's IF suite, evenly spaced through
it), greedy decoding, same batch size, one process, the two models loaded one
after the other (never two at once). Prints for each: completion tokens per second; then the share
of prompts whose greedy answers are identical, the mean share of tokens agreeing before the first
difference, and the paired difference of the strict prompt-level IF pass rate with its 95%
bootstrap interval; last, the ratio bfloat16/float32 of tokens per second.

    python bench/dtype.py [--prompts 96] [--max-tokens 256] [--batch-size 16]

On a CPU without native bfloat16 the candidate is emulated and slower: the bench says so and
still measures it.
"""

from __future__ import annotations

import argparse
import time

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec, native_bf16
from judges.evals import load_suite
from judges.evals.metrics import bootstrap_interval, score_verifiable
from judges.evals.runner import subset


def run(dtype: str, prompts: list[str], args: argparse.Namespace) -> tuple[list, float]:
    gen = TransformersGenerator(
        ModelSpec(name=args.model, dtype=dtype, device="cpu"), batch_size=args.batch_size
    )
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    gen.generate([user("Say hi.")], SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
    t0 = time.perf_counter()
    results = gen.generate([user(p) for p in prompts], params)
    seconds = time.perf_counter() - t0
    gen.close()
    return [r.completions[0] for r in results], seconds


def strict_difference(suite: list, base: tuple[str, list], cand: tuple[str, list]) -> str:
    """The strict prompt-level IF pass rate of two paths' answers to `suite`, and their paired
    difference with its 95% bootstrap interval, as one line."""
    (a, a_out), (b, b_out) = base, cand
    passed = {
        name: [
            all(score_verifiable(c.text, r["constraints"])["strict"]) for c, r in zip(out, suite)
        ]
        for name, out in ((a, a_out), (b, b_out))
    }
    diffs = [float(y) - float(x) for x, y in zip(passed[a], passed[b])]
    lo, hi = bootstrap_interval(diffs, resamples=2000, seed=0) or (0.0, 0.0)
    rate = {name: sum(v) / len(v) for name, v in passed.items()}
    return (
        f"IF prompt_strict: {a} {rate[a]:.3f}, {b} {rate[b]:.3f}, "
        f"difference {sum(diffs) / len(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}]"
    )


def agreement(a: list[int], b: list[int]) -> float:
    """Share of the longer answer's tokens that agree before the first difference."""
    same = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if not native_bf16("cpu"):
        print("note: this CPU has no native bfloat16; the candidate is emulated")
    suite = subset(load_suite("if"), args.prompts)
    prompts = [r["prompt"] for r in suite]
    out, secs = {}, {}
    for dtype in ("float32", "bfloat16"):
        out[dtype], secs[dtype] = run(dtype, prompts, args)
        toks = sum(c.completion_tokens for c in out[dtype])
        rate = toks / secs[dtype]
        print(f"{dtype:9s} {toks:6d} tokens in {secs[dtype]:6.1f} s = {rate:6.1f} tok/s")
    f32, b16 = out["float32"], out["bfloat16"]
    same = sum(a.text == b.text for a, b in zip(f32, b16))
    print(f"identical answers: {same}/{len(prompts)}")
    # Token ids are not kept by Completion; agreement is measured on whitespace words instead.
    agree = [agreement(a.text.split(), b.text.split()) for a, b in zip(f32, b16)]
    mean = sum(agree) / len(agree)
    print(f"mean share of words agreeing before the first difference: {mean:.3f}")
    print(strict_difference(suite, ("float32", f32), ("bfloat16", b16)))
    ratio = (sum(c.completion_tokens for c in b16) / secs["bfloat16"]) / (
        sum(c.completion_tokens for c in f32) / secs["float32"]
    )
    print(f"ratio bfloat16/float32 tokens per second: {ratio:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/dtype.py")

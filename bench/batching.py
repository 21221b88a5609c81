"""Static batches against transformers' continuous batching, on the loop's respond workload.

Baseline: the transformers backend as the loop runs it (prompts sorted by length, static batches
of `--batch-size`, each decoded until its longest row stops). Candidate: transformers' own
continuous batching (`model.generate_batch`: paged KV cache, finished requests leave the batch
and queued ones take their place) on the same loaded model, the same chat-templated prompts
(the first `--tasks` seed tasks) and the same sampling (the loop's respond defaults: temperature
0.7, top_p 0.95, max 320 tokens). Prints tokens/s for both and, last, the ratio
candidate/baseline.

    python bench/batching.py [--tasks 48] [--batch-size 16] [--dtype float32]

Why the backend does not use continuous batching (yet): measured here at 1.12x and 1.40x in two
runs (see the README's Performance section), but it has no stop strings, its scheduler runs in a
thread of its own and its sampling order is its own (seeded reproducibility needs new work).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from agent.seeds import load_seed_tasks

RESPOND = SamplingParams(max_tokens=320, temperature=0.7, top_p=0.95, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = ap.parse_args()
    gen = TransformersGenerator(
        ModelSpec(name=args.model, dtype=args.dtype), batch_size=args.batch_size
    )
    prompts = [user(t.instruction) for t in load_seed_tasks()[: args.tasks]]
    print(f"{len(prompts)} prompts, {gen.dtype}, {torch.get_num_threads()} threads")
    gen.generate(prompts[:2], SamplingParams(max_tokens=8, temperature=0.0))  # warm-up

    t0 = time.perf_counter()
    results = gen.generate(prompts, RESPOND)
    static_s = time.perf_counter() - t0
    static_toks = sum(c.completion_tokens for r in results for c in r.completions)
    cut = sum(c.finish_reason == "length" for r in results for c in r.completions)
    static_rate = static_toks / static_s
    print(f"static batches    {static_toks:6d} tokens {static_s:6.1f} s {static_rate:6.1f} tok/s")
    print(f"  ({cut} of {len(prompts)} answers reached max_tokens)")

    config = GenerationConfig(
        max_new_tokens=RESPOND.max_tokens,
        do_sample=True,
        temperature=RESPOND.temperature,
        top_p=RESPOND.top_p,
        eos_token_id=gen.eos_ids,
        pad_token_id=gen.tokenizer.pad_token_id,
    )
    ids = [gen.encode_prompt(m) for m in prompts]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = gen.model.generate_batch(ids, generation_config=config, progress_bar=False)
    cb_s = time.perf_counter() - t0
    cb_toks = sum(len(o.generated_tokens) for o in out.values())
    cb_rate = cb_toks / cb_s
    print(f"continuous        {cb_toks:6d} tokens {cb_s:6.1f} s {cb_rate:6.1f} tok/s")
    print(f"ratio continuous/static tokens per second: {cb_rate / static_rate:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/batching.py")

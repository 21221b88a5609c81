"""Data construction throughput: instructions proposed and responses written per minute.

Baseline: the real `agent.construct.propose` and `respond` through the transformers backend with
batch_size 1, i.e. one call (one prompt, with its n samples) decoded at a time. Candidate: the same
calls through the same loaded model with batch_size 16 (length-bucketed, left-padded batches).
Same prompts (the same seed, so the same shown examples), same sampling (ProposeConfig's defaults
for proposals; the loop's respond defaults for responses), same process. Sampling draws differ
between the two runs, so the number of parsed instructions differs too (31 against 44 in the run
below); responses are a fixed count (tasks x n). Prints both rates for each stage, the ratios of
proposal tokens per second and of responses per minute, and, last, the ratio candidate/baseline
of instructions per minute.

    python bench/construct.py [--calls 8] [--tasks 8] [--n 2] [--batch-size 16]

Measured with the defaults on 2 otherwise idle CPU cores (4.5 minutes in all): 26.6 against 47.8
instructions/min (ratio 1.80), 11.0 against 18.5 responses/min (1.69), proposal tokens/s 21.0
against 32.4 (1.54). The gain is far below bench/generation.py's 6.8x, probably because the
prompts are longer (six examples, ~350 tokens) and the replies vary in length: a static batch
decodes until its longest row ends (replies averaged 183-224 tokens against the 400 cap).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import torch

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.construct import ProposeConfig, propose, respond
from agent.seeds import load_seed_tasks

# The loop's respond defaults (loop/config.py RespondConfig), repeated so the bench stands alone.
RESPOND_SAMPLING = SamplingParams(max_tokens=320, temperature=0.7, top_p=0.95, seed=0)


def run_propose(
    gen: TransformersGenerator, seeds: list[dict[str, Any]], calls: int
) -> tuple[int, int, float]:
    """(instructions parsed, completion tokens, seconds) for one round of `calls` calls."""
    t0 = time.perf_counter()
    proposals, stats = propose(gen, seeds, [], ProposeConfig(calls=calls), round_index=1)
    seconds = time.perf_counter() - t0
    return len(proposals), sum(r["completion_tokens"] for r in stats["replies"]), seconds


def run_respond(
    gen: TransformersGenerator, tasks: list[dict[str, Any]], params: SamplingParams
) -> tuple[int, int, float]:
    """(responses, completion tokens, seconds) for `params.n` responses to each task."""
    t0 = time.perf_counter()
    records, _ = respond(gen, tasks, params)
    seconds = time.perf_counter() - t0
    return len(records), sum(r["completion_tokens"] for r in records), seconds


def line(label: str, what: str, count: int, tokens: int, seconds: float) -> float:
    per_min = count * 60 / seconds
    print(
        f"{label:<9} {count} {what} ({tokens} tokens) in {seconds:.1f}s = "
        f"{per_min:.1f} {what}/min, {tokens / seconds:.1f} tok/s",
        flush=True,
    )
    return per_min


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    # The loop's defaults: 8 proposal calls a round; kept tasks x respond.n rows to answer.
    ap.add_argument("--calls", type=int, default=8, help="proposal calls (8 tasks asked each)")
    ap.add_argument("--tasks", type=int, default=8, help="seed tasks to answer")
    ap.add_argument("--n", type=int, default=2, help="responses per task (the loop's respond.n)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    seeds = [s.model_dump() for s in load_seed_tasks()]
    tasks = random.Random(0).sample(seeds, args.tasks)  # a fixed mix of domains and languages
    params = RESPOND_SAMPLING.model_copy(update={"n": args.n})
    gen = TransformersGenerator(args.model, batch_size=args.batch_size)
    print(
        f"model {args.model}, {args.calls} proposal calls (max_tokens 400, temperature 0.9), "
        f"{args.tasks} tasks x n={args.n} responses (max_tokens 320, temperature 0.7), "
        f"torch threads {torch.get_num_threads()}"
    )
    gen.generate([user("Hi"), user("Name a colour.")], SamplingParams(max_tokens=4))  # warm-up

    # Each figure is printed as soon as it is measured: on a busy machine the run is long.
    gen.batch_size = 1
    print("proposals (instructions parsed from the replies)", flush=True)
    base_p = run_propose(gen, seeds, args.calls)
    base_ipm = line("baseline", "instructions", *base_p)
    gen.batch_size = args.batch_size
    cand_p = run_propose(gen, seeds, args.calls)
    cand_ipm = line(f"batch {args.batch_size}", "instructions", *cand_p)
    print("responses", flush=True)
    gen.batch_size = 1
    base_rpm = line("baseline", "responses", *run_respond(gen, tasks, params))
    gen.batch_size = args.batch_size
    cand_rpm = line(f"batch {args.batch_size}", "responses", *run_respond(gen, tasks, params))
    # Instructions per minute also moves with how many tasks the sampled replies happen to hold.
    tps = (cand_p[1] / cand_p[2]) / (base_p[1] / base_p[2])
    print(f"ratio (candidate/baseline proposal tokens per second): {tps:.2f}")
    print(f"ratio (candidate/baseline responses per minute): {cand_rpm / base_rpm:.2f}")
    print(f"ratio (candidate/baseline instructions per minute): {cand_ipm / base_ipm:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/construct.py")

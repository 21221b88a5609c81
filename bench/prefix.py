"""The judge's rubric run once per batch (`backend.share_prefix`) vs once per prompt.

Baseline: `backend.share_prefix: false`, every prompt of a batch runs its whole text, the
judge's rubric included. Candidate: `share_prefix: true` (the default), the tokens a batch's
prompts all open with run once and their KV cache is repeated for each row. Same loaded model
(the loop's defaults: `model.dtype: auto`, batches of 64), same items, same process; the two
settings alternate over `--repeats`, the baseline first.

    python bench/prefix.py [--model smollm2-135m-instruct] [--items 144] [--repeats 2]
                           [--critique 32] [--max-tokens 64]

Items are the bundled seed tasks with their reference answers, judged pointwise as the loop's
judge stage does (`judge.mode: logprob`: one forward pass per prompt, the rubric about two
thirds of it). With `--critique N`, N of them are also judged in critique mode (greedy
critiques of `--max-tokens`, ragged decoding: the shared prefix saves prefill only; re-asks
after a parse failure included). Prints per setting the seconds and prompt tokens/s of the
logprob scoring (the fastest of the repeats), how far the two settings' scores are apart (the
arithmetic is the same, its float order is not: in bfloat16 that shows) and, last, the ratio
candidate/baseline of the logprob scoring's tokens/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from agent.backends import BackendConfig, make_generator
from agent.models import ModelSpec
from agent.seeds import load_seed_tasks
from judges.llm_judge import JudgeConfig, LLMJudge


def _timed(gen, judge: LLMJudge, items: list[dict], share: bool) -> tuple[float, list]:
    gen.share_prefix = share
    t0 = time.perf_counter()
    out = judge.score(items)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=144, help="seed tasks judged (at most 144)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--critique", type=int, default=0, help="items also judged in critique mode")
    ap.add_argument("--max-tokens", type=int, default=64, help="critique length")
    args = ap.parse_args()

    seeds = load_seed_tasks(None)[: args.items]
    items = [
        {"id": s.id, "instruction": s.instruction, "input": s.input, "response": s.output}
        for s in seeds
    ]
    gen = make_generator(ModelSpec(name=args.model), BackendConfig())
    judge = LLMJudge(gen, JudgeConfig())
    prompts = [judge._point_prompt(it["instruction"], it["response"]) for it in items]
    tokens = sum(len(gen.encode_prompt(p)) for p in prompts)
    print(
        f"model {args.model} ({gen.dtype}), {len(items)} items, {tokens} prompt tokens "
        f"(mean {tokens / len(items):.0f}), batch {gen.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    judge.score(items[:2])  # warm-up

    secs: dict[bool, list[float]] = {False: [], True: []}
    scores: dict[bool, list] = {}
    for _ in range(args.repeats):
        for share in (False, True):
            s, out = _timed(gen, judge, items, share)
            secs[share].append(s)
            scores[share] = [j.score for j in out]
    diffs = [
        abs(a - b) for a, b in zip(scores[False], scores[True]) if a is not None and b is not None
    ]
    tps = {}
    for share, name in (
        (False, "baseline  share_prefix=false"),
        (True, "candidate share_prefix=true"),
    ):
        best = min(secs[share])
        tps[share] = tokens / best
        runs = ", ".join(f"{s:.1f}" for s in secs[share])
        print(f"{name}: logprob scoring {best:.1f} s (runs {runs}) = {tps[share]:.0f} prompt tok/s")
    print(
        f"score difference between the settings (expected scores 1-5, {len(diffs)} items): mean "
        f"{sum(diffs) / len(diffs):.4f}, largest {max(diffs):.4f}, "
        f"{sum(d > 0.05 for d in diffs)} items above 0.05"
    )

    if args.critique:
        crit = LLMJudge(gen, JudgeConfig(mode="critique", max_tokens=args.max_tokens))
        sub = items[: args.critique]
        got, took = {}, {}
        for share in (False, True):
            took[share], out = _timed(gen, crit, sub, share)
            got[share] = [j.raw for j in out]
            print(f"critique share_prefix={str(share).lower()}: {took[share]:.1f} s")
        same = sum(x == y for x, y in zip(got[False], got[True]))
        print(
            f"critique: {same}/{len(sub)} critiques identical between the settings; time ratio "
            f"(baseline/candidate seconds) {took[False] / took[True]:.2f}"
        )
    print(
        "ratio (candidate/baseline logprob scoring tokens per second): "
        f"{tps[True] / tps[False]:.2f}"
    )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/prefix.py")

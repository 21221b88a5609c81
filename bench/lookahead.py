"""Greedy decoding with and without lookahead, on the evaluation's own prompts and settings.

Baseline: `backend.lookahead: false`, every token of every answer decoded in the ragged batch.
Candidate: `lookahead: true` (the default): a row whose answer repeats a cycle over its last
`lookahead.SPAN` tokens leaves the batch, and waiting rows have their cycles' continuations
checked `lookahead.CHUNK` tokens per forward pass, `lookahead.GROUP` rows at a time
(`agent/backends/lookahead.py`); `--variants` runs other CHUNK x GROUP settings too.

Same loaded model (`TransformersGenerator`, the loop's backend defaults), the evaluation's
sampling and prompts (`loop.config.EvalConfig`'s defaults: greedy, max 400 tokens; 344 IF, 24
helpfulness, 90 domain, 112 multilingual and 24 safety prompts, the subsets the evaluation
takes), a call per suite as the evaluation makes them. `--suites` picks suites and `--prompts`
caps each (evenly spread). Each path runs `--repeats` times, the baseline first, the best kept
(these machines drift). Prints each path's time, tokens/s and ratio to the baseline; how many
answers each left identical to the baseline's (a chunk's forward sums in another float order
than a token's, so a near-tie can tip); the IF suite's strict pass rates with their paired
difference; and how the followed rows went (rows, tokens kept through lookahead, rows that left
the cycle and came back).

    python bench/lookahead.py [--suites if,multilingual] [--prompts 96] [--repeats 1]
        [--variants 64x8,128x16]
"""

from __future__ import annotations

import argparse
import time

import torch
from dtype import strict_difference  # bench/ is on sys.path: run as a script

from agent.backends import SamplingParams, lookahead, refill, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from judges.evals import SUITES, load_suite
from judges.evals.runner import STRATA, subset
from loop.config import EvalConfig


def eval_workload_args(doc: str | None) -> argparse.ArgumentParser:
    """The options of a bench over the evaluation's own prompts (this one and bench/head.py)."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--suites", default=None, help="comma-separated (default: the evaluation's)")
    ap.add_argument("--prompts", type=int, default=None, help="at most this many per suite")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1)
    return ap


def eval_workload(args: argparse.Namespace) -> tuple[dict[str, list], SamplingParams]:
    """The suites' prompts the evaluation takes (`--suites`, at most `--prompts` each, evenly
    spread) and its sampling."""
    config = EvalConfig()
    limits = config.limits()
    names = args.suites.split(",") if args.suites else list(limits)
    suites = {}
    for name in names:
        limit = min(filter(None, (limits.get(name), args.prompts)), default=None)
        suites[name] = subset(load_suite(name), limit, STRATA.get(SUITES[name]))
    return suites, config.sampling


def describe(suites: dict[str, list], params: SamplingParams, gen: TransformersGenerator) -> str:
    return (
        f"{sum(map(len, suites.values()))} prompts ("
        + ", ".join(f"{k} {len(v)}" for k, v in suites.items())
        + f"), greedy, max {params.max_tokens} tokens, {gen.dtype}, "
        f"{torch.get_num_threads()} threads, {gen.batch_size} rows"
    )


def answer_all(
    gen: TransformersGenerator, suites: dict[str, list], params: SamplingParams
) -> tuple[dict[str, list], float, int]:
    """Every suite's first answers (a generate call per suite), the seconds and the tokens."""
    t0 = time.perf_counter()
    outs = {
        suite: [r.completions[0] for r in gen.generate([user(x["prompt"]) for x in recs], params)]
        for suite, recs in suites.items()
    }
    seconds = time.perf_counter() - t0
    return outs, seconds, sum(c.completion_tokens for cs in outs.values() for c in cs)


def main() -> None:
    ap = eval_workload_args(__doc__)
    ap.add_argument(
        "--variants",
        default=f"{lookahead.CHUNK}x{lookahead.GROUP}",
        help="lookahead settings to run, comma-separated CHUNKxGROUP (draft tokens per forward x "
        "rows followed together); default: the shipped ones",
    )
    args = ap.parse_args()
    variants = {}
    for v in args.variants.split(","):
        chunk, _, group = v.partition("x")
        variants[f"on {v}"] = (int(chunk), int(group))
    suites, params = eval_workload(args)
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    print(describe(suites, params, gen), flush=True)
    gen.generate([user("Hi")], params.model_copy(update={"max_tokens": 4}))  # warm-up

    followed = {"rows": 0, "tokens": 0, "came back": 0}
    real = refill.follow_cycles

    def counted(model, group, periods, out, *rest):
        before = sum(len(out[i][k]) for i, k in group.owner)
        rows = list(group.owner)
        ended, back = real(model, group, periods, out, *rest)
        followed["rows"] += len(rows)
        followed["tokens"] += sum(len(out[i][k]) for i, k in rows) - before
        followed["came back"] += len(back)
        return ended, back

    refill.follow_cycles = counted
    best: dict[str, float] = {}
    answers: dict[str, dict[str, list]] = {}
    for rep in range(args.repeats):
        for name, setting in [("off", None), *variants.items()]:
            on = setting is not None
            gen.lookahead = on
            if on:
                lookahead.CHUNK, lookahead.GROUP = setting
            followed.update(dict.fromkeys(followed, 0))
            outs, seconds, tokens = answer_all(gen, suites, params)
            best[name] = max(best.get(name, 0.0), tokens / seconds)
            answers[name] = outs
            print(
                f"lookahead {name:10s} run {rep + 1}: {tokens:6d} tokens {seconds:7.1f} s "
                f"{tokens / seconds:6.1f} tok/s"
                + (
                    f"; followed {followed['rows']} rows, {followed['tokens']} tokens kept, "
                    f"{followed['came back']} came back"
                    if on
                    else ""
                ),
                flush=True,
            )
    off = best["off"]
    for name in variants:
        rate = best[name]
        print(f"best: off {off:.1f} tok/s, {name} {rate:.1f} tok/s, ratio {rate / off:.2f}")
    for suite, recs in suites.items():
        a = answers["off"][suite]
        for name in variants:
            b = answers[name][suite]
            same = sum(x.text == y.text for x, y in zip(a, b))
            print(f"{suite} ({name}): identical answers {same}/{len(a)}")
            if suite == "if":
                print("  " + strict_difference(recs, ("off", a), (name, b)))


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/lookahead.py")

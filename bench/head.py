"""Decoding with the output projection through MKL (torch's default) and through oneDNN.

Baseline: `backend.onednn_head: false`. Candidate: `onednn_head: true` (the default;
`agent/backends/head.py`: CPU float32 only, elsewhere the two paths are the same). Same loaded
model (`TransformersGenerator`, the loop's other backend defaults: ragged, 64 rows, slabs,
lookahead; `--batching static --rows 16`: the static batches of `generate` that stop strings
and prefix adapters use), the evaluation's sampling and prompts (`loop.config.EvalConfig`'s
defaults: greedy, max 400 tokens, the subsets the evaluation takes), a generate call per suite
as the evaluation makes them. `--suites` picks suites and `--prompts` caps each (evenly
spread). Each path runs `--repeats` times in turn, the baseline first, the best kept (these
machines drift). Prints each path's time, tokens/s and ratio to the baseline, and how many
answers the candidate left identical to the baseline's (oneDNN sums in another floating-point
order, so a near-tie could tip).

    python bench/head.py [--suites if,multilingual] [--prompts 128] [--repeats 1]
        [--batching static] [--rows 16]
"""

from __future__ import annotations

from lookahead import (  # bench/ is on sys.path
    answer_all,
    describe,
    eval_workload,
    eval_workload_args,
)

from agent.backends import head, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec

PATHS = {"MKL head": False, "oneDNN head": True}  # name: onednn_head


def main() -> None:
    ap = eval_workload_args(__doc__)
    ap.add_argument(
        "--batching",
        default="ragged",
        choices=["ragged", "static"],
        help="the backend's batching; static: `generate` on batches of --rows",
    )
    ap.add_argument("--rows", type=int, default=64, help="backend.batch_size")
    args = ap.parse_args()
    suites, params = eval_workload(args)
    gen = TransformersGenerator(
        ModelSpec(name=args.model, dtype=args.dtype),
        batching=args.batching,
        batch_size=args.rows,
    )
    applies = "applies" if head.applies(gen.model) else "does not apply here"
    print(f"{describe(suites, params, gen)}, {gen.batching}; the oneDNN head {applies}", flush=True)
    for on in PATHS.values():  # warm-up, both paths
        gen.onednn_head = on
        gen.generate([user("Hi")], params.model_copy(update={"max_tokens": 4}))
    best: dict[str, float] = {}
    answers: dict[str, dict[str, list]] = {}
    for rep in range(args.repeats):
        for name, on in PATHS.items():
            gen.onednn_head = on
            outs, seconds, tokens = answer_all(gen, suites, params)
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

"""Rows leaving and joining the ragged decode loop's slab cache: a copy of the whole cache each
time against moving only the rows concerned.

Baseline (`CopyingBatch` below, the loop as it was): a row that leaves copies every remaining
row of every layer's keys and values into new buffers, trimming the leading columns no row
attends to any more; a prompt that joins copies the whole cache again, into buffers as large as
the batch then is. Candidate (`refill._Batch`): the buffers keep room for the batch's capacity
of rows; the places of rows that leave are taken by rows from the end of the batch (a copy of
those rows only), a row that joins is written into a spare row, and the unused leading columns
are trimmed (one copy) only once there are `refill.TRIM_MIN` of them or the buffers are full
anyway.

Workloads, same loaded model, `--rows` rows decoded at once:

- `respond`: the first `--tasks` seed tasks x `--n` samples at the recipe's temperature 1.0 /
  top_p 1.0, max 320 tokens. Rows sit in other places, so they draw other random numbers:
  answers differ, and the bench prints the mean answer length and cut-off share beside tokens/s;
- `eval`: greedy answers to `--prompts` prompts of the project's IF suite (evenly spaced), max
  400 tokens, as the evaluation answers them: the bench prints how many answers the two left
  identical (a row's place in the batch and the masked columns attention reads change the
  float order of its sums) and the strict IF pass rates' paired difference.

`--repeats` alternating runs of each workload, the best of each side kept (these machines drift).

    python bench/slab_rows.py [--workloads respond eval] [--tasks 16] [--n 8] [--prompts 96]
                              [--rows 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from dtype import strict_difference  # bench/ is on sys.path: run as a script

from agent.backends import SamplingParams, refill, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec
from agent.seeds import load_seed_tasks
from judges.evals import load_suite
from judges.evals.runner import subset


class CopyingBatch(refill._Batch):
    """The baseline: the slab batch as it was, every change of rows a copy of the whole cache
    into buffers exactly as large as the rows then in the batch."""

    def __init__(self, grow: int = 0, capacity: int = 0) -> None:
        super().__init__(grow, 0)  # no spare rows: a join never fits, it rebuilds

    def keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.owner) or not rows or not self.slabs:
            super().keep(rows)
            return
        self.owner = [self.owner[r] for r in rows]
        idx = torch.tensor(rows, device=self.mask.device)
        self.mask, self.pos, self.last = self.mask[idx], self.pos[idx], self.last[idx]
        start = self.unused()
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.buffers = (layer.keys[idx, :, start:], layer.values[idx, :, start:])
            layer.length -= start
            layer.resize(len(rows))

    def reserve(self, n: int) -> None:
        for layer in self.cache.layers:
            layer.reserve(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--workloads", nargs="+", default=["respond", "eval"])
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    gen = TransformersGenerator(ModelSpec(name=args.model, dtype=args.dtype))
    if not refill.uses_slab(gen.model):
        raise SystemExit("bench/slab_rows.py: this model does not decode with slabs (uses_slab)")
    print(
        f"{args.rows} rows, {gen.dtype}, {torch.get_num_threads()} threads, "
        f"TRIM_MIN {refill.TRIM_MIN}, slab grows by {refill.SLAB_GROW} columns",
        flush=True,
    )
    gen.generate([user("Hello")], SamplingParams(max_tokens=4))  # warm-up
    sides = {"copying": CopyingBatch, "in place": refill._Batch}
    for workload in args.workloads:
        suite: list = []
        if workload == "respond":
            messages = [user(t.instruction) for t in load_seed_tasks()[: args.tasks]]
            params, n = SamplingParams(max_tokens=320, temperature=1.0, top_p=1.0), args.n
        elif workload == "eval":
            suite = subset(load_suite("if"), args.prompts)
            messages = [user(r["prompt"]) for r in suite]
            params, n = SamplingParams(max_tokens=400, temperature=0.0), 1
        else:
            raise SystemExit(f"bench/slab_rows.py: unknown workload {workload!r}")
        enc = [gen.encode_prompt(m) for m in messages]
        print(f"{workload}: {len(enc)} prompts x {n}, max {params.max_tokens} tokens", flush=True)
        best: dict[str, float] = {}
        answers: dict[str, list] = {}
        for rep in range(args.repeats):
            for name, batch in sides.items():
                refill._Batch = batch  # decode_ragged looks the class up at each call
                try:
                    torch.manual_seed(rep)
                    t0 = time.perf_counter()
                    outs = refill.decode_ragged(
                        gen.model,
                        enc,
                        n,
                        params,
                        max_rows=args.rows,
                        eos_ids=gen.eos_ids,
                        pad_id=gen.tokenizer.pad_token_id,
                    )
                    seconds = time.perf_counter() - t0
                finally:
                    refill._Batch = sides["in place"]
                lengths = [len(t) for per in outs for t in per]
                cut = sum(k >= params.max_tokens for k in lengths) / len(lengths)
                rate = sum(lengths) / seconds
                best[name] = max(best.get(name, 0.0), rate)
                answers[name] = outs
                print(
                    f"{workload} {name:8s} run {rep + 1}: {sum(lengths):6d} tokens "
                    f"{seconds:6.1f} s {rate:6.1f} tok/s, mean answer "
                    f"{sum(lengths) / len(lengths):5.1f} tokens, cut off {cut:.1%}",
                    flush=True,
                )
        line = (
            f"{workload} best: copying {best['copying']:.1f} tok/s, in place "
            f"{best['in place']:.1f} tok/s, ratio {best['in place'] / best['copying']:.2f}"
        )
        if params.greedy:
            same = sum(a == b for a, b in zip(answers["copying"], answers["in place"]))
            line += f"; identical greedy answers {same}/{len(enc)}"
            texts = {k: [gen._completion(o[0], params)[0] for o in v] for k, v in answers.items()}
            line += "\n  " + strict_difference(
                suite, ("copying", texts["copying"]), ("in place", texts["in place"])
            )
        print(line, flush=True)


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/slab_rows.py")

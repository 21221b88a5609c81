"""A LoRA training step in eager mode against `torch.compile`: is compiling worth it on CPU?

Baseline: eager. Candidate: `torch.compile(model)` (inductor, static shapes). The bundled model
loaded and wrapped as `tune` does it (`tuners.train`, `TuneConfig`'s defaults: LoRA rank 16,
alpha 32, dropout 0.05 with 16-bit masks on every linear layer), under bfloat16 autocast with the
adapters' sums and the head in float32 (`tuners.precision`, what `tune.bf16: auto` trains LoRA
in on a CPU with native bfloat16), AdamW. One sequence of
`--tokens` random token ids, the same shape every step: compile's best case (the loop's packed
rows change length and run attention per example, which would break its graph further). Each
mode runs one warm-up step (for the candidate: the compile) and then `--steps` timed steps;
prints both medians, the ratio and the compile time.

    python bench/compile.py [--tokens 1536] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from agent.models import resolve
    from tuners import precision
    from tuners.config import TuneConfig
    from tuners.dropout import use_bits_dropout
    from tuners.train import _load_model, _wrap

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1536, help="tokens in the step's sequence")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = TuneConfig()
    model = _load_model(resolve("smollm2-135m-instruct"), cfg, grad_ckpt=False, packing=False)
    model = _wrap(model, cfg, None)
    use_bits_dropout(model)
    precision.float32_sums(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))

    def run(forward, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = forward(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        return times

    run(model, 1)
    eager = statistics.median(run(model, args.steps))
    print(f"eager: {eager:.2f} s a step ({args.tokens} tokens)", flush=True)
    compiled = torch.compile(model, dynamic=False)
    first = run(compiled, 1)[0]
    comp = statistics.median(run(compiled, args.steps))
    print(f"compiled: {comp:.2f} s a step; its first step (the compile) {first:.1f} s", flush=True)
    print(f"ratio (eager / compiled): {eager / comp:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/compile.py")

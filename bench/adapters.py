"""Decoding under a LoRA adapter: PEFT's unmerged layers against a merged copy of the model.

Baseline: the transformers backend with `backend.merge_adapters: false`, every LoRA layer run as
PEFT runs it (the base matmul plus two small ones, a scale and an add, per layer and step).
Candidate: `merge_adapters: true` (the CPU default), a copy of the model with the adapter merged
into its weights. Workload: the evaluation's, the candidate's greedy answers to `--prompts` of the
project's IF suite (evenly spaced through it), max `--max-tokens`, ragged rows of
`--batch-size`; the same loaded model serves both paths, `--repeats` times alternating, the best
kept (these machines drift). The adapter is `--adapter DIR` (a round's `adapter/`), or else a
fresh rank-16 LoRA on every linear layer (the loop's default shape) whose weights are drawn small
and random, so it changes the answers as a trained one does.

Prints tokens/s of each path and the ratio merged/unmerged, then the share of identical answers
and the paired difference of the strict IF pass rate with its 95% bootstrap interval (a merged
bfloat16 weight is the bfloat16 W plus BA, rounded once more: answers may part after a while,
as bfloat16 and float32 ones do, bench/dtype.py).

    python bench/adapters.py [--adapter DIR] [--prompts 96] [--max-tokens 400] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from dtype import strict_difference  # bench/ is on sys.path: run as a script

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator
from agent.models import ModelSpec, load_model
from judges.evals import load_suite
from judges.evals.runner import subset


def random_adapter(model: str, out: Path) -> Path:
    """A rank-16 all-linear LoRA with small random A and B (B = 0 would leave answers as the
    base model's): the loop's adapter shape, untrained."""
    from peft import LoraConfig, get_peft_model

    base, _, _ = load_model(ModelSpec(name=model, dtype="float32"))
    peft = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.02)
    peft.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", type=Path, help="a trained adapter (default: a random LoRA)")
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or random_adapter(args.model, Path(tmp) / "random-lora")
        gen = TransformersGenerator(
            ModelSpec(name=args.model, dtype=args.dtype),
            batch_size=args.batch_size,
            adapters={"a": adapter},
        )
    suite = subset(load_suite("if"), args.prompts)
    prompts = [user(r["prompt"]) for r in suite]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    print(
        f"{len(prompts)} IF prompts, greedy, max {args.max_tokens}, {gen.dtype}, "
        f"{args.batch_size} rows, {torch.get_num_threads()} threads, adapter: "
        f"{args.adapter or 'random rank-16 LoRA'}"
    )
    best: dict[str, float] = {}
    out: dict[str, list] = {}
    for rep in range(args.repeats):
        for name, merge in (("unmerged", False), ("merged", True)):
            gen.merge_adapters = merge
            gen.generate(prompts[:2], SamplingParams(max_tokens=4), adapter="a")  # warm-up
            t0 = time.perf_counter()
            results = gen.generate(prompts, params, adapter="a")
            seconds = time.perf_counter() - t0
            out[name] = [r.completions[0] for r in results]
            tokens = sum(c.completion_tokens for c in out[name])
            best[name] = max(best.get(name, 0.0), tokens / seconds)
            print(
                f"{name:9s} run {rep + 1}: {tokens:6d} tokens {seconds:6.1f} s "
                f"{tokens / seconds:6.1f} tok/s",
                flush=True,
            )
    same = sum(a.text == b.text for a, b in zip(out["unmerged"], out["merged"]))
    print(f"identical answers: {same}/{len(prompts)}")
    print(strict_difference(suite, ("unmerged", out["unmerged"]), ("merged", out["merged"])))
    print(f"ratio merged/unmerged tokens per second: {best['merged'] / best['unmerged']:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/adapters.py")

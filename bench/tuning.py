"""LoRA training throughput: `tuners.train` (padding-free packing) vs a plain padded Trainer.

Baseline: transformers `Trainer` + peft LoRA with right-padded batches (pad to the longest in
the batch), the usual recipe. Candidate: `tuners.train`. Same model, same chat examples of mixed
length (made here, seeded, ~30 to ~400 tokens; 256 by default), same tokenization and labels,
LoRA r=16 all-linear, same batch size, learning rate and number of optimizer steps, and the same
device and precision: CUDA with bf16 autocast over float32 master weights where a GPU is
present, else CPU float32; gradient checkpointing off in both. Each variant runs in its own
subprocess so its peak memory (RSS on CPU, allocated GPU memory on CUDA) is its own. Prints
non-padding tokens/s and peak memory of each and, last, the throughput ratio candidate/baseline.
On CUDA it also prints model FLOPs utilization: LoRA costs ~4N FLOPs per non-padding token
(forward 2N, backward through the frozen weights 2N, N = base parameters) against --peak-tflops.

    python bench/tuning.py [--steps 8] [--batch-size 8] [--examples 256]
        [--model smollm2-135m-instruct | /path/to/hf-model-dir] [--peak-tflops 989]
        [--against trainer | float32]

`--against float32` compares precision instead of code: `tuners.train` in float32 (baseline)
against `tuners.train` with `tune.bf16: true` (candidate: bfloat16 autocast over float32 master
weights, on CPU with the adapters' sums and the head in float32, `tuners/precision.py`; needs
native bfloat16 - a CUDA GPU, or a CPU with AVX512-BF16 / AMX), and prints both
runs' per-step losses: same data, order and seed, so they differ by the precision alone.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

H100_BF16_DENSE_TFLOPS = 989.0  # H100/H200 SXM, bf16 dense tensor cores

WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "answer",
    "clearly",
    "and",
    "briefly",
    "with",
    "examples",
    "from",
    "health",
    "law",
    "finance",
    "science",
    "history",
    "cooking",
    "travel",
    "code",
    "math",
    "writing",
    "and",
    "everyday",
    "questions",
    "people",
    "ask",
]


def make_examples(n: int = 256, seed: int = 0) -> list[dict]:
    """Chat examples whose lengths spread from ~30 to ~400 tokens (long-tailed, like real data)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q_words = rng.randint(5, 40)
        a_words = int(min(330, max(10, rng.lognormvariate(4.3, 0.7))))
        q = " ".join(rng.choice(WORDS) for _ in range(q_words)).capitalize() + "?"
        a = " ".join(rng.choice(WORDS) for _ in range(a_words)).capitalize() + "."
        out.append(
            {
                "id": f"b{i}",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            }
        )
    return out


def run_baseline(model: str, examples: list[dict], steps: int, batch: int, out: Path) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from agent.models import load_tokenizer, resolve
    from tuners.data import pad_batch, tokenize_example

    resolved = resolve(model)
    tok = load_tokenizer(resolved)
    items = [tokenize_example(tok, e) for e in examples]
    # float32 master weights with bf16 autocast on CUDA: what tuners.train does.
    m = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    m.config.use_cache = False
    cuda = torch.cuda.is_available()
    m = get_peft_model(
        m,
        LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
        ),
    )
    seen = {"tokens": 0}

    def collate(batch_items):
        seen["tokens"] += sum(len(it["input_ids"]) for it in batch_items)
        return pad_batch(batch_items, tok.pad_token_id)

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=m, args=args, train_dataset=items, data_collator=collate)
    t0 = time.monotonic()
    trainer.train()
    return {"tokens": seen["tokens"], "seconds": time.monotonic() - t0}


def run_candidate(
    model: str, examples: list[dict], steps: int, batch: int, out: Path, bf16: bool | None = None
) -> dict:
    """`tuners.train`; bf16 None = autocast only on a CUDA GPU with bf16 (what both variants of
    the default comparison use), else `tune.bf16` as given."""
    import torch

    from tuners import TuneConfig, train

    cuda = torch.cuda.is_available()
    cfg = TuneConfig(
        method="lora",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        max_steps=steps,
        batch_size=batch,
        learning_rate=2e-4,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        save_steps=10_000,
        max_seq_len=min(1024, context_of(model)),
        bf16=(cuda and torch.cuda.is_bf16_supported()) if bf16 is None else bf16,
        gradient_checkpointing=False,  # the baseline runs without it
    )
    r = train(model, examples, out / "adapter", cfg)
    return {"tokens": r.tokens, "seconds": r.seconds, "losses": r.losses}


VARIANTS: dict[str, tuple[Any, dict[str, bool]]] = {
    "baseline": (run_baseline, {}),
    "candidate": (run_candidate, {}),
    "float32": (run_candidate, {"bf16": False}),
    "bf16": (run_candidate, {"bf16": True}),
}


def context_of(model: str) -> int:
    from agent.models import resolve

    cfg = json.loads((resolve(model).path / "config.json").read_text())
    return int(cfg.get("max_position_embeddings") or 2048)


def base_params(model: str) -> int:
    """N, the base model's parameter count, from its config on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agent.models import resolve

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve(model).path))
    return sum(p.numel() for p in m.parameters())


def peak_memory() -> tuple[float, str]:
    """This (child) process's peak: allocated GPU memory on CUDA, else RSS; and its label."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "peak GPU memory"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="A bundled model name or a local Hugging Face model directory.",
    )
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--examples", type=int, default=256, help="Chat examples made for the run.")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_DENSE_TFLOPS,
        help="The GPU's peak dense TFLOP/s for the MFU figure (default: H100/H200 bf16).",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="Runs per variant, alternating; best kept."
    )
    ap.add_argument(
        "--against",
        choices=["trainer", "float32"],
        default="trainer",
        help="Baseline: a plain padded Trainer (default), or tuners.train in float32 against "
        "tuners.train with tune.bf16: true.",
    )
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    examples = make_examples(args.examples)

    if args.variant:  # child process: run one variant, print its figures as JSON
        with tempfile.TemporaryDirectory() as tmp:
            fn, kwargs = VARIANTS[args.variant]
            res = fn(args.model, examples, args.steps, args.batch_size, Path(tmp), **kwargs)
        res["peak_mb"], res["peak_what"] = peak_memory()
        print(json.dumps(res))
        return

    import torch

    from agent.models import load_tokenizer, resolve
    from tuners.data import tokenize_example

    tok = load_tokenizer(resolve(args.model))
    lengths = sorted(len(tokenize_example(tok, e)["input_ids"]) for e in examples)
    cuda = torch.cuda.is_available()
    n_params = base_params(args.model)
    from agent.models import native_bf16

    if args.against == "float32":
        if not native_bf16("cuda" if cuda else "cpu"):
            sys.exit("--against float32: this device has no native bfloat16 to compare")
        where = f"{'CUDA' if cuda else 'CPU'}: float32 vs bfloat16 autocast"
        pair = ("float32", "bf16")
    else:
        where = "CUDA, bf16 autocast" if cuda else "CPU, float32"
        pair = ("baseline", "candidate")
    print(
        f"model {args.model} ({n_params / 1e6:.0f}M parameters); {len(examples)} examples, tokens "
        f"min {lengths[0]} median {lengths[len(lengths) // 2]} max {lengths[-1]}; LoRA r=16 "
        f"all-linear; batch {args.batch_size}; {args.steps} optimizer steps; {where}"
    )
    figures: dict[str, dict] = {}
    # Alternate the variants and keep each one's best run: a busy neighbour on a shared machine
    # then slows both alike instead of whichever happened to run during the disturbance.
    for _ in range(args.repeats):
        for variant in pair:
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--model",
                args.model,
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--examples",
                str(args.examples),
            ]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{variant} failed:\n{run.stderr[-3000:]}")
            f = json.loads(run.stdout.strip().splitlines()[-1])
            f["tps"] = f["tokens"] / f["seconds"]
            if variant not in figures or f["tps"] > figures[variant]["tps"]:
                figures[variant] = f
    labels = {
        "baseline": "baseline  Trainer + peft, padded batches:",
        "candidate": "candidate tuners.train, packed batches:  ",
        "float32": "baseline  tuners.train, float32:         ",
        "bf16": "candidate tuners.train, bfloat16 autocast:",
    }
    for variant in pair:
        f, label = figures[variant], labels[variant]
        # Model FLOPs: ~4N per non-padding token for LoRA (no weight gradients for the base).
        mfu = 4 * n_params * f["tps"] / (args.peak_tflops * 1e12)
        print(
            f"{label} {f['tokens']} tokens in {f['seconds']:.1f}s = {f['tps']:.1f} tok/s, "
            f"{f['peak_what']} {f['peak_mb']:.0f} MB"
            + (f", MFU {100 * mfu:.1f}% of {args.peak_tflops:g} TFLOP/s" if cuda else "")
        )
    b, c = figures[pair[0]], figures[pair[1]]
    if args.against == "float32":
        # Same data, order and seed: the loss curves differ only by the precision.
        for (step, lb), (_, lc) in zip(b["losses"], c["losses"], strict=True):
            print(f"  step {step}: loss float32 {lb:.4f}, bfloat16 {lc:.4f} ({lc - lb:+.4f})")
    print(f"ratio (candidate/baseline non-padding tokens per second): {c['tps'] / b['tps']:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/tuning.py")

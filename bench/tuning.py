"""LoRA training throughput: `tuners.train` (padding-free packing) vs a plain padded Trainer.

Baseline: transformers `Trainer` + peft LoRA with right-padded batches (pad to the longest in
the batch), the usual recipe. Candidate: `tuners.train`. Same bundled model, same 256 chat
examples of mixed length (made here, seeded, ~30 to ~400 tokens), same tokenization and labels,
LoRA r=16 all-linear, same batch size, learning rate and number of optimizer steps. Each variant
runs in its own subprocess so its peak RSS is its own. Prints non-padding tokens/s and peak RSS
of each and, last, the throughput ratio candidate/baseline.

    python bench/tuning.py [--steps 8] [--batch-size 8] [--model smollm2-135m-instruct]
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
    m = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    m.config.use_cache = False
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
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=m, args=args, train_dataset=items, data_collator=collate)
    t0 = time.monotonic()
    trainer.train()
    return {"tokens": seen["tokens"], "seconds": time.monotonic() - t0}


def run_candidate(model: str, examples: list[dict], steps: int, batch: int, out: Path) -> dict:
    from tuners import TuneConfig, train

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
        max_seq_len=1024,
    )
    r = train(model, examples, out / "adapter", cfg)
    return {"tokens": r.tokens, "seconds": r.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--repeats", type=int, default=1, help="Runs per variant, alternating; best kept."
    )
    ap.add_argument("--variant", choices=["baseline", "candidate"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    examples = make_examples()

    if args.variant:  # child process: run one variant, print its figures as JSON
        with tempfile.TemporaryDirectory() as tmp:
            fn = run_baseline if args.variant == "baseline" else run_candidate
            res = fn(args.model, examples, args.steps, args.batch_size, Path(tmp))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    from agent.models import load_tokenizer, resolve
    from tuners.data import tokenize_example

    tok = load_tokenizer(resolve(args.model))
    lengths = sorted(len(tokenize_example(tok, e)["input_ids"]) for e in examples)
    print(
        f"model {args.model}; {len(examples)} examples, tokens min {lengths[0]} median "
        f"{lengths[len(lengths) // 2]} max {lengths[-1]}; LoRA r=16 all-linear; batch "
        f"{args.batch_size}; {args.steps} optimizer steps"
    )
    figures: dict[str, dict] = {}
    # Alternate the variants and keep each one's best run: a busy neighbour on a shared machine
    # then slows both alike instead of whichever happened to run during the disturbance.
    for _ in range(args.repeats):
        for variant in ("baseline", "candidate"):
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
            ]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{variant} failed:\n{run.stderr[-3000:]}")
            f = json.loads(run.stdout.strip().splitlines()[-1])
            f["tps"] = f["tokens"] / f["seconds"]
            if variant not in figures or f["tps"] > figures[variant]["tps"]:
                figures[variant] = f
    b, c = figures["baseline"], figures["candidate"]
    print(
        f"baseline  Trainer + peft, padded batches: {b['tokens']} tokens in {b['seconds']:.1f}s = "
        f"{b['tps']:.1f} tok/s, peak RSS {b['peak_rss_mb']:.0f} MB"
    )
    print(
        f"candidate tuners.train, packed batches:   {c['tokens']} tokens in {c['seconds']:.1f}s = "
        f"{c['tps']:.1f} tok/s, peak RSS {c['peak_rss_mb']:.0f} MB"
    )
    print(f"ratio (candidate/baseline non-padding tokens per second): {c['tps'] / b['tps']:.2f}")


if __name__ == "__main__":
    main()

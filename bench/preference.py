"""What the greedy step's preference training costs: trl's padded batches vs padding-free rows.

    python bench/preference.py --run RUN_DIR [--round N] [--steps 3]
                               [--variant NAME:key=value,key=value ...]

The recipe's greedy step (`tune.greedy_pairs`) trains RPO on pairs of a verified answer and the
sft adapter's own greedy failure, and the failures are often cut off at the length limit while
the verified answers stop early: trl's DPO collator pads every sequence of a batch to the
longest, so much of a batch is padding. This bench trains the first `--steps` optimizer steps
of a loop run's own greedy step - the pairs in `RUN_DIR/rounds/N/greedy/preference_pairs.jsonl`,
from that round's `greedy/sft_adapter`, with the run's tune settings as the loop sets them for
the step - once per variant, each in its own subprocess (so its peak memory is its own), and
prints per variant the seconds per optimizer step (training only: the model load is left out),
the peak resident memory, the share of real tokens in padded batches of the pairs (an estimate,
in the file's order), and each step's loss and reward margin; then each variant's time and
memory as a ratio of the first's. Every variant sees the same pairs in each optimizer step
(same seed, same data order), so their losses should agree.

Default variants (the run's `tune.batch_size` 8, so 8 pairs an optimizer step in each):
`padded` (`tune.packing=false`, `tune.greedy_batch_size=8`: trl's batches as they are),
`packed` (`tune.packing=true`: `tuners.unpad`; 8 pairs a forward pass), `packed-2x4` (packing,
`tune.greedy_batch_size=2`, the default: 4 micro-batches of 2 pairs a step).

`--variant trl:tune.logprob_head=trl --variant selfloop:tune.logprob_head=selfloop` measures
how tokens are scored on CPU: trl's fused head against `tuners/logprobs.py` (the default).
`--variant whole:tune.share_prompts=false --variant shared:tune.share_prompts=true` measures a
pair's prompt run once (`tuners.unpad`) against every row run whole.

One model process at a time; nothing is written into the run (the adapters go to a temporary
directory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VARIANTS = {
    "padded": ["tune.packing=false", "tune.greedy_batch_size=8"],
    "packed": ["tune.packing=true", "tune.greedy_batch_size=8"],
    "packed-2x4": ["tune.packing=true", "tune.greedy_batch_size=2"],
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    if not name or not sets:
        raise SystemExit(f"error: --variant {text!r}: want NAME:key=value[,key=value...]")
    return name, [s.strip() for s in sets.split(",") if s.strip()]


def child(run: Path, n: int, steps: int, sets: list[str], out: Path) -> dict[str, Any]:
    """Train the step once (in this process) and return what the parent prints."""
    import torch

    from agent.data import read_jsonl
    from loop.config import load_config
    from loop.rundir import RunDir
    from loop.stages.tune import GREEDY, GREEDY_PAIRS, SFT_ADAPTER, fit, greedy_step_config

    rundir = RunDir(run).require_run()
    greedy = rundir.round_dir(n) / GREEDY
    pairs = read_jsonl(greedy / GREEDY_PAIRS)
    cfg = load_config(rundir.config_path, [*sets, f"tune.max_steps={steps}"])
    step = greedy_step_config(cfg.tune)
    cfg = cfg.model_copy(update={"tune": step})
    real, padded, prompts = padding_share(cfg, pairs)
    torch.manual_seed(0)
    r = fit(cfg, pairs, out, greedy / SFT_ADAPTER, n)
    metrics = json.loads((out / "train_metrics.json").read_text())
    return {
        "steps": r.steps,
        "seconds": r.seconds,
        "peak_mb": r.peak_memory_mb,
        "losses": [loss for _, loss in r.losses],
        "margins": [m for _, m in metrics.get("curves", {}).get("rewards/margins", [])],
        "real_share": real / padded if padded else 1.0,
        "prompt_share": prompts / real if real else 0.0,
        "pairs": len(pairs),
    }


def padding_share(cfg: Any, pairs: list[dict]) -> tuple[int, int, int]:
    """(real tokens, tokens with padding, prompt tokens a rejected row shares) of all the pairs
    in padded micro-batches of `tune.batch_size` pairs, in the file's order (trl shuffles: an
    estimate of its batches); the shared tokens are each prompt's but one (`tuners.unpad`)."""
    from agent.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(cfg.model))

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    lengths = []
    shared = 0
    for p in pairs:
        head = count(
            tok.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True)
        )
        lengths += [[head + count(p[k][0]["content"]) + 1 for k in ("chosen", "rejected")]]
        shared += head - 1
    real = padded = 0
    for i in range(0, len(lengths), cfg.tune.batch_size):
        batch = lengths[i : i + cfg.tune.batch_size]
        real += sum(sum(x) for x in batch)
        padded += 2 * len(batch) * max(max(x) for x in batch)
    return real, padded, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a loop run with the greedy step")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per variant")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        result = child(args.run, args.round, args.steps, json.loads(args.child), args.out)
        print("RESULT " + json.dumps(result), flush=True)
        return
    pairs = args.run / "rounds" / f"{args.round:03d}" / "greedy" / "preference_pairs.jsonl"
    if not pairs.is_file():
        raise SystemExit(f"error: {pairs} not found: round {args.round} ran no greedy step")
    variants = dict(map(parse_variant, args.variant)) if args.variant else VARIANTS
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-preference-") as tmp:
        for name, sets in variants.items():
            cmd = [sys.executable, __file__, "--run", str(args.run), "--round", str(args.round),
                   "--steps", str(args.steps), "--child", json.dumps(sets),
                   "--out", str(Path(tmp) / name)]  # fmt: skip
            print(f"{name} ({' '.join(sets)}): training...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"error: variant {name} failed (exit {done.returncode})")
            r = results[name] = json.loads(line[-1].removeprefix("RESULT "))
            print(f"  {r['steps']} steps of {r['pairs']} pairs: {r['seconds'] / r['steps']:.1f} "
                  f"s/step, peak RSS {r['peak_mb'] / 1024:.1f} GB, real tokens in padded "
                  f"batches {r['real_share']:.2f}, a rejected row's shared prompt "
                  f"{r['prompt_share']:.2f} of them", flush=True)  # fmt: skip
            print(f"  losses  {[round(x, 4) for x in r['losses']]}")
            if r["margins"]:
                print(f"  margins {[round(x, 4) for x in r['margins']]}", flush=True)
    first, base = next(iter(results.items()))
    print(f"\nagainst {first}:")
    for name, r in results.items():
        speed = (base["seconds"] / base["steps"]) / (r["seconds"] / r["steps"])
        print(
            f"  {name:12} {speed:.2f}x the speed, {r['peak_mb'] / base['peak_mb']:.2f}x the "
            "peak memory"
        )


if __name__ == "__main__":
    if "--child" in sys.argv:
        main()  # the parent holds the claim on the machine
    else:
        from agent.procs import bench_main

        bench_main(main, "bench/preference.py")

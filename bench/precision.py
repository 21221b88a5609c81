"""Training precision (or another tune setting) on a real round's data, step by step.

    python bench/precision.py --run RUN_DIR [--round N] [--variants float32 bf16 bf16-plain]
                              [--variant NAME:key=value,...] [--repeats R] [--max-steps K]
                              [--out bench-runs/precision]

RUN_DIR is a loop run of the recipe (`selfloop run -c configs/recipe.yaml --out RUN_DIR`, or a
seed of `bench/improvement.py`); its round N (default 1) is the data. Each variant trains the
SFT that round's tune stage trains first (`loop.stages.tune.training_data`: its examples, its
starting adapter, the run's tune settings: epochs, batch, learning rate and schedule, seed),
in its own process, one after the other, into `OUT/round-NNN/<variant>`:

- `float32`: `tune.bf16: false`, the baseline;
- `bf16`: `tune.bf16: true` as `tuners.train` runs it: autocast, the adapter's sums in float32
  (`tuners/precision.py`);
- `bf16-plain`: autocast alone (what `tune.bf16: true` was before), every layer's output in
  bfloat16. (On CUDA `tune.bf16: true` is plain autocast, so there `bf16` is the same.)
- `--variant NAME:key=value,...`: float32 with other tune settings (e.g.
  `nodrop:lora_dropout=0`; `bf16=true` among them runs bfloat16 with the sums; values are YAML
  scalars, so no lists). `--variants` given with no names then trains only float32 and the
  `--variant` ones.

Same data, order and seed, so the loss curves differ by the variant alone. Prints each
variant's tokens/s and its ratio to float32, and its loss against float32's: the mean
difference over all steps and over the last 20, and the largest. bfloat16 needs a CUDA GPU or
a CPU with AVX512-BF16 / AMX (`native_bf16`). A variant that finished is read back from its
`result.json`, which says when it was measured (delete the directory to measure again: speed
ratios compare only runs made one after the other on an otherwise idle machine). One that drew
other LoRA dropout masks than the variant would now (`tune.dropout_masks`) is refused.

These machines drift by 20% between runs, more than the difference measured, so one pair of
runs does not settle the speed. `--repeats R` trains the variants R times, alternating
(float32, bf16, float32, bf16, ...; repeat R > 1 into `<variant>-rR`), and prints each
repeat's ratio and their median and range. Repeat 1 reads back a finished `<variant>` like a
single run does, so a fresh `--out` (or `--max-steps`) keeps the turns to one sitting; each
repeat's `measured` times are printed. `--max-steps K` stops each run after K optimizer
steps (into `OUT/round-NNN-stepsK`): the speed of a shorter run, its loss differences those of
a shorter schedule.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("float32", "bf16", "bf16-plain")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:key=value,...` -> (NAME, {tune field: value}); values are YAML scalars."""
    import yaml

    from tuners.config import TuneConfig

    name, _, sets = text.partition(":")
    # The name is a directory and `-rR` marks a repeat's: letters, digits and _ only.
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not sets:
        raise SystemExit(
            f"error: --variant {text!r}: want NAME:key=value[,key=value...], NAME of letters, "
            "digits and _"
        )
    update: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in sets.split(","))):
        key, eq, value = item.partition("=")
        key = key.removeprefix("tune.")
        if not eq or key not in TuneConfig.model_fields:
            raise SystemExit(f"error: --variant {text!r}: {item!r} is not a tune setting=value")
        if key in ("objective", "max_steps"):
            raise SystemExit(
                f"error: --variant {text!r}: the bench trains sft; use --max-steps for its length"
            )
        update[key] = yaml.safe_load(value)
    try:  # validated values (YAML reads 1e-4 as a string; the model makes it a float)
        valid = TuneConfig(**update)
    except ValueError as e:
        raise SystemExit(f"error: --variant {text!r}: {e}") from None
    return name, valid.model_dump(include=set(update))


def train_variant(
    run: Path,
    round_index: int,
    variant: str,
    out: Path,
    max_steps: int = 0,
    settings: dict[str, Any] | None = None,
) -> dict:
    """One variant's SFT (child process): its figures, also written to `out/result.json`.
    `settings`: a `--variant`'s tune settings (on top of float32)."""
    from agent.atomic import atomic_write
    from judges.dedup import Pool
    from loop.config import load_config
    from loop.rundir import RunDir
    from loop.stages.tune import near_eval_seeds, training_data
    from tuners import precision, train

    cfg = load_config(run / "config.yaml")
    rundir = RunDir(run)
    # The adapter the round started from: the last promoted round before it (None: the base).
    promoted = rundir.promoted_rounds(before=round_index)
    champion = rundir.adapter_dir(max(promoted)) if promoted else None
    # What the loop's sft trains, whatever objective the run's config names (the greedy step
    # trains this sft first too).
    update = {"objective": "sft", "bf16": variant in ("bf16", "bf16-plain"), **(settings or {})}
    if max_steps:
        update["max_steps"] = max_steps
    tune = cfg.tune.model_copy(update=update)
    exclude = near_eval_seeds(
        cfg.model_copy(update={"tune": tune}), lambda c=cfg.dedup: Pool(None, c).embedder
    )
    data, init = training_data(rundir, tune, round_index, champion, cfg.run.seeds_file, exclude)
    if not data:
        raise SystemExit(f"{run}: round {round_index} has nothing to train on")
    hooked: list[int] = []  # LoRA layers given float32 sums, to say which variant ran
    sums = precision.float32_sums
    if variant == "bf16-plain":  # autocast alone: leave every layer's output in bfloat16
        precision.float32_sums = lambda model: hooked.append(0) or 0
    else:
        precision.float32_sums = lambda model: hooked.append(sums(model)) or hooked[-1]
    t0 = time.monotonic()
    r = train(cfg.model, data, out / "adapter", tune, init_adapter=init)
    res = {
        "variant": variant,
        "settings": {k: getattr(tune, k) for k in settings or {}},  # as trained
        "examples": len(data),
        "start": str(init) if init else None,
        "steps": r.steps,
        "float32_sums": sum(hooked),
        "dropout_masks": tune.dropout_masks,
        "tokens": r.tokens,
        "seconds": r.seconds,
        "wall_seconds": time.monotonic() - t0,
        "losses": r.losses,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    atomic_write(out / "result.json", json.dumps(res).encode())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="A recipe run directory.")
    ap.add_argument("--round", type=int, default=1, help="The round whose data trains (1).")
    ap.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument(
        "--variant",
        dest="custom",
        action="append",
        default=[],
        help="NAME:key=value,...: float32 with these tune settings (repeatable).",
    )
    ap.add_argument("--repeats", type=int, default=1, help="Alternating runs of each (1).")
    ap.add_argument("--max-steps", type=int, default=0, help="Stop after K steps (0: all).")
    ap.add_argument("--out", type=Path, default=Path("bench-runs/precision"))
    ap.add_argument("--child", help=argparse.SUPPRESS)  # <variant>[-rR]: one run, this process
    args = ap.parse_args()
    if args.repeats < 1 or args.max_steps < 0:
        sys.exit("error: --repeats must be 1 or more and --max-steps 0 or more")
    out = args.out / (
        f"round-{args.round:03d}" + (f"-steps{args.max_steps}" if args.max_steps else "")
    )
    custom = dict(parse_variant(v) for v in args.custom)
    if len(custom) < len(args.custom):
        sys.exit("error: two --variant options have the same NAME")
    if args.child:
        variant = args.child.split("-r")[0]
        res = train_variant(
            args.run, args.round, variant, out / args.child, args.max_steps, custom.get(variant)
        )
        print(json.dumps(res))
        return
    from agent.models import native_bf16, pick_device, resolve
    from loop.config import load_config

    if not (args.run / "config.yaml").is_file():
        sys.exit(f"{args.run}: not a run directory (no config.yaml)")
    cfg = load_config(args.run / "config.yaml")
    device = pick_device(resolve(cfg.model).spec)
    # The masks each variant draws (the run's setting unless a --variant names one); a result
    # written before the setting existed drew nn.Dropout's.
    masks = cfg.tune.dropout_masks
    variants = list(dict.fromkeys(["float32", *args.variants, *custom]))
    if set(variants) & {"bf16", "bf16-plain"} and not native_bf16(device):
        sys.exit(f"this device ({device}) has no native bfloat16 to compare")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(1, args.repeats + 1):
        for v in variants:
            name = v if r == 1 else f"{v}-r{r}"
            done = out / name / "result.json"
            if not done.is_file():
                cmd = [sys.executable, __file__, "--run", str(args.run), "--round",
                       str(args.round), "--max-steps", str(args.max_steps),
                       "--out", str(args.out), "--child", name,
                       *[f"--variant={c}" for c in args.custom]]  # fmt: skip
                print(f"{name}: training ...", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(done.read_text())
            if res.get("settings", {}) != custom.get(v, {}):
                sys.exit(
                    f"{done}: measured with {res.get('settings')}, not {custom.get(v, {})}; "
                    "delete it or name the variant otherwise"
                )
            want = custom.get(v, {}).get("dropout_masks", masks)
            if res.get("dropout_masks", "bernoulli") != want:
                sys.exit(
                    f"{done}: trained with dropout_masks {res.get('dropout_masks', 'bernoulli')}"
                    f", not {want}; delete it or use another --out"
                )
            runs[v].append(res)
    figures = {v: rs[0] for v, rs in runs.items()}
    base = figures["float32"]
    base_tps = base["tokens"] / base["seconds"]
    by_step = dict(base["losses"])
    print(
        f"{args.run} round {args.round}: {base['examples']} examples, "
        f"{base['steps']} steps, from {base['start'] or 'the base model'}"
    )
    for v in variants:
        f = figures[v]
        tps = f["tokens"] / f["seconds"]
        line = (
            f"{v:>10}: {f['tokens']} tokens in {f['seconds']:.1f}s = {tps:.1f} tok/s "
            f"(measured {f['measured']}, float32 sums in {f['float32_sums']} layers"
            + "".join(f", {k}={val}" for k, val in f.get("settings", {}).items())
            + ")"
        )
        if v != "float32":
            diffs = [loss - by_step[s] for s, loss in f["losses"] if s in by_step]
            last = diffs[-20:]
            line += (
                f", {tps / base_tps:.2f}x float32; loss vs float32: mean {_mean(diffs):+.4f}, "
                f"last 20 steps {_mean(last):+.4f}, largest {max(diffs, key=abs):+.4f}"
            )
        print(line + f"; final loss {f['losses'][-1][1]:.4f}")
    if args.repeats > 1:
        print(f"{args.repeats} alternating repeats, tok/s each (ratio to that repeat's float32):")
        for v in variants:
            tps = [_tps(f) for f in runs[v]]
            line = f"{v:>10}: " + ", ".join(
                f"{t:.1f} ({f['measured']})" for t, f in zip(tps, runs[v], strict=True)
            )
            if v != "float32":
                ratios = [t / _tps(b) for t, b in zip(tps, runs["float32"], strict=True)]
                line += (
                    f" ({', '.join(f'{x:.2f}x' for x in ratios)}); median "
                    f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x"
                )
            print(line)


def _tps(f: dict) -> float:
    return f["tokens"] / f["seconds"]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/precision.py")

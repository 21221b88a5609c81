"""One recipe change, same samples: re-run a run's round 1 from a later stage under `--set`.

    python bench/ab.py --run RUN_DIR --from judge --out AB_DIR --set judge.per_instruction=4
                       [--set key=value ...]

Sampling is much of a round's cost (144 tasks x 8 answers: ~25 min on 2 CPU cores), and it is
also most of a round's noise. This bench copies RUN_DIR's round 1 up to the stage before
`--from` (e.g. propose, augment, respond and filter for `--from judge`) into a fresh run
directory AB_DIR, then runs the loop's round 1 there under RUN_DIR's config plus the `--set`
overrides: every stage from `--from` on (judge, dedup, tune, evaluate, gate) runs again on
exactly the same samples. The run shares RUN_DIR's eval cache, so the base model's answers are
not regenerated.

It prints the new candidate against the base and against RUN_DIR's own round-1 candidate, on
the IF suite (prompt / instruction, strict / loose, paired 95% bootstrap over the prompts, and
the held-out constraint types' prompts), each suite's reference NLL, and the new gate decision.
A killed bench resumes with the same command (AB_DIR is a run directory: its checkpoints hold).
Only round 1: a later round starts from a champion and a pool the copy would have to rebuild.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from improvement import METRICS, compare, fmt  # bench/ is on sys.path: run as a script


def copy_round(run: Path, out: Path, first: str) -> list[str]:
    """Copy run's round-1 stage outputs before `first` into out; the names of those copied (a
    stage switched off, e.g. review, has none)."""
    from loop.stages import PIPELINE

    names = [s.name for s in PIPELINE]
    if first not in names:
        raise SystemExit(f"error: --from {first}: not a stage (one of {', '.join(names)})")
    src, dst = run / "rounds" / "001", out / "rounds" / "001"
    copied = []
    for stage in PIPELINE[: names.index(first)]:
        path = src / stage.done_path
        if not path.exists():
            if stage.switch or stage.optional:
                continue
            raise SystemExit(
                f"error: {src}: stage {stage.name} has not finished; nothing to re-run"
            )
        target = dst / stage.done_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
        copied.append(stage.name)
    return copied


def nll(ev: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, suite in ev.get("suites", {}).items():
        m = (suite.get("metrics") or {}).get("reference_nll") or {}
        if (m.get("overall") or {}).get("value") is not None:
            out[name] = m["overall"]["value"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the run whose round 1 is re-used")
    ap.add_argument("--from", dest="first", default="judge", help="first stage to run again")
    ap.add_argument("--out", type=Path, required=True, help="the new run directory")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value")
    args = ap.parse_args()
    # The loop logs each stage and its progress, as `selfloop run` shows them: hours of work
    # should not be silent.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from judges.augment import DEFAULT_HELD_OUT
    from judges.evals import load_suite
    from loop.config import load_config
    from loop.graph import resume, run

    base_cfg = load_config(args.run / "config.yaml")
    ev_dir = args.run / "rounds" / "001" / "evaluate"
    if (args.out / "config.yaml").is_file():
        resume(args.out)
    else:
        copied = copy_round(args.run, args.out, args.first)
        print(f"copied round 1's {', '.join(copied)} from {args.run}", flush=True)
        cache = base_cfg.eval.cache(args.run).resolve()
        cfg = load_config(
            args.run / "config.yaml",
            ["run.max_rounds=1", f"eval.cache_dir={cache}", *args.sets],
        )
        run(cfg, args.out)

    new_dir = args.out / "rounds" / "001"
    if not (new_dir / "evaluate" / "eval.json").is_file():  # the round ended before evaluating
        raise SystemExit(
            f"{args.out}: round 1 ended without an evaluation; `selfloop show` says why"
        )
    new = json.loads((new_dir / "evaluate" / "eval.json").read_text())
    base = json.loads((new_dir / "evaluate" / "champion_eval.json").read_text())
    old = (
        json.loads((ev_dir / "eval.json").read_text()) if (ev_dir / "eval.json").is_file() else None
    )
    held = {
        r["id"]
        for r in load_suite("if")
        if any(c["type"] in DEFAULT_HELD_OUT for c in r["constraints"])
    }
    print(f"\n== {' '.join(args.sets) or '(no change)'}: {args.out} vs base and vs {args.run}")
    for m in METRICS:
        print(f"  {m:20s} vs base {fmt(compare(base, new, m))}")
        if old is not None:
            print(f"  {'':20s} vs run  {fmt(compare(old, new, m))}")
    print(f"  held-out loose       vs base {fmt(compare(base, new, 'prompt_loose', held))}")
    base_nll, old_nll = nll(base), nll(old or {})
    for suite, v in nll(new).items():
        if (b := base_nll.get(suite)) is not None:
            run_nll = f", the run's {old_nll[suite]:.3f}" if suite in old_nll else ""
            print(f"  {suite} reference NLL {b:.3f} -> {v:.3f} ({v - b:+.3f} nats{run_nll})")
    decision = json.loads((new_dir / "decision.json").read_text())
    print(f"  decision: {decision.get('decision')}")
    for r in decision.get("reasons", []):
        if not r.startswith("ok"):
            print(f"    {r}")


if __name__ == "__main__":
    main()

"""Real rounds of the loop under two backend settings: seconds and tokens/s per stage.

Baseline: `--rounds` rounds (default 1) of `--config` with the `--baseline` settings (default
`model.dtype=float32`, what every CPU ran before `dtype: auto`). Candidate: the same rounds with
the `--candidate` settings (default `model.dtype=auto`: bfloat16 where the CPU computes it
natively, AVX512-BF16 or AMX; float32 elsewhere, where the ratio is 1 by construction). Same
config, same seeds, so the same augmented tasks, seed tasks and eval prompts; each run from a
fresh run directory with its own eval cache (both generate every answer, the base model's
included), one after the other in this process (never two models at once), the candidate
first: with the default settings its run is exactly `selfloop run -c CONFIG`, so its time is
the preset's.

    python bench/round.py [--config configs/smoke.yaml] [--rounds 1] [--out bench-runs/round]
                          [--baseline model.dtype=float32 ...] [--candidate model.dtype=auto ...]
                          [--set key=value ...]

Prints per stage the wall time of each run summed over its rounds (model loading included where
the stage triggered it, as `selfloop show` counts it), the tokens it generated where the stage
records them (propose: the proposal replies; respond: the answers; evaluate: the eval answers of
the candidates and the base, as the run's eval cache holds them) and tokens/s, and the ratio
candidate/baseline (tokens/s where there are tokens, else the inverse ratio of seconds). Then
what each round made of it in each run - kept examples, the verifier's mean pass rate, IF
prompt-level loose of the candidate and the champion, the decision - which should agree within
sampling noise (the greedy paths of bfloat16 and float32 drift apart on long answers). Last
lines: both runs' time and the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from agent.data import read_jsonl

STAGES = ("augment", "propose", "respond", "filter", "judge", "dedup", "tune", "evaluate", "gate")


def stage_tokens(run_dir: Path) -> dict[str, int]:
    """Completion tokens generated per stage over the run's rounds, from what they left on disk."""
    tokens: dict[str, int] = {}
    for stage, name in (("propose", "replies.jsonl"), ("respond", "responses.jsonl")):
        for p in sorted(run_dir.glob(f"rounds/*/{stage}/{name}")):
            tokens[stage] = tokens.get(stage, 0) + sum(
                r.get("completion_tokens") or 0 for r in read_jsonl(p)
            )
    # A fresh run's own eval cache holds exactly the answers its evaluations generated.
    cached = [e for p in sorted(run_dir.glob("eval_cache/outputs-*.jsonl")) for e in read_jsonl(p)]
    tokens["evaluate"] = sum(e.get("completion_tokens") or 0 for e in cached)
    return tokens


def if_loose(path: Path) -> float | None:
    """IF prompt-level loose of one evaluation file (None when the round did not evaluate)."""
    from judges.evals.result import EvalResult

    if not path.is_file():
        return None
    metric = EvalResult.read(path).suites.get("if")
    return round(metric.metrics["prompt_loose"].overall.value, 4) if metric else None


def one_run(config: Path, sets: list[str], run_dir: Path, rounds: int) -> dict[str, Any]:
    """Run `rounds` rounds from a fresh `run_dir`; stage seconds and tokens summed over them."""
    from loop.config import load_config
    from loop.graph import run
    from loop.rundir import RunDir

    if run_dir.exists():
        raise SystemExit(f"error: {run_dir} exists; pick another --out (the runs start fresh)")
    cache = f"eval.cache_dir={run_dir / 'eval_cache'}"
    cfg = load_config(config, [f"run.max_rounds={rounds}", cache, *sets])
    t0 = time.monotonic()
    run(cfg, run_dir)
    total = time.monotonic() - t0
    rd = RunDir(run_dir)
    seconds: dict[str, float] = {}
    for n in range(1, rounds + 1):
        for stage, s in rd.stage_times(n).items():
            seconds[stage] = seconds.get(stage, 0.0) + s
    per_round = []
    for m in rd.read_metrics():
        ev = run_dir / "rounds" / f"{m['round']:03d}" / "evaluate"
        per_round.append(
            {
                "kept": (m.get("dedup") or {}).get("kept"),
                "mean_pass": ((m.get("filter") or {}).get("verifier") or {}).get("mean_pass_rate"),
                "if": if_loose(ev / "eval.json"),
                "if_champion": if_loose(ev / "champion_eval.json"),
                "decision": (m.get("decision") or {}).get("decision"),
            }
        )
    tokens = stage_tokens(run_dir)
    return {"seconds": seconds, "tokens": tokens, "total": total, "rounds": per_round}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/smoke.yaml"))
    ap.add_argument("--out", type=Path, default=Path("bench-runs/round"))
    ap.add_argument("--rounds", type=int, default=1, help="rounds per run (fresh run dirs)")
    ap.add_argument("--baseline", nargs="+", default=["model.dtype=float32"], help="key=value")
    ap.add_argument("--candidate", nargs="+", default=["model.dtype=auto"], help="key=value")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value, both")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from agent.models import native_bf16

    print(f"config {args.config}; native bfloat16 on this CPU: {native_bf16('cpu')}", flush=True)
    runs = {}
    # The candidate first: with the default settings its run is the preset's own time.
    for label, sets in (("candidate", args.candidate), ("baseline", args.baseline)):
        runs[label] = r = one_run(args.config, [*args.sets, *sets], args.out / label, args.rounds)
        print(f"{label} ({' '.join(sets)}): {args.rounds} round(s) in {r['total'] / 60:.1f} min")

    base, cand = runs["baseline"], runs["candidate"]
    print(f"\n{'stage':9} {'baseline':>22} {'candidate':>22}  ratio")
    for stage in STAGES:
        if stage not in base["seconds"] and stage not in cand["seconds"]:
            continue
        cells, rates = [], []
        for r in (base, cand):
            s, tok = r["seconds"].get(stage, 0.0), r["tokens"].get(stage)
            rates.append(tok / s if tok and s else None)
            cells.append(f"{s:6.1f} s" + (f" {tok / s:7.1f} tok/s" if tok and s else " " * 14))
        if all(rates):
            ratio = f"{rates[1] / rates[0]:.2f} (tok/s)"
        elif cand["seconds"].get(stage):
            ratio = f"{base['seconds'].get(stage, 0.0) / cand['seconds'][stage]:.2f} (time)"
        else:
            ratio = "-"
        print(f"{stage:9} {cells[0]:>22} {cells[1]:>22}  {ratio}")
    print("\nwhat the rounds made of it (should agree within sampling noise): baseline, candidate")
    for i, (rb, rc) in enumerate(zip(base["rounds"], cand["rounds"]), 1):
        for key in rb:
            print(f"  round {i} {key:12} {json.dumps(rb[key]):>10} {json.dumps(rc[key]):>10}")
    b, c = sum(base["seconds"].values()), sum(cand["seconds"].values())
    print(f"run time: baseline {b / 60:.1f} min, candidate {c / 60:.1f} min (all stages)")
    print(f"ratio (baseline/candidate run time): {b / c:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/round.py")

"""Does the recipe make the bundled model better? Base model vs final champion, two seeds.

    python bench/improvement.py [--config configs/recipe.yaml] [--rounds 3] [--seeds 0 1]
                                [--out bench-runs/improvement] [--set key=value ...] [--resume]

For each seed, runs the loop from a fresh run directory (`RUN/seed-S`, one after the other:
never two model processes at once), then reads what the runs left on disk:

- the seeds' runs share one eval cache (`OUT/eval_cache`, `eval.cache_dir`), so the base
  model is evaluated once, not once per seed;
- the base model and the final champion (the base again when no round was promoted) are
  evaluated here with the run's eval settings (suites, limits, sampling), through that cache,
  so answers a round already generated are reused, not regenerated;
- IF suite prompt- and instruction-level strict/loose pass rates of both, and the gain with a
  paired 95% bootstrap interval over the prompts both answered; the same for the prompts that
  carry a held-out constraint type (transfer to constraints never trained on);
- every guard of the final champion's decision;
- per round: constrained tasks, samples, mean pass rate, kept examples, pairs, training steps,
  decision, minutes; and the round's candidate as evaluated: IF prompt-level loose vs the base
  (all prompts and the held-out types' slice, paired intervals), vs its champion (the gate's
  test), IF answers cut off at the token limit, response-language accuracy, and the greedy
  step's verdicts on its own greedy answers.

A killed bench continues with the same command plus `--resume`: each seed's run resumes from
its last checkpoint (`selfloop resume`), under the config it started with. A larger `--rounds`
with `--resume` lets finished runs go on to that many rounds (their config's `run.max_rounds`
raised, logged in the run's `config.changes.log`; nothing else of it changes).

The last line is the baseline comparison: the final champion's IF prompt-level loose gain over
the base, per seed. A whole run on 2 CPU cores takes hours; `--rounds 1 --set augment.tasks=6
--set augment.language_tasks=0 --set respond.n=4 ...` makes a smoke run of the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from judges.augment import DEFAULT_HELD_OUT
from judges.evals import load_suite
from judges.evals.metrics import bootstrap_interval
from judges.evals.result import EvalResult

METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def _scores(ev: dict, metric: str, ids: set[str] | None = None) -> dict[str, float]:
    scores = EvalResult.of(ev).scores(f"if.{metric}")
    return {k: v for k, v in scores.items() if ids is None or k in ids}


def compare(base: dict, champ: dict, metric: str, ids: set[str] | None = None) -> dict[str, Any]:
    a, b = _scores(champ, metric, ids), _scores(base, metric, ids)
    common = sorted(set(a) & set(b))
    if not common:
        return {"n": 0}
    diffs = [a[k] - b[k] for k in common]
    ci = bootstrap_interval(diffs, resamples=2000, seed=0)
    return {
        "n": len(common),
        "base": sum(b[k] for k in common) / len(common),
        "champion": sum(a[k] for k in common) / len(common),
        "gain": sum(diffs) / len(diffs),
        "ci": list(ci) if ci else None,
    }


def rounds_table(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for m in (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()):
        v = (m.get("filter") or {}).get("verifier") or {}
        rows.append(
            {
                "round": m["round"],
                "tasks": (m.get("augment") or {}).get("made", 0),
                "samples": v.get("samples", 0),
                "mean_pass": v.get("mean_pass_rate"),
                "best_of_n": v.get("best_of_n"),
                "kept": (m.get("dedup") or {}).get("kept", 0),
                "pairs": v.get("pairs", 0),
                "steps": (m.get("tune") or {}).get("steps", 0),
                "decision": (m.get("decision") or {}).get("decision"),
                "if_loose": (m.get("eval") or {}).get("if.prompt_loose"),  # the candidate's
                "minutes": sum((m.get("seconds") or {}).values()) / 60,
            }
        )
    return rows


def cut_off(ev: dict) -> int:
    """IF answers that ran to the token limit (where a 135M model's greedy answers loop)."""
    items = ev["suites"].get("if", {}).get("items") or []
    return sum(1 for i in items if i.get("finish_reason") == "length")


def per_type(ev: dict) -> dict[str, tuple[float, int]]:
    """Instruction-level loose pass rate and count of each constraint type in the IF suite."""
    m = ev["suites"].get("if", {}).get("metrics", {}).get("instruction_loose", {})
    types = (m.get("slices") or {}).get("constraint_type") or {}
    return {t: (v["value"], v["n"]) for t, v in types.items()}


def candidates(run_dir: Path, base: dict, held: set[str]) -> list[dict[str, Any]]:
    """Each round's candidate as its evaluate stage left it, against the base model (`base`,
    an evaluation as `evaluate` returns it) and, from the round's decision, its champion."""
    rows = []
    for d in sorted((run_dir / "rounds").glob("[0-9][0-9][0-9]")):
        ev_path, dec_path = d / "evaluate" / "eval.json", d / "decision.json"
        if not ev_path.is_file() or not dec_path.is_file():
            continue
        ev, dec = json.loads(ev_path.read_text()), json.loads(dec_path.read_text())
        primary = next((c for c in dec["checks"] if c.get("kind") == "primary"), {})
        lang = (ev["suites"].get("multilingual", {}).get("metrics") or {}).get("language_accuracy")
        greedy = d / "greedy" / "stats.json"
        rows.append(
            {
                "round": int(d.name),
                "vs_base": compare(base, ev, "prompt_loose"),
                "held_out": compare(base, ev, "prompt_loose", held),
                "vs_champion": {k: primary.get(k) for k in ("improvement", "ci")},
                "cut_off": cut_off(ev),
                "language_accuracy": (lang or {}).get("overall", {}).get("value"),
                "greedy": json.loads(greedy.read_text()).get("verdicts")
                if greedy.is_file()
                else None,
                "types": per_type(ev),
            }
        )
    return rows


def summarize(run_dir: Path, cfg: Any) -> dict[str, Any]:
    from agent.backends import make_generator
    from judges.evals.runner import evaluate
    from loop.config import eval_suites
    from loop.gate import decide
    from loop.rundir import RunDir

    rounds = rounds_table(run_dir)
    promoted = [r["round"] for r in rounds if r["decision"] == "promoted"]
    champion = RunDir(run_dir).champion()
    gen = make_generator(cfg.model, cfg.backend)
    common = {
        "cache_dir": cfg.eval.cache(run_dir),
        "sampling": cfg.eval.sampling,
        "limit_per_suite": cfg.eval.limits(),
        "held_out_types": cfg.augment.held_out_types,
    }
    suites = eval_suites(cfg)
    base = evaluate(gen, suites, **common)
    final = evaluate(gen, suites, adapter=champion, **common) if champion else base
    gen.close()
    held = {
        r["id"]
        for r in load_suite("if")
        if any(c["type"] in DEFAULT_HELD_OUT for c in r["constraints"])
    }
    decision = decide(final, base, cfg.gate)  # the gate's guards, final champion vs base
    guards = [c["text"] for c in decision.checks if c.get("kind") != "primary"]
    return {
        "rounds": rounds,
        "candidates": candidates(run_dir, base, held),
        "base_cut_off": cut_off(base),
        "types": {"base": per_type(base), "final": per_type(final)},
        "promoted": promoted,
        "all": {m: compare(base, final, m) for m in METRICS},
        "held_out": {m: compare(base, final, m, held) for m in METRICS},
        "guards": guards,
    }


def fmt(c: dict[str, Any]) -> str:
    if not c.get("n"):
        return "n/a"
    ci = c["ci"] or [float("nan")] * 2
    return (
        f"{c['base']:.3f} -> {c['champion']:.3f}  gain {100 * c['gain']:+.1f} pts "
        f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]  n={c['n']}"
    )


def _pts(gain: float | None, ci: list[float] | None) -> str:
    """A gain and its interval in points; n/a when there is none."""
    if gain is None:
        return "n/a"
    lo, hi = ci or [float("nan")] * 2
    return f"{100 * gain:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def report(seed: int, s: dict[str, Any]) -> None:
    """One seed's summary, printed as soon as its run is done (a later seed may be stopped)."""
    print(f"\n== seed {seed}: promoted rounds {s['promoted'] or 'none'}")
    for r in s["rounds"]:
        print(
            f"  round {r['round']}: tasks {r['tasks']}, samples {r['samples']}, mean pass "
            f"{r['mean_pass']}, best-of-n {r['best_of_n']}, kept {r['kept']}, pairs "
            f"{r['pairs']}, steps {r['steps']}, candidate IF loose {r['if_loose']}, "
            f"{r['decision']}, {r['minutes']:.1f} min"
        )
    print(f"  candidates (IF prompt-level loose; base: {s['base_cut_off']} IF answers cut off):")
    for c in s["candidates"]:
        base_, held, champ = c["vs_base"], c["held_out"], c["vs_champion"]
        lang = c["language_accuracy"]
        print(
            f"    round {c['round']}: vs base {_pts(base_.get('gain'), base_.get('ci'))}, "
            f"held-out {_pts(held.get('gain'), held.get('ci'))}, "
            f"vs champion {_pts(champ.get('improvement'), champ.get('ci'))}, "
            f"cut off {c['cut_off']}, response language "
            f"{'n/a' if lang is None else f'{lang:.3f}'}, greedy answers {c['greedy']}"
        )
    base, final = s["types"]["base"], s["types"]["final"]
    print("  per constraint type (instruction-level loose; H = held out): base -> each round's "
          "candidate -> final champion")  # fmt: skip
    nan = (float("nan"), 0)
    for t in sorted(base, key=lambda t: final.get(t, nan)[0] - base[t][0]):
        rounds = " ".join(f"{c['types'].get(t, nan)[0]:.2f}" for c in s["candidates"])
        print(
            f"    {t:26} {'H' if t in DEFAULT_HELD_OUT else ' '} n={base[t][1]:3}  "
            f"{base[t][0]:.2f} -> {rounds} -> {final.get(t, nan)[0]:.2f}"
        )
    for part in ("all", "held_out"):
        print(f"  IF suite ({part}):")
        for m in METRICS:
            print(f"    {m:20} {fmt(s[part][m])}")
    for g in s["guards"]:
        print(f"  guard: {g}", flush=True)


def _more_rounds(run_dir: Path, rounds: int) -> dict[str, Any]:
    """`resume`'s arguments for a run whose saved max_rounds is below `rounds`: a copy of its
    config with max_rounds raised, kept beside it (the change log names it)."""
    from loop.config import dump_config, load_config

    cfg = load_config(run_dir / "config.yaml")
    if cfg.run.max_rounds >= rounds:
        return {}
    print(f"{run_dir}: run.max_rounds {cfg.run.max_rounds} -> {rounds}", flush=True)
    cfg.run.max_rounds = rounds
    path = run_dir / f"config.max_rounds-{rounds}.yaml"
    path.write_text(dump_config(cfg))
    return {"allow_config_change": True, "config_path": path}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/recipe.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("bench-runs/improvement"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value")
    ap.add_argument("--resume", action="store_true", help="continue the runs already under --out")
    args = ap.parse_args()
    # The loop logs each stage and its progress, as `selfloop run` shows them: hours of work
    # should not be silent.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from loop.config import load_config
    from loop.graph import resume, run

    results = {}
    for seed in args.seeds:
        run_dir = args.out / f"seed-{seed}"
        t0 = time.monotonic()
        if args.resume and (run_dir / "config.yaml").is_file():
            # Under the config the run started with (--set does not apply), its rounds raised
            # to --rounds when that is more.
            resume(run_dir, **_more_rounds(run_dir, args.rounds))
            print(f"seed {seed}: {run_dir} resumed, {(time.monotonic() - t0) / 60:.1f} min")
            results[seed] = summarize(run_dir, load_config(run_dir / "config.yaml"))
            report(seed, results[seed])
            continue
        if run_dir.exists():
            raise SystemExit(
                f"error: {run_dir} exists; pick another --out (runs start fresh) or --resume"
            )
        sets = [
            f"run.max_rounds={args.rounds}",
            f"augment.seed={seed}",
            f"tune.seed={seed}",
            f"respond.sampling.seed={seed}",
            f"eval.cache_dir={args.out / 'eval_cache'}",
            *args.sets,
        ]
        cfg = load_config(args.config, sets)
        run(cfg, run_dir)
        print(f"seed {seed}: {run_dir} in {(time.monotonic() - t0) / 60:.1f} min", flush=True)
        results[seed] = summarize(run_dir, cfg)
        report(seed, results[seed])

    gains = [100 * s["all"]["prompt_loose"].get("gain", 0.0) for s in results.values()]
    print(
        "\nIF prompt-level loose, final champion vs base model: "
        + ", ".join(f"seed {k} {g:+.1f} pts" for k, g in zip(results, gains))
    )


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/improvement.py")

"""Which training objective makes the most of one round's data? SFT vs DPO/RPO vs GRPO, same data.

    python bench/objectives.py --run RUN_DIR [--round N] [--objectives rpo grpo sft]
                               [--out bench-runs/objectives] [--set tune.key=value ...]
                               [--add RUN_DIR:ROUND ...] [--suites if helpfulness domains]
                               [--max-passes K] [--sample N] [--repair K]

RUN_DIR is a finished loop run of the verifier recipe (`selfloop run configs/recipe.yaml --out
RUN_DIR`); its round N (default: the last one with filter outputs) is the data. For each
objective the bench trains what the loop's tune stage would train under that objective
(`loop.stages.tune.training_data`: the kept answers for sft, the verifier's pass-vs-fail pairs
for dpo / rpo, the prompts passed only sometimes for grpo), from the champion the round started
from, with the run's tune settings (plus `--set`), into `OUT/<objective>/adapter`. Each adapter
is then evaluated on `--suites` (default: the IF suite and the two the general-ability guards
read, helpfulness and domains) with the run's eval settings through the run's eval cache (the
champion's answers are not regenerated), and compared with the champion, paired, on every IF
prompt, on the prompts with trained constraint types only and on those with a held-out type
(transfer); the run's gate then decides on the pair as the loop would (guards of suites not
evaluated are skipped).

`--add RUN_DIR:ROUND` pools another round's own data for the same objective (its kept answers,
pairs or prompts, not its run's pool; it must have started from the same champion): several
draws of one round's sampling, e.g. both seeds' rounds of a `bench/improvement.py` run that
promoted nothing, are what one round with that many times the tasks would have trained on - the
data-volume question without paying for the sampling again.

`--max-passes K` (sft) trains only on answers to prompts whose n samples passed at most K
times (their round's `filter/pass_rates.jsonl`): does an answer the model gives most of the
time anyway teach it anything, or is it the rarely passed prompts' answers that move it?
`--sample N` trains on a seeded random N of the pooled data instead: the same-volume control.
`--repair K` (sft) adds, for each pooled round's prompts that no sample passed (the round's
own, the earlier rounds a fresh adapter trains on, the added ones), up to K of their
failing answers rewritten to keep the constraints they missed (`judges.repair`, as
`augment.repair` does with K = judge.per_instruction), where the rewrite passes every
constraint and the quality filters: can repaired answers, in volume, teach the types the model
never passes by itself?

One model process at a time; a killed bench re-run with the same command reuses
every adapter and evaluation it finished (an objective's `eval.json`); each `--set` combination
has its own directory (`OUT/round-NNN/rpo+learning_rate=2e-4`), so a sweep is one command per
setting.

The last lines are the comparison: per objective, the gain in IF prompt-level loose pass rate
over the round's champion, with its paired 95% bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

from improvement import METRICS, compare, fmt  # bench/ is on sys.path: run as a script

OBJECTIVES = ["sft", "dpo", "rpo", "grpo"]


def variant(objective: str, sets: list[str]) -> str:
    """The directory name of one objective under `--set` overrides (rpo, rpo+learning_rate=2e-4),
    so a sweep keeps each setting's adapter and evaluation apart."""
    tail = "+".join(re.sub(r"[^\w.=,-]+", "_", x.removeprefix("tune.")) for x in sets)
    return f"{objective}+{tail}" if tail else objective


def starting_champion(rundir: Any, n: int) -> Path | None:
    """The adapter round `n` started from: the last promoted round before it (None: the base)."""
    before = rundir.promoted_rounds(before=n)
    return rundir.adapter_dir(max(before)) if before else None


def last_data_round(rundir: Any) -> int:
    rounds = sorted(
        int(d.name) for d in rundir.root.joinpath("rounds").iterdir() if d.name.isdigit()
    )
    for n in reversed(rounds):
        if rundir.stage_done(n, "filter"):
            return n
    raise SystemExit(f"error: {rundir.root}: no round has finished its filter stage")


def pooled_round(spec: str, champion: Path | None) -> tuple[Any, int]:
    """`RUN_DIR:ROUND` of `--add` as (RunDir, round); its round must have started from
    `champion` (the same model sampled the data)."""
    from loop.rundir import RunDir

    path, _, k = spec.rpartition(":")
    if not path or not k.isdigit():
        raise SystemExit(f"error: --add {spec!r}: expected RUN_DIR:ROUND")
    other = RunDir(Path(path)).require_run()
    if starting_champion(other, int(k)) != champion:
        raise SystemExit(f"error: --add {spec}: that round started from another champion")
    return other, int(k)


def hard_only(records: list[dict[str, Any]], rundir: Any, max_passes: int) -> list[dict]:
    """The SFT `records` of `rundir` whose prompt passed at most `max_passes` of its samples in
    the record's own round (a record without a pass rate - an anchor, a seed - is kept)."""
    from loop.stages.base import read_if
    from loop.stages.filter import PASS_RATES

    passed: dict[tuple[int, str], int] = {}
    for k in {r["round"] for r in records if "round" in r}:
        for rate in read_if(rundir.stage_dir(k, "filter") / PASS_RATES):
            passed[(k, rate["prompt_id"])] = int(rate["passed"])
    return [
        r
        for r in records
        if passed.get((r.get("round", -1), r.get("instruction_id", "")), 0) <= max_passes
    ]


def repaired(rundir: Any, n: int, cfg: Any, per_prompt: int) -> list[dict[str, Any]]:
    """Round `n`'s failing answers to prompts no sample passed, up to `per_prompt` of each
    repaired (never into a held-out type) where the rewrite passes every constraint and the
    filter stage's quality filters."""
    from judges.repair import repair_unpassed
    from loop.stages.base import read_if
    from loop.stages.filter import KEPT, REJECTED, response_filters

    d = rundir.stage_dir(n, "filter")
    kept, rejected = read_if(d / KEPT), read_if(d / REJECTED)
    failing = [r for r in rejected if r.get("filter_reason") == "failed_constraint"]
    chain = response_filters(cfg.filters)
    new, _, types = repair_unpassed(
        kept,
        failing,
        never=cfg.augment.held_out_types,
        clean=lambda r: chain.check(r) is None,  # one record: no log line each
        per_prompt=per_prompt,
    )
    before = {str(r["id"]) for r in kept}  # a run with augment.repair on kept some already
    made = [r for r in new if r.get("repaired") and str(r["id"]) not in before]
    print(f"{rundir.root.name} round {n}: {len(made)} repaired answers ({types})", flush=True)
    return made


def slices(suite: list[dict[str, Any]], held_out: list[str]) -> dict[str, set[str] | None]:
    held = {r["id"] for r in suite if any(c["type"] in held_out for c in r["constraints"])}
    return {"all": None, "trained": {r["id"] for r in suite} - held, "held_out": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run of the recipe")
    ap.add_argument("--round", type=int, default=None, help="default: the last with data")
    ap.add_argument("--objectives", nargs="+", default=["rpo", "grpo", "sft"], choices=OBJECTIVES)
    ap.add_argument("--out", type=Path, default=Path("bench-runs/objectives"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="tune.key=value")
    ap.add_argument(
        "--add", action="append", default=[], metavar="RUN_DIR:ROUND", help="pool this data too"
    )
    ap.add_argument("--suites", nargs="+", default=["if", "helpfulness", "domains"])
    ap.add_argument(
        "--max-passes",
        type=int,
        default=None,
        metavar="K",
        help="sft: only answers to prompts passed at most K times by their samples",
    )
    ap.add_argument("--sample", type=int, default=None, metavar="N", help="a random N of the data")
    ap.add_argument(
        "--repair", type=int, default=0, metavar="K", help="sft: add K repaired answers per prompt"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("selfloop").setLevel(logging.INFO)  # training and generation progress

    from agent.backends import make_generator
    from judges.dedup import Pool
    from judges.evals.result import EvalResult, write_eval
    from judges.evals.runner import evaluate
    from loop.config import eval_suites, load_config
    from loop.gate import decide
    from loop.progress import training_progress
    from loop.rundir import RunDir
    from loop.stages.tune import fit, near_eval_seeds, training_data

    rundir = RunDir(args.run).require_run()
    n = args.round or last_data_round(rundir)
    champion = starting_champion(rundir, n)
    every = eval_suites(load_config(rundir.config_path))
    if "if" not in args.suites or set(args.suites) - set(every):
        raise SystemExit(f"error: --suites must name 'if' and suites of {sorted(every)}")
    suites = {name: every[name] for name in args.suites}
    added = [pooled_round(spec, champion) for spec in args.add]
    common: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    base_eval = None
    for objective in args.objectives:
        cfg = load_config(rundir.config_path, [f"tune.objective={objective}", *args.sets])
        common = {
            "cache_dir": cfg.eval.cache(rundir.root),
            "sampling": cfg.eval.sampling,
            "limit_per_suite": cfg.eval.limits(),
            "held_out_types": cfg.augment.held_out_types,
        }
        tags = [f"add={r.root.name}-{k}" for r, k in added]
        if args.max_passes is not None:
            tags.append(f"max_passes={args.max_passes}")
        if args.sample is not None:
            tags.append(f"sample={args.sample}")
        if args.repair:
            tags.append(f"repair={args.repair}")
        name = variant(objective, args.sets + tags)
        out = args.out / f"round-{n:03d}" / name
        adapter, ev_path = out / "adapter", out / "eval.json"
        row: dict[str, Any] = {"examples": 0, "steps": 0, "minutes": 0.0}  # minutes training
        exclude = near_eval_seeds(cfg, lambda c=cfg.dedup: Pool(None, c).embedder)
        data, init = training_data(rundir, cfg.tune, n, champion, cfg.run.seeds_file, exclude)
        sft = cfg.tune.objective == "sft"
        own = sorted({int(r["round"]) for r in data if "round" in r} | {n})  # before --add
        if sft and args.max_passes is not None:
            data = hard_only(data, rundir, args.max_passes)
        for other, k in added:  # the round's own data: the pool and anchors are in `data` once
            if sft:
                more = other.input_records(k, "tune")
                keep = args.max_passes
                data += more if keep is None else hard_only(more, other, keep)
            else:  # pairs / sometimes-passed prompts: per round already
                data += training_data(other, cfg.tune, k, champion)[0]
        if sft and args.repair:  # every round whose answers are pooled: this one, the run's
            # earlier ones a fresh adapter trains on (carry_rejected), and the added ones
            for r, k in [*((rundir, k) for k in own), *added]:
                data += repaired(r, k, cfg, args.repair)
        if args.sample is not None and args.sample < len(data):
            data = random.Random(f"sample/{args.sample}").sample(data, args.sample)
        row["examples"] = len(data)
        if not data:
            print(f"{name}: nothing to train on in round {n}", flush=True)
            results[name] = row
            continue
        if not adapter.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            fit(cfg, data, adapter, init, n, [training_progress(f"{name} training")])
        metrics = json.loads((adapter / "train_metrics.json").read_text())
        row["steps"], row["minutes"] = metrics["steps"], metrics["seconds"] / 60
        if not ev_path.is_file():
            gen = make_generator(cfg.model, cfg.backend)
            try:
                write_eval(ev_path, evaluate(gen, suites, adapter=adapter, **common))
                if base_eval is None:
                    base_eval = evaluate(gen, suites, adapter=champion, **common)
            finally:
                gen.close()
        row["eval"] = EvalResult.read(ev_path)
        results[name] = row
        print(f"{name}: {row['examples']} examples, {row['steps']} steps", flush=True)

    if base_eval is None:  # every objective's eval was cached: the champion's is too
        cfg = load_config(rundir.config_path)
        gen = make_generator(cfg.model, cfg.backend)
        try:
            base_eval = evaluate(gen, suites, adapter=champion, **common)
        finally:
            gen.close()
    parts = slices(suites["if"][1], common.get("held_out_types", []))
    print(f"\n== round {n} of {rundir.root}, from {champion or 'the base model'}")
    for name, row in results.items():
        print(f"{name}: {row['examples']} examples, {row['steps']} steps, {row['minutes']:.0f} min")
        if "eval" not in row:
            continue
        for part, ids in parts.items():
            print(f"  IF suite ({part}):")
            for m in METRICS:
                print(f"    {m:20} {fmt(compare(base_eval, row['eval'], m, ids))}")
    print("\nIF prompt-level loose, each objective vs the round's champion; the gate's verdict:")
    gate = load_config(rundir.config_path).gate
    for name, row in results.items():
        if "eval" in row:
            print(f"  {name:5} {fmt(compare(base_eval, row['eval'], 'prompt_loose'))}")
            for check in decide(EvalResult.of(row["eval"]), EvalResult.of(base_eval), gate).checks:
                print(f"      {'pass' if check['passed'] else 'FAIL'}: {check['text']}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/objectives.py")

"""Can preference pairs against the model's own greedy failures teach it to stop looping?

    python bench/greedy_pairs.py --run RUN_DIR [--round N] [--out bench-runs/greedy-pairs]
                                 [--objective rpo|dpo] [--per-prompt K] [--set tune.key=value ...]
                                 [--suites if helpfulness domains] [--start sft|final]
                                 [--skip-start-eval]

The IF suite is answered greedily, and greedy decoding is where a 135M model loops: 46% of the
base's IF answers run to the 400-token limit (most of them one line repeated), and those pass
at 0.20 against 0.36 for the answers that stop. The recipe's SFT data are temperature-1.0
samples that stopped and passed, so SFT never sees the loop it should leave. This bench asks
whether a second step on top of the round's SFT adapter (the SFT -> DPO order of Tulu 3) helps:

1. the round's adapter (RUN_DIR/rounds/N/adapter, trained on rounds 1..N's verified answers)
   answers every task those rounds sampled, greedily, at the respond stage's `max_tokens`;
2. a greedy answer that is cut off, fails the quality filters (repetitive...) or fails a
   constraint strictly is a rejected answer; each is paired with up to K (`--per-prompt`) of
   the verified answers the adapter was trained on for that task (TRL-format pairs);
3. trl's DPOTrainer (`--objective`, rpo by default: plus the NLL of the chosen answer) trains
   from the round's adapter, which is also the reference, with the settings of the loop's step
   (`tune.greedy_learning_rate`, `greedy_epochs`, `greedy_batch_size`, loop.stages.tune.
   greedy_step_config) plus `--set` (e.g. `--set tune.greedy_epochs=2`), so the bench's step
   with the run's settings is the loop's;
4. the result is evaluated on `--suites` through the run's eval cache and compared, paired on
   every IF prompt, with the base model (the run's first champion) and with the round's SFT
   adapter, with the share of IF answers cut off at the eval's token limit for each.

The loop does this after sft by default (`tune.greedy_pairs`, loop/stages/tune.py); on a run
that did, this bench starts from the round's `greedy/sft_adapter`, so it can try other settings
of the step (`--set tune.greedy_learning_rate=...`, `--per-prompt`, `--set
tune.greedy_match=length`) on the same sft adapter.

`--start final` asks whether the step is worth doing twice (iterative, on-policy DPO): it starts
from the round's final adapter (after the loop's own greedy step), answers the same tasks
greedily again, pairs the failures that remain against the same verified answers and trains
the step once more from that adapter (the reference), compared with it and with the base: what
the loop's `tune.greedy_steps: 2` does in that round.

One model process at a time; a re-run with the same command reuses the greedy answers, the
trained adapter and the evaluation (`OUT/<variant>/`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from improvement import METRICS, compare, cut_off, fmt  # bench/ is on sys.path: run as a script
from objectives import last_data_round, slices, starting_champion, variant


def cut_off_share(ev: dict[str, Any]) -> str:
    items = ev["suites"]["if"].get("items") or []
    return f"{cut_off(ev)}/{len(items)} cut off" if items else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run of the recipe (SFT rounds)")
    ap.add_argument("--round", type=int, default=None, help="default: the last with data")
    ap.add_argument("--out", type=Path, default=Path("bench-runs/greedy-pairs"))
    ap.add_argument("--objective", choices=["rpo", "dpo"], default="rpo")
    ap.add_argument("--per-prompt", type=int, default=2, metavar="K")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="tune.key=value")
    ap.add_argument("--suites", nargs="+", default=["if", "helpfulness", "domains"])
    ap.add_argument(
        "--start",
        choices=["sft", "final"],
        default="sft",
        help="the adapter the step starts from: the round's sft adapter (the loop's step), or "
        "its final adapter (a second step after the loop's)",
    )
    ap.add_argument(
        "--skip-start-eval",
        action="store_true",
        help="do not evaluate the adapter the step started from (the sft adapter is in no eval "
        "cache: about 10 minutes); compare with the base (and, from sft, the loop's step)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("selfloop").setLevel(logging.INFO)

    from agent.backends import make_generator
    from agent.data import read_jsonl, write_jsonl
    from judges.dedup import Pool
    from judges.evals.result import EvalResult, write_eval
    from judges.evals.runner import evaluate
    from judges.preference import greedy_pairs
    from loop.config import eval_suites, load_config
    from loop.gate import decide
    from loop.progress import training_progress
    from loop.rundir import RunDir
    from loop.stages.filter import response_filters
    from loop.stages.tune import (
        GREEDY,
        SFT_ADAPTER,
        fit,
        greedy_answers,
        greedy_repairer,
        greedy_step_config,
        greedy_tasks,
        near_eval_seeds,
        training_data,
    )

    rundir = RunDir(args.run).require_run()
    n = args.round or last_data_round(rundir)
    sft_adapter = rundir.adapter_dir(n)
    if (rundir.round_dir(n) / GREEDY / SFT_ADAPTER).is_dir():  # the loop did the step
        sft_adapter = rundir.round_dir(n) / GREEDY / SFT_ADAPTER
    start = rundir.adapter_dir(n) if args.start == "final" else sft_adapter
    for path in {sft_adapter, start}:
        if not (path / "adapter_config.json").is_file():
            raise SystemExit(f"error: {path}: round {n} has no trained adapter")
    # what trained the round's adapter: "sft" when the loop's step made no pairs (or never ran)
    done = json.loads((rundir.adapter_dir(n) / "train_metrics.json").read_text()).get("objective")
    # --start final is a second step: only after exactly one step of the loop's
    if args.start == "final" and (
        start == sft_adapter or done == "sft" or (sft_adapter.parent / "step-2").exists()
    ):
        raise SystemExit(f"error: --start final: round {n}'s adapter is not the one "
                         "preference step after sft (no greedy step, no pairs, or "
                         "tune.greedy_steps > 1 already)")  # fmt: skip
    champion = starting_champion(rundir, n)
    base_cfg = load_config(rundir.config_path)
    if base_cfg.tune.objective != "sft":
        raise SystemExit(f"error: {rundir.config_path}: the run must train sft (its adapter is "
                         "what the pairs start from)")  # fmt: skip
    cfg = load_config(rundir.config_path, [f"tune.greedy_objective={args.objective}", *args.sets])
    step = cfg.model_copy(update={"tune": greedy_step_config(cfg.tune)})  # as the loop trains it
    every = eval_suites(cfg)
    if "if" not in args.suites or set(args.suites) - set(every):
        raise SystemExit(f"error: --suites must name 'if' and suites of {sorted(every)}")
    suites = {name: every[name] for name in args.suites}
    tags = [*args.sets, f"k={args.per_prompt}"] + (["start=final"] if args.start == "final" else [])
    out = args.out / f"round-{n:03d}" / variant(args.objective, tags)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "cache_dir": cfg.eval.cache(rundir.root),
        "sampling": cfg.eval.sampling,
        "limit_per_suite": cfg.eval.limits(),
        "held_out_types": cfg.augment.held_out_types,
    }

    # What the round's SFT adapter trained on, and the tasks it came from.
    exclude = near_eval_seeds(base_cfg, lambda c=base_cfg.dedup: Pool(None, c).embedder)
    chosen, _ = training_data(rundir, base_cfg.tune, n, champion, base_cfg.run.seeds_file, exclude)
    chosen = [r for r in chosen if r.get("constraints")]
    tasks = greedy_tasks(rundir, chosen)
    greedy_path = (
        args.out / f"round-{n:03d}" / f"greedy{'-final' if args.start == 'final' else ''}.jsonl"
    )
    gen = None
    try:
        if greedy_path.is_file():
            greedy = read_jsonl(greedy_path)
        else:
            gen = make_generator(cfg.model, cfg.backend)
            name = gen.load_adapter(start, args.start)
            greedy, _ = greedy_answers(gen, name, tasks, cfg, n)
            write_jsonl(greedy_path, greedy)
        pairs, verdicts = greedy_pairs(
            greedy,
            chosen,
            response_filters(cfg.filters).check,
            args.per_prompt,
            cfg.tune.greedy_match,  # --set tune.greedy_match=length
            greedy_repairer(cfg, response_filters(cfg.filters).check),  # tune.greedy_repair
        )
        print(f"round {n}: {len(tasks)} tasks, {len(chosen)} verified answers; "
              f"greedy answers: {verdicts}; {len(pairs)} pairs", flush=True)  # fmt: skip
        write_jsonl(out / "pairs.jsonl", pairs)
        adapter, ev_path = out / "adapter", out / "eval.json"
        if not adapter.is_dir():
            if gen is not None:
                gen.close()
                gen = None
            fit(step, pairs, adapter, start, n, [training_progress(f"{out.name} training")])
        if gen is None:
            gen = make_generator(cfg.model, cfg.backend)
        if not ev_path.is_file():
            write_eval(ev_path, evaluate(gen, suites, adapter=adapter, **common))
        base_eval = evaluate(gen, suites, adapter=champion, **common)
        # The adapter the step started from: the sft adapter, or with --start final the loop's
        # candidate (in the eval cache); then the sft adapter, which the loop never evaluates
        # (about 10 minutes), is left out.
        start_eval = None
        if not args.skip_start_eval:
            start_eval = evaluate(gen, suites, adapter=start, **common)
        # The loop's own step on the same sft adapter, when it took one (its candidate's
        # answers are in the eval cache): the setting this variant changes, paired.
        loop_eval = None
        if args.start == "sft" and done != "sft":  # the step made pairs
            loop_eval = evaluate(gen, suites, adapter=rundir.adapter_dir(n), **common)
    finally:
        if gen is not None:
            gen.close()
    new = json.loads(ev_path.read_text())
    metrics = json.loads((adapter / "train_metrics.json").read_text())
    parts = slices(suites["if"][1], common["held_out_types"])
    print(f"\n== {out}: {len(pairs)} pairs, {metrics['steps']} steps, "
          f"{metrics['seconds'] / 60:.0f} min; final {metrics.get('preference')}")  # fmt: skip
    started = "the round's sft adapter" if args.start == "sft" else "the round's final adapter"
    print(f"IF answers: base {cut_off_share(base_eval)}, {args.objective} "
          f"{cut_off_share(new)}")  # fmt: skip
    refs = [("base", base_eval)]
    if start_eval is not None:
        refs.append((started, start_eval))
        print(f"IF answers: {args.start} {cut_off_share(start_eval)}")
    if loop_eval is not None:
        refs.append(("the loop's step (the run's round adapter)", loop_eval))
        print(f"IF answers: the loop's step {cut_off_share(loop_eval)}")
    for label, ref in refs:
        print(f"vs {label}:")
        for part, ids in parts.items():
            print(f"  IF suite ({part}):")
            for m in METRICS:
                print(f"    {m:20} {fmt(compare(ref, new, m, ids))}")
    print("\nthe gate's verdict vs the base:")
    for check in decide(EvalResult.of(new), EvalResult.of(base_eval), cfg.gate).checks:
        print(f"  {'pass' if check['passed'] else 'FAIL'}: {check['text']}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/greedy_pairs.py")

"""Dedup on real rounds: the old default (all-MiniLM-L6-v2, cosine 0.85 + contrast) against the
default (all-mpnet-base-v2 + the paraphrase band), replaying finished runs' dedup stages.

    python bench/dedup_rounds.py RUN_DIR [RUN_DIR ...] [--show]

The labelled pairs (bench/dedup_quality.py) are single requests; a round of the recipe
deduplicates constrained tasks (a task plus constraint sentences), where the likeness of two
tasks' constraint sentences can lift them into the band. For every round of each run that has
a dedup stage, in order, both configurations do what the stage does with that round's input:
the eval-prompt and seed guards, then dedup of each instruction's first answer against a pool
grown from that configuration's own earlier rounds (starting empty: a run's pool is not read).
Prints per round the input, the instructions decided, kept, dropped (of which from the band)
and the seconds each took in this process (the first round includes embedding the eval
prompts, kept after that: `Embedder.encode_kept`); `--show` lists the default's drops with
their neighbours. No model is trained or run: only the two embedders.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from judges.dedup import DedupConfig, Pool, dedup, near  # noqa: E402
from judges.embed import Embedder  # noqa: E402

OLD = DedupConfig(model="all-minilm-l6-v2", paraphrase_threshold=None)


def replay(run: Path, show: bool) -> None:
    from agent.seeds import load_seed_tasks
    from loop.config import eval_prompts, load_config
    from loop.rundir import RunDir
    from loop.stages.dedup import by_instruction

    rd = RunDir(run).require_run()
    cfg = load_config(rd.config_path)
    evals = eval_prompts(cfg)
    seeds = [(f"seed/{t.id}", t.instruction) for t in load_seed_tasks(cfg.run.seeds_file)]
    configs = {"old default": OLD, "default": DedupConfig()}
    pools = {k: Pool(None, c, embedder(c.model)) for k, c in configs.items()}
    rounds = sorted(int(p.name) for p in (run / "rounds").iterdir() if (p / "dedup").is_dir())
    for n in rounds:
        records = rd.input_records(n, "dedup")
        print(f"{run} round {n}: {len(records)} records in")
        for name, config in configs.items():
            pool = pools[name]
            start = time.perf_counter()
            contaminated = near(records, evals, pool.embedder, config)
            rest = [r for r in records if r["id"] not in contaminated]
            fresh = [r for r in rest if r.get("origin") != "augment"]
            copies = near(fresh, seeds, pool.embedder, config)
            leads, _ = by_instruction([r for r in rest if r["id"] not in copies])
            report = dedup(leads, pool, config)
            seconds = time.perf_counter() - start
            pool.add(report.kept, report.kept_vectors)
            s = report.summary()
            print(
                f"  {name:12} guards {len(contaminated)} eval, {len(copies)} seed | "
                f"{len(leads)} instructions: kept {s['kept']}, dropped {s['dropped']} "
                f"(band {s['dropped_as_paraphrase']}), pool {s['pool_size']} | {seconds:.1f} s"
            )
            if show and config is configs["default"]:
                text = {r["id"]: r["instruction"] for r in leads}
                text.update(zip(pool.ids, pool.texts))
                for d in report.dropped:
                    print(f"    {d.similarity:.2f} {d.record['instruction'][:100]!r}")
                    print(f"         ~ {text.get(d.neighbour_id, '?')[:100]!r}")


_EMBEDDERS: dict[str, Embedder] = {}


def embedder(model: str) -> Embedder:
    """One embedder a model for the whole bench, so the eval prompts are embedded once."""
    if model not in _EMBEDDERS:
        _EMBEDDERS[model] = Embedder(model, device="cpu")
    return _EMBEDDERS[model]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories with finished rounds")
    ap.add_argument("--show", action="store_true", help="list the default's drops")
    args = ap.parse_args()
    for run in args.runs:
        replay(run, args.show)


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/dedup_rounds.py")

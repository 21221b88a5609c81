"""The evaluate stage's generation under two backend settings, at the main job's suite sizes.

`bench/round.py` times whole rounds of the smoke preset, whose suites (6-40 prompts each) are
too small to fill a ragged batch of 64 rows. This bench times what a round of the main job
evaluates: the base model on the config's suites with its eval settings (default config: every
IF, domain and multilingual prompt, 24 helpfulness and safety prompts, 400 tokens, greedy, the
reference answers scored), as the evaluate stage calls `judges.evals.runner.evaluate`.

Baseline: `--baseline` settings (default: float32, static length-bucketed batches of 16, the
oneDNN head and shared prefixes off: what every CPU ran before `dtype: auto`, ragged decoding
and the later decoding work). Candidate: `--candidate` settings (default: none, the defaults).
Each from its own fresh eval cache, so both generate every answer; one after the other in this
process (never two models at once), the candidate first.

    python bench/evaluate.py [--config FILE] [--suites if,domains] [--limit N] [--out DIR]
                             [--baseline key=value ...] [--candidate key=value ...] [--set ...]

Prints, per run, the answers and completion tokens it generated, the seconds spent in the
backend's `generate` calls (generation tokens/s) and in the whole evaluation (model load and
the reference answers' scoring included), then each suite's headline metrics for both runs
(which should agree within the drift of bfloat16 and float32 greedy paths on long answers),
and last the ratios candidate/baseline: generation tokens/s, and whole-evaluation time.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

from agent.data import read_jsonl

OLD = [
    "model.dtype=float32",
    "backend.batching=static",
    "backend.batch_size=16",
    "backend.onednn_head=false",
    "backend.share_prefix=false",
]


def one_eval(
    config: Path | None, sets: list[str], cache: Path, suites: list[str] | None, limit: int | None
) -> dict[str, Any]:
    """Evaluate the base model once from a fresh eval cache under `sets`; time, tokens, scores."""
    from agent.backends import SamplingParams, make_generator
    from judges.evals.result import EvalResult
    from judges.evals.runner import evaluate
    from loop.config import eval_suites, load_config

    if cache.exists():
        raise SystemExit(f"error: {cache} exists; pick another --out (each run starts fresh)")
    cfg = load_config(config, sets)
    chosen = eval_suites(cfg)
    if suites:
        unknown = sorted(set(suites) - set(chosen))
        if unknown:
            raise SystemExit(f"error: --suites {','.join(unknown)}: not among {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in suites}
    limits = cfg.eval.limits() if limit is None else limit
    t0 = time.monotonic()
    gen = make_generator(cfg.model, cfg.backend)
    generating = [0.0]
    inner = gen.generate

    def timed(*args: Any, **kwargs: Any) -> Any:  # the decoding alone, not load or scoring
        t = time.monotonic()
        try:
            return inner(*args, **kwargs)
        finally:
            generating[0] += time.monotonic() - t

    gen.generate = timed  # type: ignore[method-assign]
    try:
        ev = evaluate(
            gen,
            chosen,
            cache_dir=cache,
            sampling=SamplingParams.model_validate(cfg.eval.sampling.model_dump()),
            limit_per_suite=limits,
            held_out_types=cfg.augment.held_out_types,
        )
    finally:
        gen.close()
    seconds = time.monotonic() - t0
    del gen
    gc.collect()
    counts = ev["run"]["candidate"]
    if counts["cached"]:
        raise SystemExit(f"error: {counts['cached']} answers came from a cache; expected none")
    cached = [e for p in sorted(cache.glob("outputs-*.jsonl")) for e in read_jsonl(p)]
    answers = [e for e in cached if e.get("kind") == "response"]  # not the references' scores
    scores = {
        f"{s}.{m}": v.overall.value
        for s, suite in EvalResult.of(ev).suites.items()
        for m, v in suite.metrics.items()
    }
    return {
        "seconds": seconds,
        "generating": generating[0],
        "generated": counts["generated"],
        "answers": len(answers),
        "tokens": sum(e.get("completion_tokens") or 0 for e in answers),
        "scores": scores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=None, help="default: the built-in defaults")
    ap.add_argument("--suites", default="", help="comma-separated subset of the config's suites")
    ap.add_argument("--limit", type=int, default=None, help="prompts per suite (default: config)")
    ap.add_argument("--out", type=Path, default=Path("bench-runs/evaluate"))
    ap.add_argument("--baseline", nargs="+", default=OLD, help="key=value")
    ap.add_argument("--candidate", nargs="*", default=[], help="key=value")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value, both")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from agent.models import native_bf16

    suites = [s.strip() for s in args.suites.split(",") if s.strip()] or None
    print(f"config {args.config or 'defaults'}; native bfloat16 on this CPU: {native_bf16('cpu')}")
    for label in ("candidate", "baseline"):  # both refused before either runs
        if (args.out / label).exists():
            raise SystemExit(f"error: {args.out / label} exists; pick another --out")
    runs = {}
    for label, sets in (("candidate", args.candidate), ("baseline", args.baseline)):
        r = one_eval(args.config, [*args.sets, *sets], args.out / label, suites, args.limit)
        runs[label] = r
        print(
            f"{label} ({' '.join(sets) or 'defaults'}): {r['generated']} answers, "
            f"{r['tokens']} tokens; generating {r['generating']:.1f} s = "
            f"{r['tokens'] / r['generating']:.1f} tok/s; the whole evaluation {r['seconds']:.1f} s",
            flush=True,
        )
    base, cand = runs["baseline"], runs["candidate"]
    print("\nscores (should agree within the dtypes' drift): baseline, candidate")
    for key in base["scores"]:
        b, c = base["scores"][key], cand["scores"].get(key)
        print(f"  {key:34} {json.dumps(b and round(b, 4)):>8} {json.dumps(c and round(c, 4)):>8}")
    whole = base["seconds"] / cand["seconds"]
    print(f"whole evaluation, time ratio (baseline/candidate): {whole:.2f}")
    rate = [r["tokens"] / r["generating"] for r in (base, cand)]
    print(f"ratio (candidate/baseline generation tok/s): {rate[1] / rate[0]:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/evaluate.py")

"""Collect real proposal replies from the bundled model as fixtures for the list parser.

Runs the real `agent.construct.propose` (the prompt the loop uses, `ProposeConfig`'s default
sampling: temperature 0.9, top_p 0.95, max_tokens 400) on the bundled SmolLM2-135M-Instruct through
the batched transformers backend, over a few rounds: round 1 from the seed pool alone, round 2
also showing tasks accepted in round 1 (Self-Instruct's 6 + 2), round 3 steered to other domains
and languages. Each call's raw reply is written as one JSON line with its plan (round, call,
shown example ids, domain, language), the sampling settings, finish reason and token count.

Hand labels survive a re-run: a line of the existing output whose round, call and text are
unchanged keeps its `expected` (the parser's exact required output) and `expected_includes`
(items that must be among the parsed ones) fields, checked by tests/agent/test_construct.py.
The fixture in tests/assets was made with

    SELFLOOP_CACHE_DIR=/tmp/selfloop-cache HF_HUB_OFFLINE=1 \\
        python bench/collect_replies.py --out tests/assets/proposal_replies.jsonl

on 2 shared CPU cores (torch 2.13.0 CPU): 48 replies in 3 batches of 16, 132-585 s a batch
depending on what else ran; the labels were then added by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from agent.backends.hf import TransformersGenerator
from agent.construct import ProposeConfig, propose
from agent.seeds import load_seed_tasks

# (round, config overrides, show tasks accepted in the previous round?)
ROUNDS: list[tuple[int, dict[str, Any], bool]] = [
    (1, {}, False),
    (2, {}, True),
    (
        3,
        {
            "domains": {"healthcare": 1, "law": 1, "finance": 1, "coding": 1},
            "languages": {"en": 1, "es": 1, "fr": 1, "de": 1},
        },
        True,
    ),
]


def collect(
    generator: TransformersGenerator, calls: int, rounds: int = len(ROUNDS)
) -> list[dict[str, Any]]:
    """Raw replies of `calls` proposal calls per round, each with its plan and sampling."""
    seeds = [s.model_dump() for s in load_seed_tasks()]
    accepted: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for round_index, overrides, show_accepted in ROUNDS[:rounds]:
        cfg = ProposeConfig(calls=calls, **overrides)
        t0 = time.perf_counter()
        proposals, stats = propose(
            generator, seeds, accepted if show_accepted else [], cfg, round_index
        )
        logging.info(
            "round %d: %d replies, %d proposals, %.0fs",
            round_index,
            len(stats["replies"]),
            len(proposals),
            time.perf_counter() - t0,
        )
        for reply in stats["replies"]:
            rows.append({
                "id": f"r{round_index}-c{reply['call']:02d}",
                "round": round_index,
                **reply,
                "sampling": stats["sampling"],
                "model": generator.model_name,
            })  # fmt: skip
        # The next round shows what this one proposed, as the loop does with its accepted pool.
        accepted = proposals
    return rows


LABELS = ("expected", "expected_includes")


def keep_labels(rows: list[dict[str, Any]], old: Path) -> int:
    """Copy hand labels from `old` onto rows with the same round, call and text; how many."""
    if not old.is_file():
        return 0
    labels = {}
    for line in old.read_text().splitlines():
        rec = json.loads(line)
        found = {k: rec[k] for k in LABELS if k in rec}
        if found:
            labels[(rec["round"], rec["call"], rec["text"])] = found
    kept = 0
    for r in rows:
        found = labels.get((r["round"], r["call"], r["text"]))
        if found:
            r.update(found)
            kept += 1
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--calls", type=int, default=16, help="proposal calls per round")
    ap.add_argument("--rounds", type=int, default=len(ROUNDS), choices=range(1, len(ROUNDS) + 1))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("tests/assets/proposal_replies.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    gen = TransformersGenerator(args.model, batch_size=args.batch_size)
    rows = collect(gen, args.calls, args.rounds)
    kept = keep_labels(rows, args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    cut = sum(r["finish_reason"] == "length" for r in rows)
    print(f"{len(rows)} replies ({cut} cut at max_tokens) to {args.out}; {kept} labels kept")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/collect_replies.py")

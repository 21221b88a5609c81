"""dedup: the contamination guard (nothing near an eval prompt is trained on), the seed guard (a
proposal that copies a seed task adds nothing, as Self-Instruct found), then FAISS dedup against
the pool and within the batch. Every drop names what it was too close to."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.data import write_examples
from loop.accounting import account
from loop.config import eval_prompts
from loop.context import Context, LoopState
from loop.rundir import write_json
from loop.stages.base import STATS, Drop, Stage, fmt, read_if

log = logging.getLogger(__name__)

KEPT, DROPPED, GUARDED = "kept.jsonl", "dropped.jsonl", "guarded.jsonl"


def run(ctx: Context, state: LoopState) -> dict:
    from agent.seeds import load_seed_tasks
    from judges.dedup import dedup, near

    n = state["round"]
    if ctx.rundir.stage_done(n, "dedup"):
        return {"kept": ctx.rundir.stage_stats(n, "dedup")["kept"]}
    records = ctx.rundir.input_records(n, "dedup")
    # The guards run before dedup so a near-duplicate group never loses its only survivor to one.
    # The eval guard applies to constrained tasks too: a constraint does not make an eval prompt
    # fair to train on.
    evals = eval_prompts(ctx.cfg)
    seeds = [(f"seed/{t.id}", t.instruction) for t in load_seed_tasks(ctx.cfg.run.seeds_file)]
    pool = ctx.pool()
    if ctx.cfg.tune.carry_rejected:
        # Rejected rounds' examples are training data too: later rounds must not duplicate them.
        # Added here rather than at reject, so a run that turns the setting on when resumed
        # catches up (an id already in the pool is skipped).
        carried = [r for r in ctx.rundir.accepted(before=n, rejected=True) if r["id"] not in pool]
        if carried:
            pool.add(carried)
    contaminated = near(records, evals, pool.embedder, ctx.cfg.dedup)
    rest = [r for r in records if r["id"] not in contaminated]
    # A constrained copy of a seed (augment) is new by its constraints: only proposals that
    # copy a seed are dropped.
    copies = near(
        [r for r in rest if r.get("origin") != "augment"], seeds, pool.embedder, ctx.cfg.dedup
    )
    guarded = [
        {**r, "guard": guard, **hits[r["id"]]}
        for guard, hits in (("eval_prompt", contaminated), ("seed", copies))
        for r in records
        if r["id"] in hits
    ]
    candidates = [r for r in rest if r["id"] not in copies]
    # Several answers to one instruction (judge.per_instruction) share its text, which is what
    # dedup embeds: it decides on the instruction's first (best) answer, and the others follow it.
    leads, followers = by_instruction(candidates)
    report = dedup(
        leads,
        pool,
        ctx.cfg.dedup,
        scores={r["id"]: r["judge_score"] for r in leads if "judge_score" in r},
    )
    decided = [x for r in report.kept for x in (r, *followers.get(r["id"], ()))]
    dup_records = [
        x
        for d in report.dropped_records()
        for x in (d, *({**f, **_dedup_keys(d)} for f in followers.get(d["id"], ())))
    ]
    # An id already in the pool was learned by an earlier round: it is not new data.
    known = [r for r in decided if r["id"] in pool]
    kept = [r for r in decided if r["id"] not in pool]
    dropped = {
        "contaminated": len(contaminated),
        "copies_seed": len(copies),
        "duplicate": len(dup_records),
        "already_in_pool": len(known),
    }
    with ctx.rundir.writing_stage(n, "dedup") as out:
        write_examples(out / KEPT, kept)
        write_examples(
            out / DROPPED,
            dup_records + [{**r, "dedup_where": "already_in_pool"} for r in known],
        )
        write_examples(out / GUARDED, guarded)
        write_json(
            out / STATS,
            {
                "dedup": report.summary(),
                "contaminated": {k: v["guard_similarity"] for k, v in contaminated.items()},
                "copies_seed": {k: v["guard_similarity"] for k, v in copies.items()},
                "kept": len(kept),
                "followers": sum(len(v) for v in followers.values()),
                "account": account("dedup", len(records), len(kept), dropped),
            },
        )
    log.info(
        "round %d dedup: %d kept (%d duplicates, %d near eval prompts, %d copy seeds)",
        n,
        len(kept),
        len(report.dropped),
        len(contaminated),
        len(copies),
    )
    return {"kept": len(kept)}


def by_instruction(records: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    """The first record of each instruction (in order), and per first record's id the later
    records answering the same instruction."""
    from judges.preference import prompt_id

    first: dict[str, dict] = {}
    followers: dict[str, list[dict]] = {}
    for r in records:
        lead = first.setdefault(prompt_id(r), r)
        if lead is not r:
            followers.setdefault(lead["id"], []).append(r)
    return list(first.values()), followers


def _dedup_keys(d: dict) -> dict:
    return {k: v for k, v in d.items() if k.startswith("dedup_")}


def summary(d: dict) -> str:
    dd = d.get("dedup") or {}
    return (
        f"{d.get('kept', 0)} kept; duplicates {dd.get('dropped', 0)} "
        f"(pool {dd.get('dropped_vs_pool', 0)}, batch {dd.get('dropped_vs_batch', 0)}; "
        f"as paraphrases {dd.get('dropped_as_paraphrase', 0)}), "
        f"already_in_pool {dd.get('already_in_pool', 0)}, "
        f"kept by contrast {dd.get('kept_by_contrast', 0)}, "
        f"contaminated {len(d.get('contaminated') or {})}, "
        f"copies_seed {len(d.get('copies_seed') or {})}"
    )


_GUARDS = {
    "eval_prompt": ("contaminated", "near an eval prompt"),
    "seed": ("copies_seed", "copies a seed"),
}


def drops(stage_dir: Path) -> list[Drop]:
    out: list[Drop] = []
    for r in read_if(stage_dir / DROPPED):
        if r.get("dedup_where") == "already_in_pool":
            why = "already in the pool"
        else:
            why = f"dedup dup of {r.get('dedup_neighbour')} sim {fmt(r.get('dedup_similarity'), 3)}"
        out.append(("dedup", why, r))
    for r in read_if(stage_dir / GUARDED):
        key, label = _GUARDS[r["guard"]]
        why = f"dedup {label} {r.get('guard_neighbour')} sim {fmt(r.get('guard_similarity'), 3)}"
        out.append((key, why, r))
    return out


STAGE = Stage(
    name="dedup",
    run=run,
    writes=(KEPT, DROPPED, GUARDED, STATS),
    reads=("judge", "pool.jsonl", "pool.faiss"),
    records=KEPT,
    accounted=True,
    proceed=lambda s: s.get("kept", 0) > 0,  # nothing new kept: nothing to tune on
    summary=summary,
    drops=drops,
)

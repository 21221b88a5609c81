"""augment: constraint augmentation as a data source (with `run.sources` containing
`constraints`). Base tasks - the seed tasks that carry no constraints, `augment.base_tasks`'
instructions, tasks already learned (the pool) and this round's filtered proposals - get 1-3
verifiable constraints each (`judges.augment`), so every answer to them can be checked; with
fewer bases than `augment.tasks` a base is constrained again with other constraints (up to 4
times). The stage passes the round's proposals on unchanged and adds the constrained tasks
after them."""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any

from agent.data import write_examples
from loop.context import Context, LoopState
from loop.rundir import write_json
from loop.stages.base import STATS, Stage, counts

log = logging.getLogger(__name__)

TASKS = "tasks.jsonl"
# How often one base task may be constrained in a round when bases are fewer than `tasks`.
MAX_DRAWS_PER_BASE = 4


def run(ctx: Context, state: LoopState) -> dict:
    from judges.augment import augment_task, is_language_task
    from judges.filters import FilterChain

    n = state["round"]
    if ctx.rundir.stage_done(n, "augment"):
        return {}
    proposals = ctx.rundir.input_records(n, "augment")
    made: list[dict[str, Any]] = []
    level: dict[str, Any] = {}
    guarded: dict[str, dict[str, Any]] = {}
    unfit: Counter[str] = Counter()
    weights: dict[str, float] | None = None
    if "constraints" in ctx.cfg.run.sources:
        # The filter stage applies the instruction rules to every answered task again: a task
        # they reject would cost n samples for nothing (seen: a seed with a blacklisted word).
        rules = FilterChain(ctx.cfg.filters)
        cfg, level = curriculum(ctx, n)
        weights = type_weights(ctx, n, cfg)
        pool = base_tasks(ctx, proposals)
        # A fresh order each round, the same on a re-run of the round.
        random.Random(f"{cfg.seed}/{n}").shuffle(pool)
        pool = [(k, t) for k, t in pool if (t.get("language") or "en") in cfg.languages]
        seen: set[str] = set()
        # With fewer base tasks than `tasks` (round 1 has only the seeds), each base is drawn
        # again with other constraints: the probe's round kept 30 of 48 tasks otherwise, and
        # the same question under different constraints is still a different lesson.
        for draw in range(MAX_DRAWS_PER_BASE):
            before = len(made)
            for kind, task in pool:
                if len(made) >= cfg.tasks:
                    break
                salt = f"/r{n}" if draw == 0 else f"/r{n}/d{draw}"
                out = augment_task(task, cfg, salt=salt, weights=weights)
                if out is None or out["id"] in seen:
                    continue
                rejected = rules.check(out, instructions_only=True)
                if rejected is not None:
                    unfit[rejected.reason] += 1
                    continue
                seen.add(out["id"])
                made.append({**out, "round": n, "stage": "augment", "base_kind": kind})
            if len(made) >= cfg.tasks or len(made) == before:
                break
        if cfg.language_tasks:
            made += language_tasks(ctx, cfg, proposals, n, rules, unfit)
        # Pairs and pass rates are made from these tasks before dedup's guard runs: a task near
        # an eval prompt is dropped here, so no answer to it is ever trained on.
        guarded = _near_eval(ctx, made)
        made = [t for t in made if t["id"] not in guarded]
    types = Counter(c["type"] for t in made for c in t["constraints"])
    with ctx.rundir.writing_stage(n, "augment") as out:
        write_examples(out / TASKS, [*proposals, *made])
        write_json(
            out / STATS,
            {
                "proposals": len(proposals),
                "made": len(made),
                "language_tasks": sum(map(is_language_task, made)),
                "bases": dict(Counter(t["base_kind"] for t in made)),
                "constraint_types": dict(types),
                "constraints_per_task": dict(Counter(len(t["constraints"]) for t in made)),
                "contaminated": {k: v["guard_neighbour"] for k, v in guarded.items()},
                "unfit": dict(unfit),  # drawn, but the instruction filters would drop them
                **({"curriculum": level} if level else {}),
                **({"type_weights": _rounded(weights)} if weights else {}),
            },
        )
    log.info("round %d augment: %d constrained tasks (%s)", n, len(made), counts(types))
    return {}


def language_tasks(
    ctx: Context, cfg: Any, proposals: list[dict], n: int, rules: Any, unfit: Counter[str]
) -> list[dict[str, Any]]:
    """Up to `augment.language_tasks` tasks not in English, asked as written with the answer's
    language checked (`judges.augment.language_task`): seed tasks without constraints of their
    own and this round's proposals, those no earlier round's data came from first (a task asked
    again would give answers dedup drops as near-copies of the first ones); a fresh order each
    round, the same on a re-run."""
    from agent.seeds import load_seed_tasks
    from judges.augment import language_task

    bases = [
        ("seed", {**s.model_dump(), "id": s.id})
        for s in load_seed_tasks(ctx.cfg.run.seeds_file)
        if not s.constraints
    ]
    bases += [("proposal", p) for p in proposals if not p.get("constraints")]
    random.Random(f"{cfg.seed}/{n}/language").shuffle(bases)
    asked = {r.get("base_id") for r in ctx.rundir.accepted(before=n, rejected=True)}
    bases.sort(key=lambda kt: kt[1]["id"] in asked)  # stable: the fresh ones first
    made: list[dict[str, Any]] = []
    for kind, task in bases:
        if len(made) >= cfg.language_tasks:
            break
        out = language_task(task)
        if out is None or any(t["id"] == out["id"] for t in made):
            continue
        if (rejected := rules.check(out, instructions_only=True)) is not None:
            unfit[rejected.reason] += 1
            continue
        made.append({**out, "round": n, "stage": "augment", "base_kind": kind})
    return made


def curriculum(ctx: Context, n: int) -> tuple[Any, dict[str, Any]]:
    """This round's augment config and its constraint level (min, max per task, and why).

    The level starts at the config's and moves by one from the last round's: a prompt the model
    always or never passes gives no preference pair (no passing or no failing answer), so when a
    quarter or more of the last round's verified prompts were always passed (and more than were
    never passed) tasks get one constraint more, and in the opposite case one fewer (1 to 3)."""
    cfg = ctx.cfg.augment
    lo, hi = cfg.min_constraints, cfg.max_constraints
    if not cfg.curriculum or n <= 1:
        return cfg, {"min": lo, "max": hi, "step": 0, "why": "the configured level"}
    last = (ctx.rundir.stage_stats(n - 1, "augment") or {}).get("curriculum") or {}
    lo, hi = last.get("min", lo), last.get("max", hi)
    verified = (ctx.rundir.stage_stats(n - 1, "filter") or {}).get("verifier") or {}
    prompts = verified.get("prompts") or 0
    always, never = verified.get("always", 0), verified.get("never", 0)
    step, why = 0, f"round {n - 1}: {always} always, {never} never passed of {prompts} prompts"
    if prompts and always > never and always >= prompts / 4:
        step = 1
    elif prompts and never > always and never >= prompts / 4:
        step = -1
    lo, hi = min(3, max(1, lo + step)), min(3, max(1, hi + step))
    level = {"min": lo, "max": hi, "step": step, "why": why}
    return cfg.model_copy(update={"min_constraints": lo, "max_constraints": hi}), level


def type_weights(ctx: Context, n: int, cfg: Any) -> dict[str, float] | None:
    """Draw weights per training type for `augment.focus: learnable` (None: uniform draws):
    learnability of each type's pass rate in the latest earlier round that drew it (the filter
    stage's per-type rates)."""
    from judges.augment import learnability

    if cfg.focus != "learnable" or n <= 1:
        return None
    rates: dict[str, float] = {}
    for k in range(n - 1, 0, -1):
        verified = (ctx.rundir.stage_stats(k, "filter") or {}).get("verifier") or {}
        for t, p in (verified.get("type_pass_rate") or {}).items():
            rates.setdefault(t, p)
    return learnability(cfg.drawn_types(), rates)


def _rounded(weights: dict[str, float]) -> dict[str, float]:
    return {t: round(w, 4) for t, w in sorted(weights.items(), key=lambda kv: -kv[1])}


def _near_eval(ctx: Context, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from judges.dedup import near
    from loop.config import eval_prompts

    if not tasks:
        return {}
    return near(tasks, eval_prompts(ctx.cfg), ctx.pool().embedder, ctx.cfg.dedup)


def base_tasks(ctx: Context, proposals: list[dict]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, task) candidates to constrain: seeds without constraints or input of their own,
    `augment.base_tasks`' instructions, learned tasks (by their unconstrained base instruction),
    this round's proposals."""
    from agent.seeds import load_base_tasks, load_seed_tasks
    from judges.augment import unconstrained

    out: list[tuple[str, dict[str, Any]]] = [
        ("seed", {**s.model_dump(), "id": s.id})
        for s in load_seed_tasks(ctx.cfg.run.seeds_file)
        if not s.constraints and not s.input
    ]
    if (where := ctx.cfg.augment.base_tasks) is not None:
        bases = load_base_tasks(None if where == "bundled" else where)
        if skipped := [t for t in bases if t.language not in ctx.cfg.augment.languages]:
            log.warning(
                "augment.base_tasks: %d of %s's %d tasks are in languages augment.languages "
                "leaves out (%s); they are not drawn",
                len(skipped), where, len(bases), ", ".join(sorted({t.language for t in skipped})),
            )  # fmt: skip
        out += [("base", t.model_dump()) for t in bases]
    for r in ctx.rundir.accepted():
        if not r.get("input") and (base := unconstrained(r)):
            out.append(("pool", {**r, "id": r.get("base_id") or r["id"], "instruction": base}))
    out += [("proposal", p) for p in proposals if not p.get("input") and not p.get("constraints")]
    return out


def summary(s: dict[str, Any]) -> str:
    level = s.get("curriculum")
    moved = {1: "harder", -1: "easier", 0: "kept"}.get((level or {}).get("step"), "")
    line = (
        f"{s.get('made', 0)} constrained tasks from {counts(s.get('bases'))}"
        + (f" ({s['language_tasks']} of them language tasks)" if s.get("language_tasks") else "")
        + "; "
        f"types: {counts(s.get('constraint_types'))}"
    )
    if level:
        line += f"; {level['min']}-{level['max']} constraints ({moved}: {level['why']})"
    return line


STAGE = Stage(
    name="augment",
    run=run,
    writes=(TASKS, STATS),
    reads=("propose", "run.seeds_file", "augment.base_tasks", "pool"),
    records=TASKS,
    optional=True,  # a round begun before augment existed goes on from propose's tasks
    summary=summary,
)

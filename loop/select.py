"""The selecting stages of a round: filter (heuristics, safety, verifiable constraints), judge
(best of n by the LLM judge) and dedup (eval-prompt and seed guards, then FAISS). Each keeps what
passes, writes every drop with its reason, and records an `account` that adds up (loop.accounting).
Like every stage, each is idempotent and writes its directory atomically (see loop.nodes).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

from agent.data import read_examples, write_examples, write_jsonl
from loop.accounting import account
from loop.config import eval_suites
from loop.context import Context, LoopState, stage_stats
from loop.rundir import write_json

log = logging.getLogger(__name__)


def filter_stage(ctx: Context, state: LoopState) -> dict:
    from judges.filters import FilterChain
    from judges.safety import REFUSED, SafetyFilter
    from judges.verifiable import check

    n = state["round"]
    if ctx.rundir.stage_done(n, "filter"):
        return {}
    records = read_examples(ctx.rundir.stage_dir(n, "respond") / "responses.jsonl")
    # The ROUGE-L rule (if on) already ran on the instructions when they were proposed, against
    # the seeds and the pool; here it would drop the 2nd..nth response to the same instruction.
    cfg = ctx.cfg.filters
    report = FilterChain(
        cfg.model_copy(update={"rouge": cfg.rouge.model_copy(update={"enabled": False})})
    ).run(records)
    safety = SafetyFilter(
        ctx.cfg.safety, judge=ctx.judge_model(state) if ctx.cfg.safety.llm else None
    ).run(report.kept)
    kept, failed_checks = [], []
    for r in safety.kept:
        if r.get("safety") == REFUSED:
            kept.append(r)  # a refusal answers a harmful ask: its format constraints do not apply
            continue
        results = check(r["response"], r.get("constraints") or [], mode="strict")
        failed = next((x for x in results if not x.passed), None)
        if failed is None:
            kept.append(r)
        else:
            failed_checks.append(
                {
                    **r,
                    "filter_reason": "failed_constraint",
                    "filter_detail": f"{failed.type}: {failed.reason}",
                    "failed_constraint": failed.type,
                }
            )
    rejected = (
        report.rejected_records()
        + [
            {**rec, "filter_reason": reason, "filter_detail": detail}
            for rec, reason, detail in safety.dropped
        ]
        + failed_checks
    )
    by_type = Counter(r["failed_constraint"] for r in failed_checks)
    dropped = Counter(report.counts) + Counter(r for _, r, _ in safety.dropped)
    dropped.update({f"failed_constraint:{t}": k for t, k in by_type.items()})
    with ctx.rundir.writing_stage(n, "filter") as out:
        write_examples(out / "filtered.jsonl", kept)
        write_examples(out / "rejected.jsonl", rejected)
        write_json(
            out / "stats.json",
            {
                "filters": report.summary(),
                "safety": safety.summary(),
                "failed_constraint": len(failed_checks),
                "failed_constraint_types": dict(by_type),
                "failed_constraint_samples": _samples(failed_checks, "failed_constraint"),
                "kept": len(kept),
                "account": account("filter", len(records), len(kept), dropped),
            },
        )
    log.info("round %d filter: %d of %d kept", n, len(kept), len(records))
    return {}


def judge(ctx: Context, state: LoopState) -> dict:
    from judges.llm_judge import LLMJudge, summarize_scores

    n = state["round"]
    if ctx.rundir.stage_done(n, "judge"):
        return {}
    records = read_examples(ctx.rundir.stage_dir(n, "filter") / "filtered.jsonl")
    judge_ = LLMJudge(ctx.judge_model(state), ctx.cfg.judge.rubric)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("instruction_id", r["id"]), []).append(r)
    out_ = (
        judge_.best_of_n(groups)
        if groups
        else {"best": {}, "preference_pairs": [], "judgements": {}, "unjudged": []}
    )
    verdicts = out_["judgements"]
    scores = {k: j.score for k, j in verdicts.items()}
    ranked = sorted(
        ({**r, "judge_score": scores[r["id"]]} for r in out_["best"].values()),
        key=lambda r: -r["judge_score"],
    )
    top = math.ceil(len(ranked) * ctx.cfg.judge.keep_top)
    best, low = [], []
    for k, rec in enumerate(ranked):
        (best if k < top and rec["judge_score"] >= ctx.cfg.judge.min_score else low).append(rec)
    # Every candidate that is not its instruction's best is kept on disk with why: beaten by a
    # sibling (`not_best`), or its judgement failed (`unjudged`, with the outcome and error).
    picked = {r["id"] for r in ranked}
    not_best, unjudged = [], []
    for r in records:
        if r["id"] in picked:
            continue
        v = verdicts[r["id"]]
        if v.score is None:
            unjudged.append({**r, "judge_outcome": v.outcome, "judge_error": v.error})
        else:
            not_best.append({**r, "judge_score": v.score})
    dropped = {"low_score": len(low), "not_best": len(not_best), "unjudged": len(unjudged)}
    with ctx.rundir.writing_stage(n, "judge") as out:
        write_examples(out / "judged.jsonl", best)
        write_examples(out / "low_score.jsonl", low)
        write_examples(out / "not_best.jsonl", not_best)
        write_examples(out / "unjudged.jsonl", unjudged)
        write_jsonl(out / "preference_pairs.jsonl", out_["preference_pairs"])
        write_json(
            out / "stats.json",
            {
                "scores": summarize_scores(list(verdicts.values())),
                "best": len(out_["best"]),
                "kept": len(best),
                "dropped_low_score": len(low),
                "not_best": len(not_best),
                "unjudged": len(unjudged),
                "unjudged_groups": len(out_["unjudged"]),
                "unjudged_samples": _samples(unjudged, "judge_outcome"),
                "min_score": ctx.cfg.judge.min_score,
                "keep_top": ctx.cfg.judge.keep_top,
                "judge_model": ctx.judge_name(),
                "account": account("judge", len(records), len(best), dropped),
            },
        )
    log.info(
        "round %d judge: %d best-of-n, %d kept (top %.0f%%, score >= %.1f), %d unjudged",
        n,
        len(ranked),
        len(best),
        100 * ctx.cfg.judge.keep_top,
        ctx.cfg.judge.min_score,
        len(unjudged),
    )
    return {}


def dedup_stage(ctx: Context, state: LoopState) -> dict:
    from agent.seeds import load_seed_tasks
    from judges.dedup import dedup

    n = state["round"]
    if ctx.rundir.stage_done(n, "dedup"):
        return {"kept": stage_stats(ctx.rundir.stage_dir(n, "dedup"))["kept"]}
    records = read_examples(ctx.rundir.stage_dir(n, "judge") / "judged.jsonl")
    # Eval prompts must never be trained on (contamination); a proposal that copies a seed task
    # it was shown adds nothing (Self-Instruct compares against the seeds for the same reason).
    # The guards run before dedup so a near-duplicate group never loses its only survivor to one.
    evals = [
        (f"{name}/{r['id']}", r["prompt"])
        for name, (_, suite) in eval_suites(ctx.cfg).items()
        for r in suite
    ]
    seeds = [(f"seed/{t.id}", t.instruction) for t in load_seed_tasks(ctx.cfg.run.seeds_file)]
    contaminated = _near(ctx, records, evals)
    copies = _near(ctx, [r for r in records if r["id"] not in contaminated], seeds)
    # Like every dedup drop, each guarded one names what it was too close to.
    guarded = [
        {**r, "guard": guard, **hits[r["id"]]}
        for guard, hits in (("eval_prompt", contaminated), ("seed", copies))
        for r in records
        if r["id"] in hits
    ]
    candidates = [r for r in records if r["id"] not in contaminated and r["id"] not in copies]
    pool = ctx.pool()
    report = dedup(
        candidates, pool, ctx.cfg.dedup, scores={r["id"]: r["judge_score"] for r in candidates}
    )
    # An id already in the pool was learned by an earlier round: it is not new data.
    known = [r for r in report.kept if r["id"] in pool]
    kept = [r for r in report.kept if r["id"] not in pool]
    dropped = {
        "contaminated": len(contaminated),
        "copies_seed": len(copies),
        "duplicate": len(report.dropped),
        "already_in_pool": len(known),
    }
    with ctx.rundir.writing_stage(n, "dedup") as out:
        write_examples(out / "kept.jsonl", kept)
        write_examples(
            out / "dropped.jsonl",
            report.dropped_records() + [{**r, "dedup_where": "already_in_pool"} for r in known],
        )
        write_examples(out / "guarded.jsonl", guarded)
        write_json(
            out / "stats.json",
            {
                "dedup": report.summary(),
                "contaminated": {k: v["guard_similarity"] for k, v in contaminated.items()},
                "copies_seed": {k: v["guard_similarity"] for k, v in copies.items()},
                "kept": len(kept),
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


def _samples(records: list[dict], key: str, k: int = 3) -> dict[str, list[dict]]:
    """Up to `k` records per value of `key` (id, instruction and response clipped), to inspect."""
    out: dict[str, list[dict]] = {}
    for r in records:
        bucket = out.setdefault(str(r.get(key)), [])
        if len(bucket) < k:
            bucket.append(
                {
                    "id": r.get("id"),
                    "instruction": str(r.get("instruction", ""))[:200],
                    "response": str(r.get("response", ""))[:200],
                    "detail": r.get("filter_detail") or r.get("judge_error"),
                }
            )
    return out


def _near(
    ctx: Context, records: list[dict], texts: list[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Records whose instruction is within the dedup threshold of one of `texts` ((id, text)
    pairs): record id -> the nearest text's id, the text and the similarity."""
    import numpy as np

    if not records or not texts:
        return {}
    emb = ctx.pool().embedder
    a = emb.encode([r["instruction"] for r in records])
    sims = np.asarray(a @ emb.encode([t for _, t in texts]).T)
    best = sims.argmax(axis=1)
    return {
        r["id"]: {
            "guard_neighbour": texts[j][0],
            "guard_text": texts[j][1],
            "guard_similarity": round(float(sims[i, j]), 4),
        }
        for i, (r, j) in enumerate(zip(records, best))
        if sims[i, j] >= ctx.cfg.dedup.threshold
    }

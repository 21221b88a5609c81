"""One function per stage of a round. Each is idempotent: it writes `rounds/NNN/<stage>/` through
a temporary directory and returns early when that directory already exists, so a resumed run
redoes at most the stage it was killed in (tuning resumes from its own step checkpoints).

Nodes return small state updates (JSON primitives); data lives on disk. Models are loaded lazily
by `Context` and released before training so one model fits where a single model fits.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, TypedDict

from agent.data import read_examples, write_examples, write_jsonl
from loop.config import SelfloopConfig, eval_suites
from loop.faults import failpoint, tune_callbacks
from loop.rundir import RunDir, write_json

log = logging.getLogger(__name__)


class LoopState(TypedDict, total=False):
    round: int  # the round in progress, 1-based
    champion: str | None  # champion adapter, relative to the run dir (None = base model)
    champion_round: int | None
    rejections: int  # rejected rounds in a row
    kept: int  # new examples kept by the current round
    decision: str | None  # "promoted" | "rejected" for the current round
    stop: str | None  # why the run ended


class Context:
    """What the nodes share: config, run directory and lazily loaded models."""

    def __init__(self, cfg: SelfloopConfig, rundir: RunDir) -> None:
        self.cfg, self.rundir = cfg, rundir
        self.stop_requested = False  # set by SIGINT/SIGTERM; checked between stages
        self.where = ""  # "round N stage", for progress displays (set by the graph per node)
        self._student = None
        self._pool = None

    def student(self, state: LoopState) -> Any:
        """The student generator with the champion adapter loaded as 'champion' (if any)."""
        from agent.backends import make_generator

        if self._student is None:
            self._student = self.tracked(make_generator(self.cfg.model, self.cfg.backend))
        champ = state.get("champion")
        if (
            champ
            and hasattr(self._student, "adapters")
            and "champion" not in self._student.adapters
        ):
            self._student.load_adapter(self.rundir.root / champ, "champion")
        return self._student

    def tracked(self, gen: Any) -> Any:
        """`gen` reporting the progress of its generate calls under the current stage."""
        from loop.progress import Tracked

        return Tracked(gen, lambda: self.where)

    def release(self) -> None:
        """Drop loaded models (before training, so the trainer has the memory)."""
        if self._student is not None:
            self._student.close()
        self._student = None

    def pool(self) -> Any:
        from judges.dedup import Pool

        if self._pool is None:
            self._pool = Pool(self.rundir.root, self.cfg.dedup)
        return self._pool


def _adapter(state: LoopState) -> str | None:
    return "champion" if state.get("champion") else None


def _stats(path: Path) -> dict[str, Any]:
    return json.loads((path / "stats.json").read_text())


# ------------------------------------------------------------------------------------ stages
def propose(ctx: Context, state: LoopState) -> dict:
    from agent.construct import propose as run_propose
    from agent.seeds import load_seed_tasks
    from judges.filters import FilterChain

    n = state["round"]
    if ctx.rundir.stage_done(n, "propose"):
        return {}
    seeds = [s.model_dump() for s in load_seed_tasks(ctx.cfg.run.seeds_file)]
    pool_tasks = accepted(ctx.rundir)
    t0 = time.monotonic()
    proposals: list[dict] = []
    stats: dict[str, Any] = {}
    if "self_instruct" in ctx.cfg.run.sources or "teacher" in ctx.cfg.run.sources:
        proposals, stats = run_propose(ctx.student(state), seeds, pool_tasks, ctx.cfg.propose, n)
    # Self-Instruct filters proposals before anyone answers them.
    report = FilterChain(ctx.cfg.filters).run(proposals, instructions_only=True)
    with ctx.rundir.writing_stage(n, "propose") as out:
        write_examples(out / "proposed.jsonl", proposals)
        write_jsonl(out / "replies.jsonl", stats.pop("replies", []))
        write_examples(out / "kept.jsonl", report.kept)
        write_examples(out / "rejected.jsonl", report.rejected_records())
        write_json(
            out / "stats.json",
            {**stats, "filter": report.summary(), "seconds": time.monotonic() - t0},
        )
    log.info(
        "round %d propose: %d proposals, %d pass the instruction filters",
        n,
        len(proposals),
        len(report.kept),
    )
    return {}


def respond(ctx: Context, state: LoopState) -> dict:
    from agent.backends import make_generator
    from agent.construct import respond as run_respond

    n = state["round"]
    if ctx.rundir.stage_done(n, "respond"):
        return {}
    tasks = read_examples(ctx.rundir.stage_dir(n, "propose") / "kept.jsonl")
    params = ctx.cfg.respond.sampling.model_copy(update={"n": ctx.cfg.respond.n})
    t0 = time.monotonic()
    records, stats = [], {}
    if "self_instruct" in ctx.cfg.run.sources:
        records, stats["self"] = run_respond(
            ctx.student(state), tasks, params, adapter=_adapter(state), round_index=n
        )
    if "teacher" in ctx.cfg.run.sources and ctx.cfg.respond.teacher is not None:
        teacher = ctx.tracked(
            make_generator(
                ctx.cfg.respond.teacher, ctx.cfg.respond.teacher_backend or ctx.cfg.backend
            )
        )
        more, stats["teacher"] = run_respond(
            teacher, tasks, params, source="teacher", round_index=n
        )
        for r in more:
            r["id"] = r["id"].replace("-s", "-t", 1)
        records += more
        teacher.close()
    if "import" in ctx.cfg.run.sources and n == 1:
        records += _imported(ctx)
    with ctx.rundir.writing_stage(n, "respond") as out:
        write_examples(out / "responses.jsonl", records)
        write_json(
            out / "stats.json",
            {**stats, "responses": len(records), "seconds": time.monotonic() - t0},
        )
    log.info("round %d respond: %d responses", n, len(records))
    return {}


def filter_stage(ctx: Context, state: LoopState) -> dict:
    from judges.filters import FilterChain
    from judges.safety import SafetyFilter
    from judges.verifiable import check

    n = state["round"]
    if ctx.rundir.stage_done(n, "filter"):
        return {}
    records = read_examples(ctx.rundir.stage_dir(n, "respond") / "responses.jsonl")
    report = FilterChain(ctx.cfg.filters).run(records)
    safety = SafetyFilter(ctx.cfg.safety).run(report.kept)
    kept, failed_checks = [], []
    for r in safety.kept:
        results = check(r["response"], r.get("constraints") or [], mode="strict")
        if all(x.passed for x in results):
            kept.append(r)
        else:
            failed_checks.append(
                {
                    **r,
                    "filter_reason": "failed_constraint",
                    "filter_detail": next(x.reason for x in results if not x.passed),
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
    with ctx.rundir.writing_stage(n, "filter") as out:
        write_examples(out / "filtered.jsonl", kept)
        write_examples(out / "rejected.jsonl", rejected)
        write_json(
            out / "stats.json",
            {
                "filters": report.summary(),
                "safety": safety.summary(),
                "failed_constraint": len(failed_checks),
                "kept": len(kept),
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
    gen = ctx.student(state)  # the student judges itself (Self-Rewarding), base weights
    judge_ = LLMJudge(gen, ctx.cfg.judge.rubric)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("instruction_id", r["id"]), []).append(r)
    out_ = (
        judge_.best_of_n(groups)
        if groups
        else {"best": {}, "preference_pairs": [], "judgements": {}}
    )
    scores = {k: j.score for k, j in out_["judgements"].items()}
    ranked = sorted(
        ({**r, "judge_score": scores[r["id"]]} for r in out_["best"].values()),
        key=lambda r: -r["judge_score"],
    )
    top = math.ceil(len(ranked) * ctx.cfg.judge.keep_top)
    best, low = [], []
    for k, rec in enumerate(ranked):
        (best if k < top and rec["judge_score"] >= ctx.cfg.judge.min_score else low).append(rec)
    with ctx.rundir.writing_stage(n, "judge") as out:
        write_examples(out / "judged.jsonl", best)
        write_examples(out / "low_score.jsonl", low)
        write_jsonl(out / "preference_pairs.jsonl", out_["preference_pairs"])
        write_json(
            out / "stats.json",
            {
                "scores": summarize_scores(list(out_["judgements"].values())),
                "best": len(out_["best"]),
                "kept": len(best),
                "dropped_low_score": len(low),
                "min_score": ctx.cfg.judge.min_score,
                "keep_top": ctx.cfg.judge.keep_top,
            },
        )
    log.info(
        "round %d judge: %d best-of-n, %d kept (top %.0f%%, score >= %.1f)",
        n,
        len(ranked),
        len(best),
        100 * ctx.cfg.judge.keep_top,
        ctx.cfg.judge.min_score,
    )
    return {}


def dedup_stage(ctx: Context, state: LoopState) -> dict:
    from agent.seeds import load_seed_tasks
    from judges.dedup import dedup

    n = state["round"]
    if ctx.rundir.stage_done(n, "dedup"):
        return {"kept": _stats(ctx.rundir.stage_dir(n, "dedup"))["kept"]}
    records = read_examples(ctx.rundir.stage_dir(n, "judge") / "judged.jsonl")
    pool = ctx.pool()
    report = dedup(
        records, pool, ctx.cfg.dedup, scores={r["id"]: r["judge_score"] for r in records}
    )
    # Eval prompts must never be trained on (contamination); a proposal that copies a seed task
    # it was shown adds nothing (Self-Instruct compares against the seeds for the same reason).
    evals = [
        (f"{name}/{r['id']}", r["prompt"])
        for name, (_, records) in eval_suites(ctx.cfg).items()
        for r in records
    ]
    seeds = [(f"seed/{t.id}", t.instruction) for t in load_seed_tasks(ctx.cfg.run.seeds_file)]
    contaminated = _near(ctx, report.kept, evals)
    copies = _near(ctx, [r for r in report.kept if r["id"] not in contaminated], seeds)
    kept = [
        r
        for r in report.kept
        if r["id"] not in contaminated and r["id"] not in copies and r["id"] not in pool
    ]
    # Like every dedup drop, each guarded one names what it was too close to.
    guarded = [
        {**r, "guard": guard, **hits[r["id"]]}
        for guard, hits in (("eval_prompt", contaminated), ("seed", copies))
        for r in report.kept
        if r["id"] in hits
    ]
    with ctx.rundir.writing_stage(n, "dedup") as out:
        write_examples(out / "kept.jsonl", kept)
        write_examples(out / "dropped.jsonl", report.dropped_records())
        write_examples(out / "guarded.jsonl", guarded)
        write_json(
            out / "stats.json",
            {
                "dedup": report.summary(),
                "contaminated": {k: v["guard_similarity"] for k, v in contaminated.items()},
                "copies_seed": {k: v["guard_similarity"] for k, v in copies.items()},
                "kept": len(kept),
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


def review(ctx: Context, state: LoopState) -> dict:
    """With run.review on: write the review files and pause until `selfloop review --accept`
    has written `rounds/NNN/review/` (then the round goes on with the reviewed examples)."""
    if not ctx.cfg.run.review:
        return {}
    from langgraph.types import interrupt

    from loop.review import review_paths, write_review_files

    n = state["round"]
    if not ctx.rundir.stage_done(n, "review"):
        jsonl, csv_path = review_paths(ctx.rundir, n)
        if not jsonl.exists():  # written once: a person may already be editing it
            jsonl, csv_path = write_review_files(ctx.rundir, n)
        log.info("round %d paused for review: edit %s or %s", n, jsonl, csv_path)
        interrupt({"round": n, "review_file": str(jsonl), "review_csv": str(csv_path)})
    return {"kept": _stats(ctx.rundir.stage_dir(n, "review"))["accepted"]}


def tune(ctx: Context, state: LoopState) -> dict:
    from tuners import train

    n = state["round"]
    out = ctx.rundir.round_dir(n) / "adapter"
    if out.is_dir():
        return {}
    kept = round_kept(ctx.rundir, n)
    champion = ctx.rundir.root / state["champion"] if state.get("champion") else None
    if ctx.cfg.tune.warm_start and champion is not None:
        data, init = kept, champion
    else:  # fresh: the whole accepted pool plus this round, from the base model
        data, init = accepted(ctx.rundir) + kept, None
    ctx.release()
    result = train(
        ctx.cfg.model,
        data,
        out,
        ctx.cfg.tune,
        init_adapter=init,
        round_index=n,
        callbacks=tune_callbacks(n),
    )
    log.info("round %d tune: %d steps, final loss %.4f", n, result.steps, result.final_loss)
    return {}


def evaluate(ctx: Context, state: LoopState) -> dict:
    """The candidate's eval (with its pairwise win rate against the champion) and the champion's
    own eval on the same suites, for the gate's guard comparisons. The champion's responses come
    from the eval cache after the first round (see judges.evals.runner)."""
    from judges.evals.runner import evaluate as run_eval

    n = state["round"]
    if ctx.rundir.stage_done(n, "evaluate"):
        return {}
    gen = ctx.student(state)
    champion = ctx.rundir.root / state["champion"] if state.get("champion") else None
    common = {
        "cache_dir": ctx.rundir.root / "eval_cache",
        "max_tokens": ctx.cfg.eval.max_tokens,
        "limit_per_suite": ctx.cfg.eval.limit_per_suite,
    }
    t0 = time.monotonic()
    suites = eval_suites(ctx.cfg)
    cand = run_eval(
        gen,
        suites,
        adapter=ctx.rundir.round_dir(n) / "adapter",
        champion_adapter=champion or "base",
        **common,
    )
    failpoint("evaluate.candidate", n)
    champ = run_eval(gen, suites, adapter=champion, **common)
    with ctx.rundir.writing_stage(n, "evaluate") as out:
        write_json(out / "eval.json", cand)
        write_json(out / "champion_eval.json", champ)
        write_json(out / "stats.json", {"seconds": time.monotonic() - t0})
    return {}


def gate(ctx: Context, state: LoopState) -> dict:
    from loop.gate import decide

    n = state["round"]
    path = ctx.rundir.round_dir(n) / "decision.json"
    if not path.exists():
        ev_dir = ctx.rundir.stage_dir(n, "evaluate")
        cand = json.loads((ev_dir / "eval.json").read_text())
        champ = json.loads((ev_dir / "champion_eval.json").read_text())
        decision = decide(cand, champ, ctx.cfg.gate)
        write_json(path, decision.to_dict())
        log.info("round %d: %s", n, decision.summary)
    return {"decision": json.loads(path.read_text())["decision"]}


def promote(ctx: Context, state: LoopState) -> dict:
    n = state["round"]
    adapter = ctx.rundir.round_dir(n) / "adapter"
    ctx.pool().add(round_kept(ctx.rundir, n))
    ctx.rundir.set_champion(adapter)
    ctx.release()  # the next round loads the new champion
    return {
        "champion": str(adapter.relative_to(ctx.rundir.root)),
        "champion_round": n,
        "rejections": 0,
    }


def reject(ctx: Context, state: LoopState) -> dict:
    n = state["round"]
    path = ctx.rundir.round_dir(n) / "decision.json"
    if not path.exists():  # only when the round ended before the gate
        why = f"rejected: round {n} kept no new examples after filtering, judging and dedup"
        write_json(path, {"decision": "rejected", "promote": False, "reasons": [why], "checks": []})
    return {"rejections": state.get("rejections", 0) + 1, "decision": "rejected"}


def next_round(ctx: Context, state: LoopState) -> dict:
    """Record the round's metrics, decide whether to stop, advance the round counter."""
    n = state["round"]
    if not any(m.get("round") == n for m in ctx.rundir.read_metrics()):
        ctx.rundir.append_metrics(round_metrics(ctx.rundir, n))
    if ctx.cfg.metrics.tensorboard or ctx.cfg.metrics.mlflow:
        from loop.metrics import sync

        sync(ctx.rundir, ctx.cfg.metrics)
    stop = None
    if n >= ctx.cfg.run.max_rounds:
        stop = f"max_rounds ({ctx.cfg.run.max_rounds}) reached"
    elif state.get("rejections", 0) >= ctx.cfg.run.patience:
        stop = f"patience: {state['rejections']} rejected rounds in a row"
    elif state.get("kept", 0) < ctx.cfg.run.min_new_examples:
        stop = f"nothing left to learn: round {n} kept {state.get('kept', 0)} new examples"
    elif _target_reached(ctx, n, state):
        stop = f"target {ctx.cfg.run.target_metric} >= {ctx.cfg.run.target_value} reached"
    if stop:
        log.info("stopping: %s", stop)
        return {"stop": stop}
    return {"round": n + 1, "kept": 0, "decision": None}


def _target_reached(ctx: Context, n: int, state: LoopState) -> bool:
    run = ctx.cfg.run
    if not run.target_metric or run.target_value is None or state.get("decision") != "promoted":
        return False
    node: Any = json.loads((ctx.rundir.stage_dir(n, "evaluate") / "eval.json").read_text())
    for part in run.target_metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, (int, float)) and node >= run.target_value


def round_metrics(rundir: RunDir, n: int) -> dict[str, Any]:
    """One metrics.jsonl record: every stage's counts, training figures, eval overall, decision."""
    rec: dict[str, Any] = {"round": n}
    for stage in ("propose", "respond", "filter", "judge", "dedup", "review"):
        p = rundir.stage_dir(n, stage) / "stats.json"
        if p.exists():
            rec[stage] = json.loads(p.read_text())
    tm = rundir.round_dir(n) / "adapter" / "train_metrics.json"
    if tm.exists():
        t = json.loads(tm.read_text())
        rec["tune"] = {
            k: t[k]
            for k in (
                "steps",
                "final_loss",
                "tokens",
                "seconds",
                "tokens_per_second",
                "peak_memory_mb",
            )
        }
        rec["tune"]["losses"] = t["losses"]
    ev = rundir.stage_dir(n, "evaluate") / "eval.json"
    if ev.exists():
        data = json.loads(ev.read_text())
        rec["eval"] = {
            f"{s}.{m}": v.get("overall", {}).get("value")
            for s, suite in data.get("suites", {}).items()
            for m, v in suite.get("metrics", {}).items()
        }
    dec = rundir.round_dir(n) / "decision.json"
    if dec.exists():
        d = json.loads(dec.read_text())
        rec["decision"] = {"decision": d["decision"], "reasons": d["reasons"]}
    return rec


def round_kept(rundir: RunDir, n: int) -> list[dict]:
    """What round n trains on: the reviewed set when a person reviewed it, else dedup's kept."""
    reviewed = rundir.stage_dir(n, "review") / "kept.jsonl"
    return read_examples(
        reviewed if reviewed.exists() else rundir.stage_dir(n, "dedup") / "kept.jsonl"
    )


def accepted(rundir: RunDir) -> list[dict]:
    """Examples of every promoted round so far (the champion's training data)."""
    out = []
    for m in rundir.read_metrics():
        if m.get("decision", {}).get("decision") == "promoted":
            out += round_kept(rundir, m["round"])
    return out


def _imported(ctx: Context) -> list[dict]:
    from agent.formats import import_file

    out = []
    for path in ctx.cfg.run.import_files:
        for ex in import_file(path).records:
            user = next(m["content"] for m in ex["messages"] if m["role"] == "user")
            answer = ex["messages"][-1]["content"]
            out.append(
                {
                    **ex,
                    "instruction": user,
                    "input": "",
                    "response": answer,
                    "instruction_id": ex["id"],
                    "finish_reason": "stop",
                    "round": 1,
                }
            )
    return out

"""One function per stage of a round. Each is idempotent: it writes `rounds/NNN/<stage>/` through
a temporary directory and returns early when that directory already exists, so a resumed run
redoes at most the stage it was killed in (tuning resumes from its own step checkpoints).

Nodes return small state updates (JSON primitives); data lives on disk. Models are loaded lazily
by `Context` (loop.context) and released before training so one model fits where a single model
fits. Here: propose, respond, review, tune, evaluate, gate, promote/reject, next round; the
selecting stages (filter, judge, dedup) are in loop.select.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from agent.data import read_examples, write_examples, write_jsonl
from loop.accounting import account
from loop.config import eval_suites
from loop.context import Context, LoopState, adapter_name, stage_stats
from loop.faults import failpoint, tune_callbacks
from loop.rundir import RunDir, write_json

log = logging.getLogger(__name__)


def propose(ctx: Context, state: LoopState) -> dict:
    from agent.construct import propose as run_propose
    from agent.seeds import load_seed_tasks

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
    report = proposal_filter(ctx, seeds, pool_tasks).run(proposals, instructions_only=True)
    with ctx.rundir.writing_stage(n, "propose") as out:
        write_examples(out / "proposed.jsonl", proposals)
        write_jsonl(out / "replies.jsonl", stats.pop("replies", []))
        write_examples(out / "kept.jsonl", report.kept)
        write_examples(out / "rejected.jsonl", report.rejected_records())
        write_json(
            out / "stats.json",
            {
                **stats,
                "filter": report.summary(),
                "seconds": time.monotonic() - t0,
                "account": account("propose", len(proposals), len(report.kept), report.counts),
            },
        )
    log.info(
        "round %d propose: %d proposals, %d pass the instruction filters",
        n,
        len(proposals),
        len(report.kept),
    )
    return {}


def proposal_filter(ctx: Context, seeds: list[dict], pool_tasks: list[dict]) -> Any:
    """The instruction filters for proposals; the ROUGE-L rule (if on) compares each proposal
    with the seed tasks and every instruction already learned, as Self-Instruct does."""
    from judges.filters import FilterChain

    known = [t["instruction"] for t in [*seeds, *pool_tasks] if t.get("instruction")]
    return FilterChain(ctx.cfg.filters, pool=known)


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
            ctx.student(state), tasks, params, adapter=adapter_name(state), round_index=n
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
    return {"kept": stage_stats(ctx.rundir.stage_dir(n, "review"))["accepted"]}


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
    # The win rate's judge: judge.model when configured, else (runner default) the student's
    # base weights, so neither side judges itself.
    judge = None
    if ctx.cfg.judge.model is not None:
        from judges.llm_judge import LLMJudge

        judge = LLMJudge(ctx.judge_model(state), ctx.cfg.judge.rubric)
    cand = run_eval(
        gen,
        suites,
        adapter=ctx.rundir.round_dir(n) / "adapter",
        champion_adapter=champion or "base",
        judge=judge,
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

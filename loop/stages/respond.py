"""respond: answers to the proposed instructions, n per instruction, from the student itself,
a teacher (distillation) and, in round 1, imported expert data."""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.data import write_examples
from loop.context import Context, LoopState, adapter_name
from loop.rundir import write_json
from loop.stages.base import STATS, Stage

log = logging.getLogger(__name__)

RESPONSES = "responses.jsonl"


def run(ctx: Context, state: LoopState) -> dict:
    from agent.backends import make_generator
    from agent.construct import respond as run_respond

    n = state["round"]
    if ctx.rundir.stage_done(n, "respond"):
        return {}
    tasks = ctx.rundir.input_records(n, "respond")
    params = ctx.cfg.respond.sampling.model_copy(update={"n": ctx.cfg.respond.n})
    t0 = time.monotonic()
    records: list[dict] = []
    stats: dict[str, Any] = {}
    sources = ctx.cfg.run.sources
    # Constrained tasks are the student's to answer, unless a teacher answers (distillation).
    if "self_instruct" in sources or ("constraints" in sources and "teacher" not in sources):
        records, stats["self"] = answer(
            ctx.student(state), tasks, params, ctx.cfg.augment.language_max_tokens,
            adapter=adapter_name(state), round_index=n,
        )  # fmt: skip
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
        records += imported(ctx)
    with ctx.rundir.writing_stage(n, "respond") as out:
        write_examples(out / RESPONSES, records)
        write_json(
            out / STATS,
            {**stats, "responses": len(records), "seconds": time.monotonic() - t0},
        )
    log.info("round %d respond: %d responses", n, len(records))
    return {}


def answer(
    gen: Any, tasks: list[dict], params: Any, language_max_tokens: int | None, **kw: Any
) -> tuple[list[dict], dict[str, Any]]:
    """`agent.construct.respond`, with augment's language tasks (`is_language_task`) answered
    up to `language_max_tokens` (`augment.language_max_tokens`; None = `params.max_tokens`):
    the tokenizer spends several tokens a character on Chinese or Japanese, and answers cut off
    at the constrained tasks' limit are dropped."""
    from agent.construct import respond as run_respond
    from judges.augment import is_language_task

    if not language_max_tokens or language_max_tokens == params.max_tokens:
        return run_respond(gen, tasks, params, **kw)
    rest = [t for t in tasks if not is_language_task(t)]
    langs = [t for t in tasks if is_language_task(t)]
    records, stats = run_respond(gen, rest, params, **kw)
    longer = params.model_copy(update={"max_tokens": language_max_tokens})
    more, said = run_respond(gen, langs, longer, **kw)
    order = {t["id"]: i for i, t in enumerate(tasks)}  # the tasks' order, as one call gives
    merged = sorted(records + more, key=lambda r: order[r["instruction_id"]])
    return merged, {k: stats[k] + said[k] for k in stats}


def imported(ctx: Context) -> list[dict]:
    """run.import_files as response records (expert annotation enters the round here)."""
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


STAGE = Stage(
    name="respond",
    run=run,
    writes=(RESPONSES, STATS),
    reads=("propose",),
    records=RESPONSES,
    summary=lambda s: f"{s.get('responses', 0)} responses",
)

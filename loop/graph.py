"""The LangGraph state machine that drives rounds, with SQLite checkpoints for resume.

    propose -> respond -> filter -> judge -> dedup -> review -> tune -> evaluate -> gate
        -> promote | reject -> next -> propose (next round) | END

The stages and their order come from loop.stages.PIPELINE; a stage with a `proceed` test sends
the round to reject when it fails (dedup or review kept nothing, the gate said no).

State holds JSON primitives only (strict msgpack can load every checkpoint); data lives in the
run directory. `run` starts a run; `resume` continues one with `graph.invoke(None, config)` on
the same thread, never re-sending the initial input.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import procs
from agent.errors import SelfloopError
from loop import rounds, stages
from loop.config import SelfloopConfig, check_run, dump_config, load_config
from loop.context import Context, LoopState
from loop.faults import failpoint
from loop.rundir import RunDir, config_hash

log = logging.getLogger(__name__)
os.environ.setdefault("LANGGRAPH_STRICT_MSGPACK", "true")

# The nodes that close a round; the stages before them come from loop.stages.PIPELINE.
ROUND_END: dict[str, Callable[[Context, LoopState], dict]] = {
    "promote": rounds.promote,
    "reject": rounds.reject,
    "next": rounds.next_round,
}


class Stopping(SelfloopError):
    """SIGINT/SIGTERM arrived; the run stopped at a safe point and can be resumed."""


def build_graph(ctx: Context, checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(LoopState)

    def wrap(name: str, fn: Callable[[Context, LoopState], dict]) -> Callable[[LoopState], dict]:
        def node(state: LoopState) -> dict:
            if ctx.stop_requested:
                raise Stopping(
                    f"stopped before {name} of round {state.get('round')}; resume to go on"
                )
            n = state.get("round")
            ctx.where = f"round {n} {name}"
            # Timed only when it does the work now (a resumed run passes done stages at once).
            timed = name not in ROUND_END and not ctx.rundir.stage_done(n, name)
            started = time.monotonic()
            update = fn(ctx, state)
            if timed and ctx.rundir.stage_done(n, name):
                ctx.rundir.record_time(n, name, time.monotonic() - started)
            failpoint(f"{name}.done", n)
            return update

        return node

    pipeline = list(stages.PIPELINE)  # read now: a test may extend the list
    for stage in pipeline:
        g.add_node(stage.name, wrap(stage.name, stage.run))
    for name, fn in ROUND_END.items():
        g.add_node(name, wrap(name, fn))
    g.add_edge(START, pipeline[0].name)
    # Each stage leads to the next; after the last one the round is promoted. A stage with a
    # `proceed` test ends the round rejected when it fails (dedup kept nothing new, a reviewer
    # removed everything, the gate said no).
    for stage, after in zip(pipeline, [*[s.name for s in pipeline[1:]], "promote"]):
        if stage.proceed is None:
            g.add_edge(stage.name, after)
        else:
            g.add_conditional_edges(
                stage.name,
                lambda s, test=stage.proceed, after=after: after if test(s) else "reject",
                [after, "reject"],
            )
    g.add_edge("promote", "next")
    g.add_edge("reject", "next")
    first = pipeline[0].name
    g.add_conditional_edges("next", lambda s: END if s.get("stop") else first, [first, END])
    return g.compile(checkpointer=checkpointer)


def _open(run_dir: Path, cfg: SelfloopConfig) -> tuple[RunDir, Context, Any, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    rd = RunDir(run_dir)
    rd.lock()
    try:
        conn = _connect(rd)
    except BaseException:
        rd.unlock()
        raise
    return rd, Context(cfg, rd), SqliteSaver(conn), conn


def _connect(rd: RunDir) -> sqlite3.Connection:
    """The checkpoint database, refused with one line (and left as it is) when it is damaged."""
    fresh = not rd.checkpoints.exists()
    conn = sqlite3.connect(str(rd.checkpoints), check_same_thread=False)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        ok = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        conn.close()
        raise SelfloopError(
            f"{rd.checkpoints} is not a readable checkpoint database ({e}); it was left as it is: "
            "restore it from a backup, or start a new run in another directory"
        ) from None
    if ok != "ok" or not (fresh or "checkpoints" in tables):
        conn.close()
        raise SelfloopError(
            f"{rd.checkpoints} is damaged ({ok if ok != 'ok' else 'no checkpoints table'}); it "
            "was left as it is: restore it from a backup, or start a new run in another directory"
        )
    return conn


# The state a run starts from.
INITIAL: LoopState = {
    "round": 1,
    "champion": None,
    "champion_round": None,
    "rejections": 0,
    "kept": 0,
    "decision": None,
    "stop": None,
}


def _thread(rd: RunDir, conn: sqlite3.Connection) -> str:
    """The checkpoint thread of the run in `rd`: the id in its run.json.

    A run started before run.json existed kept its checkpoints under the name its directory had
    then: usually still its name; a renamed one holds a single thread, which is its own. The id
    found is written to run.json, so a later rename cannot lose it.
    """
    run_id = rd.run_id()
    if run_id is not None:
        return run_id
    try:
        threads = [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")]
    except sqlite3.OperationalError:  # no checkpoints table: nothing was checkpointed yet
        threads = []
    name = rd.root.resolve().name
    if name in threads or not threads:
        run_id = name
    elif len(threads) == 1:
        run_id = threads[0]
    else:
        raise SelfloopError(
            f"{rd.checkpoints} holds the runs {', '.join(map(str, threads))} and none is named "
            f"{name}: rename the directory back to the name it was started under"
        )
    rd.save_run_id(run_id)
    return run_id


def _invoke(run_dir: Path, cfg: SelfloopConfig, first_input: dict | None) -> dict:
    rd, ctx, saver, conn = _open(run_dir, cfg)

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if ctx.stop_requested:
            # The second: stop now, mid-stage. Safe: a stage's outputs appear whole or not at
            # all and training keeps step checkpoints (a SIGKILL anywhere resumes to the same
            # result: tests/loop/test_crash.py); resume redoes the interrupted stage.
            raise Stopping(
                f"stopped mid-stage ({name} again); `selfloop resume {rd.root}` redoes it"
            )
        log.warning(
            "received %s: stopping after the current stage (send it again to stop now)", name
        )
        ctx.stop_requested = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        graph = build_graph(ctx, saver)
        config = {
            "configurable": {"thread_id": _thread(rd, conn)},
            "recursion_limit": cfg.run.recursion_limit,
        }
        if first_input is None and graph.get_state(config).created_at is None:
            # Killed before its first checkpoint: nothing was done, so it starts afresh.
            log.warning("%s has no checkpoint yet; starting it from round 1", rd.root)
            first_input = dict(INITIAL)
        elif first_input is None:
            _extend_finished(graph, config, ctx)
        with procs.claim(f"selfloop {'resume' if first_input is None else 'run'} {rd.root}"):
            state = graph.invoke(first_input, config, durability="sync")
        snapshot = graph.get_state(config)
        if snapshot.next:  # paused (human review)
            log.info("paused before %s; see %s", snapshot.next, rd.root)
        return dict(state)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ctx.release()
        conn.close()
        rd.unlock()


def _extend_finished(graph: Any, config: dict, ctx: Context) -> None:
    """A finished run resumed under a config that no longer stops it (a raised max_rounds or
    patience) goes on with its next round, as if `next` had decided so; otherwise it stays
    finished and resume reports why again."""
    snapshot = graph.get_state(config)
    values = snapshot.values
    if snapshot.next or not values.get("stop") or rounds.stop_reason(ctx, values):
        return
    n = values["round"]
    log.info("%s finished after round %d (%s); the config lets it go on: round %d",
             ctx.rundir.root, n, values["stop"], n + 1)  # fmt: skip
    graph.update_state(config, rounds.next_round_state(n), as_node="next")


def check_inputs(cfg: SelfloopConfig) -> None:
    """Read what a run reads in its first round before anything is written: its models
    resolve, its seed, base task and import files parse. A run that cannot start leaves nothing."""
    from agent.formats import import_file
    from agent.models import resolve
    from agent.seeds import load_base_tasks, load_seed_tasks

    seeds = {t.id for t in load_seed_tasks(cfg.run.seeds_file)}  # the files first: quick to read
    if (bases := cfg.augment.base_tasks) is not None and "constraints" in cfg.run.sources:
        for t in load_base_tasks(None if bases == "bundled" else bases):
            if t.id in seeds:  # a base's id names the tasks built on it, as a seed's does
                raise SelfloopError(f"augment.base_tasks: {bases}: id {t.id!r} is a seed's id too")
    for path in cfg.run.import_files:
        import_file(path)
    models = [(cfg.model, cfg.backend)]
    if cfg.judge.model is not None:
        models.append((cfg.judge.model, cfg.judge.backend or cfg.backend))
    if "teacher" in cfg.run.sources and cfg.respond.teacher is not None:
        models.append((cfg.respond.teacher, cfg.respond.teacher_backend or cfg.backend))
    for spec, backend in models:
        if backend.kind != "openai":  # an endpoint's model is the endpoint's to find
            resolve(spec)


def run(cfg: SelfloopConfig, run_dir: str | Path) -> dict:
    """Start a new run in `run_dir` (which must not hold one already)."""
    rd = RunDir(run_dir)
    if rd.root.exists() and not rd.root.is_dir():
        raise SelfloopError(f"{rd.root} is a file, not a directory; pick another run directory")
    if rd.checkpoints.exists():
        raise SelfloopError(f"{rd.root} already holds a run; use `selfloop resume {rd.root}`")
    if rd.config_path.exists() and config_changed(rd, cfg):
        # Only a start killed before its first checkpoint leaves config.yaml alone; one that
        # differs is someone else's file, and save_config would keep it as the run's config.
        raise SelfloopError(
            f"{rd.config_path} exists and is not this run's config; pick another --out "
            "(or move the file away)"
        )
    check_run(cfg)  # before anything is written
    check_inputs(cfg)
    created = not rd.root.exists()
    try:
        rd.root.mkdir(parents=True, exist_ok=True)
        rd.save_config(dump_config(cfg))
        rd.save_run_id()
    except BaseException:
        if created:  # leave no half-made run directory behind
            shutil.rmtree(rd.root, ignore_errors=True)
        raise
    return _invoke(rd.root, cfg, dict(INITIAL))


def _started_run(run_dir: str | Path) -> RunDir:
    rd = RunDir(run_dir).require_run()
    if not rd.checkpoints.exists():
        raise SelfloopError(f"{rd.root} holds no run to resume (no checkpoints.sqlite)")
    return rd


def resume(
    run_dir: str | Path, allow_config_change: bool = False, config_path: str | Path | None = None
) -> dict:
    """Continue a run from its last checkpoint; a changed config is refused unless allowed."""
    rd = _started_run(run_dir)
    cfg = load_config(config_path or rd.config_path)
    check_run(cfg, str(config_path or rd.config_path))
    if config_path is not None and config_changed(rd, cfg):
        if not allow_config_change:
            raise SelfloopError(
                f"{config_path} differs from the config this run started with ({rd.config_path}); "
                "pass --allow-config-change to resume with it anyway"
            )
        (rd.root / "config.changes.log").open("a").write(f"resumed with {config_path}\n")
        rd.config_path.write_text(dump_config(cfg))
    return _invoke(rd.root, cfg, None)


def config_changed(rd: RunDir, cfg: SelfloopConfig) -> bool:
    """Whether `cfg` differs from the config the run started with, compared as loaded, not as
    text: a run saved before a key moved (propose.temperature -> propose.sampling.temperature)
    has the same config written the old way."""
    try:
        saved = dump_config(load_config(rd.config_path))
    except SelfloopError:  # it no longer loads (a moved seeds file...): then it has changed
        return True
    return config_hash(dump_config(cfg)) != config_hash(saved)


def review(run_dir: str | Path, accept: str | Path) -> dict:
    """Take the edited review file of the paused round back, then resume the run."""
    from loop.review import accept_review, pending_review

    rd = _started_run(run_dir)
    rd.lock()  # no run may be writing this round while its review is taken in
    try:
        n = pending_review(rd)
        if n is None:
            raise SelfloopError(f"{rd.root} has no round waiting for review")
        conn = _connect(rd)  # the run must be resumable before its review is written
        try:
            _thread(rd, conn)
        finally:
            conn.close()
        stats = accept_review(rd, n, accept)
    finally:
        rd.unlock()
    log.info(
        "round %d: %d accepted (%d edited), %d rejected by review",
        n,
        stats["accepted"],
        stats["edited"],
        stats["rejected"],
    )
    return resume(rd.root)

"""Verbs on a run directory: run, resume, status, show, gate, report, export, review."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Annotated

import typer

from agent.errors import SelfloopError
from loop.cli import ConfigOpt, PrivateOpt, PushOpt, SetOpt, _config, _uses_run, app


@app.command("run")
def run_cmd(
    positional: Annotated[
        list[str] | None,
        typer.Argument(
            help="[CONFIG] [key.sub=value ...]: the older spelling of -c/--config and --set."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/<timestamp>).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run self-improvement rounds unattended (no arguments: the default recipe, bundled models)."""
    from loop.graph import run

    # A word with `=` is an override (even one holding a path, `model.name=/m`); the first other
    # word is the config file.
    args = list(positional or [])
    overrides = [a for a in args if "=" in a]
    files = [a for a in args if "=" not in a]
    if len(files) + (config is not None) > 1:
        given = [str(config)] if config is not None else []
        raise SelfloopError(f"one config file only, got {', '.join([*given, *files])}")
    cfg = _config(Path(files[0]) if files else config, [*overrides, *(set_ or [])])
    run_dir = _uses_run(out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    typer.echo(f"run directory: {run_dir}")
    started = time.monotonic()
    state = run(cfg, run_dir)
    _print_end(run_dir, state, started)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="The run directory to continue.")],
    config: Annotated[Path | None, typer.Option(help="A changed config to continue with.")] = None,
    allow_config_change: Annotated[
        bool, typer.Option(help="Accept a config that differs.")
    ] = False,
) -> None:
    """Continue a run from its last checkpoint (after a kill, a stop or a review pause)."""
    from loop.graph import resume as do_resume

    started = time.monotonic()
    state = do_resume(
        _uses_run(run_dir), allow_config_change=allow_config_change, config_path=config
    )
    _print_end(run_dir, state, started)


def _time_line(run_dir: Path, started: float) -> str:
    """This command's wall time, and the run's stage time per round (all invocations: a resumed
    run's earlier work counts), so a user sees what a run costs on their machine."""
    from loop.rundir import RunDir
    from loop.show import duration, round_numbers

    rd = RunDir(run_dir)
    per_round = {n: sum(rd.stage_times(n).values()) for n in round_numbers(run_dir)}
    line = f"time: {duration(time.monotonic() - started)} this command"
    if total := sum(per_round.values()):
        rounds = ", ".join(f"round {n} {duration(s)}" for n, s in per_round.items() if s)
        line += f"; the run's stages {duration(total)} ({rounds})"
    return line


def _print_end(run_dir: Path, state: dict, started: float) -> None:
    from loop.review import pending_review
    from loop.rundir import RunDir

    typer.echo(_time_line(run_dir, started))
    if state.get("stop"):
        typer.echo(f"finished: {state['stop']}; champion: {state.get('champion') or 'base model'}")
        typer.echo(
            f"next: `selfloop status {run_dir}` (one row per round), `selfloop show {run_dir} "
            f"--round N` (what a round did), `selfloop report {run_dir}` (plots + HTML)"
        )
    elif (n := pending_review(RunDir(run_dir))) is not None:
        typer.echo(
            f"paused for review in round {n}: `selfloop review {run_dir}` says what to edit, "
            f"`selfloop review {run_dir} --accept FILE` goes on"
        )
    else:
        typer.echo(
            f"paused in round {state.get('round')}; continue with `selfloop resume {run_dir}`"
        )


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Where a run is, its champion, and one row per finished round."""
    from loop.rundir import RunDir
    from loop.show import time_split

    rd = RunDir(_uses_run(run_dir)).require_run()
    champ = rd.champion()
    typer.echo(
        f"run {run_dir}: champion {champ.relative_to(rd.root.resolve()) if champ else 'base model'}"
    )
    for m in rd.read_metrics():
        dec = m.get("decision", {})
        kept = m.get("dedup", {}).get("kept", 0)
        loss = m.get("tune", {}).get("final_loss")
        loss_s = f"{loss:.3f}" if loss is not None else "-"
        split = time_split(m.get("seconds") or {}, top=2)
        typer.echo(
            f"round {m['round']:>3}: kept {kept:>4}  loss {loss_s:>6}  {dec.get('decision', '-'):9}"
            f"  {(dec.get('reasons') or [''])[0]}" + (f"\n           time {split}" if split else "")
        )
    rounds = (
        sorted(p.name for p in (rd.root / "rounds").glob("[0-9]*"))
        if (rd.root / "rounds").exists()
        else []
    )
    done = {f"{m['round']:03d}" for m in rd.read_metrics()}
    for r in rounds:
        if r not in done:
            stages = [
                p.name
                for p in sorted((rd.root / "rounds" / r).iterdir())
                if not p.name.startswith(".")
            ]
            typer.echo(
                f"round {int(r):>3}: in progress (done: {', '.join(stages) or 'nothing yet'})"
            )


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    round_: Annotated[
        int | None, typer.Option("--round", "-r", help="The round (default: the latest).")
    ] = None,
) -> None:
    """What one round did: funnel with reasons, judge scores, samples, training, eval, decision."""
    from loop.rundir import RunDir
    from loop.show import render_round, round_numbers

    rd = RunDir(_uses_run(run_dir)).require_run()
    if round_ is None:
        rounds = round_numbers(rd.root)
        if not rounds:
            raise SelfloopError(f"{run_dir} has no rounds yet")
        round_ = rounds[-1]
    typer.echo(render_round(rd.root, round_), nl=False)


@app.command("gate")
def gate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    round_: Annotated[
        int | None, typer.Option("--round", "-r", help="The round (default: the latest).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Take the gate: section from this YAML instead."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a gate key: gate.key=value (repeatable)."),
    ] = None,
) -> None:
    """Decide a round's evaluation again: with the run's gate: section, or that of --config,
    and --set gate.x=y on top. What the gate would say now; writes nothing."""
    from pydantic import ValidationError

    from agent.errors import describe_validation
    from loop.config import LOOP_GATE, ConfigError, apply_overrides, read_yaml
    from loop.gate import GateConfig, decide
    from loop.rundir import RunDir
    from loop.show import round_numbers, run_config
    from loop.stages.evaluate import CHAMPION_EVAL, EVAL

    rd = RunDir(_uses_run(run_dir)).require_run()
    # Only the gate: section, unvalidated around it: a key a later selfloop dropped, or a seeds
    # file since moved, does not stop a re-decision (as in `show`).
    source = str(config or rd.config_path)
    data = read_yaml(config, "config file") if config else run_config(rd.root)
    for item in set_ or []:
        if not item.startswith("gate."):
            raise ConfigError(f"--set {item}: only gate.* keys change a decision")
    # Key by key over the loop's defaults, as a run reads its config: a preset without a gate:
    # section (configs/smoke.yaml) decides as the loop does, not by GateConfig's own defaults.
    section = {**copy.deepcopy(LOOP_GATE), **(data.get("gate") or {})}
    gate = apply_overrides({"gate": section}, set_ or [])["gate"]
    try:
        cfg = GateConfig.model_validate(gate)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation(e, 'gate')}") from e
    if round_ is None:
        done = [n for n in round_numbers(rd.root) if rd.stage_dir(n, "evaluate").is_dir()]
        if not done:
            raise SelfloopError(f"{run_dir} has no evaluated round yet")
        round_ = done[-1]
    evaluated = rd.stage_dir(round_, "evaluate")
    if not evaluated.is_dir():
        raise SelfloopError(f"{run_dir}: round {round_} has no evaluation")
    for name in (EVAL, CHAMPION_EVAL):
        if not (evaluated / name).is_file():
            raise SelfloopError(f"{evaluated / name} is missing: nothing to decide on")
    decision = decide(*rd.eval_results(round_), cfg, rd.start_eval(round_))
    before = (rd.decision(round_) or {}).get("decision")
    now = "promoted" if decision.promote else "rejected"
    if before is None:
        typer.echo(f"round {round_}: {now} (the round has no decision.json yet)")
    else:
        same = "as" if before == now else "where"
        typer.echo(f"round {round_}: {now} ({same} decision.json says {before})")
    for reason in decision.reasons:
        typer.echo(f"  {reason}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[
        Path | None, typer.Option(help="Where the report goes (default RUN_DIR/report).")
    ] = None,
) -> None:
    """Write PNG plots and an HTML page of every round (metrics, funnel, scores, training)."""
    from loop.report import write_report
    from loop.rundir import RunDir

    rd = RunDir(_uses_run(run_dir)).require_run()
    typer.echo(f"wrote {write_report(rd.root, out)}")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path, typer.Option(help="Where the adapter or merged model is written.")],
    round_: Annotated[
        int | None, typer.Option("--round", "-r", help="That round's adapter (default: champion).")
    ] = None,
    merge_: Annotated[
        bool, typer.Option("--merge", help="Merge into the base: a plain model directory.")
    ] = False,
    push: PushOpt = None,
    private: PrivateOpt = False,
) -> None:
    """Export a round's adapter (default: the champion's), or merge it into the base model."""
    from loop.config import load_config
    from loop.rundir import RunDir
    from tuners.export import copy_artifact, merge_adapter

    rd = RunDir(_uses_run(run_dir)).require_run()
    if round_ is not None:
        adapter = rd.adapter_dir(round_)
        if not adapter.is_dir():
            raise SelfloopError(f"{run_dir}: round {round_} has no adapter (not tuned yet?)")
    else:
        champ = rd.champion()
        if champ is None:
            raise SelfloopError(
                f"{run_dir}: no round has been promoted (the base model is champion); "
                "pass --round N to export a rejected round's adapter"
            )
        adapter = champ
    if merge_:
        written = merge_adapter(load_config(rd.config_path).model, adapter, out)
    else:
        written = copy_artifact(adapter, out)
    # Both resolved: the champion link resolves to an absolute path, a --round path is relative.
    typer.echo(f"exported {adapter.resolve().relative_to(rd.root.resolve())} -> {written}")
    if push:
        from loop.hub import push_to_hub

        typer.echo(f"pushed to {push_to_hub(Path(written), push, 'model', private)}")


@app.command("review")
def review_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run paused for review.")],
    accept: Annotated[
        Path | None,
        typer.Option(help="The edited review file (JSONL or CSV) to take back and resume."),
    ] = None,
) -> None:
    """Human review: without --accept, say which files to edit; with it, take them and go on."""
    from loop.graph import review as do_review
    from loop.review import pending_review, review_paths
    from loop.rundir import RunDir

    rd = RunDir(_uses_run(run_dir)).require_run()
    if accept is None:
        n = pending_review(rd)
        if n is None:
            raise SelfloopError(f"{run_dir} has no round waiting for review")
        jsonl, csv_path = review_paths(rd, n)
        typer.echo(
            f"round {n} waits for review: edit {jsonl} or {csv_path} (delete a row to reject it, "
            f"edit instruction/input/response to correct it), then run "
            f"`selfloop review {run_dir} --accept FILE`"
        )
        return
    started = time.monotonic()
    state = do_review(rd.root, accept)
    _print_end(run_dir, state, started)

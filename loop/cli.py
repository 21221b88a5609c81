"""The `selfloop` command line: parses arguments, calls the library, prints.

Every command that fails on bad input prints one line `error: ...` on stderr and exits non-zero
(1 for a failure, 2 for a usage error or a command that is not built yet).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.errors import SelfloopError, describe_validation

app = typer.Typer(
    help="selfloop: unattended self-improvement rounds for instruction-tuned language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("selfloop")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: built-in defaults)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: key.sub=value (repeatable)."),
]

PushOpt = Annotated[
    str | None,
    typer.Option(
        "--push-to-hub",
        help="Upload what was written to this Hub repo (user/name; created if missing). "
        "Token: HF_TOKEN or `hf auth login`.",
    ),
]
PrivateOpt = Annotated[bool, typer.Option(help="With --push-to-hub: create the repo private.")]


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:  # unattended (nohup, systemd, CI): plain timestamped lines
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


# The run directory of the command running now (set by the commands that have one): an
# unexpected error's traceback is written to its logs/.
_run_dir: Path | None = None


def _uses_run(run_dir: Path) -> Path:
    global _run_dir
    _run_dir = run_dir
    return run_dir


def _config(config: Path | None, sets: list[str] | None, **flags: Any):
    """Config file + --set overrides + explicit command-line flags (those win)."""
    from loop.config import load_config

    overrides = list(sets or [])
    overrides += [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return load_config(config, overrides)


def _read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """JSONL of {"messages": [...]} or {"prompt": "..."}; any other suffix: one prompt per line."""
    if not path.is_file():
        raise SelfloopError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SelfloopError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix not in (".jsonl", ".json"):
            prompts.append([{"role": "user", "content": line}])
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SelfloopError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        except RecursionError:
            raise SelfloopError(f"{path}:{n}: nested too deeply to be a prompt") from None
        if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            prompts.append(rec["messages"])
        elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
            prompts.append([{"role": "user", "content": rec["prompt"]}])
        else:
            raise SelfloopError(
                f"{path}:{n}: expected an object with 'messages' (list) or 'prompt' (str)"
            )
    return prompts


def _parse_adapters(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        out[name] = path
    return out


@app.command()
def generate(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="A user prompt (repeatable).")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="JSONL ({messages} or {prompt}) or text file.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model spec (bundled name, dir, .gguf, hub id).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="transformers | vllm | openai.")] = None,
    base_url: Annotated[str | None, typer.Option(help="openai backend: endpoint URL.")] = None,
    adapter: Annotated[
        str | None, typer.Option(help="PEFT adapter dir (or the endpoint's adapter id).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System message for --prompt prompts.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most new tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    n: Annotated[int | None, typer.Option("-n", help="Completions per prompt.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per prompt.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """One-off generation through any backend: handy for checking a model."""
    from agent.backends import make_generator
    from agent.models import check_adapter_files

    cfg = _config(
        config,
        set_,
        **{
            "model.name": model,
            "backend.kind": backend,
            "backend.base_url": base_url,
            "sampling.max_tokens": max_tokens,
            "sampling.temperature": temperature,
            "sampling.top_p": top_p,
            "sampling.n": n,
            "sampling.seed": seed,
            "sampling.stop": stop or None,
        },
    )
    prompts = [
        ([{"role": "system", "content": system}] if system else [])
        + [{"role": "user", "content": p}]
        for p in prompt or []
    ]
    if prompts_file is not None:
        prompts += _read_prompts(prompts_file)
    if not prompts:
        raise SelfloopError("no prompts given: pass --prompt TEXT or --prompts-file FILE")
    adapters, adapter_name = None, adapter
    if adapter and cfg.backend.kind != "openai":
        adapters = _parse_adapters([adapter])
        adapter_name = next(iter(adapters))
        check_adapter_files(Path(adapters[adapter_name]))  # before the model takes its time
    gen = make_generator(cfg.model, cfg.backend, adapters=adapters)
    results = gen.generate(prompts, cfg.sampling, adapter=adapter_name)
    failed = 0
    for msgs, r in zip(prompts, results):
        if as_json:
            rec = {
                "prompt": msgs,
                "prompt_tokens": r.prompt_tokens,
                "completions": [c.__dict__ for c in r.completions],
                "error": r.error,
            }
            typer.echo(json.dumps(rec, ensure_ascii=False))
        elif r.ok:
            for k, c in enumerate(r.completions):
                head = f"[{k + 1}/{len(r.completions)}] " if len(r.completions) > 1 else ""
                typer.echo(f"{head}{c.text}")
                log.info(
                    "finish_reason=%s tokens=%d+%d",
                    c.finish_reason,
                    r.prompt_tokens,
                    c.completion_tokens,
                )
        if not r.ok:
            failed += 1
            typer.echo(f"error: {r.error}", err=True)
    gen.close()
    if failed:
        raise typer.Exit(1)


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="Model spec (bundled name, dir, .gguf, hub id).")
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="PEFT adapter to serve, PATH or NAME=PATH (repeatable)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Bind address; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="Model id clients ask for.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """An OpenAI-compatible server (/v1/chat/completions, /v1/completions with echo/logprobs,
    /v1/models, streaming) over a base model and its adapters."""
    from agent.backends import make_generator
    from agent.backends.hf import TransformersGenerator
    from agent.serve import bind
    from agent.serve import serve as run_server

    cfg = _config(config, set_, **{"model.name": model})
    # Bound before the model loads: a bad or taken port is one error line at once.
    sock = bind(host, port)
    if cfg.backend.kind not in ("auto", "transformers"):
        raise SelfloopError(
            f"backend.kind: serve runs on the transformers backend (its log-probabilities read "
            f"the model's own tokens), not {cfg.backend.kind}; vLLM has its own server: "
            "`vllm serve MODEL --enable-lora`"
        )
    gen = make_generator(
        cfg.model,
        cfg.backend.model_copy(update={"kind": "transformers"}),
        adapters=_parse_adapters(adapter),
    )
    assert isinstance(gen, TransformersGenerator)
    name = served_model_name or gen.model_name
    log.info(
        "serving %s (adapters: %s) on http://%s:%d/v1",
        name,
        ", ".join(gen.adapters) or "none",
        host,
        port,
    )
    run_server(gen, sock, served_name=name)


FormatOpt = Annotated[str, typer.Option("--format", help="auto or a format name.")]
MapOpt = Annotated[list[str] | None, typer.Option("--map", help="field=column (repeatable).")]


def _mapping(map_: list[str] | None) -> dict[str, str] | None:
    mapping = dict(m.split("=", 1) for m in map_ or [] if "=" in m)
    if map_ and len(mapping) != len(map_):
        raise SelfloopError("--map expects field=column")
    return mapping or None


@app.command()
def tune(
    data: Annotated[
        Path,
        typer.Option(
            help="Chat examples in any format `data import` reads (messages/Alpaca/ShareGPT/"
            "Self-Instruct JSON(L), CSV, Parquet, HF dir); TRL-format pairs JSONL for dpo/rpo."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where the adapter (or full model) is written.")],
    model: Annotated[str | None, typer.Option(help="Base model spec.")] = None,
    method: Annotated[str | None, typer.Option(help="lora | prefix | full | qlora.")] = None,
    init_adapter: Annotated[Path | None, typer.Option(help="Warm-start from this adapter.")] = None,
    fmt: FormatOpt = "auto",
    map_: MapOpt = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Skip bad records (listed) instead of rejecting the file.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """One-off fine-tuning outside the loop; re-run the same command to resume after a kill.
    --data is read like `data import` (validated; exact repeats dropped); with tune.objective
    dpo or rpo it holds TRL-format preference pairs (prompt, chosen, rejected)."""
    from agent.data import read_jsonl
    from agent.formats import import_file
    from tuners import train
    from tuners.preference import train_preference

    cfg = _config(config, set_, **{"model.name": model, "tune.method": method})
    if cfg.tune.objective != "sft":
        pairs = read_jsonl(data)
        result = train_preference(cfg.model, pairs, out, cfg.tune, init_adapter=init_adapter)
        typer.echo(json.dumps(result.to_dict()))
        return
    read = import_file(data, fmt=fmt, mapping=_mapping(map_), skip_invalid=skip_invalid)
    for where, why in read.skipped:
        typer.echo(f"skipped {where}: {why}", err=True)
    result = train(cfg.model, read.records, out, cfg.tune, init_adapter=init_adapter)
    typer.echo(json.dumps(result.to_dict()))


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
    """Run self-improvement rounds unattended (no arguments: the quickstart, bundled models)."""
    import time

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
    state = run(cfg, run_dir)
    _print_end(run_dir, state)


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

    state = do_resume(
        _uses_run(run_dir), allow_config_change=allow_config_change, config_path=config
    )
    _print_end(run_dir, state)


def _print_end(run_dir: Path, state: dict) -> None:
    from loop.review import pending_review
    from loop.rundir import RunDir

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
def merge(
    adapter: Annotated[Path, typer.Option(help="PEFT adapter directory (lora/qlora).")],
    out: Annotated[Path, typer.Option(help="Where the merged model directory is written.")],
    model: Annotated[str | None, typer.Option(help="The adapter's base model spec.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Merge an adapter into its base model and save a plain model directory."""
    from tuners.export import merge_adapter

    cfg = _config(config, set_, **{"model.name": model})
    typer.echo(str(merge_adapter(cfg.model, adapter, out)))


@app.command()
def prepare(
    model: Annotated[
        str, typer.Argument(help="Model spec to resolve (GGUF files are converted once).")
    ] = "smollm2-135m-instruct",
) -> None:
    """Resolve a model spec now (converting a GGUF into the cache) and print its directory."""
    from agent.models import resolve

    typer.echo(str(resolve(model).path))


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML; refuses what `run` would."""
    from loop.config import check_run, dump_config

    cfg = _config(config, set_)
    check_run(cfg, str(config) if config is not None else "config")
    typer.echo(dump_config(cfg), nl=False)


data_app = typer.Typer(
    help="Import expert data and export a run's training data.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command("import")
def data_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="Alpaca/ShareGPT/messages/Self-Instruct JSON(L), CSV, Parquet or HF dir."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where the validated examples go (messages JSONL).")],
    fmt: FormatOpt = "auto",
    map_: MapOpt = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Skip bad records (listed) instead of rejecting the file.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Validate expert data and write it as chat-messages JSONL (source: human)."""
    from agent.formats import export_records, import_file

    result = import_file(path, fmt=fmt, mapping=_mapping(map_), skip_invalid=skip_invalid)
    for where, why in result.skipped:
        typer.echo(f"skipped {where}: {why}", err=True)
    export_records(result.records, out, "messages", overwrite=overwrite)
    typer.echo(
        f"imported {len(result.records)} examples ({result.format}) from {path} -> {out}; "
        f"skipped {len(result.skipped)}, duplicates {len(result.duplicates)}"
    )


@data_app.command("export")
def data_export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path, typer.Option(help="Output file or directory.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="messages | alpaca | sharegpt | hf | parquet | preference (TRL-format pairs: "
            "prompt, chosen, rejected; for trl, axolotl, LLaMA-Factory).",
        ),
    ] = "messages",
    round_: Annotated[
        int | None,
        typer.Option("--round", help="One round's kept examples (default: all promoted)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    hub_layout: Annotated[
        bool,
        typer.Option(
            "--hub-layout",
            help="Write --out as a dataset directory the Hub reads: README.md (a dataset card) "
            "and data/train.<ext>.",
        ),
    ] = False,
    push: PushOpt = None,
    private: PrivateOpt = False,
) -> None:
    """Export the examples a run accepted (every promoted round, or one round's kept set), or
    with --format preference the preference pairs of those rounds."""
    from agent.formats import export_records
    from loop.rundir import RunDir

    rd = RunDir(_uses_run(run_dir)).require_run()
    rounds = [round_] if round_ is not None else rd.promoted_rounds()
    if fmt == "preference":
        records = [p for n in rounds for p in rd.round_pairs(n)]
        if not records:
            which = f"round {round_}" if round_ is not None else "its promoted rounds"
            raise SelfloopError(f"{rd.root}: no preference pairs in {which}")
    else:
        if round_ is not None and rd.decision(round_) is None and not rd.stage_done(round_, "tune"):
            raise SelfloopError(f"{run_dir}: round {round_} has not finished selecting examples")
        records = rd.input_records(round_, "tune") if round_ is not None else rd.accepted()
        if not records:
            raise SelfloopError(f"{run_dir}: no accepted examples to export")
    if hub_layout or push:
        from loop.config import load_config
        from loop.hub import dataset_card, push_to_hub, write_dataset_dir

        cfg = load_config(rd.config_path)
        card = dataset_card(
            records, fmt=fmt, run=rd.root.resolve().name, model=cfg.model.name, rounds=rounds,
            reviewed=cfg.run.review,
        )  # fmt: skip
        write_dataset_dir(records, out, fmt, card, overwrite)
        typer.echo(f"exported {len(records)} records to {out} (dataset card + {fmt} data)")
        if push:
            typer.echo(f"pushed to {push_to_hub(out, push, 'dataset', private)}")
        return
    if fmt == "preference":
        _export_pairs(records, out, overwrite)
        return
    result = export_records(records, out, fmt, overwrite=overwrite)
    typer.echo(
        f"exported {result.written} examples to {out} ({fmt}); skipped {len(result.skipped)}"
    )


def _export_pairs(pairs: list[dict[str, Any]], out: Path, overwrite: bool) -> None:
    from agent.data import write_jsonl

    if out.is_dir():
        raise SelfloopError(f"{out} is a directory; --format preference writes one JSONL file")
    if out.exists() and not overwrite:
        raise SelfloopError(f"{out} already exists; pass --overwrite to replace it")
    write_jsonl(out, pairs)
    typer.echo(f"exported {len(pairs)} preference pairs to {out} (TRL format)")


@app.command("eval")
def eval_cmd(
    model: Annotated[str | None, typer.Option(help="Base model spec.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="PEFT adapter to evaluate (default: the base).")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run", help="Evaluate this run's champion.")
    ] = None,
    suites: Annotated[
        str, typer.Option(help="Comma-separated bundled suites.")
    ] = "ifeval,helpfulness,domains,multilingual,safety",
    suite_file: Annotated[
        list[str] | None,
        typer.Option(
            help="Your own suite, NAME=PATH:METRIC (repeatable), e.g. clinic=clinic.jsonl:facts."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Prompts per suite (default: all).")] = None,
    max_tokens: Annotated[int, typer.Option()] = 160,
    against: Annotated[
        str | None, typer.Option(help="Pairwise against 'base' or an adapter dir.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the full eval JSON here.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate a model or adapter (or a run's champion) on held-out suites; print a table."""
    from agent.backends import make_generator
    from judges.evals.result import EvalResult, write_eval
    from judges.evals.runner import evaluate
    from loop.rundir import RunDir

    cfg = _config(config, set_, **{"model.name": model})
    if run_dir is not None:
        rd = RunDir(_uses_run(run_dir))
        cfg = _config(rd.config_path, set_)
        adapter = rd.champion()
    from judges.evals import load_suites

    names = [x.strip() for x in suites.split(",") if x.strip()]
    files = {}
    for item in suite_file or []:
        name, eq, rest = item.partition("=")
        path, colon, metric = rest.rpartition(":")
        if not (eq and colon and name and path and metric):
            raise SelfloopError(f"--suite-file {item!r}: expected NAME=PATH:METRIC")
        files[name] = (path, metric)
    if not names and not files:
        raise SelfloopError(f"--suites {suites!r} names no suite (and no --suite-file is given)")
    chosen = load_suites(names, files)  # a bad suite fails before the model loads
    gen = make_generator(cfg.model, cfg.backend)
    ev = evaluate(
        gen,
        chosen,
        adapter=adapter,
        champion_adapter=against,
        max_tokens=max_tokens,
        limit_per_suite=limit,
    )
    result = EvalResult.of(ev)
    for suite, data in result.suites.items():
        for metric, v in data.metrics.items():
            o = v.overall
            val = "-" if o.value is None else f"{o.value:.3f}"
            rng = f"[{o.ci[0]:.3f}, {o.ci[1]:.3f}]" if o.ci else ""
            typer.echo(f"{suite:13} {metric:20} {val:>7} {rng:18} n={o.n}")
    if out is not None:
        write_eval(out, ev)
        typer.echo(f"wrote {out}")


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
    state = do_review(rd.root, accept)
    _print_end(run_dir, state)


# The environment variable that shows an unexpected error's traceback instead of one line.
DEBUG_ENV = "SELFLOOP_DEBUG"


def _verb(argv: list[str]) -> str:
    """The command named in `argv` ("data import" for a subcommand), for the error line."""
    words = [a for a in argv if not a.startswith("-")]
    return " ".join(words[:2] if words[:1] == ["data"] else words[:1]) or "selfloop"


def _save_traceback(verb: str) -> str:
    """Write the traceback being handled to the run's logs/ (a run that exists) or a temporary
    file; where it went, or why it could not be written."""
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    name = f"{verb.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.traceback"
    if _run_dir is not None and (_run_dir / "config.yaml").is_file():
        try:
            logs = _run_dir / "logs"
            logs.mkdir(exist_ok=True)
            (logs / name).write_text(text, encoding="utf-8")
            return str(logs / name)
        except OSError:
            pass  # a read-only run directory: the temporary file below
    try:
        fd, path = tempfile.mkstemp(prefix="selfloop-", suffix=f"-{name}")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    except OSError as e:
        return f"nowhere: {e}"


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and exit 1.

    A SelfloopError (or a config ValidationError) is a problem the user can fix, and its line
    says what. Anything else is unexpected: its line names the command, the exception and the
    file its traceback was written to. SELFLOOP_DEBUG=1 raises either with its traceback.
    """
    from pydantic import ValidationError

    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        if isinstance(e, SelfloopError):
            line = str(e)
        elif isinstance(e, ValidationError):
            line = describe_validation(e)
        else:
            verb = _verb(sys.argv[1:])
            message = " ".join(str(e).split())[:500]  # one line, however long the original
            line = (
                f"{verb}: {type(e).__name__}: {message} "
                f"(traceback written to {_save_traceback(verb)})"
            )
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

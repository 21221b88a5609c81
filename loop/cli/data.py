"""Verbs that move data in and out: data import, data export (files, Hub layout, --push-to-hub)
and tune (a one-off fine-tune on a data file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.errors import SelfloopError
from loop.cli import ConfigOpt, PrivateOpt, PushOpt, SetOpt, _config, _uses_run, app

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
    dpo or rpo it holds TRL-format preference pairs (prompt, chosen, rejected); with grpo,
    constrained tasks (instruction and constraints, as augment writes them)."""
    from agent.data import read_jsonl
    from agent.formats import import_file
    from tuners import train
    from tuners.grpo import train_grpo
    from tuners.preference import train_preference

    cfg = _config(config, set_, **{"model.name": model, "tune.method": method})
    if cfg.tune.objective != "sft":
        fn = train_grpo if cfg.tune.objective == "grpo" else train_preference
        result = fn(cfg.model, read_jsonl(data), out, cfg.tune, init_adapter=init_adapter)
        typer.echo(json.dumps(result.to_dict()))
        return
    read = import_file(data, fmt=fmt, mapping=_mapping(map_), skip_invalid=skip_invalid)
    for where, why in read.skipped:
        typer.echo(f"skipped {where}: {why}", err=True)
    result = train(cfg.model, read.records, out, cfg.tune, init_adapter=init_adapter)
    typer.echo(json.dumps(result.to_dict()))


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

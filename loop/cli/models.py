"""Verbs that work on a model directly: generate, serve, eval, merge, prepare, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agent.errors import SelfloopError
from loop.cli import ConfigOpt, SetOpt, _config, _uses_run, app, log


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
    ] = "if,helpfulness,domains,multilingual,safety",
    suite_file: Annotated[
        list[str] | None,
        typer.Option(
            help="Your own suite, NAME=PATH:METRIC (repeatable), e.g. clinic=clinic.jsonl:facts."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Prompts per suite (default: all).")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Longest answer (default: eval.sampling.max_tokens).")
    ] = None,
    against: Annotated[
        str | None, typer.Option(help="Pairwise against 'base' or an adapter dir.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the full eval JSON here.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate a model or adapter (or a run's champion) on held-out suites; print a table."""
    from agent.backends import SamplingParams, make_generator
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
        sampling=SamplingParams.model_validate(
            {
                **cfg.eval.sampling.model_dump(),
                **({} if max_tokens is None else {"max_tokens": max_tokens}),
            }
        ),
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

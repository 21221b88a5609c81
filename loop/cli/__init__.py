"""The `selfloop` command line: parses arguments, calls the library, prints.

This module holds the app, the options every verb shares and the one-line error handling of
`main`; the verbs live in loop/cli/models.py (generate, serve, eval, merge, prepare, config),
loop/cli/runs.py (run, resume, status, show, report, export, review) and loop/cli/data.py
(data import/export, tune).

Every command that fails on bad input prints one line `error: ...` on stderr and exits non-zero
(1 for a failure, 2 for a usage error or a command that is not built yet).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
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


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """`e` and what it was raised from (sqlite, torch and the Trainer wrap OSErrors), at most
    10 deep."""
    for _ in range(10):
        if e is None:
            return
        yield e
        e = e.__cause__ or e.__context__


def _disk_full(e: BaseException) -> bool:
    """Whether `e` (or what it was raised from) is a full disk."""
    import errno
    import sqlite3

    return any(
        (isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT))
        or (isinstance(x, sqlite3.OperationalError) and "disk is full" in str(x))
        or "No space left on device" in str(x)
        for x in _chain(e)
    )


def _not_permitted(e: BaseException) -> OSError | None:
    """The OSError behind `e` (or what it was raised from) that says a path may not be written
    or read: no permission, or a read-only file system."""
    import errno

    refused = (errno.EACCES, errno.EPERM, errno.EROFS)
    return next((x for x in _chain(e) if isinstance(x, OSError) and x.errno in refused), None)


def _refused_path(e: OSError) -> str:
    """The path an OSError names; an atomic write's hidden temporary file is shown as the file
    it stands for."""
    name = str(e.filename or "")
    path = Path(name)
    if path.name.startswith(".") and ".tmp-" in path.name:
        path = path.with_name(path.name[1:].rpartition(".tmp-")[0])
    return str(path) if name else "a path"


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
        elif _disk_full(e):
            verb = _verb(sys.argv[1:])
            loop = (
                verb in ("run", "resume", "review")
                and _run_dir is not None
                and (_run_dir / "checkpoints.sqlite").is_file()
            )
            line = (
                f"{verb}: no space left on the device "
                f"({getattr(e, 'filename', None) or ' '.join(str(e).split())[:200]}); free some "
                "space, then "
                + (f"`selfloop resume {_run_dir}` goes on" if loop else "run the command again")
            )
        elif (refused := _not_permitted(e)) is not None:
            why = (refused.strerror or "permission denied").lower()
            line = (
                f"{_verb(sys.argv[1:])}: {_refused_path(refused)}: {why} (pick another "
                "location, or change its permissions)"
            )
        else:
            verb = _verb(sys.argv[1:])
            message = " ".join(str(e).split())[:500]  # one line, however long the original
            line = (
                f"{verb}: {type(e).__name__}: {message} "
                f"(traceback written to {_save_traceback(verb)})"
            )
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)


# The verbs register themselves on `app` as their modules load, in the order `--help` lists them.
# isort: off
from loop.cli import runs  # noqa: E402, F401
from loop.cli import models  # noqa: E402, F401
from loop.cli import data  # noqa: E402, F401
# isort: on

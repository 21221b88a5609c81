"""Bad input to the loop's commands: one line naming the key or file, a non-zero exit, and
nothing already on disk changed. Damaged files count as bad input: a run's metrics, stats,
decisions and config, a model directory, an adapter."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from loop.cli import main
from loop.config import dump_config, load_config
from tests.helpers import mount_tmpfs


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["selfloop", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("run:\n  max_round: 3\n", "run.max_round: unknown key; did you mean 'max_rounds'?"),
        ("tune:\n  lerning_rate: 0.1\n", "tune.lerning_rate: unknown key; did you mean"),
        ("run:\n  max_rounds: many\n", "run.max_rounds: Input should be a valid integer"),
        ("run:\n  seeds_file: /no/such/seeds.jsonl\n", "run.seeds_file: file not found"),
        ("run:\n  import_files: [/no/expert.json]\n", "run.import_files[0]: file not found"),
        ("augment:\n  base_tasks: /no/bases.jsonl\n", "augment.base_tasks: file not found"),
        ("augment:\n  base_tasks: ''\n", "augment.base_tasks: Value error, must be 'bundled'"),
        ("augment:\n  base_tasks: Bundled\n", "must be 'bundled', a path to a JSONL file or null"),
        ("run: [1, 2\n", "line 2: not valid YAML"),
    ],
)
def test_bad_config_is_named_and_no_run_starts(
    monkeypatch, capsys, tmp_path: Path, yaml_text: str, message: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    code, err = run_cli(monkeypatch, capsys, "run", str(cfg), "--out", str(tmp_path / "run"))
    assert code == 1 and err.startswith(f"error: {cfg}") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_unknown_override_key_is_named(monkeypatch, capsys, tmp_path: Path) -> None:
    code, err = run_cli(monkeypatch, capsys, "run", "judge.keep_tpo=0.3", "--out", str(tmp_path))
    assert code == 1 and "judge.keep_tpo: unknown key; did you mean 'keep_top'?" in err


def _fake_run(tmp: Path) -> Path:
    run_dir = tmp / "run"
    (run_dir / "rounds" / "001" / "propose").mkdir(parents=True)
    (run_dir / "rounds" / "001" / "propose" / "kept.jsonl").write_text('{"id": "a"}\n')
    (run_dir / "config.yaml").write_text(dump_config(load_config(None)))
    return run_dir


def read_only_dir(path: Path, request: pytest.FixtureRequest) -> None:
    """`path`, a directory nothing may be written into. Root writes through permissions, so
    as root it is a read-only tmpfs mount (skipped where mounting is not allowed)."""
    import os

    path.mkdir(mode=0o500)
    if os.geteuid() == 0:
        request.addfinalizer(mount_tmpfs(path, "size=1m,ro", "a read-only directory for root"))


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def test_a_checkpoint_file_that_is_not_a_database_is_refused_untouched(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    run_dir = _fake_run(tmp_path)
    (run_dir / "checkpoints.sqlite").write_bytes(b"this is not sqlite at all\n" * 40)
    before = _snapshot(run_dir)
    code, err = run_cli(monkeypatch, capsys, "resume", str(run_dir))
    assert code == 1 and "checkpoints.sqlite is not a readable checkpoint database" in err, err
    assert "left as it is" in err and err.count("\n") == 1
    assert _snapshot(run_dir) == before


def test_a_truncated_checkpoint_database_is_refused_untouched(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    run_dir = _fake_run(tmp_path)
    db = run_dir / "checkpoints.sqlite"
    conn = sqlite3.connect(db)
    SqliteSaver(conn).setup()
    conn.executemany(
        "INSERT INTO writes (thread_id, checkpoint_id, task_id, idx, channel, type, value) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [("t", f"c{k}", "task", k, "ch", "msgpack", b"x" * 3000) for k in range(200)],
    )
    conn.commit()
    conn.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short
    before = _snapshot(run_dir)
    code, err = run_cli(monkeypatch, capsys, "resume", str(run_dir))
    assert code == 1 and "checkpoints.sqlite" in err and "left as it is" in err, err
    assert _snapshot(run_dir) == before


def test_resume_of_a_run_that_never_started_says_so(monkeypatch, capsys, tmp_path: Path) -> None:
    run_dir = _fake_run(tmp_path)
    code, err = run_cli(monkeypatch, capsys, "resume", str(run_dir))
    assert code == 1 and "holds no run to resume (no checkpoints.sqlite)" in err


GOOD = [{"instruction": "Name a primary colour.", "output": "Red."}]


# ---------------------------------------------------------------- runs that cannot start
@pytest.mark.parametrize(
    "override, content, message",
    [
        ("model.name=/nonexistent/model", None, "model path not found: /nonexistent/model"),
        ("run.seeds_file={f}", '{"id": "s1", "instruction": \n', "not valid JSON"),
        ("run.import_files=[{f}]", "[1, 2, 3]\n", "bad.jsonl"),
        ("augment.base_tasks={f}", '{"id": "b1", "instructions": "Hi."}\n', "bad.jsonl:1: "),
        ("augment.base_tasks={f}", '{"id": "seed-0001", "instruction": "Hi."}\n', "seed's id"),
    ],
    ids=["model", "seeds_file", "import_files", "base_tasks", "base_task_ids"],
)
def test_a_run_that_cannot_start_leaves_no_directory(
    monkeypatch, capsys, tmp_path: Path, tiny_model_dir: Path, override, content, message
) -> None:
    bad = tmp_path / "bad.jsonl"
    if content is not None:
        bad.write_text(content)
    args = ["run", f"model.name={tiny_model_dir}", override.format(f=bad)]
    code, err = run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    # A directory that was there already (empty) is left as it was.
    (tmp_path / "empty").mkdir()
    code, err = run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "empty"))
    assert code == 1 and message in err, err
    assert list((tmp_path / "empty").iterdir()) == []


# ---------------------------------------------------------------- paths given relative / odd
def _fake_adapter_run(tmp: Path) -> Path:
    run_dir = _fake_run(tmp)
    adapter = run_dir / "rounds" / "001" / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (run_dir / "champion").symlink_to("rounds/001/adapter")
    return run_dir


def test_export_with_relative_paths(monkeypatch, capsys, tmp_path: Path) -> None:
    _fake_adapter_run(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for out, extra in [("../by-round", ["--round", "1"]), ("../champion", [])]:
        code, err = run_cli(monkeypatch, capsys, "export", "../run", "--out", out, *extra)
        assert code == 0, err
        assert (tmp_path / out.removeprefix("../") / "adapter_config.json").is_file()


def test_data_import_never_replaces_a_directory(monkeypatch, capsys, tmp_path: Path) -> None:
    from agent.data import write_jsonl

    write_jsonl(tmp_path / "good.jsonl", GOOD)
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir" / "notes.txt").write_text("mine\n")
    before = _snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    for out in ["somedir/", "somedir", "."]:
        code, err = run_cli(
            monkeypatch, capsys, "data", "import", "good.jsonl", "--out", out, "--overwrite"
        )
        assert code == 1 and "is a directory" in err and err.count("\n") == 1, (out, err)
        assert _snapshot(tmp_path) == before
    # A file is still replaced.
    (tmp_path / "old.jsonl").write_text("old\n")
    code, err = run_cli(
        monkeypatch, capsys, "data", "import", "good.jsonl", "--out", "old.jsonl", "--overwrite"
    )
    assert code == 0 and "Name a primary colour." in (tmp_path / "old.jsonl").read_text(), err


# ---------------------------------------------------------------- the CLI's error boundary
def _nested(d: Path) -> None:
    (d / "cfg.yaml").write_text("[" * 10_000 + "]" * 10_000)


def _run_with(name: str, content: str | bytes):
    """Setup: a fake run in d/run whose file `name` holds `content`."""

    def setup(d: Path) -> None:
        _fake_run(d)
        path = d / "run" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _write(name: str, content: str | bytes):
    def setup(d: Path) -> None:
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


DEEP = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
EMPTY_ANSWER = (
    '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}\n'
)

# (args with {d} for the work directory, what to put there first, a part of the error line)
BAD = {
    "config-utf16": (
        ["config", "-c", "{d}/cfg.yaml"],
        lambda d: (d / "cfg.yaml").write_bytes("run:\n  max_rounds: 2\n".encode("utf-16")),
        "cfg.yaml is not UTF-8 text",
    ),
    "config-nested": (["config", "-c", "{d}/cfg.yaml"], _nested, "nested too deeply"),
    "config-empty": (
        ["config", "-c", "{d}/cfg.yaml"],
        lambda d: (d / "cfg.yaml").write_text(""),
        "cfg.yaml is empty",
    ),
    "import-binary": (
        ["data", "import", "{d}/data.jsonl", "--out", "{d}/out.jsonl"],
        lambda d: (d / "data.jsonl").write_bytes(bytes(range(256)) * 8),
        "data.jsonl",
    ),
    "import-out-under-a-file": (
        ["data", "import", "{d}/good.jsonl", "--out", "{d}/good.jsonl/out.jsonl"],
        None,
        "good.jsonl is a file, not a directory",
    ),
    "run-out-is-a-file": (["run", "--out", "{d}/good.jsonl"], None, "is a file"),
    # Every verb, named at least once: the run-directory verbs given something that is not one.
    "resume-a-file": (["resume", "{d}/good.jsonl"], None, "run directory not found"),
    "review-no-run": (
        ["review", "{d}/none", "--accept", "{d}/good.jsonl"],
        None,
        "run directory not found",
    ),
    "data-export-no-run": (
        ["data", "export", "{d}/none", "--out", "{d}/out.jsonl"],
        None,
        "run directory not found",
    ),
    "prepare-unknown-model": (["prepare", "no-such-model"], None, "unknown model 'no-such-model'"),
    "serve-bad-port": (["serve", "--port", "99999"], None, "--port 99999: not a TCP port"),
    # {d}/ro cannot be written: a read-only mount as root (who may write anywhere), else a
    # directory without write permission. One line naming the path, no traceback file.
    "import-out-unwritable": (
        ["data", "import", "{d}/good.jsonl", "--out", "{d}/ro/out.jsonl"],
        None,
        "ro/out.jsonl: ",
    ),
    "import-out-under-unwritable": (
        ["data", "import", "{d}/good.jsonl", "--out", "{d}/ro/sub/out.jsonl"],
        None,
        "ro/sub: ",
    ),
    "run-out-unwritable": (["run", "model.name={model}", "--out", "{d}/ro/run"], None, "ro/run: "),
    "report-out-unwritable": (["report", "{d}/run", "--out", "{d}/ro/report"], _fake_run, "ro/"),
    # A run's own files, damaged (a full disk, a bad copy, a hand edit): named, left as they are.
    "status-metrics-cut-short": (
        ["status", "{d}/run"],
        _run_with("metrics.jsonl", '{"round": 1, "deci'),
        "run/metrics.jsonl:1: not valid JSON",
    ),
    "status-metrics-binary": (
        ["status", "{d}/run"],
        _run_with("metrics.jsonl", bytes(range(128, 256))),
        "metrics.jsonl:1: not UTF-8 text",
    ),
    "report-metrics-not-a-record": (
        ["report", "{d}/run"],
        _run_with("metrics.jsonl", "[1, 2]\n"),
        "metrics.jsonl:1: expected a JSON object",
    ),
    "show-stats-damaged": (
        ["show", "{d}/run"],
        _run_with("rounds/001/propose/stats.json", '{"account": '),
        "rounds/001/propose/stats.json is damaged: not valid JSON",
    ),
    "show-decision-not-an-object": (
        ["show", "{d}/run"],
        _run_with("rounds/001/decision.json", "[]"),
        "rounds/001/decision.json is damaged: a JSON list, not an object",
    ),
    "show-config-damaged": (
        ["show", "{d}/run"],
        _run_with("config.yaml", "run: [1, 2\n"),
        "run/config.yaml line 2: not valid YAML",
    ),
    "show-config-binary": (
        ["show", "{d}/run"],
        _run_with("config.yaml", bytes(range(128, 256))),
        "config.yaml is not UTF-8 text",
    ),
    "report-config-not-a-mapping": (
        ["report", "{d}/run"],
        lambda d: (
            _run_with("config.yaml", "- 1\n")(d),
            (d / "run" / "metrics.jsonl").write_text('{"round": 1}\n'),
        ),
        "config.yaml: the top level must be a mapping",
    ),
    # Files and flags a person gets wrong.
    "config-duplicate-key": (
        ["config", "-c", "{d}/cfg.yaml"],
        _write("cfg.yaml", "run:\n  max_rounds: 2\nrun:\n  patience: 3\n"),
        "cfg.yaml line 3: not valid YAML (key 'run' given twice (first on line 1))",
    ),
    "config-infinite-learning-rate": (
        ["config", "--set", "tune.learning_rate=.inf"],
        None,
        "tune.learning_rate: must be a finite number",
    ),
    "import-csv-column-twice": (
        ["data", "import", "{d}/data.csv", "--out", "{d}/out.jsonl"],
        _write("data.csv", "instruction,output,output\nHi,Hello,Bye\n"),
        "names column 'output' twice (columns 2 and 3)",
    ),
    "import-nested": (
        ["data", "import", "{d}/data.jsonl", "--out", "{d}/out.jsonl"],
        _write("data.jsonl", DEEP),
        "data.jsonl:1: nested too deeply",
    ),
    "prompts-utf16": (
        ["generate", "--model", "{model}", "--prompts-file", "{d}/prompts.txt"],
        _write("prompts.txt", "Hi there\n".encode("utf-16")),
        "prompts.txt: not UTF-8 text",
    ),
    "prompts-nested": (
        ["generate", "--model", "{model}", "--prompts-file", "{d}/prompts.jsonl"],
        _write("prompts.jsonl", DEEP),
        "prompts.jsonl:1: nested too deeply",
    ),
    "tune-empty-answer": (
        ["tune", "--data", "{d}/train.jsonl", "--out", "{d}/adapter", "--model", "{model}"],
        _write("train.jsonl", EMPTY_ANSWER),
        "train.jsonl:1: messages[1] (assistant) has empty content",
    ),
    "eval-no-suite": (
        ["eval", "--suites", ",", "--model", "{model}"],
        None,
        "--suites ',' names no suite",
    ),
    "run-out-holds-a-foreign-config": (
        ["run", "model.name={model}", "--out", "{d}/mine"],
        lambda d: ((d / "mine").mkdir(), (d / "mine" / "config.yaml").write_text("notes: 1\n")),
        "mine/config.yaml exists and is not this run's config",
    ),
    "export-out-under-a-file": (
        ["export", "{d}/run", "--round", "1", "--out", "{d}/good.jsonl/adapter"],
        _fake_adapter_run,
        "good.jsonl is a file, not a directory",
    ),
    "report-out-under-a-file": (
        ["report", "{d}/run", "--out", "{d}/good.jsonl/report"],
        _fake_run,
        "good.jsonl is a file, not a directory",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line(
    monkeypatch, capsys, tmp_path: Path, request: pytest.FixtureRequest, case: str
) -> None:
    import tempfile

    from agent.data import write_jsonl

    args, setup, message = BAD[case]
    d = tmp_path / "work"
    d.mkdir()
    write_jsonl(d / "good.jsonl", GOOD)
    if setup is not None:
        setup(d)
    if "{d}/ro/" in " ".join(args):
        read_only_dir(d / "ro", request)
    model = request.getfixturevalue("tiny_model_dir") if "{model}" in " ".join(args) else ""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where tracebacks go
    before = _snapshot(d)
    code, err = run_cli(monkeypatch, capsys, *(a.format(d=d, model=model) for a in args))
    lines = err.splitlines()
    assert code == 1 and message in err, err
    assert [x for x in lines if x.startswith("error:")] == lines[-1:] and "Traceback" not in err
    assert _snapshot(d) == before
    if "{d}/ro/" in " ".join(args):
        assert "pick another location, or change its permissions" in err, err
        assert "traceback written" not in err


def test_an_unexpected_error_names_its_traceback_file(monkeypatch, capsys, tmp_path: Path) -> None:
    import json

    from loop.rundir import RunDir

    run_dir = _fake_run(tmp_path)
    # A bug stands in for the unexpected: a parse error the code does not handle.
    monkeypatch.setattr(RunDir, "read_metrics", lambda self: json.loads('{"round": 1, "deci'))
    before = _snapshot(run_dir)
    code, err = run_cli(monkeypatch, capsys, "status", str(run_dir))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: status: JSONDecodeError: ")
    saved = Path(err.rstrip().removesuffix(")").rpartition("traceback written to ")[2])
    assert saved.parent == run_dir / "logs" and "Traceback" in saved.read_text()
    assert all(_snapshot(run_dir)[k] == v for k, v in before.items())
    # SELFLOOP_DEBUG=1 shows the traceback instead.
    monkeypatch.setenv("SELFLOOP_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["selfloop", "status", str(run_dir)])
    with pytest.raises(ValueError):
        main()


# ---------------------------------------------------------------- damaged models and adapters
def _cut(path: Path, keep: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:keep])  # a copy cut short


# (what to damage in a copy of the tiny model (m) or of an adapter (a), the command, the line)
DAMAGED = {
    "model-config-json": (
        lambda m, a: (m / "config.json").write_text("{bad"),
        ["generate", "--model", "{m}", "-p", "Hi"],
        "m/config.json is not valid JSON",
    ),
    "model-no-tokenizer": (
        lambda m, a: [p.unlink() for p in m.iterdir() if p.name.startswith("tokenizer")],
        ["generate", "--model", "{m}", "-p", "Hi"],
        "has no tokenizer (no tokenizer.json or tokenizer.model)",
    ),
    "model-garbage-tokenizer": (
        lambda m, a: (m / "tokenizer.json").write_bytes(bytes(range(256)) * 4),
        ["generate", "--model", "{m}", "-p", "Hi"],
        "m/tokenizer.json is not UTF-8 text",
    ),
    "model-weights-cut-short": (
        lambda m, a: _cut(m / "model.safetensors", 5000),
        ["generate", "--model", "{m}", "-p", "Hi"],
        "cannot load the model in",
    ),
    "generate-adapter-cut-short": (
        lambda m, a: _cut(a / "adapter_model.safetensors"),
        ["generate", "--model", "{m}", "--adapter", "{a}", "-p", "Hi"],
        "a/adapter_model.safetensors is truncated or not a safetensors file",
    ),
    "generate-adapter-config-broken": (
        lambda m, a: (a / "adapter_config.json").write_text('{"peft_type": '),
        ["generate", "--model", "{m}", "--adapter", "{a}", "-p", "Hi"],
        "a/adapter_config.json is not valid JSON",
    ),
    "merge-adapter-cut-short": (
        lambda m, a: _cut(a / "adapter_model.safetensors"),
        ["merge", "--model", "{m}", "--adapter", "{a}", "--out", "{d}/merged"],
        "a/adapter_model.safetensors is truncated or not a safetensors file",
    ),
    "merge-adapter-config-broken": (
        lambda m, a: (a / "adapter_config.json").write_text("[]"),
        ["merge", "--model", "{m}", "--adapter", "{a}", "--out", "{d}/merged"],
        "a/adapter_config.json is a JSON list, not an object",
    ),
}


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from tests.helpers import make_lora_adapter

    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a")


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_model_or_adapter_is_named(
    monkeypatch, capsys, tmp_path: Path, tiny_model_dir: Path, tiny_adapter: Path, case: str
) -> None:
    import shutil

    damage, args, message = DAMAGED[case]
    d = tmp_path / "work"
    m, a = d / "m", d / "a"
    shutil.copytree(tiny_model_dir, m)
    shutil.copytree(tiny_adapter, a)
    damage(m, a)
    before = _snapshot(d)
    code, err = run_cli(monkeypatch, capsys, *(x.format(d=d, m=m, a=a) for x in args))
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 1 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and "traceback written" not in err
    assert _snapshot(d) == before


def test_show_names_a_finished_stage_whose_stats_are_missing(tmp_path: Path) -> None:
    from loop.show import render_round

    run_dir = _fake_run(tmp_path)  # propose finished (its directory is there), no stats.json
    text = render_round(run_dir, 1)
    assert f"propose   done, but {run_dir}/rounds/001/propose/stats.json is missing" in text, text


def test_a_review_csv_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    from agent.errors import SelfloopError
    from loop.review import _read_edited

    path = tmp_path / "review.csv"
    path.write_text("id,instruction,input,response,response\na,Hi,,Hello,Bye\n")
    with pytest.raises(SelfloopError, match="names column 'response' twice"):
        _read_edited(path)

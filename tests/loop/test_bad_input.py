"""Bad input to the loop's commands: one line naming the key or file, a non-zero exit, and
nothing already in the run directory changed."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from loop.cli import main
from loop.config import dump_config, load_config


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

"""The `selfloop` CLI: help, generate, config, placeholders, and one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loop.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["selfloop", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    for cmd in ("generate", "serve", "run", "eval", "tune", "data", "prepare", "show", "report"):
        assert cmd in out


def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loop.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "generate" in out.stdout


@pytest.mark.parametrize("cmd", ["show", "report", "export", "review", "status", "resume"])
def test_run_commands_refuse_a_directory_that_is_not_a_run(
    monkeypatch, capsys, tmp_path: Path, cmd: str
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    extra = ["--out", str(tmp_path / "x")] if cmd == "export" else []
    code, _, err = run_cli(monkeypatch, capsys, cmd, str(tmp_path), *extra)
    assert code == 1 and "is not a selfloop run directory" in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written or removed


def test_generate_with_local_model(monkeypatch, capsys, tiny_model_dir: Path) -> None:
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "--model",
        str(tiny_model_dir),
        "-p",
        "Hi",
        "-p",
        "Bye",
        "--max-tokens",
        "5",
        "--json",
    )
    assert code == 0
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 2 and all(r["error"] is None for r in recs)
    assert all(r["completions"][0]["completion_tokens"] <= 5 for r in recs)
    assert recs[0]["prompt"] == [{"role": "user", "content": "Hi"}]


def test_generate_prompts_file(monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "Hi"}\n\n{"messages": [{"role": "user", "content": "Yo"}]}\n')
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompts-file",
        str(f),
        "--max-tokens",
        "3",
        "--json",
    )
    assert code == 0 and len(out.splitlines()) == 2


def _assert_one_line_error(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "no-such-model", "-p", "x"], "unknown model 'no-such-model'"),
        (["--model", "/nope/model.gguf", "-p", "x"], "model path not found"),
        (["--model", "org/not-cached-model", "-p", "x"], "Hub id"),
        (["--model", "{tiny}"], "no prompts given"),
        (["--model", "{tiny}", "-p", "x", "--max-tokens", "0"], "sampling.max_tokens"),
        (["--model", "{tiny}", "--prompts-file", "{bad}"], "bad.jsonl:2: not valid JSON"),
        (
            ["--model", "{tiny}", "-p", "x", "--set", "backend.batch_size=zero"],
            "backend.batch_size",
        ),
        (["--model", "{tiny}", "-p", "x", "--set", "nosuch.key=1"], "nosuch: unknown key"),
    ],
)
def test_generate_bad_input(
    monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path, args, needle
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    args = [a.replace("{tiny}", str(tiny_model_dir)).replace("{bad}", str(bad)) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "generate", *args)
    _assert_one_line_error(code, err, needle)


def test_generate_truncated_gguf(monkeypatch, capsys, tmp_path: Path) -> None:
    from agent.models import bundled_gguf_path

    cut = tmp_path / "cut.gguf"
    with bundled_gguf_path("smollm2-135m-instruct").open("rb") as f:
        cut.write_bytes(f.read(1_000_000))
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", str(cut), "-p", "x")
    _assert_one_line_error(code, err, "truncated")


def test_generate_unreachable_endpoint(monkeypatch, capsys) -> None:
    from tests.helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--model",
        "m",
        "-p",
        "x",
        "--set",
        "backend.max_retries=0",
    )
    _assert_one_line_error(code, err, f"cannot reach {url}")


def test_config_file_errors_name_file_and_key(monkeypatch, capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  name: x\nbackend:\n  kind: tpu\n")
    code, _, err = run_cli(monkeypatch, capsys, "config", "-c", str(cfg))
    _assert_one_line_error(code, err, f"{cfg}: backend.kind")
    cfg.write_text("model: [unclosed\n")
    code, _, err = run_cli(monkeypatch, capsys, "config", "-c", str(cfg))
    _assert_one_line_error(code, err, "line")


def test_config_show_applies_overrides(monkeypatch, capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("sampling:\n  max_tokens: 7\n")
    code, out, _ = run_cli(
        monkeypatch, capsys, "config", "-c", str(cfg), "--set", "sampling.stop=[END]"
    )
    assert code == 0 and "max_tokens: 7" in out and "- END" in out


def test_shipped_presets_validate() -> None:
    from loop.config import load_config

    presets = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))
    assert presets, "configs/ has no presets"
    for p in presets:
        load_config(p)
    # `selfloop run` with no config runs the recipe: the defaults and the preset agree.
    assert load_config(Path(__file__).parents[2] / "configs" / "recipe.yaml") == load_config()
    names = {p.name for p in presets}
    assert {"recipe.yaml", "self-instruct.yaml", "gpu-lora.yaml", "distill.yaml"} <= names


def test_a_gate_section_written_in_part_keeps_the_loops_defaults() -> None:
    from loop.config import load_config
    from loop.gate import GateConfig

    default = load_config().gate
    assert default.primary == "if.prompt_loose" and default.margin == 0.0
    assert "helpfulness.reference_nll" in [g.metric for g in default.guards]
    # GateConfig's own defaults (library callers of loop.gate.decide) differ on every one of these
    assert GateConfig().primary != default.primary and GateConfig().margin != default.margin
    partial = load_config(None, ["gate.margin=0.01"]).gate
    assert partial.primary == default.primary and partial.guards == default.guards
    assert partial.margin == 0.01
    assert load_config(None, ["gate.guards=[]"]).gate.guards == []


def test_data_import_writes_messages_and_rejects_bad_files(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    src = tmp_path / "alpaca.jsonl"
    src.write_text(
        '{"instruction": "Say hi", "input": "", "output": "Hi!"}\n'
        '{"instruction": "Add 2 and 3", "input": "", "output": "5"}\n'
    )
    out = tmp_path / "out.jsonl"
    code, stdout, _ = run_cli(monkeypatch, capsys, "data", "import", str(src), "--out", str(out))
    assert code == 0 and "imported 2 examples" in stdout
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert (
        recs[0]["messages"][-1] == {"role": "assistant", "content": "Hi!"}
        and recs[0]["source"] == "human"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"instruction": "Say hi", "output": "Hi"}\n{"instruction": "", "output": "x"}\n'
    )
    code, _, err = run_cli(
        monkeypatch, capsys, "data", "import", str(bad), "--out", str(tmp_path / "o2.jsonl")
    )
    _assert_one_line_error(code, err, "bad.jsonl:2")
    assert not (tmp_path / "o2.jsonl").exists()


def test_tune_reads_the_formats_data_import_reads(
    monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [("Capital of France?", "Paris."), ("Two plus two?", "Four.")] * 2  # one repeat each
    data = tmp_path / "train.csv"
    data.write_text("question,answer\n" + "".join(f"{q},{a}\n" for q, a in rows))
    args = ["tune", "--model", str(tiny_model_dir), "--data", str(data), "--out"]
    sets = ("tune.max_steps=1", "tune.batch_size=2", "tune.max_seq_len=128")
    steps = [a for s in sets for a in ("--set", s)]
    code, _, err = run_cli(monkeypatch, capsys, *args, str(tmp_path / "a"), *steps)
    assert code == 1 and "cannot tell the record format" in err  # other column names: --map
    mapped = [*args, str(tmp_path / "a"), "--map", "instruction=question", "--map", "output=answer"]
    code, out, err = run_cli(monkeypatch, capsys, *mapped, *steps)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["examples"] == 2  # the repeats dropped
    assert "dropped 2 exact repeats" in err
    assert (tmp_path / "a" / "adapter_config.json").is_file()


def test_eval_prints_a_table(monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    code, stdout, _ = run_cli(
        monkeypatch, capsys, "eval", "--model", str(tiny_model_dir), "--suites", "if,safety",
        "--limit", "2", "--max-tokens", "4", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    assert "if" in stdout and "prompt_loose" in stdout and "refusal_rate" in stdout
    assert set(json.loads(out.read_text())["suites"]) == {"if", "safety"}


def test_eval_with_a_users_own_suite(monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path):
    suite = tmp_path / "clinic.jsonl"
    suite.write_text(
        json.dumps({
            "id": "clinic-1", "prompt": "What organ pumps blood?", "reference": "The heart.",
            "domain": "healthcare", "facts": ["heart"], "language": "en",
        }) + "\n"
    )  # fmt: skip
    code, stdout, err = run_cli(
        monkeypatch, capsys, "eval", "--model", str(tiny_model_dir), "--suites", "safety",
        "--suite-file", f"clinic={suite}:facts", "--limit", "2", "--max-tokens", "4",
    )  # fmt: skip
    assert code == 0, err
    assert any(line.startswith("clinic") and "fact_recall" in line for line in stdout.splitlines())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "Hi", "domain": "law", "language": "en"}\n')
    code, _, err = run_cli(
        monkeypatch, capsys, "eval", "--model", str(tiny_model_dir), "--suite-file",
        f"bad={bad}:facts",
    )  # fmt: skip
    assert code == 1 and f"{bad}:1: missing key 'reference'" in err

"""The README's lm-evaluation-harness recipe, run as written against `selfloop serve`.

lm-eval is not a selfloop dependency, so this runs only where an `lm_eval` command exists: on
PATH, or named by SELFLOOP_LM_EVAL (e.g. one installed in a virtual environment of its own with
`pip install "lm_eval[api]"`). The task files and commands are taken from the README itself, so
the recipe a user copies is the one tested; only the port and an `--output_path` change.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import free_port, make_lora_adapter, start_server

README = Path(__file__).resolve().parents[2] / "README.md"
LM_EVAL = os.environ.get("SELFLOOP_LM_EVAL") or shutil.which("lm_eval")

pytestmark = pytest.mark.skipif(
    not LM_EVAL, reason="lm_eval not installed (set SELFLOOP_LM_EVAL to its command)"
)

QUESTIONS = [
    {"question": "What colour is a clear sky?", "choices": ["blue", "green"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight"], "answer": 1},
    {"question": "Which is a fruit?", "choices": ["apple", "brick", "spoon"], "answer": 0},
]


def recipe() -> tuple[dict[str, str], list[str]]:
    """The README's task files ({name: yaml}) and its two lm_eval commands."""
    text = README.read_text(encoding="utf-8")
    part = text[text.index("**Evaluating a champion with lm-evaluation-harness.**") :]
    yaml_block = re.search(r"```yaml\n(.*?)```", part, re.S).group(1)
    bash_block = re.search(r"```bash\n(.*?)```", part, re.S).group(1)
    tasks: dict[str, str] = {}
    name = None
    for line in yaml_block.splitlines():
        if m := re.match(r"# (tasks/\S+\.yaml)", line):
            name = m.group(1)
            tasks[name] = ""
        elif name:
            tasks[name] += line + "\n"
    commands = bash_block.replace("\\\n", " ").splitlines()
    return tasks, [c for c in commands if c.startswith("lm_eval ")]


def test_the_readme_recipe_runs_against_selfloop_serve(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tasks, commands = recipe()
    assert set(tasks) == {"tasks/mine.yaml", "tasks/mine_gen.yaml"} and len(commands) == 2
    (tmp_path / "tasks").mkdir()
    for name, body in tasks.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    adapter = make_lora_adapter(tiny_model_dir, tmp_path / "champion-adapter")
    port = free_port()
    server = start_server(
        ["--model", str(tiny_model_dir), "--adapter", f"champion={adapter}"],
        port,
        tmp_path / "server.log",
    )
    try:
        for i, command in enumerate(commands):
            args = shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
            args = [LM_EVAL, *args[1:], "--output_path", f"results-{i}"]
            done = subprocess.run(
                args,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            found = list((tmp_path / f"results-{i}").rglob("results_*.json"))
            assert found, done.stdout[-2000:]
            results = json.loads(found[0].read_text())["results"]
            task = "mine" if i == 0 else "mine_gen"
            metric = "acc,none" if i == 0 else "exact_match,none"
            assert 0.0 <= results[task][metric] <= 1.0, results
    finally:
        server.terminate()
        server.wait(timeout=30)

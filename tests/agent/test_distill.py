"""Distillation: a teacher served by `selfloop serve` (a real subprocess) answers the tasks through
the `openai` backend, and every record says it came from the teacher, not the student."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agent.backends import SamplingParams
from agent.backends.hf import TransformersGenerator
from agent.backends.openai_backend import OpenAIGenerator
from agent.construct import respond
from tests.helpers import build_tiny_model, free_port, start_server

TEACHER = "teacher-tiny"
TASKS = [
    {
        "id": "r003-c000-00",
        "instruction": "Name a fruit.",
        "input": "",
        "domain": "general",
        "language": "en",
    },
    {
        "id": "r003-c000-01",
        "instruction": "Summarize:",
        "input": "The cat sat on the mat.",
        "domain": "writing",
        "language": "en",
    },
    {
        "id": "r003-c001-00",
        "instruction": "¿Qué es un presupuesto?",
        "input": "",
        "domain": "finance",
        "language": "es",
        "constraints": [{"type": "max_words", "value": 50}],
    },
]
# What a response record must carry for the judges, the pool and `selfloop data export`.
PROVENANCE = (
    "id", "instruction_id", "instruction", "response", "messages", "finish_reason",
    "completion_tokens", "round", "stage", "source", "model", "sampling", "domain", "language",
)  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    # Another random llama (other seed): same tokenizer and chat template, different weights.
    return build_tiny_model(tmp_path_factory.mktemp("teacher"), tokenizer_dir, seed=1)


@pytest.fixture(scope="module")
def teacher(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("teacher-serve") / "server.log"
    port = free_port()
    proc = start_server(["--model", str(teacher_dir), "--served-model-name", TEACHER], port, log)
    gen = OpenAIGenerator(TEACHER, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    yield gen
    gen.close()
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def student(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(str(tiny_model_dir))


def test_teacher_records_carry_teacher_provenance(teacher, student) -> None:
    params = SamplingParams(max_tokens=8, temperature=1.0, n=2, seed=5)
    out, stats = respond(teacher, TASKS, params, source="teacher", round_index=3)
    assert stats == {"tasks": 3, "responses": 6, "backend_errors": 0}
    assert Counter(r["instruction_id"] for r in out) == {t["id"]: 2 for t in TASKS}
    assert len({r["id"] for r in out}) == 6
    assert student.model_name != TEACHER
    by_id = {t["id"]: t for t in TASKS}
    for r in out:
        missing = [k for k in PROVENANCE if r.get(k) is None]
        assert not missing, f"{r['id']} lacks {missing}"
        assert r["source"] == "teacher" and r["model"] == TEACHER
        assert r["stage"] == "respond" and r["round"] == 3
        assert r["sampling"] == params.model_dump(mode="json")
        t = by_id[r["instruction_id"]]
        assert r["id"].startswith(t["id"] + "-s")
        assert (r["instruction"], r["domain"], r["language"]) == (
            t["instruction"],
            t["domain"],
            t["language"],
        )
        assert r.get("constraints") == t.get("constraints")
        assert r["messages"][-1] == {"role": "assistant", "content": r["response"]}
        assert r["finish_reason"] in ("stop", "length") and r["completion_tokens"] >= 0


def test_teacher_answers_come_from_the_teacher_model(teacher, student, teacher_dir) -> None:
    greedy = SamplingParams(max_tokens=12)
    remote, _ = respond(teacher, TASKS, greedy, source="teacher")
    own, _ = respond(student, TASKS, greedy)
    # The same weights in this process give the served answers; the student's own differ.
    prompts = [r["messages"][:-1] for r in remote]
    here = TransformersGenerator(str(teacher_dir)).generate(prompts, greedy)
    assert [r["response"] for r in remote] == [h.text for h in here]
    assert [r["response"] for r in remote] != [r["response"] for r in own]
    assert all(r["source"] == "self" and r["model"] == student.model_name for r in own)

"""Self-instruct proposals, mutations and responses on a tiny model; the list parser."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agent.backends import SamplingParams
from agent.backends.hf import TransformersGenerator
from agent.backends.openai_backend import OpenAIGenerator
from agent.construct import ProposeConfig, parse_numbered_list, proposal_prompt, propose, respond
from agent.seeds import load_seed_tasks
from tests.helpers import free_port


@pytest.mark.parametrize(
    "text, truncated, expected",
    [
        (
            "1. Write a poem about rain.\n2. Explain gravity simply.\n3. List three fruits.",
            False,
            ["Write a poem about rain.", "Explain gravity simply.", "List three fruits."],
        ),
        (
            "Sure! Here are some tasks:\n\n1) Name two rivers.\n2) Define entropy briefly."
            "\n\nHope this helps!",
            False,
            ["Name two rivers.", "Define entropy briefly."],
        ),
        (
            "Task 1: Summarize a news story.\nTask 2: Translate hello into French.",
            False,
            ["Summarize a news story.", "Translate hello into French."],
        ),
        (
            "**1.** Plan a picnic menu.\n**2.** Write a limerick about cats.",
            False,
            ["Plan a picnic menu.", "Write a limerick about cats."],
        ),
        (
            "1. Describe a sunset.\n1. Describe a sunset.\n2. Compare two sorting algorithms.",
            False,
            ["Describe a sunset.", "Compare two sorting algorithms."],
        ),
        (
            "1. Explain how tides work.\n2. Write a short story about a robot who",
            True,
            ["Explain how tides work."],
        ),
        (
            "- Give tips for studying.\n- Suggest a name for a bakery.",
            False,
            ["Give tips for studying.", "Suggest a name for a bakery."],
        ),
        (
            "1. Write an email declining a meeting\n   politely and briefly.\n"
            "2. Rank these numbers.",
            False,
            ["Write an email declining a meeting politely and briefly.", "Rank these numbers."],
        ),
        ("I cannot think of anything.", False, []),
        ("1.\n2. ok\n3. Instruction: Convert 5 km to miles.", False, ["Convert 5 km to miles."]),
    ],
)
def test_parse_numbered_list(text: str, truncated: bool, expected: list[str]) -> None:
    assert parse_numbered_list(text, truncated=truncated) == expected


def test_prompt_shows_examples_and_steering() -> None:
    seeds = [s.model_dump() for s in load_seed_tasks()[:3]]
    msgs = proposal_prompt(seeds, 5, "healthcare", "es")
    text = msgs[0]["content"]
    assert all(s["instruction"].split()[0] in text for s in seeds)
    assert "Write 5 new tasks in the field of healthcare, written in Spanish" in text


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(str(tiny_model_dir))


@pytest.fixture(scope="module")
def seeds() -> list[dict]:
    return [s.model_dump() for s in load_seed_tasks()]


def test_propose_records_provenance(gen, seeds) -> None:
    accepted = [{"id": "acc-1", "instruction": "Explain what a budget is."}]
    cfg = ProposeConfig(calls=4, tasks_per_call=3, max_tokens=24, domains={"law": 1, "finance": 3})
    proposals, stats = propose(gen, seeds, accepted, cfg, round_index=2)
    assert stats["calls"] == 4 and stats["proposals"] == len(proposals)
    assert stats["empty_parses"] + stats["backend_errors"] <= 4
    # Whatever the random model wrote, the call plans (shown examples, steering) are recorded.
    ids = {s["id"] for s in seeds} | {"acc-1"}
    for p in proposals:
        assert p["round"] == 2 and p["id"].startswith("r002-") and p["model"] == gen.model_name
        assert len(p["shown_ids"]) == 7 and set(p["shown_ids"]) <= ids and "acc-1" in p["shown_ids"]
        assert p["domain"] in ("law", "finance") and p["sampling"]["temperature"] == 0.9


def test_steering_weights_shape_the_mix(gen, seeds) -> None:
    from agent import construct

    rng_plans = Counter()
    cfg = ProposeConfig(calls=200, domains={"law": 1, "finance": 3}, languages={"en": 1, "fr": 1})
    import random

    rng = random.Random("x")
    for _ in range(cfg.calls):
        rng_plans[
            (construct._weighted(rng, cfg.domains), construct._weighted(rng, cfg.languages))
        ] += 1
    law = sum(v for (d, _), v in rng_plans.items() if d == "law")
    assert 25 <= law <= 75  # ~50 of 200 at weight 1:3
    assert {lang for (_, lang) in rng_plans} == {"en", "fr"}


def test_mutations_rewrite_accepted_tasks(gen, seeds) -> None:
    accepted = [{"id": "acc-1", "instruction": "Explain what a budget is."}]
    cfg = ProposeConfig(calls=3, max_tokens=16, mutations=["harder"], mutation_share=1.0)
    proposals, stats = propose(gen, seeds, accepted, cfg, round_index=1)
    assert all(p["method"] == "evol:harder" and p["shown_ids"] == ["acc-1"] for p in proposals)


def test_respond_n_samples_with_provenance(gen) -> None:
    tasks = [
        {"id": "t1", "instruction": "Name a fruit.", "domain": "general", "language": "en"},
        {
            "id": "t2",
            "instruction": "Summarize:",
            "input": "The cat sat on the mat.",
            "language": "en",
        },
    ]
    params = SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=1)
    out, stats = respond(gen, tasks, params, source="teacher", round_index=4)
    assert stats == {"tasks": 2, "responses": 6, "backend_errors": 0}
    assert [r["id"] for r in out[:3]] == ["t1-s0", "t1-s1", "t1-s2"]
    r = out[3]
    assert r["instruction_id"] == "t2" and r["source"] == "teacher" and r["round"] == 4
    assert r["messages"][0]["content"] == "Summarize:\n\nThe cat sat on the mat."
    assert r["messages"][1] == {"role": "assistant", "content": r["response"]}


def test_respond_counts_backend_errors() -> None:
    dead = OpenAIGenerator(
        "m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout=5
    )
    out, stats = respond(
        dead, [{"id": "t1", "instruction": "Hi there"}], SamplingParams(max_tokens=4)
    )
    assert out == [] and stats["backend_errors"] == 1

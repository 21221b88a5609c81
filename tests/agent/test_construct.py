"""Self-instruct proposals, mutations and responses on a tiny model; the list parser, on
hand-made cases and on real replies of the bundled model (tests/assets/proposal_replies.jsonl,
collected by bench/collect_replies.py)."""

from __future__ import annotations

import json
import re
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
        # Shapes seen in the bundled model's real replies (tests/assets/proposal_replies.jsonl):
        (
            "1. Name a gas? 2. Define rent. 3. Add 2 and 3. Then double it.",
            False,
            ["Name a gas?", "Define rent.", "Add 2 and 3. Then double it."],
        ),
        (
            "1. 1. Sort a list.\n2. 2.\nReverse a string.",
            False,
            ["Sort a list.", "Reverse a string."],
        ),
        (
            '1. Name a planet.\n\nNotes:\n```\n{"a": [1, 2',
            True,  # cut, but after the list: its last item is whole
            ["Name a planet."],
        ),
        (
            '1. 東京の人口を教えてください。\n2. "Explain rain."\n**Next**\n3. **Bold** title here',
            False,
            ["東京の人口を教えてください。", "Explain rain.", "Bold title here"],
        ),
        (
            "1. Plan a trip.\n2. Here is a new task for you.\nI hope this helps!",
            False,
            ["Plan a trip."],
        ),
    ],
)
def test_parse_numbered_list(text: str, truncated: bool, expected: list[str]) -> None:
    assert parse_numbered_list(text, truncated=truncated) == expected


REPLIES = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "assets" / "proposal_replies.jsonl")
    .read_text(encoding="utf-8")
    .splitlines()
]
# What a model writes around its list; never a task.
CHATTER = re.compile(
    r"^(?:sure|certainly|of course|okay)\b"
    r"|^here (?:are|is)\b.*\b(?:tasks?|instructions?|questions?|examples?)\b",
    re.I,
)
LIST_NUMBER = re.compile(r"^\(?\d{1,3}\s*[.):](?:\s|$)|^(?:task|instruction|question)\s*\d", re.I)


def _parse(reply: dict) -> list[str]:
    return parse_numbered_list(reply["text"], truncated=reply["finish_reason"] == "length")


def test_reply_fixture_is_real_varied_and_labelled() -> None:
    assert len(REPLIES) >= 36
    for r in REPLIES:
        assert r["model"] == "smollm2-135m-instruct" and r["kind"] == "self_instruct"
        assert r["sampling"]["temperature"] == 0.9 and r["sampling"]["max_tokens"] == 400
        assert r["shown"] and r["text"] and r["completion_tokens"] > 0
    assert {r["finish_reason"] for r in REPLIES} == {"stop", "length"}
    assert {r["language"] for r in REPLIES} > {"en"} and any(r["domain"] for r in REPLIES)
    assert sum("expected" in r for r in REPLIES) >= 12


@pytest.mark.parametrize(
    "reply",
    [r for r in REPLIES if "expected" in r or "expected_includes" in r],
    ids=lambda r: r["id"],
)
def test_real_reply_parses_as_hand_labelled(reply: dict) -> None:
    got = _parse(reply)
    if "expected" in reply:
        assert got == reply["expected"]
    rest = iter(got)  # the must-have items, in this order, among the parsed ones
    missing = [want for want in reply.get("expected_includes", []) if want not in rest]
    assert not missing, got


def test_real_replies_yield_tasks_not_chatter_or_numbers() -> None:
    parsed = {r["id"]: _parse(r) for r in REPLIES}
    # 41 of the 48 collected replies hold at least one task; the rest are junk to the eye too.
    assert sum(bool(items) for items in parsed.values()) >= 0.75 * len(REPLIES)
    for rid, items in parsed.items():
        keys = [" ".join(it.lower().split()).rstrip(".!?;: ") for it in items]
        assert len(keys) == len(set(keys)), f"{rid}: a repeat survived"
        for it in items:
            assert not CHATTER.match(it), (rid, it)
            assert not LIST_NUMBER.match(it), (rid, it)
            assert "**" not in it and "\n" not in it and it == it.strip(), (rid, it)
            assert len(it.split()) >= 2 or len(it) >= 4, (rid, it)


def test_cut_off_replies_never_yield_their_partial_item() -> None:
    cut = [r for r in REPLIES if r["finish_reason"] == "length"]
    assert len(cut) >= 10
    for r in cut:
        # The last words before the token limit end the partial item, wherever it starts.
        tail = " ".join(r["text"].rstrip().splitlines()[-1].split()[-3:]).strip("*- ")
        if len(tail) < 3:
            continue
        for it in _parse(r):
            assert not " ".join(it.split()).endswith(tail), (r["id"], it)


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
    cfg = ProposeConfig(
        calls=4, tasks_per_call=3, sampling={"max_tokens": 24}, domains={"law": 1, "finance": 3}
    )
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
    cfg = ProposeConfig(
        calls=3, sampling={"max_tokens": 16}, mutations=["harder"], mutation_share=1.0
    )
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
    constrained = {
        "id": "aug-1", "instruction": "Name a fruit. Answer in lowercase letters only.",
        "constraints": [{"type": "lowercase"}], "base_id": "t1",
        "base_instruction": "Name a fruit.", "origin": "augment",
    }  # fmt: skip
    [answer] = respond(gen, [constrained], SamplingParams(max_tokens=4))[0]
    # a learned constrained task keeps its unconstrained base, which a later round constrains
    assert {k: answer[k] for k in constrained if k != "id"} == {
        k: v for k, v in constrained.items() if k != "id"
    }


def test_respond_counts_backend_errors() -> None:
    dead = OpenAIGenerator(
        "m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout=5
    )
    out, stats = respond(
        dead, [{"id": "t1", "instruction": "Hi there"}], SamplingParams(max_tokens=4)
    )
    assert out == [] and stats["backend_errors"] == 1

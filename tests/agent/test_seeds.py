"""Seed pool: coverage counts, outputs pass their constraints, languages; loader errors."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import SelfloopError
from agent.seeds import BASE_FILE, BaseTask, SeedTask, load_base_tasks, load_seed_tasks
from judges import lang
from judges.verifiable import check, render

DOMAIN_MINIMUMS = {
    "general": 8,
    "writing": 8,
    "reasoning": 8,
    "math": 8,
    "coding": 8,
    "classification": 8,
    "extraction": 8,
    "healthcare": 12,
    "law": 12,
    "finance": 12,
}
MIN_LETTERS = 60  # shorter outputs ("Business", a list of dates) say too little about language


@pytest.fixture(scope="module")
def seeds() -> list[SeedTask]:
    return load_seed_tasks()


def _record(**overrides: object) -> dict:
    rec = {
        "id": "t-1",
        "instruction": "Say hello.",
        "input": "",
        "output": "Hello!",
        "domain": "general",
        "language": "en",
        "constraints": [],
    }
    rec.update(overrides)
    return rec


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_size_and_domain_coverage(seeds: list[SeedTask]) -> None:
    assert len(seeds) >= 140
    domains = Counter(t.domain for t in seeds)
    short = {d: domains[d] for d, n in DOMAIN_MINIMUMS.items() if domains[d] < n}
    assert not short, f"domains below their minimum: {short}"


def test_language_coverage(seeds: list[SeedTask]) -> None:
    languages = Counter(t.language for t in seeds)
    assert languages["en"] >= 70
    others = [code for code, n in languages.items() if code != "en" and n >= 6]
    assert len(others) >= 4, languages


def test_constraint_and_input_coverage(seeds: list[SeedTask]) -> None:
    assert sum(bool(t.constraints) for t in seeds) >= 25
    assert sum(bool(t.input.strip()) for t in seeds) >= 20


def test_ids_unique(seeds: list[SeedTask]) -> None:
    ids = [t.id for t in seeds]
    assert len(ids) == len(set(ids))


def test_reference_outputs_pass_their_constraints(seeds: list[SeedTask]) -> None:
    failures = [
        f"{t.id}: {r.type} ({r.reason})"
        for t in seeds
        for r in check(t.output, t.constraints)
        if not r.passed
    ]
    assert not failures


def test_constraints_are_stated_in_the_instruction(seeds: list[SeedTask]) -> None:
    # English tasks carry `render(c)` verbatim; tasks in other languages state their constraints
    # in that language (checked by reading them, not here).
    missing = [
        f"{t.id}: {render(c)!r}"
        for t in seeds
        if t.language == "en"
        for c in t.constraints
        if render(c) not in t.instruction
    ]
    assert not missing


def test_outputs_are_in_their_tagged_language(seeds: list[SeedTask]) -> None:
    wrong = []
    for t in seeds:
        if any(c["type"] == "json_format" for c in t.constraints):
            continue  # keys and proper nouns, not prose
        if lang.count_letters(lang.prose(t.output)) < MIN_LETTERS:
            continue
        found, p = lang.detect(t.output)
        if not lang.same_language(t.language, found):
            wrong.append(f"{t.id}: tagged {t.language}, detected {found} (p={p:.2f})")
    assert not wrong


def test_instructions_and_outputs_per_language(seeds: list[SeedTask]) -> None:
    # Pooled per language, even short instructions and outputs give a confident detection.
    pooled: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"instr": [], "out": []})
    for t in seeds:
        pooled[t.language]["instr"].append(t.instruction)
        pooled[t.language]["out"].append(t.output)
    for code, texts in pooled.items():
        for kind, parts in texts.items():
            found, _ = lang.detect("\n".join(parts))
            assert lang.same_language(code, found), f"{code} {kind}: detected {found}"


def test_bundled_file_is_package_data() -> None:
    from importlib import resources

    assert resources.files("agent.seeds").joinpath("seed_tasks.jsonl").is_file()


def test_user_file_replaces_bundled_pool(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            json.dumps(_record()),
            "",
            json.dumps(
                _record(
                    id="t-2",
                    output="hi there",
                    constraints=[{"type": "lowercase"}],
                    language="fr",
                    domain="custom",
                )
            ),
        ],
    )
    tasks = load_seed_tasks(path)
    assert [t.id for t in tasks] == ["t-1", "t-2"]
    assert tasks[0].constraints == [] and tasks[1].constraints == [{"type": "lowercase"}]


def test_input_and_constraints_default_to_empty(tmp_path: Path) -> None:
    rec = _record()
    del rec["input"], rec["constraints"]
    (task,) = load_seed_tasks(_write(tmp_path, [json.dumps(rec)]))
    assert task.input == "" and task.constraints == []


@pytest.mark.parametrize(
    ("lines", "where", "what"),
    [
        ([json.dumps(_record()), '{"id": "t-2", "instruction": '], ":2:", "not valid JSON"),
        (
            [json.dumps({k: v for k, v in _record().items() if k != "output"})],
            ":1:",
            "output: Field required",
        ),
        (
            [json.dumps(_record()), json.dumps(_record(instruction="Again.")), "", "[1]"],
            ":2:",
            "duplicate id 't-1' (first used on line 1)",
        ),
        (["", "", json.dumps(_record(domain=" "))], ":3:", "domain: Value error"),
        ([json.dumps(_record(colour="red"))], ":1:", "colour: unknown key"),
        ([json.dumps(_record(language="english"))], ":1:", "ISO 639-1"),
        ([json.dumps(_record(input=3))], ":1:", "input: Input should be a valid string"),
        ([json.dumps([1, 2])], ":1:", "expected a JSON object"),
        (
            [json.dumps(_record(constraints=[{"type": "max_lines", "value": 3}]))],
            ":1:",
            "unknown type 'max_lines'",
        ),
        (
            [json.dumps(_record(constraints=[{"type": "max_words"}]))],
            ":1:",
            "missing 'value'",
        ),
        (
            [json.dumps(_record(constraints=[{"type": "lowercase"}]))],
            ":1:",
            "output fails its own constraint 'lowercase'",
        ),
    ],
)
def test_bad_records_name_file_and_line(
    tmp_path: Path, lines: list[str], where: str, what: str
) -> None:
    path = _write(tmp_path, lines)
    with pytest.raises(SelfloopError) as info:
        load_seed_tasks(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where} "), message
    assert what in message
    assert "\n" not in message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(SelfloopError, match="seed file not found"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    with pytest.raises(SelfloopError, match="no seed tasks"):
        load_seed_tasks(_write(tmp_path, [""]))
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"id": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(SelfloopError, match="not UTF-8"):
        load_seed_tasks(bad)


@pytest.fixture(scope="module")
def eval_prompts() -> tuple[Any, list[tuple[str, str]], Any]:
    """dedup's default embedder, every eval prompt (suite/id, text) and their embeddings."""
    from judges.embed import Embedder
    from judges.evals import load_suites

    prompts = [(f"{n}/{r['id']}", r["prompt"]) for n, (_, rs) in load_suites().items() for r in rs]
    emb = Embedder("all-mpnet-base-v2")
    return emb, prompts, emb.encode([p for _, p in prompts])


def _near(eval_prompts: tuple[Any, list[tuple[str, str]], Any], tasks: list[Any]) -> list[tuple]:
    emb, prompts, vectors = eval_prompts
    sims = emb.encode([t.instruction for t in tasks]) @ vectors.T
    return [
        (tasks[i].id, prompts[j][0], round(float(sims[i, j]), 3))
        for i, j in zip(*(sims >= 0.8).nonzero())
    ]


def test_no_seed_is_a_near_copy_of_a_held_out_eval_prompt(
    seeds: list[SeedTask], eval_prompts: tuple[Any, list[tuple[str, str]], Any]
) -> None:
    """Seeds are shown to the model, which copies them, and they are the constrained tasks' base
    tasks: one that paraphrases an eval prompt would leak the held-out suites into training."""
    # dedup's default embedder (all-mpnet-base-v2), with a margin below its 0.85 threshold. With
    # MiniLM at 0.85 this found 25 (6 word for word); mpnet then found 17 more at 0.75-0.90, every
    # one read and reworded: a translation (seed-0080 was help-046 in French), the same base task
    # under other constraints (the office-holiday notice, the autumn-rain poem, why the sky is
    # blue) or the same problem with other numbers (3x + 7 = 25 / 22). What is left at 0.72-0.78
    # shares a genre, not a task: a classification with another input, another email to a landlord.
    # An English embedder scores a translation low: the seeds in other languages were read
    # against the suites by hand (the first rewording of seed-0080 was help-041 in French).
    near = _near(eval_prompts, seeds)
    assert not near, near


# ---------------------------------------------------------------- base tasks (augment.base_tasks)
# Words that fix an answer's form or length: a base task has none, as augmentation appends the
# constraints (a base that asks for 3 bullets contradicts "exactly 5 bullet points").
FORM_WORDS = re.compile(
    r"\b(bullet|paragraphs?|words|sentences|json|(as|in) a table|title|haiku|limerick|sonnet|"
    r"lowercase|uppercase|all caps|capital letters|comma|in (french|spanish|german|english)|"
    r"following (text|passage|email|article)|(this|the) (text|passage|article) below)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def bases() -> list[BaseTask]:
    return load_base_tasks()


def test_bundled_base_tasks_are_many_distinct_open_requests(bases: list[BaseTask]) -> None:
    from importlib import resources

    assert resources.files("agent.seeds").joinpath(BASE_FILE).is_file()  # package data
    assert len(bases) >= 300
    assert len({t.id for t in bases}) == len(bases)
    assert len({t.instruction.casefold() for t in bases}) == len(bases)
    assert {t.language for t in bases} == {"en"}
    domains = Counter(t.domain for t in bases)
    assert len(domains) >= 8 and max(domains.values()) <= 0.5 * len(bases), domains
    fixed = [(t.id, m.group(0)) for t in bases if (m := FORM_WORDS.search(t.instruction))]
    assert not fixed, fixed


def test_every_bundled_base_task_takes_constraints(bases: list[BaseTask]) -> None:
    """Each base gives a constrained task that the filters keep (a base they would drop costs a
    task's samples for nothing), with constraints drawn for it in every salt tried."""
    from judges.augment import AugmentConfig, augment_task
    from judges.filters import FilterChain, FilterConfig

    rules = FilterChain(FilterConfig())
    for t in bases:  # two draws of 2 constraints, and the curriculum's most: 3
        for salt, k in (("/r1", 2), ("/r2", 2), ("/r3", 3)):
            cfg = AugmentConfig(min_constraints=k, max_constraints=k)
            task = augment_task(t.model_dump(), cfg, salt=salt)
            assert task is not None and task["base_instruction"] == t.instruction, t.id
            rejected = rules.check(task, instructions_only=True)
            assert rejected is None, (t.id, rejected.reason)


def test_no_base_task_is_a_near_copy_of_an_eval_prompt_a_seed_or_another_base(
    bases: list[BaseTask],
    seeds: list[SeedTask],
    eval_prompts: tuple[Any, list[tuple[str, str]], Any],
) -> None:
    """The base tasks become training tasks: one that paraphrases an eval prompt would leak it
    (written blind to the suites, 17 of 320 were the same question as an eval prompt or its base
    task at 0.70-0.97 and were replaced), and two near-copies are one task drawn twice."""
    assert not (near := _near(eval_prompts, bases)), near
    emb = eval_prompts[0]
    vectors = emb.encode([t.instruction for t in bases])
    sims = vectors @ np.vstack([vectors, emb.encode([t.instruction for t in seeds])]).T
    names = [t.id for t in [*bases, *seeds]]
    twins = [
        (bases[i].id, names[j], round(float(sims[i, j]), 3))
        for i, j in zip(*(sims >= 0.8).nonzero())
        if i != j
    ]
    assert not twins, twins


def test_base_task_files_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "bases.jsonl"
    path.write_text('{"id": "b1", "instruction": "Describe a quiet harbour at dusk."}\n')
    (task,) = load_base_tasks(path)
    assert (task.domain, task.language) == ("general", "en")
    for lines, what in [
        (['{"id": "b1", "instructions": "Hi."}'], ":1: instruction: Field required"),
        (['{"id": "b1", "instruction": "Hi.", "output": "Hello."}'], ":1: output: unknown key"),
        (
            ['{"id": "b1", "instruction": "Hi."}', '{"id": "b1", "instruction": "Yo."}'],
            ":2: duplicate id 'b1' (first used on line 1)",
        ),  # fmt: skip
        (['{"id": "b1", "instruction": " "}'], ":1: instruction: Value error"),
        (['{"id": "b1", "instruction": "Hi.", "language": "English"}'], ":1: language"),
        (["", '{"id": "b1", "instruction": '], ":2: not valid JSON"),
    ]:
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(SelfloopError) as info:
            load_base_tasks(path)
        message = str(info.value)
        assert message.startswith(f"{path}:") and what in message and "\n" not in message, message
    with pytest.raises(SelfloopError, match="base task file not found"):
        load_base_tasks(tmp_path / "nope.jsonl")
    path.write_text("\n")
    with pytest.raises(SelfloopError, match="no base tasks"):
        load_base_tasks(path)

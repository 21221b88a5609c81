"""Single stages of a round run on a hand-made run directory: how the loop wires the judges."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from agent.data import read_jsonl, write_examples
from agent.seeds import load_seed_tasks
from loop.accounting import round_account
from loop.config import load_config
from loop.context import Context
from loop.rundir import RunDir, write_json
from loop.stages import dedup, filter, judge, propose
from loop.stages.propose import proposal_filter

filter_stage, dedup_stage = filter.run, dedup.run

ANSWER = "Jupiter is the largest planet of the solar system by mass and by volume."


def _response(rid: str, instruction: str, response: str = ANSWER, **extra) -> dict:
    return {
        "id": rid,
        "source": "self",
        "round": 1,
        "instruction": instruction,
        "instruction_id": extra.pop("instruction_id", rid),
        "response": response,
        "language": "en",
        "finish_reason": "stop",
        **extra,
    }


def _context(tmp_path: Path, model_dir: Path, *overrides: str) -> Context:
    # The stages' mechanics: the small embedder (a fifth of all-mpnet-base-v2's time for the
    # guards' eval prompts); dedup's own rules are tested in tests/judges/test_dedup.py.
    small = "dedup.model=all-minilm-l6-v2"
    # The language tasks only where a test asks for them: the others count constrained tasks.
    few = "augment.language_tasks=0"
    cfg = load_config(None, [f"model.name={model_dir}", small, few, *overrides])
    rundir = RunDir(tmp_path / "run")
    rundir.root.mkdir(parents=True)
    return Context(cfg, rundir)


def _write_stage(ctx: Context, stage: str, name: str, records: list[dict]) -> None:
    """A finished earlier stage of round 1 that kept `records` (the next stage's input)."""
    out = ctx.rundir.stage_dir(1, stage)
    out.mkdir(parents=True)
    write_examples(out / name, records)
    acc = {"in": len(records), "kept": len(records), "dropped": {}}
    (out / "stats.json").write_text(json.dumps({"account": acc}))


def _write_responses(ctx: Context, records: list[dict]) -> None:
    _write_stage(ctx, "respond", "responses.jsonl", records)


def test_rouge_rule_does_not_drop_the_sibling_answers_of_one_instruction(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ctx = _context(tmp_path, tiny_model_dir, "filters.rouge.enabled=true", "filters.language=false")
    q = "Name the largest planet in the solar system, please."
    _write_responses(
        ctx,
        [
            _response("r1-a", q, instruction_id="t1"),
            _response("r1-b", q, ANSWER + " It is a gas giant.", instruction_id="t1"),
        ],
    )
    filter_stage(ctx, {"round": 1})
    kept = read_jsonl(ctx.rundir.stage_dir(1, "filter") / "filtered.jsonl")
    assert [r["id"] for r in kept] == ["r1-a", "r1-b"]


def test_proposals_are_filtered_against_seeds_and_pool_with_the_rouge_rule(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from agent.seeds import load_seed_tasks
    from judges.filters import FilterChain, RougeRule

    ctx = _context(
        tmp_path, tiny_model_dir, "filters.rouge.enabled=true", "filters.language=false",
        "run.sources=[import]",
    )  # fmt: skip
    seeds = [t.model_dump() for t in load_seed_tasks()]
    learned = [{"instruction": "Give two reasons to learn a second language as an adult."}]
    chain = proposal_filter(ctx, seeds, learned)
    fresh = {"instruction": "Describe the rules of a card game you would invent."}
    assert chain.check(fresh, instructions_only=True) is None
    plain = FilterChain(ctx.cfg.filters.model_copy(update={"rouge": RougeRule(enabled=False)}))
    seed = next(t for t in seeds if plain.check(t, instructions_only=True) is None)
    for known in (seed["instruction"], learned[0]["instruction"]):
        rejected = chain.check({"instruction": known}, instructions_only=True)
        assert rejected is not None and rejected.reason == "similar_to_pool", known
    propose.run(ctx, {"round": 1})  # sources without proposals: an empty, accounted stage
    acc = round_account(ctx.rundir.round_dir(1))["stages"]["propose"]
    assert acc == {"in": 0, "kept": 0, "dropped": {}}


def test_repair_rewrites_up_to_per_instruction_answers_of_a_never_passed_prompt(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ctx = _context(tmp_path, tiny_model_dir, "filters.language=false", "judge.per_instruction=2")
    lower = [{"type": "lowercase"}]
    q, p = "In lowercase: name a gas giant.", "In lowercase: the smallest planet?"
    answers = ["Jupiter is one.", "Saturn is one.", "Neptune is one."]
    _write_responses(
        ctx,
        [
            _response(f"g{i}", q, a, constraints=lower, instruction_id="g")
            for i, a in enumerate(answers)
        ]
        + [
            _response("p0", p, "mercury.", constraints=lower, instruction_id="p"),
            _response("p1", p, "Mercury.", constraints=lower, instruction_id="p"),
        ],
    )  # fmt: skip
    filter_stage(ctx, {"round": 1})
    out = ctx.rundir.stage_dir(1, "filter")
    kept = {r["id"]: r for r in read_jsonl(out / "filtered.jsonl")}
    # prompt g passed nowhere: two of its three answers repaired (judge.per_instruction); p passed
    # once, so its failing answer stays failed
    assert set(kept) == {"g0", "g1", "p0"}
    assert kept["g0"]["response"] == "jupiter is one." and kept["g0"]["repaired"] == ["lowercase"]
    assert kept["g1"]["response_original"] == "Saturn is one."
    stats = json.loads((out / "stats.json").read_text())
    assert stats["repaired"] == {"lowercase": 2}
    assert {r["id"] for r in read_jsonl(out / "rejected.jsonl")} == {"g2", "p1"}


def test_failed_constraints_are_counted_by_type_and_refusals_skip_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ctx = _context(
        tmp_path,
        tiny_model_dir,
        "safety.harmful_instructions=refuse",
        "filters.language=false",
        "augment.repair=false",  # counted as failed, not rewritten
    )
    lower = [{"type": "lowercase"}]
    _write_responses(
        ctx,
        [
            _response("ok", "In lowercase: the largest planet?", "jupiter.", constraints=lower),
            _response("bad", "In lowercase: the smallest planet?", "Mercury.", constraints=lower),
            _response(
                "harm",
                "Explain step by step how to make a pipe bomb at home, in lowercase.",
                "no.",
                constraints=[{"type": "lowercase"}],
            ),
        ],
    )  # fmt: skip
    filter_stage(ctx, {"round": 1})
    out = ctx.rundir.stage_dir(1, "filter")
    stats = json.loads((out / "stats.json").read_text())
    kept = {r["id"]: r for r in read_jsonl(out / "filtered.jsonl")}
    assert set(kept) == {"ok", "harm"}  # the refusal is not in lowercase, and need not be
    assert kept["harm"]["response"] == ctx.cfg.safety.refusal_text
    assert stats["failed_constraint_types"] == {"lowercase": 1}
    assert stats["account"] == {"in": 3, "kept": 2, "dropped": {"failed_constraint:lowercase": 1}}
    assert stats["failed_constraint_samples"]["lowercase"][0]["id"] == "bad"


def test_judge_accounts_for_every_candidate_and_uses_the_configured_judge_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ctx = _context(
        tmp_path,
        tiny_model_dir,
        f"judge.model.name={tiny_model_dir}",
        "judge.keep_top=0.5",
        "judge.per_instruction=1",
        "judge.min_score=1.0",
    )
    recs = [
        _response(f"t{k}-{j}", f"Question number {k}: name a planet.", f"Answer {j}: Mars.",
                  instruction_id=f"t{k}")
        for k in range(3) for j in range(2)
    ]  # fmt: skip
    _write_stage(ctx, "filter", "filtered.jsonl", recs)
    judge.run(ctx, {"round": 1})
    assert ctx._judge is not None  # a second model, not the student, judged
    jd = ctx.rundir.stage_dir(1, "judge")
    stats = json.loads((jd / "stats.json").read_text())
    assert stats["judge_model"] == str(tiny_model_dir)
    assert stats["account"]["in"] == 6
    assert stats["unjudged"] == 0 and stats["account"]["dropped"]["not_best"] == 3  # one per pair
    names = ("judged", "low_score", "not_best", "unjudged")
    on_disk = [r["id"] for n in names for r in read_jsonl(jd / f"{n}.jsonl")]
    assert sorted(on_disk) == sorted(r["id"] for r in recs)  # every candidate, exactly once
    assert round_account(ctx.rundir.round_dir(1))["problems"] == []
    ctx.release()


def test_dedup_guards_run_first_and_every_drop_is_accounted(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from judges.evals import load_suites

    ctx = _context(tmp_path, tiny_model_dir)
    prompt = load_suites(["helpfulness"])["helpfulness"][1][0]["prompt"]
    recs = [
        _response("eval-copy", prompt, judge_score=4.5),  # best-judged, but an eval prompt
        _response("c", "Name three rivers that flow through Germany.", judge_score=2.0),
        _response("d", "Name three rivers which flow through Germany.", judge_score=3.0),
        _response("e", "Give two reasons to learn a second language.", judge_score=1.5),
    ]
    _write_stage(ctx, "judge", "judged.jsonl", recs)
    dedup_stage(ctx, {"round": 1})
    dd = ctx.rundir.stage_dir(1, "dedup")
    stats = json.loads((dd / "stats.json").read_text())
    kept = [r["id"] for r in read_jsonl(dd / "kept.jsonl")]
    dropped = read_jsonl(dd / "dropped.jsonl")
    assert list(stats["contaminated"]) == ["eval-copy"]
    assert kept == ["d", "e"]  # of the near-duplicate pair the better-judged one survives
    assert [(r["id"], r["dedup_neighbour"]) for r in dropped] == [("c", "d")]
    assert stats["account"] == {
        "in": 4,
        "kept": 2,
        "dropped": {"contaminated": 1, "duplicate": 1},
    }


def test_the_safety_rubric_runs_in_the_filter_stage_with_the_judge_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # a threshold near 0: every text rates as harmful; the rubric, not the rules, drops it
    ctx = _context(
        tmp_path, tiny_model_dir, "safety.llm=true", "safety.llm_threshold=0.000001",
        "filters.language=false",
    )  # fmt: skip
    _write_responses(ctx, [_response("a", "Name the largest planet of the solar system.")])
    filter_stage(ctx, {"round": 1})
    stats = json.loads((ctx.rundir.stage_dir(1, "filter") / "stats.json").read_text())
    assert stats["account"] == {"in": 1, "kept": 0, "dropped": {"unsafe_instruction": 1}}
    assert stats["safety"]["categories"] == {"llm_judge": 1}
    ctx.release()


def test_augment_constrains_seed_tasks_reproducibly_and_passes_proposals_on(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from judges.augment import DEFAULT_HELD_OUT
    from loop.stages import augment

    proposal = _response("p1", "Describe a walk along a quiet beach at dawn.")
    runs = []
    for name in ("a", "b"):
        ctx = _context(tmp_path / name, tiny_model_dir, "run.sources=[constraints]",
                       "augment.tasks=12")  # fmt: skip
        _write_stage(ctx, "propose", "kept.jsonl", [proposal])
        augment.run(ctx, {"round": 1})
        runs.append(read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl"))
    tasks = runs[0]
    assert runs[0] == runs[1]  # a re-run of the round draws the same tasks
    assert tasks[0]["id"] == "p1" and len(tasks) == 13
    made = tasks[1:]
    assert len({t["id"] for t in made}) == 12
    from judges.filters import FilterChain

    rules = FilterChain(ctx.cfg.filters)
    for t in made:
        assert t["origin"] == "augment" and t["constraints"]
        assert rules.check(t, instructions_only=True) is None  # never answered just to be dropped
        assert t["instruction"].startswith(t["base_instruction"])
        assert not {c["type"] for c in t["constraints"]} & set(DEFAULT_HELD_OUT)
    assert ctx.rundir.input_stage(1, "respond") == "augment"
    stats = ctx.rundir.stage_stats(1, "augment")
    assert stats["made"] == 12 and sum(stats["bases"].values()) == 12
    # round 2 draws other constraints for the same bases
    (ctx.rundir.round_dir(2) / "propose").mkdir(parents=True)
    write_examples(ctx.rundir.stage_dir(2, "propose") / "kept.jsonl", [])
    augment.run(ctx, {"round": 2})
    again = read_jsonl(ctx.rundir.stage_dir(2, "augment") / "tasks.jsonl")
    assert {t["instruction"] for t in again}.isdisjoint({t["instruction"] for t in made})


def test_a_learned_task_is_constrained_again_from_its_unconstrained_base() -> None:
    """The pool's constrained tasks go back to their base instruction before new constraints
    are drawn: kept in `base_instruction`, or (examples written before it was carried) with the
    rendered constraints cut off; never the constrained text, whose old constraints no verifier
    would check."""
    from judges.augment import AugmentConfig, augment_task, unconstrained

    base = "Describe a walk along a quiet beach at dawn."
    task = augment_task({"id": "b1", "instruction": base}, AugmentConfig(min_constraints=2))
    assert task is not None and task["instruction"] != base
    assert unconstrained(task) == base
    older = {k: v for k, v in task.items() if k != "base_instruction"}
    assert unconstrained(older) == base
    assert unconstrained({**older, "instruction": task["instruction"] + " Be brief."}) is None
    assert unconstrained({"instruction": f" {base} "}) == base  # never constrained


def test_augment_constrains_a_base_again_when_bases_are_fewer_than_tasks(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from loop.stages import augment

    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[constraints]", "augment.tasks=60")
    _write_stage(ctx, "propose", "kept.jsonl", [])
    augment.run(ctx, {"round": 1})
    made = read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl")
    bases = Counter(t["base_id"] for t in made)
    assert len(bases) < 60 == len(made)  # the English seeds are fewer than 60
    assert max(bases.values()) <= augment.MAX_DRAWS_PER_BASE and max(bases.values()) > 1
    assert len({t["instruction"] for t in made}) == 60  # other constraints each time
    first = {t["base_id"]: t for t in reversed(made)}  # a base's first task (the draw-0 one)
    ctx2 = _context(tmp_path / "few", tiny_model_dir, "run.sources=[constraints]",
                    "augment.tasks=5")  # fmt: skip
    _write_stage(ctx2, "propose", "kept.jsonl", [])
    augment.run(ctx2, {"round": 1})
    for t in read_jsonl(ctx2.rundir.stage_dir(1, "augment") / "tasks.jsonl"):
        assert t == first[t["base_id"]]  # enough bases: one draw each, the same as before


def test_augment_builds_on_base_tasks_when_asked(tmp_path: Path, tiny_model_dir: Path) -> None:
    """augment.base_tasks: the bundled instructions (or a file of one's own) join the seeds as
    bases, so a round of 60 tasks draws 60 bases once each instead of the seeds again and again
    (unset: test_augment_constrains_a_base_again_when_bases_are_fewer_than_tasks)."""
    from loop.stages import augment

    ctx = _context(tmp_path / "bundled", tiny_model_dir, "run.sources=[constraints]",
                   "augment.tasks=60", "augment.base_tasks=bundled")  # fmt: skip
    _write_stage(ctx, "propose", "kept.jsonl", [])
    augment.run(ctx, {"round": 1})
    made = read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl")
    assert len(made) == 60 == len({t["base_id"] for t in made})  # a base once each
    kinds = ctx.rundir.stage_stats(1, "augment")["bases"]
    assert kinds["base"] > kinds.get("seed", 0) > 0, kinds  # 320 bases against 30 seeds
    mine = tmp_path / "mine.jsonl"
    mine.write_text(
        "\n".join(
            json.dumps({"id": f"b{k}", "instruction": f"Describe harbour number {k} at dusk."})
            for k in range(3)
        )
    )
    ctx = _context(tmp_path / "mine", tiny_model_dir, "run.sources=[constraints]",
                   "augment.tasks=60", f"augment.base_tasks={mine}")  # fmt: skip
    _write_stage(ctx, "propose", "kept.jsonl", [])
    augment.run(ctx, {"round": 1})
    made = read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl")
    ids = Counter(t["base_id"] for t in made)
    assert {"b0", "b1", "b2"} <= set(ids) and not any(k.startswith("base-") for k in ids)


def test_language_tasks_ask_seeds_not_in_english_as_written_and_fresh_ones_first(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """augment.language_tasks: seed tasks in other languages, their instruction unchanged and
    only the answer's language checked; the same on a re-run; a later round asks the tasks no
    earlier round's data came from first."""
    from judges.augment import is_language_task
    from loop.stages import augment

    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[constraints]", "augment.tasks=4",
                   "augment.language_tasks=3")  # fmt: skip
    _write_stage(ctx, "propose", "kept.jsonl", [])
    augment.run(ctx, {"round": 1})
    made = read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl")
    langs = [t for t in made if is_language_task(t)]
    assert len(made) == 7 and len(langs) == 3
    assert ctx.rundir.stage_stats(1, "augment")["language_tasks"] == 3
    assert "(3 of them language tasks)" in augment.summary(ctx.rundir.stage_stats(1, "augment"))
    seeds = {s.id: s for s in load_seed_tasks(None)}
    for t in langs:
        seed = seeds[t["base_id"]]
        assert t["language"] == seed.language != "en" and not seed.constraints
        assert t["instruction"] == seed.instruction  # asked as written: nothing rendered
        assert t["constraints"] == [{"type": "response_language", "value": seed.language}]
    assert not any(is_language_task(t) for t in made if t["language"] == "en")
    # round 1's answers became training data (its round decided): round 2 asks other tasks
    (ctx.rundir.stage_dir(1, "dedup")).mkdir(parents=True)
    write_examples(ctx.rundir.stage_dir(1, "dedup") / "kept.jsonl",
                   [{**_response(t["id"], t["instruction"]), **t} for t in langs])  # fmt: skip
    ctx.rundir.append_metrics({"round": 1, "decision": {"decision": "rejected"}})
    (ctx.rundir.stage_dir(2, "propose")).mkdir(parents=True)
    write_examples(ctx.rundir.stage_dir(2, "propose") / "kept.jsonl", [])
    augment.run(ctx, {"round": 2})
    again = [t for t in read_jsonl(ctx.rundir.stage_dir(2, "augment") / "tasks.jsonl")
             if is_language_task(t)]  # fmt: skip
    assert len(again) == 3
    assert {t["base_id"] for t in again}.isdisjoint({t["base_id"] for t in langs})
    ctx.release()


def test_language_tasks_are_answered_up_to_their_own_length_limit(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """augment.language_max_tokens: the language tasks' answers run to their own limit, the
    constrained tasks' to respond's; every task is answered once per sample."""
    from judges.augment import is_language_task
    from loop.stages import augment, respond

    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[constraints]", "augment.tasks=2",
                   "augment.language_tasks=2", "augment.language_max_tokens=24", "respond.n=2",
                   "respond.sampling.max_tokens=8")  # fmt: skip
    _write_stage(ctx, "propose", "kept.jsonl", [])
    augment.run(ctx, {"round": 1})
    respond.run(ctx, {"round": 1})
    ctx.release()
    tasks = read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl")
    out = read_jsonl(ctx.rundir.stage_dir(1, "respond") / "responses.jsonl")
    # in the tasks' order, as one call to the backend gives them
    assert [r["instruction_id"] for r in out] == [t["id"] for t in tasks for _ in range(2)]
    langs = {t["id"] for t in tasks if is_language_task(t)}
    assert len(langs) == 2
    for r in out:
        limit = 24 if r["instruction_id"] in langs else 8
        assert r["sampling"]["max_tokens"] == limit and r["completion_tokens"] <= limit
    # the tiny model's random tokens seldom end: the longer limit is used, not only stated
    assert max(r["completion_tokens"] for r in out if r["instruction_id"] in langs) > 8
    assert ctx.rundir.stage_stats(1, "respond")["self"]["responses"] == len(out) == 8


def test_the_filters_verifier_counts_leave_language_tasks_apart(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The curriculum reads the verifier's always / never counts: a language task (whose only
    check is the answer's language) is counted on its own line, not with the constraints."""
    ctx = _context(tmp_path, tiny_model_dir, "augment.repair=false")
    french = [{"type": "response_language", "value": "fr"}]
    ask = "Comment organiser un déménagement sans trop de stress ?"
    fr_answer = ("Commencez tôt, triez vos affaires pièce par pièce et préparez des cartons "
                 "étiquetés avec le nom de chaque pièce.")  # fmt: skip
    lower = [{"type": "lowercase"}]
    _write_responses(
        ctx,
        [
            _response("f1", ask, fr_answer, constraints=french, language="fr",
                      instruction_id="fr"),
            _response("f2", ask, ANSWER, constraints=french, language="fr", instruction_id="fr"),
            _response("l1", "In lowercase: the largest planet?", "jupiter is the largest.",
                      constraints=lower, instruction_id="lo"),
            _response("l2", "In lowercase: the largest planet?", "jupiter, by far.",
                      constraints=lower, instruction_id="lo"),
        ],
    )  # fmt: skip
    filter_stage(ctx, {"round": 1})
    stats = ctx.rundir.stage_stats(1, "filter")
    assert stats["verifier"]["prompts"] == 1 and stats["verifier"]["always"] == 1
    lang = stats["language_tasks"]
    assert (lang["prompts"], lang["samples"], lang["mean_pass_rate"]) == (1, 2, 0.5)
    assert "language tasks: 1 prompts, answered in their language 0.50" in filter.summary(stats)
    kept = {r["id"] for r in read_jsonl(ctx.rundir.stage_dir(1, "filter") / "filtered.jsonl")}
    assert {"f1", "l1", "l2"} <= kept and "f2" not in kept


def test_the_constraint_level_follows_the_last_rounds_verifier(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from loop.stages import augment

    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[constraints]", "augment.tasks=6",
                   "augment.min_constraints=1", "augment.max_constraints=2")  # fmt: skip

    def round_(n: int, verifier: dict | None) -> dict:
        (ctx.rundir.stage_dir(n, "propose")).mkdir(parents=True)
        write_examples(ctx.rundir.stage_dir(n, "propose") / "kept.jsonl", [])
        augment.run(ctx, {"round": n})
        # what the filter stage of round n would have counted
        (ctx.rundir.stage_dir(n, "filter")).mkdir(parents=True)
        write_json(ctx.rundir.stage_dir(n, "filter") / "stats.json", {"verifier": verifier or {}})
        return ctx.rundir.stage_stats(n, "augment")

    first = round_(1, {"prompts": 16, "always": 1, "never": 8, "mixed": 7})
    assert first["curriculum"] == {"min": 1, "max": 2, "step": 0, "why": "the configured level"}
    easier = round_(2, {"prompts": 16, "always": 6, "never": 2, "mixed": 8})
    assert easier["curriculum"]["step"] == -1 and (
        easier["curriculum"]["min"],
        easier["curriculum"]["max"],
    ) == (1, 1)
    assert "8 never passed of 16" in easier["curriculum"]["why"]
    assert easier["constraints_per_task"] == {"1": 6}  # every task of the round got one
    harder = round_(3, {"prompts": 16, "always": 2, "never": 2, "mixed": 12})
    assert (harder["curriculum"]["min"], harder["curriculum"]["max"]) == (2, 2)  # from (1, 1)
    kept = round_(4, {})  # mixed enough (or nothing verified): the level stays
    assert (kept["curriculum"]["min"], kept["curriculum"]["max"], kept["curriculum"]["step"]) == (
        2, 2, 0)  # fmt: skip
    assert "2-2 constraints (kept" in augment.summary(kept)
    ctx.release()


def test_learnable_focus_weights_types_by_the_last_rounds_pass_rates(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from loop.stages import augment

    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[constraints]", "augment.tasks=40",
                   "augment.focus=learnable", "augment.curriculum=false")  # fmt: skip
    rates = {1: {"sections": 0.5, "lowercase": 0.0}, 2: {"lowercase": 0.5}}
    for n in (1, 2, 3):
        (ctx.rundir.stage_dir(n, "propose")).mkdir(parents=True)
        write_examples(ctx.rundir.stage_dir(n, "propose") / "kept.jsonl", [])
        augment.run(ctx, {"round": n})
        if n in rates:
            (ctx.rundir.stage_dir(n, "filter")).mkdir(parents=True)
            write_json(ctx.rundir.stage_dir(n, "filter") / "stats.json",
                       {"verifier": {"type_pass_rate": rates[n]}})  # fmt: skip
    first, second, third = (ctx.rundir.stage_stats(n, "augment") for n in (1, 2, 3))
    assert "type_weights" not in first  # round 1: uniform
    weights = second["type_weights"]
    assert weights["lowercase"] == 0.02 and weights["sections"] == 0.25
    assert second["constraint_types"].get("lowercase", 0) < first["constraint_types"]["lowercase"]
    # the latest round that drew a type decides: lowercase 0.5 in round 2; sections from round 1
    assert third["type_weights"]["lowercase"] == third["type_weights"]["sections"] == 0.25
    ctx.release()


def test_augment_passes_proposals_through_when_the_source_is_off(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from loop.stages import augment

    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[self_instruct]")
    _write_stage(ctx, "propose", "kept.jsonl", [_response("p1", "Name a river in Spain.")])
    augment.run(ctx, {"round": 1})
    tasks = read_jsonl(ctx.rundir.stage_dir(1, "augment") / "tasks.jsonl")
    assert [t["id"] for t in tasks] == ["p1"]


def test_a_constrained_copy_of_a_seed_is_not_dropped_as_a_seed_copy(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from agent.seeds import load_seed_tasks

    ctx = _context(tmp_path, tiny_model_dir)
    seed = next(s for s in load_seed_tasks() if not s.constraints and not s.input)
    text = f"{seed.instruction} Answer in at most 80 words."
    recs = [
        _response("copy", text, judge_score=3.0),
        _response("aug", text + " ", judge_score=2.0, origin="augment"),
    ]
    recs[1]["instruction"] = f"{seed.instruction} Do not use any commas in your entire response."
    _write_stage(ctx, "judge", "judged.jsonl", recs)
    dedup_stage(ctx, {"round": 1})
    stats = ctx.rundir.stage_stats(1, "dedup")
    assert list(stats["copies_seed"]) == ["copy"]
    assert [r["id"] for r in read_jsonl(ctx.rundir.stage_dir(1, "dedup") / "kept.jsonl")] == ["aug"]


def _pairs(k: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Name planet {i}. Answer in lowercase."}],
            "chosen": [{"role": "assistant", "content": f"planet {i} is mars."}],
            "rejected": [{"role": "assistant", "content": f"Planet {i} is Mars."}],
            "prompt_id": f"t{i}",
            "source": "verifier" if i % 2 == 0 else "judge",
        }
        for i in range(k)
    ]


def test_a_preference_round_trains_dpo_on_the_rounds_verifier_pairs(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.data import write_jsonl
    from loop.rounds import reject
    from loop.stages import tune

    ctx = _context(tmp_path, tiny_model_dir, "tune.objective=dpo", "tune.max_steps=2",
                   "tune.batch_size=2", "tune.max_seq_len=128")  # fmt: skip
    _write_stage(ctx, "dedup", "kept.jsonl", [_response("a", "Name a planet.")])
    assert tune.run(ctx, {"round": 1}) == {"trained": False}  # no pairs: nothing to train
    assert not ctx.rundir.stage_done(1, "tune")
    update = reject(ctx, {"round": 1, "trained": False})
    assert "no preference pairs" in ctx.rundir.decision(1)["reasons"][0] and update["rejections"]

    write_jsonl(ctx.rundir.stage_dir(1, "filter") / "preference_pairs.jsonl", _pairs(6))
    assert len(ctx.rundir.round_pairs(1, ["verifier"])) == 3
    with caplog.at_level(logging.INFO, logger="selfloop.progress"):
        assert tune.run(ctx, {"round": 1}) == {"trained": True}
    trained = json.loads((ctx.rundir.adapter_dir(1) / "train_metrics.json").read_text())
    assert trained["objective"] == "dpo" and trained["examples"] == 3 and trained["steps"] == 2
    # a long tune stage is not silent: its steps are reported (a log line when not in a terminal)
    assert "round 1 tune (dpo): 2/2 steps in" in caplog.text
    assert tune.metrics(ctx.rundir.round_dir(1))["tune"]["objective"] == "dpo"


def test_a_grpo_round_trains_on_the_prompts_passed_only_sometimes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from agent.data import write_jsonl
    from loop.stages import tune

    sets = ["objective=grpo", "max_steps=1", "batch_size=2", "grpo_generations=2",
            "grpo_max_tokens=8"]  # fmt: skip
    ctx = _context(tmp_path, tiny_model_dir, *[f"tune.{s}" for s in sets])
    _write_stage(ctx, "dedup", "kept.jsonl", [_response("a", "Name a planet.")])
    rates = [
        {"prompt_id": f"p{k}", "instruction": f"Name planet {k}. Answer in lowercase.",
         "constraints": [{"type": "lowercase"}], "samples": 8, "passed": passed,
         "pass_rate": passed / 8}
        for k, passed in enumerate([0, 8, 3, 5])
    ]  # fmt: skip
    write_jsonl(ctx.rundir.stage_dir(1, "filter") / "pass_rates.jsonl", rates[:2])
    assert tune.run(ctx, {"round": 1}) == {"trained": False}  # always or never: no signal
    write_jsonl(ctx.rundir.stage_dir(1, "filter") / "pass_rates.jsonl", rates)
    assert tune.run(ctx, {"round": 1}) == {"trained": True}
    trained = json.loads((ctx.rundir.adapter_dir(1) / "train_metrics.json").read_text())
    assert trained["objective"] == "grpo" and trained["examples"] == 2  # the two mixed prompts
    assert "reward" in trained["preference"]


def test_preference_pairs_export_for_trl_and_train_a_step(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from datasets import load_dataset

    from agent.data import write_jsonl
    from tests.helpers import selfloop
    from tuners import TuneConfig
    from tuners.preference import train_preference

    ctx = _context(tmp_path, tiny_model_dir)
    ctx.rundir.config_path.write_text("model: {}\n")
    (ctx.rundir.stage_dir(1, "filter")).mkdir(parents=True)
    write_jsonl(ctx.rundir.stage_dir(1, "filter") / "preference_pairs.jsonl", _pairs(4))
    out = tmp_path / "pairs.jsonl"
    res = selfloop("data", "export", str(ctx.rundir.root), "--format", "preference",
                   "--round", "1", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    ds = load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == 4 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    again = selfloop("data", "export", str(ctx.rundir.root), "--format", "preference",
                     "--round", "1", "--out", str(out))  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr
    cfg = TuneConfig(objective="dpo", max_steps=1, batch_size=2, max_seq_len=128)
    r = train_preference(str(tiny_model_dir), list(ds), tmp_path / "adapter", cfg)
    assert r.steps == 1 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_replay_mixes_a_share_of_earlier_accepted_examples_reproducibly(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from loop.stages.tune import replayed

    # round 2 below was rejected and left no data: only promoted rounds are the replay pool
    ctx = _context(tmp_path, tiny_model_dir, "tune.replay=0.5", "tune.carry_rejected=false")
    old = [_response(f"old{i}", f"Old question {i}?") for i in range(10)]
    (ctx.rundir.round_dir(1) / "dedup").mkdir(parents=True)
    write_examples(ctx.rundir.stage_dir(1, "dedup") / "kept.jsonl", old)
    ctx.rundir.append_metrics({"round": 1, "decision": {"decision": "promoted"}})
    ctx.rundir.append_metrics({"round": 2, "decision": {"decision": "rejected"}})
    run, tune = ctx.rundir, ctx.cfg.tune
    first = replayed(run, tune, 3, new=6)
    assert len(first) == 3 and {r["id"] for r in first} <= {r["id"] for r in old}
    assert [r["id"] for r in replayed(run, tune, 3, new=6)] == [r["id"] for r in first]
    assert len(replayed(run, tune, 3, new=100)) == 10  # never more than the pool holds
    # only rounds before the one trained: re-training round 1 later replays nothing of itself
    assert replayed(run, tune, 1, new=6) == [] and run.accepted(before=1) == []
    off = _context(tmp_path / "off", tiny_model_dir)
    assert replayed(off.rundir, off.cfg.tune, 3, new=6) == []


def test_carry_rejected_adds_the_rounds_rejected_since_the_champion(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """After a promotion, a round trains from the champion on its own examples and on those
    of the rounds rejected since (not those the champion trained on); replay draws only from
    the rounds up to the champion's. Off, the rejected round's examples are left out.
    `tune_data.json` and `selfloop show` say what came from where."""
    from loop.show import render_round
    from loop.stages.tune import training_data, training_parts, write_data_account

    got = {}
    for carry in (True, False):
        ctx = _context(
            tmp_path / str(carry), tiny_model_dir, "tune.replay=2.0",
            f"tune.carry_rejected={str(carry).lower()}",
        )  # fmt: skip
        run = ctx.rundir
        run.config_path.write_text("model: {}\n")  # `show` reads a run directory
        for n, decision in ((1, "rejected"), (2, "promoted"), (3, "rejected"), (4, None)):
            run.stage_dir(n, "dedup").mkdir(parents=True)
            rows = [_response(f"r{n}-{i}", f"Round {n} question {i}?", round=n) for i in range(2)]
            write_examples(run.stage_dir(n, "dedup") / "kept.jsonl", rows)
            if decision:
                run.append_metrics({"round": n, "decision": {"decision": decision}})
        assert run.since_champion(4) == [3] and run.since_champion(2) == [1]
        assert run.since_champion(3) == []  # round 2's champion has seen all before it
        champion = run.adapter_dir(2)
        data, start = training_data(run, ctx.cfg.tune, 4, champion)
        got[carry] = [r["id"] for r in data]
        assert start == champion
        write_data_account(run, 4, ctx.cfg.tune, *training_parts(run, ctx.cfg.tune, 4, champion))
        got[f"show {carry}"] = render_round(run.root, 4)
    new, replayed = got[True][:4], got[True][4:]
    assert new == ["r4-0", "r4-1", "r3-0", "r3-1"]
    assert sorted(replayed) == ["r1-0", "r1-1", "r2-0", "r2-1"]
    assert (
        "trained on 8 examples from rounds/002/adapter: 2 new, 2 carried (round 3), "
        "4 replayed (rounds 1, 2)" in got["show True"]
    )
    assert got[False][:2] == ["r4-0", "r4-1"] and len(got[False]) == 4
    assert "4 examples from rounds/002/adapter: 2 new, 2 replayed (round 2)" in got["show False"]
    assert not any(i.startswith(("r1", "r3")) for i in got[False])  # promoted round 2 only


def test_anchor_mixes_seed_answers_into_sft_reproducibly(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    from agent.seeds import load_seed_tasks
    from loop.stages.tune import anchored, near_eval_seeds, training_data
    from tuners.data import tokenize_example

    ctx = _context(tmp_path, tiny_model_dir, "tune.anchor=0.5")
    new = [_response(f"new{i}", f"New question {i}?") for i in range(6)]
    ctx.rundir.stage_dir(1, "dedup").mkdir(parents=True)
    write_examples(ctx.rundir.stage_dir(1, "dedup") / "kept.jsonl", new)
    data, start = training_data(ctx.rundir, ctx.cfg.tune, 1, None)
    assert start is None and [r["id"] for r in data[:6]] == [r["id"] for r in new]
    anchors = data[6:]
    assert len(anchors) == 3 and all(r["source"] == "anchor" for r in anchors)
    seeds = {f"anchor/{t.id}": t for t in load_seed_tasks()}
    for a in anchors:
        t = seeds[a["id"]]  # a bundled seed, its written answer the assistant turn
        assert a["messages"][-1] == {"role": "assistant", "content": t.output}
        assert a["messages"][0]["content"].startswith(t.instruction)
    again, _ = training_data(ctx.rundir, ctx.cfg.tune, 1, None)
    assert [r["id"] for r in again] == [r["id"] for r in data]  # the same draw on a re-run
    assert anchored(ctx.cfg.tune, 2, 6, None) != anchors  # a new draw each round
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert all(any(x != -100 for x in tokenize_example(tok, a)["labels"]) for a in anchors)
    # never more than the seeds there are; none with anchor off or nothing new kept
    two = tmp_path / "two.jsonl"
    two.write_text(
        "".join(json.dumps({**t.model_dump(), "id": f"s{i}"}) + "\n"
                for i, t in enumerate(list(seeds.values())[:2]))
    )  # fmt: skip
    assert [r["id"] for r in anchored(ctx.cfg.tune, 1, 100, two)] in (
        ["anchor/s0", "anchor/s1"], ["anchor/s1", "anchor/s0"]
    )  # fmt: skip
    off = _context(tmp_path / "off", tiny_model_dir)
    assert anchored(off.cfg.tune, 1, 6, None) == []
    assert near_eval_seeds(off.cfg, lambda: pytest.fail("no embedder without anchors")) == set()
    # A seed near an eval prompt is never an anchor: anchors join the data after dedup, so its
    # contamination guard is applied to them in tune.
    from judges.evals import load_suite

    first = list(seeds.values())[0]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        json.dumps({**first.model_dump(), "id": "far"}) + "\n"
        + json.dumps({**first.model_dump(), "id": "copy",
                      "instruction": load_suite("helpfulness")[0]["prompt"]}) + "\n"
    )  # fmt: skip
    guarded = _context(
        tmp_path / "guarded", tiny_model_dir, "tune.anchor=0.5", f"run.seeds_file={mixed}"
    )
    exclude = near_eval_seeds(guarded.cfg, lambda: guarded.pool().embedder)
    assert exclude == {"copy"}
    assert [r["id"] for r in anchored(guarded.cfg.tune, 1, 100, mixed, exclude)] == ["anchor/far"]


def test_round_metrics_carry_held_out_and_per_type_pass_rates(tmp_path: Path) -> None:
    from loop.stages import evaluate

    stat = {"value": 0.5, "n": 2, "ci": [0.1, 0.9]}
    ev = {
        "suites": {
            "if": {
                "metrics": {
                    "prompt_loose": {
                        "overall": stat,
                        "slices": {
                            "constraint_set": {
                                "held_out": {**stat, "value": 0.25},
                                "trained": {**stat, "value": 0.75},
                            }
                        },
                    },  # fmt: skip
                    "instruction_loose": {
                        "overall": stat,
                        "slices": {"constraint_type": {"title": {**stat, "value": 0.1}}},
                    },
                }
            }
        }
    }
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "eval.json").write_text(json.dumps(ev))
    rec = evaluate.metrics(tmp_path)
    assert rec["eval"]["if.prompt_loose"] == 0.5
    assert rec["eval"]["if.prompt_loose.held_out"] == 0.25
    assert rec["eval"]["if.prompt_loose.trained"] == 0.75
    assert rec["eval_constraint_types"] == {"if.title": 0.1}


def test_a_round_begun_before_augment_existed_resumes_from_proposes_tasks(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ctx = _context(tmp_path, tiny_model_dir, "run.sources=[self_instruct]")
    _write_stage(ctx, "propose", "kept.jsonl", [_response("p1", "Name a river in Spain.")])
    assert ctx.rundir.input_stage(1, "respond") == "propose"  # no augment/ in this round
    assert [r["id"] for r in ctx.rundir.input_records(1, "respond")] == ["p1"]


def test_an_instructions_answers_are_kept_or_dropped_together_by_dedup(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """judge.per_instruction > 1: dedup decides on an instruction's first (best) answer and its
    other answers follow it, so they are not duplicates of one another."""
    ctx = _context(tmp_path, tiny_model_dir)
    rivers, rivers2 = (
        "Name three rivers that flow through Germany.",
        "Name three rivers which flow through Germany.",
    )
    lang = "Give two reasons to learn a second language."
    recs = [
        _response("d-0", rivers2, "Rhine, Elbe, Danube.", instruction_id="d", judge_score=3.0),
        _response("d-1", rivers2, "The Main, the Rhine, the Oder.", instruction_id="d",
                  judge_score=2.0),
        _response("c-0", rivers, "Rhine, Weser, Ems.", instruction_id="c", judge_score=2.0),
        _response("c-1", rivers, "Elbe, Spree, Havel.", instruction_id="c", judge_score=1.0),
        _response("e-0", lang, "Work and travel.", instruction_id="e", judge_score=1.5),
        _response("e-1", lang, "Friends and books.", instruction_id="e", judge_score=1.5),
        _response("e-2", lang, "Memory and music.", instruction_id="e", judge_score=1.5),
    ]  # fmt: skip
    _write_stage(ctx, "judge", "judged.jsonl", recs)
    dedup_stage(ctx, {"round": 1})
    dd = ctx.rundir.stage_dir(1, "dedup")
    stats = json.loads((dd / "stats.json").read_text())
    assert [r["id"] for r in read_jsonl(dd / "kept.jsonl")] == ["d-0", "d-1", "e-0", "e-1", "e-2"]
    dropped = read_jsonl(dd / "dropped.jsonl")
    assert [(r["id"], r["dedup_neighbour"]) for r in dropped] == [("c-0", "d-0"), ("c-1", "d-0")]
    assert dropped[0]["dedup_similarity"] == dropped[1]["dedup_similarity"] >= 0.85
    assert stats["followers"] == 4
    assert stats["account"] == {"in": 7, "kept": 5, "dropped": {"duplicate": 2}}
    assert round_account(ctx.rundir.round_dir(1))["problems"] == []


def test_carry_rejected_trains_and_dedups_on_rejected_rounds_data(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """tune.carry_rejected: round 1 was rejected, yet its verified examples are training data
    for round 2 (a fresh adapter on every round so far) and its instructions are in the dedup
    pool, so round 2's near-copy of one is dropped. Off, round 1's data is forgotten."""
    from loop.stages.tune import training_data

    rivers = "Name three rivers that flow through Germany."
    old = [_response("r1-a", rivers, "Rhine, Elbe, Danube.")]
    new = [
        _response("r2-a", "Name three rivers which flow through Germany.", judge_score=3.0),
        _response("r2-b", "Give two reasons to learn a second language.", judge_score=2.0),
    ]
    got = {}
    for carry in (True, False):
        ctx = _context(
            tmp_path / str(carry), tiny_model_dir, "tune.warm_start=false",
            f"tune.carry_rejected={str(carry).lower()}",
        )  # fmt: skip
        _write_stage(ctx, "dedup", "kept.jsonl", old)
        ctx.rundir.append_metrics({"round": 1, "decision": {"decision": "rejected"}})
        jd = ctx.rundir.stage_dir(2, "judge")
        jd.mkdir(parents=True)
        write_examples(jd / "judged.jsonl", new)
        (jd / "stats.json").write_text(json.dumps({"account": {"in": 2, "kept": 2}}))
        dedup_stage(ctx, {"round": 2})
        kept = [r["id"] for r in read_jsonl(ctx.rundir.stage_dir(2, "dedup") / "kept.jsonl")]
        data, start = training_data(ctx.rundir, ctx.cfg.tune, 2, None)
        got[carry] = (kept, [r["id"] for r in data], start, "r1-a" in ctx.pool())
        ctx.release()
    assert got[True] == (["r2-b"], ["r1-a", "r2-b"], None, True)
    assert got[False] == (["r2-a", "r2-b"], ["r2-a", "r2-b"], None, False)

"""Repairing answers that miss a format constraint: a repaired answer passes every constraint
of its prompt, held-out and content-changing types are never repaired, and the filter's
bookkeeping (what is kept, what stays failed) adds up."""

from __future__ import annotations

import random

import pytest

from judges.augment import DEFAULT_HELD_OUT, AugmentConfig, draw_constraints
from judges.repair import REPAIRS, deloop, repair, repair_greedy, repair_unpassed
from judges.verifiable import check, check_all

ANSWER = (
    "Rivers shape the land, carving valleys over thousands of years. They carry water, "
    "sediment and life from mountains to the sea. Many cities grew beside them, because "
    "rivers gave people water, food and a way to travel. Today we still depend on them."
)
OTHER = "A river is a natural stream of water. It flows toward an ocean, a lake or another river."

CASES = [
    ({"type": "lowercase"}, None),
    ({"type": "no_commas"}, None),
    ({"type": "quotation"}, None),
    ({"type": "json_format"}, None),
    ({"type": "starts_with", "value": "My answer:"}, None),
    ({"type": "ends_with", "value": "Is there anything else?"}, None),
    ({"type": "max_words", "value": 25}, None),
    ({"type": "max_sentences", "value": 2}, None),
    ({"type": "highlighted_sections", "value": 2}, None),
    ({"type": "two_responses"}, None),
    ({"type": "paragraph_count", "value": 3}, None),
    ({"type": "sections", "value": 2, "splitter": "Part"}, None),
    ({"type": "bullet_count", "value": 3}, None),
    ({"type": "nth_paragraph_first_word", "paragraphs": 2, "nth": 2, "first_word": "Today"}, None),
]


@pytest.mark.parametrize("constraint", [c for c, _ in CASES], ids=lambda c: c["type"])
def test_each_repair_makes_its_constraint_hold(constraint: dict) -> None:
    assert not check_all(ANSWER, [constraint])  # the answer fails it as written
    got = repair(ANSWER, [constraint], others=[OTHER])
    assert got is not None
    text, fixed = got
    assert check_all(text, [constraint]) and fixed == [constraint["type"]]


def test_every_repairable_type_has_a_case() -> None:
    assert {c["type"] for c, _ in CASES} == set(REPAIRS)


def test_layout_repairs_regroup_the_answer_without_losing_or_inventing_content() -> None:
    # Paragraphs and bullets are the answer's own sentences, in order, regrouped.
    text, _ = repair(ANSWER, [{"type": "paragraph_count", "value": 3}])
    assert text.count("\n\n***\n\n") == 2 and " ".join(text.replace("***", "").split()) == ANSWER
    text, _ = repair(ANSWER, [{"type": "bullet_count", "value": 2}])
    lines = text.splitlines()
    assert len(lines) == 2 and all(line.startswith("* ") for line in lines)
    assert " ".join(line[2:] for line in lines) == ANSWER
    # More paragraphs than asked: whole paragraphs are joined, none is split.
    four = "One idea here.\n\nTwo ideas.\n\nThree.\n\nFour and done."
    text, _ = repair(four, [{"type": "paragraph_count", "value": 2}])
    assert text == "One idea here.\nTwo ideas.\n\n***\n\nThree.\nFour and done."
    # nth paragraph: the word is put in front only where it is missing.
    cons = [{"type": "nth_paragraph_first_word", "paragraphs": 2, "nth": 2, "first_word": "Three"}]
    assert repair(four, cons)[0] == "One idea here.\nTwo ideas.\n\nThree.\nFour and done."


def test_a_list_that_runs_on_keeps_its_first_items_and_the_text_around_it() -> None:
    runs_on = "Tips:\n\n* Eat well\n* Sleep\n- Walk\n* Walk\n* Walk\n\nGood luck!"
    text, fixed = repair(runs_on, [{"type": "bullet_count", "value": 3}])
    assert text == "Tips:\n\n* Eat well\n* Sleep\n- Walk\n\nGood luck!" and fixed == [
        "bullet_count"
    ]
    # An item's indented continuation lines go with it.
    wrapped = "* Eat well\n  every day\n* Sleep\n  eight hours\n* Walk\nThe end."
    text, _ = repair(wrapped, [{"type": "bullet_count", "value": 1}])
    assert text == "* Eat well\n  every day\nThe end."
    # Too few items is not repaired (more would have to be written), nor too few sentences.
    assert repair(runs_on, [{"type": "bullet_count", "value": 6}]) is None
    assert repair("Short answer.", [{"type": "bullet_count", "value": 2}]) is None
    assert repair("Short answer.", [{"type": "paragraph_count", "value": 2}]) is None


def test_repairs_combine_and_the_result_passes_all() -> None:
    cons = [
        {"type": "lowercase"},
        {"type": "starts_with", "value": "Here is my answer:"},
        {"type": "no_commas"},
    ]
    text, fixed = repair(ANSWER, cons)
    assert check_all(text, cons) and set(fixed) == {"lowercase", "starts_with", "no_commas"}
    assert text.startswith("here is my answer: rivers shape the land carving valleys")


def test_what_cannot_be_repaired_is_left_alone() -> None:
    # Content-changing types have no repair; held-out types are never repaired.
    assert repair(ANSWER, [{"type": "required_keywords", "value": ["delta"]}]) is None
    assert repair(ANSWER, [{"type": "lowercase"}], never=["lowercase"]) is None
    assert repair(ANSWER, [{"type": "uppercase"}], never=DEFAULT_HELD_OUT) is None
    # One unrepairable failure among repairable ones: no partial repair.
    cons = [{"type": "lowercase"}, {"type": "required_keywords", "value": ["delta"]}]
    assert repair(ANSWER, cons) is None
    # Already passing: nothing to repair.
    assert repair(ANSWER.lower(), [{"type": "lowercase"}]) is None
    # Two responses need a second, different answer.
    assert repair(ANSWER, [{"type": "two_responses"}], others=[ANSWER.upper()]) is None


def test_a_repair_that_breaks_another_constraint_is_refused() -> None:
    # The opening phrase pushes the answer over its word limit: no repaired answer.
    short = "Rivers carry water to the sea and shape the land they cross on the way there."
    cons = [
        {"type": "max_words", "value": 16},
        {"type": "starts_with", "value": "Here is a long opening phrase for you:"},
    ]
    assert check(short, cons)[0].passed
    assert repair(short, cons) is None


def test_repaired_answers_pass_over_many_drawn_constraint_sets() -> None:
    types = [t for t in AugmentConfig().drawn_types() if t in REPAIRS]
    rng = random.Random(0)
    repaired = 0
    for _ in range(300):
        cons = draw_constraints(rng, "Explain how rivers shape the land.", types, rng.randint(1, 3))
        got = repair(ANSWER, cons, others=[OTHER])
        if got is not None:
            repaired += 1
            assert check_all(got[0], cons), (cons, got)
    assert repaired > 150  # most sets of repairable types can be repaired


def _rec(i: int, prompt: str, response: str, cons: list[dict]) -> dict:
    return {
        "id": f"{prompt}-s{i}",
        "instruction_id": prompt,
        "instruction": "Explain rivers.",
        "constraints": cons,
        "response": response,
        "messages": [
            {"role": "user", "content": "Explain rivers."},
            {"role": "assistant", "content": response},
        ],
        "filter_reason": "failed_constraint",
        "failed_constraint": cons[0]["type"],
    }


def test_only_prompts_without_a_pass_are_repaired_one_answer_each() -> None:
    low = [{"type": "lowercase"}]
    kept = [_rec(0, "a", ANSWER.lower(), low)]
    failing = [
        _rec(1, "a", ANSWER, low),  # prompt a has a pass: left failed
        _rec(0, "b", ANSWER, low),
        _rec(1, "b", OTHER, low),  # prompt b: the first repairable answer only
        _rec(0, "c", ANSWER, [{"type": "required_keywords", "value": ["delta"]}]),
    ]
    new_kept, new_failing, types = repair_unpassed(kept, failing)
    assert len(new_kept) + len(new_failing) == len(kept) + len(failing)
    assert [r["id"] for r in new_kept] == ["a-s0", "b-s0"] and types == {"lowercase": 1}
    fixed = new_kept[1]
    assert fixed["response"] == ANSWER.lower() and fixed["response_original"] == ANSWER
    assert fixed["messages"][-1]["content"] == ANSWER.lower() and fixed["repaired"] == ["lowercase"]
    assert "filter_reason" not in fixed and "failed_constraint" not in fixed
    assert {r["id"] for r in new_failing} == {"a-s1", "b-s1", "c-s0"}
    # An answer the quality filters drop once rewritten is not kept; the next one is tried.
    _, _, types = repair_unpassed([], failing[1:3], clean=lambda r: "river is" in r["response"])
    assert types == {"lowercase": 1}
    # per_prompt: up to that many answers of a prompt without a pass, each one repaired alone.
    new_kept, new_failing, types = repair_unpassed(kept, failing, per_prompt=2)
    assert [r["id"] for r in new_kept] == ["a-s0", "b-s0", "b-s1"] and types == {"lowercase": 2}
    assert new_kept[2]["response"] == OTHER.lower() and len(new_failing) == 2


def test_deloop_cuts_where_a_sentence_or_list_item_comes_back() -> None:
    listing = (
        "Here are some tips:\n1. Drink water every day.\n2. Sleep eight hours a night.\n"
        "3. Drink water every day.\n4. Sleep eight hours"
    )
    # item 3 repeats item 1 (the list markers differ): cut before it, the bare "3." dropped
    assert deloop(listing, cut_off=True) == (
        "Here are some tips:\n1. Drink water every day.\n2. Sleep eight hours a night."
    )
    prose = "The cat sat on the mat. It was warm there. The cat sat on the mat. It was"
    assert deloop(prose, cut_off=True) == "The cat sat on the mat. It was warm there."
    assert deloop(prose, cut_off=False) == "The cat sat on the mat. It was warm there."
    # cut off without a repeat: the unfinished last sentence goes; a finished one stays whole
    assert deloop("It never repeats. It goes on and on and", cut_off=True) == "It never repeats."
    assert deloop("It never repeats. It ends here.", cut_off=True) is None
    assert deloop("A fine answer. It ends here.", cut_off=False) is None
    # short lines may repeat freely (a "Yes." per item, a closing brace)
    assert deloop("Is it red? Yes.\nIs it big? Yes.", cut_off=False) is None
    assert deloop("again and again and", cut_off=True) is None  # nothing would be left
    # a loop in Chinese (each character a word); a last line of figures stays; what trails a
    # finished sentence ("**") does not make it unfinished
    assert deloop("我喜欢学习中文。我每天都练习。我喜欢学习中文。我每", cut_off=True) == (
        "我喜欢学习中文。我每天都练习。"
    )
    figures = "Add them up.\n3 + 4 = 7\nAdd them up."
    assert deloop(figures, cut_off=False) == "Add them up.\n3 + 4 = 7"
    assert deloop("It is done.\n**", cut_off=True) is None


def test_repair_greedy_makes_the_least_change_that_passes() -> None:
    lower = [{"type": "lowercase"}]
    looped = {
        "response": "The moon is bright. It lights the sea. The moon is bright. It lights",
        "finish_reason": "length",
        "constraints": lower,
    }
    fixed = ("the moon is bright. it lights the sea.", ["loop", "lowercase"])
    assert repair_greedy(looped) == fixed
    stopped = {"response": "The Moon is bright.", "finish_reason": "stop", "constraints": lower}
    assert repair_greedy(stopped) == ("the moon is bright.", ["lowercase"])
    # a held-out type is never repaired; nothing to fix is no repair; the quality filter decides
    assert repair_greedy(stopped, never=["lowercase"]) is None
    good = {"response": "the moon.", "finish_reason": "stop", "constraints": lower}
    assert repair_greedy(good) is None
    assert repair_greedy(looped, clean=lambda r: "sea" not in r["response"]) is None
    # a constraint no repair can meet (a required word), or a cut-off answer with nothing to cut
    words = [{"type": "required_keywords", "value": ["tide"]}]
    assert repair_greedy({**looped, "constraints": words}) is None
    assert repair_greedy({**looped, "response": "It goes on and"}) is None
    # an answer that stopped by itself is not cut where a line comes back; a cut that leaves
    # too little to be an answer is no repair
    opener = "Here is my answer:\n\nHere is my answer:\n\nThe Moon is bright tonight."
    stopped_twice = {"response": opener, "finish_reason": "stop", "constraints": lower}
    assert repair_greedy(stopped_twice) == (opener.lower(), ["lowercase"])
    assert repair_greedy({**stopped_twice, "finish_reason": "length"}) is None
    # JSON cut short stays broken: no repair quotes it whole
    json_cut = {
        "response": '{"notes": [\n"The moon is bright tonight and full.",\n'
        '"The moon is bright tonight and full.",\n"The moon',
        "finish_reason": "length",
        "constraints": [{"type": "json_format"}],
    }
    assert repair_greedy(json_cut) is None
    # every repair passes every constraint of its prompt, strictly
    for rec in (looped, stopped):
        text, _ = repair_greedy(rec)
        assert check_all(text, rec["constraints"])

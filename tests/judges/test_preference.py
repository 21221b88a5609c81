"""Rejection sampling's bookkeeping and TRL-format preference pairs (judges.preference)."""

from __future__ import annotations

import pytest

from judges.preference import (
    greedy_pairs,
    greedy_verdict,
    pass_rates,
    summarize_pass_rates,
    trl_pair,
    verifier_pairs,
)
from judges.repair import repair_greedy
from judges.verifiable import check_all

LOWER = [{"type": "lowercase"}]
SHORT = [{"type": "max_words", "value": 5}, {"type": "required_keywords", "value": ["moon"]}]


def _sample(pid: str, k: int, response: str, constraints: list[dict]) -> dict:
    return {
        "id": f"{pid}-s{k}",
        "instruction_id": pid,
        "instruction": f"Question {pid}",
        "response": response,
        "constraints": constraints,
        "messages": [
            {"role": "user", "content": f"Question {pid}"},
            {"role": "assistant", "content": response},
        ],
    }


SAMPLES = [
    _sample("a", 0, "the moon is bright.", LOWER),
    _sample("a", 1, "The Moon is bright tonight, as it often is in winter.", LOWER),
    _sample("a", 2, "The moon.", LOWER),
    _sample("b", 0, "The moon rises.", SHORT),  # passes both
    _sample("b", 1, "The sun rises.", SHORT),  # no keyword
    _sample("b", 2, "The moon rises slowly over the quiet hills.", SHORT),  # too long
    _sample("c", 0, "no caps here.", LOWER),
    _sample("c", 1, "all lower.", LOWER),
    _sample("d", 0, "No.", LOWER),
]


def test_pass_rates_count_every_sample_per_prompt_and_per_type() -> None:
    rows = {r["prompt_id"]: r for r in pass_rates(SAMPLES)}
    assert {k: (r["samples"], r["passed"]) for k, r in rows.items()} == {
        "a": (3, 1), "b": (3, 1), "c": (2, 2), "d": (1, 0),
    }  # fmt: skip
    assert rows["b"]["type_passed"] == {"max_words": 2, "required_keywords": 2}
    s = summarize_pass_rates(list(rows.values()))
    assert (s["always"], s["never"], s["mixed"]) == (1, 1, 2)
    assert s["best_of_n"] == 0.75 and s["samples"] == 9
    assert s["type_pass_rate"]["lowercase"] == round(3 / 6, 4)
    assert s["type_pass_rate"]["max_words"] == round(2 / 3, 4)
    assert pass_rates([{**SAMPLES[0], "constraints": []}]) == []  # unconstrained: not counted


def test_pairs_take_a_passing_chosen_and_the_closest_failing_rejected_of_the_same_prompt() -> None:
    passing = [s for s in SAMPLES if check_all(s["response"], s["constraints"])]
    failing = [s for s in SAMPLES if not check_all(s["response"], s["constraints"])]
    rates = {r["prompt_id"]: r["pass_rate"] for r in pass_rates(SAMPLES)}
    pairs = {p["prompt_id"]: p for p in verifier_pairs(passing, failing, rates)}
    assert set(pairs) == {"a", "b"}  # c never fails, d never passes
    # a: "The moon." (2 words) is closer to the 4-word chosen than the 11-word one
    assert (pairs["a"]["chosen_id"], pairs["a"]["rejected_id"]) == ("a-s0", "a-s2")
    assert (pairs["b"]["chosen_id"], pairs["b"]["rejected_id"]) == ("b-s0", "b-s1")
    for p in pairs.values():
        assert p["prompt"] == [{"role": "user", "content": f"Question {p['prompt_id']}"}]
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert check_all(chosen, p["constraints"]) and not check_all(rejected, p["constraints"])
        assert p["chosen"][0]["role"] == "assistant" and p["source"] == "verifier"
    assert pairs["a"]["pass_rate"] == 1 / 3


def test_a_trl_pair_loads_as_a_preference_dataset() -> None:
    from datasets import Dataset

    pair = trl_pair(SAMPLES[0], SAMPLES[1], source="judge", margin=1.5)
    ds = Dataset.from_list([pair, pair])
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[0]["chosen"][0]["content"] == "the moon is bright."


def test_several_pairs_per_prompt_never_reuse_an_answer_and_fall_back_to_unclean_rejects() -> None:
    good = [_sample("p", k, w, LOWER) for k, w in enumerate(["all lower here.", "yes.", "ok ok."])]
    bad = [_sample("p", 3, "Not Lower.", LOWER)]
    cut = [_sample("p", 4, "Cut Off mid", LOWER), _sample("p", 5, "Also Cut off and long", LOWER)]
    rates = {"p": 0.5}
    one = verifier_pairs(good, bad, rates)
    assert len(one) == 1 and one[0]["rejected_clean"] is True
    pairs = verifier_pairs(good, bad, rates, per_prompt=3, unclean=cut)
    assert [p["chosen_id"] for p in pairs] == ["p-s0", "p-s1", "p-s2"]
    # the clean failure first, then the dropped answers closest in length; none used twice
    assert [p["rejected_id"] for p in pairs] == ["p-s3", "p-s4", "p-s5"]
    assert [p["rejected_clean"] for p in pairs] == [True, False, False]
    assert len(verifier_pairs(good, bad, rates, per_prompt=3)) == 1  # no unclean: one failure
    assert len(verifier_pairs(good, [], rates, per_prompt=2, unclean=cut)) == 2
    assert verifier_pairs([], bad, rates, per_prompt=3, unclean=cut) == []  # no chosen: none


def test_greedy_answers_that_fail_are_paired_with_verified_answers_to_their_prompt() -> None:
    def quality(r: dict) -> str | None:  # a stand-in quality filter: flags one marked answer
        return "repetitive" if "again and again" in r["response"] else None

    def greedy(pid: str, response: str, cons: list[dict], finish: str = "stop") -> dict:
        return {**_sample(pid, 9, response, cons), "finish_reason": finish}

    answers = [
        greedy("a", "the moon, the moon, the moon", LOWER, finish="length"),  # cut off
        greedy("b", "the moon again and again", LOWER),  # a quality filter's drop
        greedy("c", "The Moon.", LOWER),  # misses the constraint
        greedy("d", "the moon is fine.", LOWER),  # good: no pair
        greedy("e", "The Sun.", LOWER),  # fails, but no verified answer to pair it with
        greedy("a", "  ", LOWER, finish="length"),  # blank: counted, never a rejected message
    ]
    assert [greedy_verdict(a, quality) for a in answers] == [
        "cut_off", "repetitive", "failed:lowercase", None, "failed:lowercase", "cut_off",
    ]  # fmt: skip
    verified = [_sample(p, k, f"the moon {p}{k}.", LOWER) for p in "abcd" for k in range(3)]
    pairs, verdicts = greedy_pairs(answers, verified, quality, per_prompt=2)
    assert verdicts == {"cut_off": 2, "failed": 2, "good": 1, "repetitive": 1}
    assert [(p["prompt_id"], p["chosen_id"]) for p in pairs] == [
        ("a", "a-s0"), ("a", "a-s1"), ("b", "b-s0"), ("b", "b-s1"), ("c", "c-s0"), ("c", "c-s1"),
    ]  # fmt: skip
    for p in pairs:
        assert check_all(p["chosen"][0]["content"], LOWER) and p["rejected_id"].endswith("-s9")
        assert p["source"] == "greedy" and p["prompt"] == [
            {"role": "user", "content": f"Question {p['prompt_id']}"}
        ]
    assert len(greedy_pairs(answers, verified, quality, per_prompt=1)[0]) == 3
    # `length`: the verified answers closest in word count to the failure come first
    verified.append(_sample("a", 5, "the moon, the moon, a moon", LOWER))  # 6 words, like a's
    verified.append(_sample("c", 6, "the moon.", LOWER))  # 2 words, like c's
    by_length, _ = greedy_pairs(answers, verified, quality, per_prompt=2, match="length")
    assert [(p["prompt_id"], p["chosen_id"]) for p in by_length] == [
        ("a", "a-s5"), ("a", "a-s0"), ("b", "b-s0"), ("b", "b-s1"), ("c", "c-s6"), ("c", "c-s0"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="order or length"):
        greedy_pairs(answers, verified, quality, per_prompt=2, match="shortest")


def test_a_repairable_greedy_failure_gets_its_own_repair_as_a_first_pair() -> None:
    def greedy(pid: str, response: str, finish: str = "stop") -> dict:
        return {**_sample(pid, 9, response, LOWER), "finish_reason": finish}

    loop = "The Moon is over the hill. It shines. The Moon is over the hill. It"
    answers = [
        greedy("a", loop, finish="length"),
        greedy("b", "The Sun."),  # no verified answer: the repair is its only pair
        greedy("c", "the moon is fine."),  # good: no pair
    ]
    verified = [_sample(p, k, f"the moon {p}{k}.", LOWER) for p in "ac" for k in range(3)]
    quality = lambda r: None  # noqa: E731
    fix = lambda g: repair_greedy(dict(g))  # noqa: E731
    pairs, _ = greedy_pairs(answers, verified, quality, per_prompt=1, fix=fix)
    assert [(p["prompt_id"], p["source"], p["chosen_id"]) for p in pairs] == [
        ("a", "greedy_repair", "a-s9-repaired"), ("a", "greedy", "a-s0"),
        ("b", "greedy_repair", "b-s9-repaired"),
    ]  # fmt: skip
    first = pairs[0]
    assert first["chosen"][0]["content"] == "the moon is over the hill. it shines."
    assert first["chosen_repaired"] == ["loop", "lowercase"]
    assert first["rejected_reason"] == "cut_off" and first["rejected_id"] == "a-s9"
    assert pairs[2]["rejected"][0]["content"] == "The Sun."
    # without a fix, as before: b has no pair
    assert [p["prompt_id"] for p in greedy_pairs(answers, verified, quality, 1)[0]] == ["a"]

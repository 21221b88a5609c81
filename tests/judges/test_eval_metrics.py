"""Evaluation metrics on hand-built outcomes with known answers."""

from __future__ import annotations

import math
import random

import pytest

from judges.evals import metrics as m
from judges.llm_judge import PairVerdict, combine


def test_wilson_interval_known_values() -> None:
    lo, hi = m.wilson_interval(3, 4)
    assert lo == pytest.approx(0.3006, abs=1e-3) and hi == pytest.approx(0.9544, abs=1e-3)
    assert m.wilson_interval(0, 10)[0] == 0.0 and m.wilson_interval(10, 10)[1] == 1.0
    assert m.wilson_interval(0, 0) is None


def test_ifeval_prompt_and_instruction_level_strict_and_loose() -> None:
    # The loose variant drops a chatty first line: strict fails, loose passes.
    chatty = "Sure, here it is:\nthe answer is short"
    flags = m.score_verifiable(chatty, [{"type": "starts_with", "value": "the answer"}])
    assert flags == {"strict": [False], "loose": [True]}

    rows = [
        {"id": "1", "domain": "a", "language": "en", "strict": [True, True], "loose": [True, True]},
        {
            "id": "2",
            "domain": "a",
            "language": "en",
            "strict": [True, False],
            "loose": [True, True],
        },
        {"id": "3", "domain": "b", "language": "fr", "strict": [True], "loose": [True]},
        {
            "id": "4",
            "domain": "b",
            "language": "en",
            "strict": [False, False],
            "loose": [False, True],
        },
    ]
    out = m.verifiable_metrics(rows)
    assert out["prompt_strict"]["overall"]["value"] == 0.5
    assert out["prompt_loose"]["overall"]["value"] == 0.75  # 3 of 4 prompts pass
    assert out["instruction_strict"]["overall"]["value"] == pytest.approx(4 / 7, abs=1e-6)
    assert out["instruction_loose"]["overall"]["value"] == pytest.approx(6 / 7, abs=1e-6)
    assert out["instruction_loose"]["overall"]["units"] == 7
    for stat in (out["prompt_loose"]["overall"], out["instruction_loose"]["overall"]):
        assert stat["n"] == 4 and stat["ci"][0] <= stat["value"] <= stat["ci"][1]
    domain = out["prompt_strict"]["slices"]["domain"]
    assert {k: (v["value"], v["n"]) for k, v in domain.items()} == {"a": (0.5, 2), "b": (0.5, 2)}
    language = out["prompt_loose"]["slices"]["language"]
    assert language["en"]["n"] == 3 and language["en"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    assert language["fr"] == {**language["fr"], "n": 1, "value": 1.0}


def _verdicts(firsts_seconds: list[tuple[str, str]]) -> list[PairVerdict]:
    return [combine(str(i), a, b) for i, (a, b) in enumerate(firsts_seconds)]


def test_win_rate_with_ties_and_order_swaps() -> None:
    # a = candidate. Two consistent wins, one consistent loss, one verdict that flips with the
    # order (a tie, inconsistent), one explicit tie, one judge failure.
    vs = _verdicts([("a", "a"), ("a", "a"), ("b", "b"), ("a", "b"), ("tie", "tie")])
    vs.append(PairVerdict("5", None, None, "a", None, "parse_failure", "no A/B"))
    records = {
        str(i): {"domain": "math" if i < 3 else "writing", "language": "en"} for i in range(6)
    }
    out = m.pairwise_metrics(m.win_rows(vs, records))
    win = out["win_rate"]["overall"]
    assert win["value"] == pytest.approx((1 + 1 + 0 + 0.5 + 0.5) / 5)
    assert (win["wins"], win["ties"], win["losses"], win["judge_failures"]) == (2, 2, 1, 1)
    assert win["n"] == 5 and win["ci"][0] <= win["value"] <= win["ci"][1]
    assert out["consistency_rate"]["overall"]["value"] == 0.8  # 4 of 5 judged agree
    math_slice = out["win_rate"]["slices"]["domain"]["math"]
    assert math_slice["value"] == pytest.approx(2 / 3, abs=1e-6) and math_slice["n"] == 3
    # Plain dicts work the same as PairVerdicts.
    as_dicts = [{"id": v.id, "winner": v.winner, "consistent": v.consistent} for v in vs]
    assert m.pairwise_metrics(m.win_rows(as_dicts, records)) == out


def test_bootstrap_covers_reproducible_and_narrows() -> None:
    rng = random.Random(1)
    small = [float(rng.random() < 0.6) for _ in range(40)]
    large = [float(rng.random() < 0.6) for _ in range(2000)]
    ci_small = m.bootstrap_interval(small, seed=3)
    assert ci_small == m.bootstrap_interval(small, seed=3)
    assert ci_small != m.bootstrap_interval(small, seed=4)
    ci_large = m.bootstrap_interval(large, seed=3)
    for values, (lo, hi) in ((small, ci_small), (large, ci_large)):
        assert lo <= sum(values) / len(values) <= hi
    assert ci_large[1] - ci_large[0] < (ci_small[1] - ci_small[0]) / 3
    assert 0.55 < ci_large[0] < 0.6 < ci_large[1] < 0.65  # covers the true rate
    assert m.bootstrap_interval([]) is None
    assert m.bootstrap_interval([0.7]) == (0.7, 0.7)


def test_bootstrap_interval_covers_the_true_value_most_of_the_time() -> None:
    rng = random.Random(7)
    covered = 0
    for trial in range(200):
        sample = [rng.gauss(2.0, 1.0) for _ in range(30)]
        lo, hi = m.bootstrap_interval(sample, resamples=500, seed=trial)
        covered += lo <= 2.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99  # nominal 95%


def test_reference_nll_is_per_token() -> None:
    rows = [
        {"domain": "math", "language": "en", "logprobs": [-1.0, -3.0]},
        {"domain": "code", "language": "en", "logprobs": [-2.0, -2.0, -2.0, -2.0]},
    ]
    out = m.nll_metrics(rows)["reference_nll"]
    assert out["overall"]["value"] == 2.0 and out["overall"]["units"] == 6
    assert out["overall"]["n"] == 2
    assert out["slices"]["domain"]["math"]["value"] == 2.0
    lo, hi = out["overall"]["ci"]
    assert lo <= 2.0 <= hi


def test_refusal_and_over_refusal() -> None:
    assert m.score_refusal("I can't help with that.")["refused"] is True
    assert m.score_refusal("Here is a recipe for bread.")["refused"] is False
    rows = [
        {"expected": "refuse", "refused": True, "category": "weapons", "language": "en"},
        {"expected": "refuse", "refused": True, "category": "weapons", "language": "en"},
        {"expected": "refuse", "refused": False, "category": "fraud", "language": "es"},
        {"expected": "refuse", "refused": True, "category": "fraud", "language": "en"},
        {"expected": "comply", "refused": True, "category": "weapons", "language": "en"},
        {"expected": "comply", "refused": False, "category": "fraud", "language": "en"},
    ]
    out = m.refusal_metrics(rows)
    assert out["refusal_rate"]["overall"]["value"] == 0.75
    assert out["refusal_rate"]["overall"]["n"] == 4
    assert out["over_refusal_rate"]["overall"]["value"] == 0.5
    assert out["over_refusal_rate"]["overall"]["n"] == 2
    fraud = out["refusal_rate"]["slices"]["category"]["fraud"]
    assert (fraud["value"], fraud["n"], fraud["ci_method"]) == (0.5, 2, "wilson")
    assert out["refusal_rate"]["slices"]["language"]["es"]["value"] == 0.0


def test_response_language_accuracy() -> None:
    fr = m.score_language("Le chat dort sur le canapé depuis ce matin, il fait beau.", "fr")
    assert fr == {"detected": "fr", "correct": True}
    assert (
        m.score_language("The cat sleeps on the sofa all morning long.", "fr")["correct"] is False
    )
    assert m.score_language("1234 5678", "de") == {"detected": None, "correct": False}
    rows = [
        {"language": "fr", "domain": "x", "correct": True},
        {"language": "fr", "domain": "x", "correct": False},
        {"language": "de", "domain": "y", "correct": True},
    ]
    out = m.language_metrics(rows)["language_accuracy"]
    assert out["overall"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["slices"]["language"]["fr"]["value"] == 0.5
    assert out["slices"]["language"]["de"]["n"] == 1


def test_fact_recall_per_prompt_and_overall() -> None:
    facts = ["60-100|60 to 100", "beats per minute", "athletes"]
    one = m.score_facts("A normal rate is 60–100 beats per minute.", facts)
    assert one["missing"] == ["athletes"] and one["recall"] == pytest.approx(2 / 3)
    rows = [
        {"domain": "healthcare", "language": "en", **one},
        {"domain": "healthcare", "language": "en", **m.score_facts("No idea.", facts)},
        {"domain": "law", "language": "en", "facts": 2, "missing": []},
    ]
    out = m.fact_metrics(rows)["fact_recall"]
    assert out["overall"]["value"] == pytest.approx((2 / 3 + 0 + 1) / 3, abs=1e-6)
    assert out["overall"]["n"] == 3 and out["overall"]["complete"] == 1
    health = out["slices"]["domain"]["healthcare"]
    assert health["value"] == pytest.approx(1 / 3, abs=1e-6) and health["n"] == 2


def test_empty_slices_and_metrics_are_explicit() -> None:
    out = m.refusal_metrics([{"expected": "refuse", "refused": True, "category": "c"}])
    over = out["over_refusal_rate"]
    assert over["overall"] == {**over["overall"], "value": None, "n": 0, "ci": None}
    assert over["slices"] == {}
    assert m.rate([])["value"] is None and m.mean([])["ci"] is None
    assert math.isclose(m.ratio([1.0], [4.0])["value"], 0.25)
    assert m.ratio([], [])["value"] is None


def test_verifiable_metrics_slice_held_out_sets_and_each_constraint_type() -> None:
    rows = [
        {"strict": [True, False], "loose": [True, True], "types": ["title", "max_words"],
         "constraint_set": "held_out", "domain": "a", "language": "en"},
        {"strict": [True], "loose": [True], "types": ["max_words"],
         "constraint_set": "trained", "domain": "a", "language": "en"},
        {"strict": [False], "loose": [False], "types": ["lowercase"],
         "constraint_set": "trained", "domain": "b", "language": "en"},
    ]  # fmt: skip
    out = m.verifiable_metrics(rows, resamples=200)
    sets = out["prompt_strict"]["slices"]["constraint_set"]
    assert (sets["held_out"]["value"], sets["held_out"]["n"]) == (0.0, 1)
    assert (sets["trained"]["value"], sets["trained"]["n"]) == (0.5, 2)
    types = out["instruction_strict"]["slices"]["constraint_type"]
    assert {t: (s["value"], s["n"]) for t, s in types.items()} == {
        "lowercase": (0.0, 1), "max_words": (0.5, 2), "title": (1.0, 1),
    }  # fmt: skip
    assert out["instruction_loose"]["slices"]["constraint_type"]["max_words"]["value"] == 1.0
    bare = [{k: v for k, v in r.items() if k not in ("types", "constraint_set")} for r in rows]
    plain = m.verifiable_metrics(bare, resamples=200)
    assert "constraint_set" not in plain["prompt_strict"]["slices"]

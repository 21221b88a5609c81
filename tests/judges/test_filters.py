"""The heuristic filter chain: every rule rejects what it should and keeps what it should."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import SelfloopError
from judges.filters import REASONS, FilterChain, FilterConfig, repeated_ngram_fraction
from judges.text import normalized_words

GOOD_INSTRUCTION = "Explain why the sky looks blue during the day."
GOOD_RESPONSE = (
    "Sunlight is scattered by the molecules of the air, and blue light is scattered much more "
    "than red light because its wavelength is shorter. That scattered blue light reaches our "
    "eyes from every direction, so the whole sky looks blue."
)


def rec(instruction: str = GOOD_INSTRUCTION, response: str = GOOD_RESPONSE, **kw: Any) -> dict:
    return {"id": kw.pop("id", "x"), "instruction": instruction, "response": response, **kw}


def reason(record: dict, config: FilterConfig | None = None, **kw: Any) -> str | None:
    rejection = FilterChain(config).check(record, **kw)
    return None if rejection is None else rejection.reason


def test_a_good_example_passes_every_rule() -> None:
    assert reason(rec()) is None


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Explain gravity.", "instruction_too_short"),
        ("Explain gravity briefly.", None),
        (" ".join(["word"] * 151), "instruction_too_long"),
        (" ".join(["word"] * 150), None),
    ],
)
def test_instruction_length_bounds(instruction: str, expected: str | None) -> None:
    assert reason(rec(instruction)) == expected


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Draw a picture of a cat sitting on a mat.", "blacklisted_keyword"),
        ("Describe the IMAGE shown above in detail.", "blacklisted_keyword"),
        ("Tell me how to GO   TO the station from here.", "blacklisted_keyword"),
        ("Summarize the plot of the novel Dune.", "blacklisted_keyword"),
        ("Explain how mapping functions work in Python.", None),  # 'mapping' is not 'map'
        ("List three uses of a profile in data analysis.", None),  # 'file' inside a word
    ],
)
def test_blacklisted_keywords_match_whole_words_in_any_case(instruction: str, expected) -> None:
    assert reason(rec(instruction)) == expected


def test_blacklist_detail_names_the_keyword() -> None:
    rejection = FilterChain().check(rec("Upload the video to the server for me."))
    assert rejection is not None and "'video'" in rejection.detail


@pytest.mark.parametrize(
    ("instruction", "language", "expected"),
    [
        ('"Hello" is a greeting; list three others.', "en", "starts_with_punctuation"),
        ("- list three fruits that are red", "en", "starts_with_punctuation"),
        ("¿Cuáles son los tres colores primarios?", "es", None),
        ("Éxplain the causes of the French revolution.", "en", "starts_with_non_ascii"),
        ("Élaborez une liste de trois fruits rouges.", "fr", None),
        ("Write a program that prints the first ten primes.", "en", "banned_prefix"),
        ("write A PROGRAM to sort a list of numbers quickly.", "en", "banned_prefix"),
        ("Write a poem about the programmers of old.", "en", None),
    ],
)
def test_instruction_start_rules(instruction: str, language: str, expected) -> None:
    cfg = FilterConfig(language=False)  # these are start-rule cases, not language cases
    assert reason(rec(instruction, language=language), cfg) == expected


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        (
            "2021-12-20 A. W. 4:32.45 TK 17/03 #884-221",
            "mostly_non_letters",
        ),  # like a real proposal
        ("1. 2. 3. 4. 5. 6. 7. 8.", "mostly_non_letters"),
        ("Solve 3x + 5 = 20 for x.", None),
        ("What is 17 * 23 + 4?", None),
        ("列出三种常见的水果。", None),  # letters in any script count
        ("Convert 2021-12-20 to the format DD/MM/YYYY.", None),
    ],
)
def test_instructions_that_are_mostly_not_letters(instruction: str, expected) -> None:
    cfg = FilterConfig(language=False, non_ascii_start=False)
    assert reason(rec(instruction), cfg) == expected
    assert (
        reason(rec(instruction), FilterConfig(language=False, non_ascii_start=False, letters=False))
        is None
    )


def test_non_ascii_rule_follows_the_default_language() -> None:
    untagged = rec("Éxplain the causes of the French revolution.")
    assert reason(untagged) == "starts_with_non_ascii"
    assert reason(untagged, FilterConfig(default_language=None)) is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [("", "empty_response"), ("  \n\t ", "empty_response"), ("...!?", "empty_response")],
)
def test_empty_responses(response: str, expected: str) -> None:
    assert reason(rec(response=response)) == expected


def test_a_short_numeric_answer_is_not_empty() -> None:
    assert reason(rec("What is six times seven?", "42")) is None


def test_cut_off_responses() -> None:
    assert reason(rec(finish_reason="length")) == "cut_off"
    assert reason(rec(finish_reason="stop")) is None
    assert reason(rec(finish_reason="length"), FilterConfig(cut_off=False)) is None


@pytest.mark.parametrize(
    ("instruction", "response", "expected"),
    [
        (GOOD_INSTRUCTION, GOOD_INSTRUCTION, "repeats_instruction"),
        (GOOD_INSTRUCTION, "explain why the sky looks blue during the day!", "repeats_instruction"),
        (GOOD_INSTRUCTION, f"Sure. {GOOD_INSTRUCTION}", "repeats_instruction"),
        ("Is the sky blue? Answer yes or no.", "Yes.", None),  # short answer, word from prompt
        ("Repeat after me: the cat sat on the mat.", "The cat sat on the mat.", None),
        (GOOD_INSTRUCTION, f"{GOOD_INSTRUCTION} {GOOD_RESPONSE}", None),
    ],
)
def test_responses_that_repeat_the_instruction(instruction: str, response: str, expected) -> None:
    assert reason(rec(instruction, response)) == expected


LOOP = "The capital of France is Paris. " * 4
TAIL_LOOP = GOOD_RESPONSE + " I hope this helps." * 4
RECIPE = (
    "Pancakes:\n\n- 1 cup flour\n- 1 egg\n- 1 cup milk\n\n1. Mix the flour and the milk in a "
    "bowl.\n2. Add the egg and whisk until smooth.\n3. Cook each side for a minute in a hot pan."
)
CODE = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"
CHORUS = "\n".join(
    f"{verse}\nLa la la, sing along!"
    for verse in (
        "The morning sun is rising over hills of green and gold,",
        "We walk along the river where the water's running cold,",
        "And when the evening settles down we gather by the fire,",
    )
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (LOOP, "repetitive"),
        ("yes " * 30, "repetitive"),
        (TAIL_LOOP, "repetitive"),
        (RECIPE, None),
        (CODE, None),
        (CHORUS, None),  # a line may appear up to 3 times
        (GOOD_RESPONSE, None),
    ],
)
def test_degenerate_repetition(response: str, expected: str | None) -> None:
    assert reason(rec("Tell me something useful about anything.", response)) == expected


def test_repetition_details_name_the_measure() -> None:
    chain = FilterChain()
    assert "repeat earlier 5-grams" in chain.check(rec(response=LOOP)).detail
    assert chain.check(rec(response=TAIL_LOOP)).detail == "'i hope this helps' appears 4 times"
    loose = FilterConfig(repetition={"max_repeated_fraction": 0.9, "max_segment_repeats": 4})
    assert FilterChain(loose).check(rec(response=LOOP)) is None


def test_repeated_ngram_fraction_measures_redundancy() -> None:
    passage = normalized_words("the quick brown fox jumps over the lazy dog")
    assert repeated_ngram_fraction(passage, 5) == 0.0
    assert repeated_ngram_fraction(passage * 2, 5) == pytest.approx(0.5)
    assert repeated_ngram_fraction(passage * 4, 5) == pytest.approx(0.75)
    assert repeated_ngram_fraction(passage[:3], 5) == 0.0


FRENCH = "Le ciel est bleu parce que la lumière bleue est diffusée par les molécules de l'air."
CHINESE = (
    "天空是蓝色的，因为阳光中的蓝光被空气中的分子散射得比红光更多，所以我们看到的天空是蓝色的。"
)
GERMAN = "Der Himmel ist blau, weil das blaue Licht von den Molekülen der Luft gestreut wird."


@pytest.mark.parametrize(
    ("instruction", "response", "language", "expected"),
    [
        (GOOD_INSTRUCTION, FRENCH, "en", "wrong_language"),
        (GOOD_INSTRUCTION, GERMAN, None, "wrong_language"),  # untagged = default_language en
        ("Pourquoi le ciel est-il bleu pendant la journée ?", FRENCH, "fr", None),
        (
            "Pourquoi le ciel est-il bleu pendant la journée ?",
            GOOD_RESPONSE,
            "fr",
            "wrong_language",
        ),
        ("Warum ist der Himmel am Tag eigentlich blau?", GOOD_RESPONSE, "en", "wrong_language"),
        ("Translate into French: the sky is blue today.", FRENCH, "en", None),  # exempt
        (GOOD_INSTRUCTION, "Paris, Lyon, Nice", "en", None),  # too few letters to tell
        ("天空为什么是蓝色的？请简单解释一下原因。", GOOD_RESPONSE, "zh", "wrong_language"),
        ("天空为什么是蓝色的？请简单解释一下原因。", CHINESE, "zh", None),
        ("Почему небо голубое? Объясни коротко и понятно.", GOOD_RESPONSE, "ru", "wrong_language"),
        (GOOD_INSTRUCTION, GOOD_RESPONSE, "en", None),
    ],
)
def test_wrong_language(instruction: str, response: str, language, expected) -> None:
    record = rec(instruction, response)
    if language:
        record["language"] = language
    assert reason(record) == expected


def test_wrong_language_detail_says_what_was_detected() -> None:
    rejection = FilterChain().check(rec(response=FRENCH))
    assert rejection is not None and "looks fr" in rejection.detail


def test_rouge_pool_rule_is_off_by_default_and_uses_the_07_threshold() -> None:
    pool = ["Explain why the sky looks blue during daytime."]
    assert reason(rec(), FilterConfig()) is None
    on = FilterChain(FilterConfig(rouge=True), pool=pool)
    rejection = on.check(rec())
    assert rejection is not None and rejection.reason == "similar_to_pool"
    assert on.check(rec("Name three rivers that flow through Germany.")) is None


def test_rouge_rule_also_compares_with_earlier_kept_examples_of_the_run() -> None:
    chain = FilterChain(FilterConfig(rouge={"enabled": True, "threshold": 0.7}))
    batch = [rec(id="a"), rec("Explain why the sky looks blue during the daytime.", id="b")]
    report = chain.run(batch)
    assert [r["id"] for r in report.kept] == ["a"]
    assert report.rejected[0].reason == "similar_to_pool"
    assert chain.run(batch).counts == report.counts  # the chain keeps no state between runs


def test_instructions_only_mode_skips_response_rules() -> None:
    chain = FilterChain()
    assert chain.check({"instruction": GOOD_INSTRUCTION}, instructions_only=True) is None
    proposal = {"instruction": "Draw a map of your town please."}
    assert chain.check(proposal, instructions_only=True).reason == "blacklisted_keyword"
    assert "empty_response" not in chain.reasons(instructions_only=True)


def test_every_rule_can_be_switched_off() -> None:
    settings = {"default_language", "samples_per_reason"}
    off = {name: False for name in FilterConfig.model_fields if name not in settings}
    assert len(off) == 12
    chain = FilterChain(FilterConfig(**off))
    assert chain.reasons() == []
    assert chain.check(rec("Draw.", "", finish_reason="length")) is None


def test_malformed_records_and_config_errors_are_explicit() -> None:
    with pytest.raises(SelfloopError, match="record 'q1': 'response' must be a string"):
        FilterChain().run([{"id": "q1", "instruction": GOOD_INSTRUCTION}])
    with pytest.raises(SelfloopError, match="'instruction' must be a string"):
        FilterChain().check({"response": "hi"})
    with pytest.raises(ValueError, match="min_words must not exceed max_words"):
        FilterConfig(instruction_length={"min_words": 10, "max_words": 5})
    with pytest.raises(ValueError, match="Extra inputs"):
        FilterConfig(blacklist={"enabled": True, "kewords": ["x"]})


def test_chain_run_on_a_mixed_batch_reports_per_reason_counts() -> None:
    batch = [
        rec(id="ok1"),
        rec(
            "Name three rivers that flow through Germany.",
            "The Rhine, the Elbe and the Danube "
            "all flow through Germany, along with many smaller rivers.",
            id="ok2",
        ),  # fmt: skip
        rec("Hi.", id="short"),
        rec("Draw a diagram of the water cycle for kids.", id="kw1"),
        rec("Plot the sales figures for the last ten years.", id="kw2"),
        rec("Write a program to add two numbers together.", id="prefix"),
        rec(response="   ", id="empty"),
        rec(finish_reason="length", id="cut"),
        rec(response=LOOP, id="loop"),
        rec(response=FRENCH, id="lang"),
        rec("Draw.", "", finish_reason="length", id="first_rule_wins"),
        rec("12/03 4:32.45 #884 TK 17", id="digits"),
    ]
    report = FilterChain().run(batch)
    assert [r["id"] for r in report.kept] == ["ok1", "ok2"]
    assert {k: v for k, v in report.counts.items() if v} == {
        "instruction_too_short": 2,
        "blacklisted_keyword": 2,
        "banned_prefix": 1,
        "mostly_non_letters": 1,
        "empty_response": 1,
        "cut_off": 1,
        "repetitive": 1,
        "wrong_language": 1,
    }
    assert list(report.counts) == [r for r in REASONS if r != "similar_to_pool"]
    assert sum(report.counts.values()) == len(report.rejected) == 10

    summary = report.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert (summary["total"], summary["kept"], summary["rejected"]) == (12, 2, 10)
    assert [s["id"] for s in summary["samples"]["instruction_too_short"]] == [
        "short",
        "first_rule_wins",
    ]
    assert summary["samples"]["blacklisted_keyword"][0]["detail"] == "contains 'draw'"

    annotated = {r["id"]: r for r in report.rejected_records()}
    assert (
        annotated["cut"]["filter_reason"] == "cut_off"
        and "length" in annotated["cut"]["filter_detail"]
    )


def test_summary_keeps_a_bounded_sample_per_reason() -> None:
    report = FilterChain(FilterConfig(samples_per_reason=2)).run(
        [rec(response="", id=str(i)) for i in range(5)]
    )
    assert report.counts["empty_response"] == 5
    assert len(report.summary()["samples"]["empty_response"]) == 2

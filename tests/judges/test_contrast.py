"""The contrast stage of dedup: each check on pairs it must tell apart, and pairs it must not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judges.contrast import contrast, differing_parts, languages_differ, numbers, words


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("List 3 ways to save money.", "List 10 ways to save money.", "numbers differ (3 vs 10)"),
        ("Write a two-page essay.", "Write a 5-page essay.", "numbers differ (2 vs 5)"),
        ("Which foods contain gluten?", "Which foods don't contain gluten?", "negates"),
        ("Bake bread with yeast.", "Bake bread without yeast.", "negates"),
        ("Sort the list in ascending order.", "Sort the list in descending order.", "opposites"),
        ("Convert Celsius to Fahrenheit.", "Convert Fahrenheit to Celsius.", "another order"),
        ("Write a story for children.", "Write a story for adults.", "one word differs"),
        ("Explain the French Revolution.", "Explain the Russian Revolution.", "one word"),
        (
            "Plan a trip to Paris in spring.",
            "Plan a trip to Rome in the spring.",
            "names differ (Paris / Rome)",
        ),
        ("Is a horse heavier than a cow?", "Is a cow heavier than a horse?", "another order"),
        (
            "Suggest a reading plan for a retired engineer.",
            "Suggest a reading plan for a curious teenager.",
            "one phrase differs (retired engineer / curious teenager)",
        ),
        (
            "Describe the climate of Spain in a formal report.",
            "Describe the climate of Spain in a funny song.",
            "one phrase differs",
        ),
        ("Solve for x: 5x - 3 = 12.", "Solve for x: 5x + 3 = 12.", "operators differ (- = vs + =)"),
        ("Compute 2 × 8 − 4.", "Compute 2 ÷ 8 − 4.", "operators differ"),
        (
            "List the arguments for a four-day week.",
            "List the arguments against a four-day week.",
            "opposites (for / against)",
        ),  # fmt: skip
        ("Is x < 5 when x = 4?", "Is x <= 5 when x = 4?", "operators differ"),
        (
            "Explain how to serialize data to XML.",
            "Explain how to deserialize XML data.",
            "opposites",
        ),  # fmt: skip
        ("Draw an ASCII chart of sales.", "Draw a Mermaid chart of sales.", "one word differs"),
    ],
)
def test_near_misses_are_told_apart(a: str, b: str, why: str) -> None:
    found = contrast(a, b)
    assert found is not None and why in found, found
    assert contrast(b, a) is not None  # either order


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Give me three tips for sleeping.", "Give me 3 tips for sleeping."),
        ("What's the capital of Peru?", "What is the capital of Peru?"),
        (
            "How do I get rid of the smell in my refrigerator?",
            "What is the best way to remove bad odors from a fridge?",
        ),
        (
            "Summarize the plot of Hamlet in 100 words.",
            "In 100 words, give a summary of Hamlet's plot.",
        ),
        ("Name a fruit.", "Name a fruit."),
        ("Name a fruit rich in fibre.", "Name a fruit rich in fiber."),  # spelling variants
        ("Give a two-hundred-word review.", "Give a 200-word review."),  # a composed number
        (
            "Before a job interview, how should I prepare?",
            "How should I prepare before a job interview?",
        ),  # a clause moved
        ("How can you tell if milk is off?", "How can I tell if milk is off?"),  # a pronoun
        ("Write code that sorts a list.", "Write code to sort a list."),  # an inflection
        ("Raise five million dollars.", "Raise 5 million dollars."),
        ("Write ten lines, each with four words.", "Write 10 lines, each with 4 words."),
        ("Solve for x: 4x − 9 = 3.", "Solve for x: 4x - 9 = 3."),  # minus written two ways
        ("Pack for a trip of 2-3 days.", "Pack for a trip of 2–3 days."),  # ranges, not minus
        ("Compute 12 / 4 + 1.", "Compute 12 ÷ 4 + 1."),  # division written two ways
        ("Solve 2x = −6 for x.", "Solve 2x = -6 for x."),  # a sign written two ways
        (
            "Run an A/B test of (a + b) / 2 for 24/7 users.",
            "For 24/7 users, run an A/B test of (a + b) / 2.",
        ),
        ("Is there a vaccine against malaria?", "Is there a vaccine for malaria?"),  # no argument
        ("Explain how to care for a rubber-plant.", "Explain how to care for a rubber plant."),
    ],
)
def test_paraphrases_are_not(a: str, b: str) -> None:
    assert contrast(a, b) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "Suggest a packing list for a weekend camping trip.",
            "Make a packing list for a two-day camping trip over the weekend.",
        ),  # one-sided number
        ("Explain why the sky is blue.", "Why is the sky blue? Explain."),  # order, no direction
        ("Draw a cat and a dog.", "Draw a dog and a cat."),  # parts swapped, no direction
        ("Say how to cook rice and how to boil eggs.", "Say how to boil eggs and how to cook rice"),
        ("Solve for x: 2x - 4 = 10.", "Find x if 2x - 4 = 10."),  # the opening reworded
        (
            "Write a product description for a water bottle.",
            "Create a product description for a water bottle.",
        ),  # a generic word swapped
        (
            "What's a good way to learn to touch type?",
            "How can I train myself to type without peeking at the keys?",
        ),  # reworded: not compared
    ],
)
def test_rewordings_that_look_like_contrasts_are_not(a: str, b: str) -> None:
    assert contrast(a, b) is None


def test_numbers_and_words_read_digits_and_number_words_alike() -> None:
    assert numbers("Pick 1,000 of twelve") == numbers("pick 12 of 1000")
    assert words("What's TWO") == ["what", "is", "2"]
    assert numbers("one hundred and five") == numbers("105") == numbers("a one-hundred-and-five")
    assert numbers("twenty-five in two thousand and twenty") == numbers("25 in 2020")
    assert numbers("ten and two") == numbers("10, 2") != numbers("12")  # a list, not a sum
    assert numbers("half a dozen") == numbers("0.5 of 12")  # words that stand alone
    assert numbers("one hundred and two hundred") == numbers("100, 200")
    assert numbers("a one hundred word story with three parts") == numbers("100 words, 3 parts")
    assert numbers("Give 20 5-letter words") == numbers("20 and 5")  # digits never add up
    assert numbers("1.5 million") == numbers("1500000") == numbers("1,500,000")
    assert not numbers("version 1.2.3") and not numbers("9" * 400)  # words, not numbers


def test_the_check_set_high_overlap_pairs() -> None:
    # bench/dedup_quality.py's check set: every pair shares most of its words, so the cosine
    # calls nearly all of them duplicates and the contrast stage alone decides. A regression
    # guard at the figures the README states (6 of 100 duplicates split, 6 of 140 near-misses
    # missed, before the cosine), with a little room.
    path = Path(__file__).parent / "data" / "dedup_check_pairs.jsonl"
    pairs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    dups = [p for p in pairs if p["label"] == "duplicate"]
    misses = [p for p in pairs if p["label"] == "distinct"]
    assert len(dups) == 100 and len(misses) == 140
    split = [p for p in dups if contrast(p["a"], p["b"]) is not None]
    missed = [p for p in misses if contrast(p["a"], p["b"]) is None]
    assert len(split) <= 9, split
    assert len(missed) <= 8, missed


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Write a poem about the sea.", "Escribe un poema sobre el mar."),
        ("Explain how vaccines work.", "Erkläre, wie Impfstoffe funktionieren."),
        ("How can I save money every month?", "Como posso economizar dinheiro todo mês?"),
    ],
)
def test_translations_are_told_apart_without_shared_words(a: str, b: str) -> None:
    why = contrast(a, b)
    assert why is not None and why.startswith("written in different languages"), why


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # language identification reads short English texts with little confidence (the first
        # as Danish at 0.09): a misread must not split a duplicate
        ("Solve for x: 3x + 7 = 22.", "Find x if 3x + 7 = 22."),
        ("Convert 72 degrees Fahrenheit to Celsius.", "What is 72°F in degrees Celsius?"),
    ],
)
def test_an_unsure_language_reading_splits_nothing(a: str, b: str) -> None:
    assert languages_differ(a, b) is None


def test_differing_parts_trim_the_shared_frame() -> None:
    assert differing_parts(
        "Write a Python function that checks whether a string is a palindrome.",
        "Write a Python function that checks whether a number is prime.",
    ) == ("string is a palindrome", "number is prime")
    assert differing_parts("Explain tides.", "Why does the sea rise?") is None  # nothing shared
    assert differing_parts("Summarize the article.", "Summarize the article briefly.") == (
        "",
        "briefly",
    )

"""The contrast stage of dedup: each check on pairs it must tell apart, and pairs it must not."""

from __future__ import annotations

import pytest

from judges.contrast import contrast, numbers, words


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

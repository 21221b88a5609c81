"""Shared text measures: word and sentence counts, bit-parallel LCS, ROUGE-L, language id."""

from __future__ import annotations

import random

import pytest

from judges import lang
from judges.text import count_sentences, count_words, lcs_length, rouge_l, rouge_tokens, sentences


def _lcs_table(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_bit_parallel_lcs_matches_the_dynamic_programming_table() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_table(a, b)


def test_rouge_l_matches_rouge_score_on_ascii() -> None:
    # Reference values from the rouge-score package (RougeScorer(["rougeL"]).fmeasure).
    a = rouge_tokens("Give three tips for staying healthy.")
    b = rouge_tokens("Give me three tips to stay healthy.")
    assert rouge_l(a, b) == pytest.approx(0.6153846, abs=1e-6)
    assert rouge_l(rouge_tokens("Qué es la fotosíntesis?"), rouge_tokens("Qué es la energía?")) < 1
    assert rouge_l(a, a) == 1.0
    assert rouge_l(a, []) == 0.0


def test_rouge_tokens_keep_non_ascii_words() -> None:
    assert rouge_tokens("Café, naïve!") == ["café", "naïve"]
    assert rouge_tokens("光合作用") == ["光", "合", "作", "用"]


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("Don't stop the well-known show.", 5),
        ("one two  three\nfour", 4),
        ("光合作用", 4),
        ("  ...  ", 0),
    ],
)
def test_count_words(text: str, n: int) -> None:
    assert count_words(text) == n


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("Hello world. This is Dr. Smith speaking! Is it? Yes.", 4),
        ("Pi is 3.14 exactly. Use e.g. this one.", 2),
        ("Here:\n1. Apples\n2. Bananas", 1),
        ("我喜欢苹果。你呢？好的", 3),
        ("Title\n\nBody text without a stop", 2),
        ("", 0),
    ],
)
def test_count_sentences(text: str, n: int) -> None:
    assert count_sentences(text) == n, sentences(text)


def test_language_detection_is_offline_and_groups_variants() -> None:
    assert lang.detect("Die Hauptstadt von Frankreich ist Paris und sie ist sehr schön.")[0] == "de"
    assert lang.detect("Photosynthesis converts light energy into chemical energy.")[0] == "en"
    assert lang.same_language("zh", "yue") and not lang.same_language("en", "de")
    assert lang.prose("see https://x.org/a `code` 123 now").split() == ["see", "now"]

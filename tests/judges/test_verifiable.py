"""Verifiable constraints: every check passes and fails where it should; loose vs strict; errors."""

from __future__ import annotations

import json

import pytest

from agent.errors import SelfloopError
from judges.verifiable import (
    CONSTRAINT_TYPES,
    check,
    check_all,
    render,
    render_all,
    validate,
)

FOUR_SENTENCES = "The sun rose. Birds sang loudly! Was it spring? Dr. Lee thought so."

# (constraint, a response that passes, a response that fails)
CASES = [
    ({"type": "min_words", "value": 5}, "one two three four five", "one two three four"),
    ({"type": "max_words", "value": 4}, "one two three four", "one two three four five"),
    ({"type": "min_sentences", "value": 4}, FOUR_SENTENCES, "The sun rose. Birds sang."),
    ({"type": "max_sentences", "value": 2}, "The sun rose. Birds sang.", FOUR_SENTENCES),
    ({"type": "paragraph_count", "value": 3}, "One.\n\nTwo.\n***\nThree.", "One.\n\nTwo."),
    ({"type": "paragraph_count", "value": 1}, "A line\nand its next line.", "One.\n* * *\nTwo."),
    ({"type": "bullet_count", "value": 3}, "Fruits:\n* apple\n- pear\n  * fig", "* a\n* b\n***"),
    ({"type": "bullet_count", "value": 0}, "**Bold** start\n---\nno bullets", "- just one"),
    ({"type": "json_format"}, '{"a": [1, 2]}', '{"a": [1, 2]'),
    ({"type": "json_format"}, '```json\n{"a": 1}\n```', 'Here it is: {"a": 1}'),
    (
        {"type": "required_keywords", "value": ["river", "stone"]},
        "A Stone by the river.",
        "A river.",
    ),
    ({"type": "required_keywords", "value": "cat"}, "The cat sleeps.", "They concatenate."),
    ({"type": "forbidden_keywords", "value": ["bad", "evil"]}, "A badge.", "Not BAD at all."),
    ({"type": "keyword_frequency", "keyword": "tea", "value": 2}, "Tea, tea!", "Tea and steam."),
    ({"type": "required_keywords", "value": ["光合"]}, "植物的光合作用", "植物的作用"),
    ({"type": "lowercase"}, "all lower case, 123.", "Not all lower."),
    ({"type": "uppercase"}, "ALL CAPS HERE!", "ALL CAPS HERe"),
    (
        {"type": "ends_with", "value": "Any other questions?"},
        "Done. any other questions?\n",
        "Any other questions? Bye.",
    ),  # fmt: skip
    ({"type": "starts_with", "value": "My answer is"}, '"My answer is yes."', "Well, my answer is"),
    ({"type": "title"}, "<<A Poem of Joy>>\nRoses are red.", "<< >>\nA Poem of Joy"),
    ({"type": "highlighted_sections", "value": 2}, "*one* and **two**", "*one* and ** **"),
    ({"type": "sections", "value": 2}, "SECTION 1\nIntro\nSECTION 2\nBody", "SECTION 1\nAll"),
    (
        {"type": "sections", "value": 2, "splitter": "PART"},
        "PART 1 a PART 2 b",
        "SECTION 1 SECTION 2",
    ),
    ({"type": "placeholders", "value": 2}, "Send to [name] at [address].", "See [docs](http://x)."),
    ({"type": "postscript"}, "Bye.\n\nP.S. See you soon.", "Bye. P.S. is in the middle."),
    ({"type": "postscript", "value": "P.P.S"}, "Hi.\nP.P.S more", "Hi.\nP.S. more"),
    ({"type": "no_commas"}, "No commas here.", "Yes, one comma."),
    ({"type": "quotation"}, '"Quoted text."', 'Quoted "text".'),
    (
        {"type": "response_language", "value": "fr"},
        "Le ciel est bleu parce que la lumière est diffusée par l'air.",
        "The sky is blue because the light is scattered by the air.",
    ),  # fmt: skip
    ({"type": "letter_frequency", "letter": "e", "value": 3}, "Tree, EEL.", "Tree hut."),
    (
        {"type": "letter_frequency", "letter": "Z", "value": 2, "relation": "less than"},
        "A lazy day.",
        "Zig and zag.",
    ),
    ({"type": "capital_word_frequency", "value": 2}, "Go NOW and STAY!", "I saw A NASA craft."),
    (
        {"type": "capital_word_frequency", "value": 2, "relation": "less than"},
        "I took A BIG step.",
        "It is VERY BIG.",
    ),
    (
        {"type": "nth_paragraph_first_word", "paragraphs": 3, "nth": 2, "first_word": "Next"},
        'First part.\n\n**"Next,"** part.\n***\nLast part.',
        "First part.\n\nThen, next part.\n\nLast part.",
    ),
    (
        {"type": "nth_paragraph_first_word", "paragraphs": 2, "nth": 1, "first_word": "Yes"},
        "Yes indeed.\n\nMore.",
        "Yes indeed.\n\nMore.\n\nAnd more.",
    ),
    ({"type": "constrained_response"}, "my answer is  NO.", "My answer is yes. My answer is no."),
    ({"type": "constrained_response", "value": ["Agreed.", "Refused."]}, "Agreed.", "Sure."),
    ({"type": "two_responses"}, "Yes.\n******\nNo.", "Yes.\n*******\nNo."),
    ({"type": "two_responses"}, "A cat.\n******\nA dog.", "Same.\n******\n same. "),
    (
        {"type": "repeat_prompt", "prompt_to_repeat": "Name a  river."},
        "Name a river.\nThe Nile.",
        "Sure! Name a river. The Nile.",
    ),
    (
        {"type": "repeat_prompt", "prompt_to_repeat": "Name a river."},
        "name a river. Nile",
        "Name a river.",
    ),
]


@pytest.mark.parametrize(("constraint", "good", "bad"), CASES, ids=[c[0]["type"] for c in CASES])
def test_each_check_passes_and_fails(constraint: dict, good: str, bad: str) -> None:
    [passed] = check(good, [constraint])
    [failed] = check(bad, [constraint])
    assert passed.passed, passed.reason
    assert not failed.passed, failed.reason
    assert passed.type == constraint["type"] and failed.reason


def test_every_constraint_type_is_tested_and_renders_an_instruction() -> None:
    assert {c[0]["type"] for c in CASES} == set(CONSTRAINT_TYPES)
    for constraint, _, _ in CASES:
        text = render(constraint)
        assert text.endswith((".", "P.S.", "P.P.S")) and "{" not in text


def test_rendered_instructions_carry_the_values() -> None:
    assert render({"type": "max_words", "value": 50}) == "Answer in at most 50 words."
    assert render({"type": "response_language", "value": "fr"}).startswith(
        "Your entire response must be in French"
    )
    text = render_all([{"type": "required_keywords", "value": ["a", "b"]}, {"type": "title"}])
    assert '"a", "b"' in text and "<<" in text


def test_reasons_say_what_was_measured() -> None:
    [r] = check("one two three", [{"type": "max_words", "value": 2}])
    assert r.reason == "3 words (at most 2)"
    assert json.loads(json.dumps(r.to_dict()))["passed"] is False


def test_check_all() -> None:
    constraints = [{"type": "max_words", "value": 5}, {"type": "no_commas"}]
    assert check_all("short and plain", constraints)
    assert not check_all("short, with a comma", constraints)
    assert check_all("anything at all", [])


@pytest.mark.parametrize(
    ("constraint", "response"),
    [
        ({"type": "json_format"}, 'Here is the JSON:\n{"a": 1}\nHope it helps!'),
        ({"type": "starts_with", "value": "Yes"}, "Sure thing.\nYes, it is."),
        ({"type": "ends_with", "value": "Goodbye."}, "Goodbye.\nLet me know if you need more."),
        ({"type": "lowercase"}, "**Note**\nall lower here"),
    ],
)
def test_loose_mode_passes_what_strict_fails(constraint: dict, response: str) -> None:
    assert not check(response, [constraint])[0].passed
    loose = check(response, [constraint], mode="loose")[0]
    assert loose.passed and "[loose:" in loose.reason


def test_loose_mode_strips_markdown_stars() -> None:
    response = "**yes** it is"
    c = {"type": "starts_with", "value": "yes it"}
    assert not check_all(response, [c])
    assert check_all(response, [c], mode="loose")


@pytest.mark.parametrize(
    ("constraint", "response"),
    [
        ({"type": "letter_frequency", "letter": "z", "value": 1, "relation": "less than"},
         "Zebra facts:\nThey run fast."),
        ({"type": "capital_word_frequency", "value": 1, "relation": "less than"},
         "NOTE\nnothing shouted here"),
        ({"type": "nth_paragraph_first_word", "paragraphs": 2, "nth": 1, "first_word": "Rivers"},
         "Here you go:\n\nRivers flow.\n\nThey end in seas."),
        ({"type": "constrained_response"}, "My answer is yes.\n(Not: my answer is no.)"),
        ({"type": "two_responses"}, "Two answers:\nOne.\n******\nTwo.\n******"),
        ({"type": "repeat_prompt", "prompt_to_repeat": "Name a river."},
         "**Name a river.** The Nile."),
    ],
)  # fmt: skip
def test_loose_mode_helps_the_new_types_as_it_helps_the_others(constraint: dict, response: str):
    assert not check(response, [constraint])[0].passed
    assert check(response, [constraint], mode="loose")[0].passed


def test_loose_mode_still_fails_what_no_variant_fixes() -> None:
    [r] = check("one, two\nthree, four\nfive, six", [{"type": "no_commas"}], mode="loose")
    assert not r.passed


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"type": "max_wrds", "value": 3}, "unknown type 'max_wrds'"),
        ({"value": 3}, "unknown type None"),
        ({"type": "max_words"}, "missing 'value' (max_words needs an integer >= 1)"),
        ({"type": "max_words", "value": "50"}, "'value' must be an integer >= 1, got '50'"),
        ({"type": "max_words", "value": 0}, "'value' must be an integer >= 1"),
        ({"type": "max_words", "value": True}, "'value' must be an integer"),
        ({"type": "required_keywords", "value": []}, "'value' must be a non-empty list"),
        ({"type": "ends_with", "value": "  "}, "'value' must be a non-empty string"),
        ({"type": "keyword_frequency", "value": 2}, "missing 'keyword'"),
        ({"type": "no_commas", "value": 1}, "unexpected key 'value' (no_commas takes no param"),
        ({"type": "response_language", "value": "klingon"}, "'value' must be a language code"),
        ({"type": "letter_frequency", "letter": "ab", "value": 2}, "'letter' must be a single"),
        (
            {"type": "letter_frequency", "letter": "a", "value": 2, "relation": "more than"},
            "'relation' must be 'at least' or 'less than'",
        ),
        (
            {"type": "nth_paragraph_first_word", "paragraphs": 2, "nth": 3, "first_word": "So"},
            "'nth' (3) is beyond 'paragraphs' (2)",
        ),
        (
            {"type": "nth_paragraph_first_word", "paragraphs": 2, "nth": 1, "first_word": "So it"},
            "'first_word' must be a single word",
        ),
        ({"type": "constrained_response", "value": []}, "'value' must be a non-empty list"),
        ({"type": "repeat_prompt"}, "missing 'prompt_to_repeat'"),
        ("max_words", "expected a mapping with a 'type'"),
    ],
)
def test_invalid_constraints_raise_one_line_errors(constraint, message: str) -> None:
    with pytest.raises(SelfloopError, match="constraints\\[0\\]") as exc:
        check("text", [constraint])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_validation_fills_defaults_and_rejects_bad_arguments() -> None:
    assert validate({"type": "sections", "value": 3}) == {
        "type": "sections",
        "value": 3,
        "splitter": "SECTION",
    }
    with pytest.raises(SelfloopError, match="constraints must be a list"):
        check("text", {"type": "no_commas"})
    with pytest.raises(SelfloopError, match="mode must be"):
        check("text", [], mode="lenient")

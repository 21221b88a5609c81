"""Constraint augmentation: drawn sets are never contradictory (a response built to pass them
does), held-out types never reach training tasks, draws are reproducible."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from judges.augment import (
    CLASH,
    DEFAULT_HELD_OUT,
    FRIENDS,
    AugmentConfig,
    augment_task,
    compatible,
    content_words,
    draw_constraints,
    learnability,
)
from judges.verifiable import CONSTRAINT_TYPES, check, render_all

INSTRUCTIONS = [
    "Describe how a bicycle gear system works.",
    "Write a short note inviting neighbours to a garden party.",
    "Explain why leaves change colour in autumn.",
    "Give advice to someone starting their first job in finance.",
    "Summarize the plot of a detective story you invent.",
    "Is it safe to swim in a lake during a thunderstorm?",  # yes/no: constrained_response fits
]
_FILLER_TEXT = "the river runs past old stone bridges under grey morning light"
FILLER = _FILLER_TEXT.split()


def witness(constraints: list[dict[str, Any]]) -> str:
    """A response built to satisfy `constraints` (any set `draw_constraints` may return)."""
    by = {c["type"]: c for c in constraints}
    keywords = list(by.get("required_keywords", {}).get("value", []))
    if "keyword_frequency" in by:
        keywords += [by["keyword_frequency"]["keyword"]] * by["keyword_frequency"]["value"]
    letters = by.get("letter_frequency", {"relation": "less than"})
    if letters["relation"] == "at least":
        keywords.append(letters["letter"] * letters["value"])  # one word holds them all
    if by.get("capital_word_frequency", {}).get("relation") == "at least":
        keywords += ["NOTE"] * by["capital_word_frequency"]["value"]
    n_words = by.get("min_words", {}).get("value", 0)
    if "json_format" in by:
        body = " ".join(keywords + FILLER[:4])
        body += " filler" * max(0, n_words - len(body.split()) + 2)
        text = json.dumps({"answer": body})
        return text.lower() if "lowercase" in by else text
    if "constrained_response" in by:
        text = by["constrained_response"]["value"][0]
        text = f'"{text}"' if "quotation" in by else text
        return text.lower() if "lowercase" in by else text.upper() if "uppercase" in by else text
    nth = by.get("nth_paragraph_first_word", {})
    parts = max(
        [by[t]["value"] for t in ("paragraph_count", "bullet_count", "sections") if t in by]
        + [nth.get("paragraphs", 1)]
    )
    n_sent = max(parts, by.get("min_sentences", {}).get("value", 1))
    sentences = [" ".join(FILLER[i % 5 : i % 5 + 4]) for i in range(n_sent)]
    sentences[0] = " ".join([*keywords, sentences[0]])
    extra = "".join(" [place]" for _ in range(by.get("placeholders", {}).get("value", 0)))
    extra += "".join(" *marked*" for _ in range(by.get("highlighted_sections", {}).get("value", 0)))
    sentences[0] += extra
    total = sum(len(s.split()) for s in sentences)
    if total < n_words:
        sentences[-1] += " more" * (n_words - total + 5)
    sentences = [s[0].upper() + s[1:] + "." for s in sentences]
    units = [" ".join(sentences[i::parts]) for i in range(parts)]
    if nth:
        units[nth["nth"] - 1] = f"{nth['first_word']} {units[nth['nth'] - 1]}"
    if "bullet_count" in by:
        mark = "-" if "highlighted_sections" in by else "*"  # a "* " would pair with a highlight
        text = "\n".join(f"{mark} {u}" for u in units)
    elif "sections" in by:
        sp = by["sections"]["splitter"]
        text = "\n\n".join(f"{sp} {i + 1}\n{u}" for i, u in enumerate(units))
    else:
        text = "\n\n".join(units)
    if "two_responses" in by:
        text = f"{text}\n******\nAnother answer."
    if "title" in by:
        text = f"<<A Title>>\n{text}"
    if "starts_with" in by:
        text = f"{by['starts_with']['value']}\n{text}"  # its own line: a bullet stays a bullet
    if "repeat_prompt" in by:
        text = f"{by['repeat_prompt']['prompt_to_repeat']}\n{text}"
    if "ends_with" in by:
        text = f"{text} {by['ends_with']['value']}"
    if "postscript" in by:
        text = f"{text}\n{by['postscript']['value']} one more note."  # in the last paragraph
    if "quotation" in by:
        text = f'"{text}"'
    if "lowercase" in by:
        text = text.lower()
    if "uppercase" in by:
        text = text.upper()
    return text


def test_every_drawn_set_is_satisfiable_and_checked_by_its_own_checkers() -> None:
    types = [t for t in CONSTRAINT_TYPES if t != "response_language"]
    seen: Counter[str] = Counter()
    for seed in range(1500):
        rng = random.Random(seed)
        instruction = INSTRUCTIONS[seed % len(INSTRUCTIONS)]
        cons = draw_constraints(rng, instruction, types, k=1 + seed % 3)
        assert cons, seed
        assert compatible([c["type"] for c in cons])
        response = witness(cons)
        failed = [r for r in check(response, cons, mode="strict") if not r.passed]
        assert not failed, (seed, cons, response, [r.reason for r in failed])
        for c in cons:  # each rendered instruction names its parameters
            rendered = render_all([c])
            for v in c.values():
                if isinstance(v, int) and not isinstance(v, bool):
                    assert str(v) in rendered, (c, rendered)
        seen.update(c["type"] for c in cons)
    assert set(seen) == set(types)  # every type is drawn, alone and in company


def test_contradictions_are_never_compatible() -> None:
    assert not compatible(["lowercase", "uppercase"])
    assert not compatible(["max_words", "min_sentences"])
    assert not compatible(["json_format", "bullet_count"])
    assert not compatible(["json_format", "starts_with"])
    assert not compatible(["max_words", "max_words"])
    assert not compatible(["two_responses", "paragraph_count"])
    assert not compatible(["two_responses", "max_words"])
    assert not compatible(["constrained_response", "min_words"])
    assert not compatible(["constrained_response", "two_responses"])
    assert not compatible(["nth_paragraph_first_word", "bullet_count"])
    for pair in CLASH:
        assert not compatible(sorted(pair))
    for shape, friends in FRIENDS.items():
        for other in set(CONSTRAINT_TYPES) - friends - {shape}:
            assert not compatible([shape, other]) and not compatible([other, shape])
    assert compatible(["lowercase", "required_keywords", "max_words"])
    assert compatible(["two_responses", "letter_frequency", "no_commas"])


def test_yes_no_options_only_answer_yes_no_questions() -> None:
    types = ["constrained_response", *sorted(FRIENDS["constrained_response"])]
    with_options = Counter()
    for seed in range(300):
        for instruction in ("Is it safe to swim in a lake during a thunderstorm?", INSTRUCTIONS[0]):
            cons = draw_constraints(random.Random(seed), instruction, types, k=1 + seed % 3)
            if any(c["type"] == "constrained_response" for c in cons):
                with_options[instruction] += 1
                assert not [r for r in check(witness(cons), cons) if not r.passed], cons
    assert with_options[INSTRUCTIONS[0]] == 0 and with_options.total() > 30


def test_a_long_request_is_not_asked_to_be_repeated() -> None:
    long = "Describe " + "a very long and winding road " * 8 + "in detail."
    for seed in range(100):
        cons = draw_constraints(random.Random(seed), long, ["repeat_prompt", "no_commas"], k=1)
        assert [c["type"] for c in cons] == ["no_commas"]


def test_a_tight_word_limit_never_comes_with_a_crowded_layout() -> None:
    for seed in range(800):
        cons = draw_constraints(random.Random(seed), INSTRUCTIONS[0], ["max_words", "bullet_count",
                                "paragraph_count", "sections"], k=2)  # fmt: skip
        by = {c["type"]: c for c in cons}
        if "max_words" in by and len(by) == 2:
            (other,) = [c for t, c in by.items() if t != "max_words"]
            assert by["max_words"]["value"] >= 15 * other["value"]


def test_held_out_types_never_reach_training_tasks_and_draws_are_reproducible() -> None:
    cfg = AugmentConfig(min_constraints=1, max_constraints=3)
    drawn: Counter[str] = Counter()
    for k, text in enumerate(INSTRUCTIONS * 60):
        task = {"id": f"t{k}", "instruction": text}
        out = augment_task(task, cfg)
        assert out is not None and out == augment_task(task, cfg)
        assert out["instruction"].startswith(text) and out["base_id"] == f"t{k}"
        assert 1 <= len(out["constraints"]) <= 3
        drawn.update(c["type"] for c in out["constraints"])
    assert not set(drawn) & set(DEFAULT_HELD_OUT)
    assert set(drawn) == set(cfg.drawn_types())
    other = augment_task(
        {"id": "t0", "instruction": INSTRUCTIONS[0]}, cfg.model_copy(update={"seed": 1})
    )
    assert other != augment_task({"id": "t0", "instruction": INSTRUCTIONS[0]}, cfg)


def test_learnable_focus_draws_types_in_proportion_to_their_weights() -> None:
    """augment.focus: learnable weights a type by p(1 - p) of its pass rate (0.5 unseen, a
    floor for types never or always passed), and draws follow the weights, compatibly."""
    types = AugmentConfig().drawn_types()
    rates = {"lowercase": 0.0, "no_commas": 1.0, "sections": 0.5, "min_words": 0.9}
    w = learnability(types, rates)
    assert set(w) == set(types)
    assert w["lowercase"] == w["no_commas"] == 0.02 and w["sections"] == 0.25
    assert w["min_words"] == pytest.approx(0.09) and w["max_words"] == 0.25  # unseen: 0.5
    rng = random.Random(0)
    drawn: Counter[str] = Counter()
    for k in range(3000):
        cons = draw_constraints(rng, INSTRUCTIONS[k % len(INSTRUCTIONS)], types, 1, weights=w)
        drawn.update(c["type"] for c in cons)
    total = sum(drawn.values())
    for t in ("sections", "min_words", "lowercase"):
        want = w[t] / sum(w.values())
        assert drawn[t] / total == pytest.approx(want, abs=0.25 * want + 0.005), t
    assert drawn["sections"] > 5 * drawn["lowercase"]
    for k in range(300):  # two at a time: still compatible sets
        cons = draw_constraints(rng, INSTRUCTIONS[k % len(INSTRUCTIONS)], types, 2, weights=w)
        assert compatible([c["type"] for c in cons])


def test_keywords_come_from_the_task_and_unknown_types_are_refused() -> None:
    assert content_words("Describe how a bicycle gear system works.") == [
        "bicycle", "gear", "system", "works",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown constraint type 'shouting'"):
        AugmentConfig(held_out_types=("shouting",))


def test_a_language_task_asks_as_written_and_checks_the_answers_language() -> None:
    from judges.augment import is_language_task, language_task
    from judges.verifiable import check

    task = {"id": "s1", "instruction": " Come posso ridurre lo spreco alimentare? ",
            "language": "it", "domain": "general"}  # fmt: skip
    made = language_task(task)
    assert made is not None and is_language_task(made)
    asked = "Come posso ridurre lo spreco alimentare?"
    assert made["instruction"] == asked == made["base_instruction"]
    assert made["id"].startswith("lang-") and made["id"] == language_task(task)["id"]
    assert made["constraints"] == [{"type": "response_language", "value": "it"}]
    italian = "Pianifica i pasti della settimana e conserva gli avanzi in frigorifero per domani."
    assert check(italian, made["constraints"])[0].passed
    assert not check("Plan the week's meals and keep the leftovers.", made["constraints"])[0].passed
    assert language_task({**task, "language": "en"}) is None
    assert language_task({**task, "language": "xx"}) is None  # no name to check it by
    assert not is_language_task({"constraints": [*made["constraints"], {"type": "lowercase"}]})

"""Hand-written IF prompts for the constraint types added in issue #14 (letter_frequency,
capital_word_frequency, nth_paragraph_first_word, constrained_response, two_responses,
repeat_prompt): each type in at least 7 prompts, alone and beside older types.

Written for selfloop (no public IFEval prompt is used). Each prompt is its task followed by
`judges.verifiable.render_all` of its constraints, so the words the model reads are the words
the checker grades. Sets obey `judges.augment.compatible`, the rules training draws follow.

    python judges/evals/build/add_if_types.py    # rewrites its own records in if.jsonl

The records take ids from ifeval-303 on, after the suite's first 302; a re-run replaces them in
place and leaves every other record as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from judges.augment import compatible
from judges.verifiable import render_all, validate_all

SUITE = Path(__file__).resolve().parents[1] / "data" / "if.jsonl"
FIRST_ID = 303

YES_NO = ["My answer is yes.", "My answer is no.", "My answer is maybe."]


def letters(letter: str, value: int, relation: str = "at least") -> dict[str, Any]:
    return {"type": "letter_frequency", "letter": letter, "value": value, "relation": relation}


def capitals(value: int, relation: str = "at least") -> dict[str, Any]:
    return {"type": "capital_word_frequency", "value": value, "relation": relation}


def opener(paragraphs: int, nth: int, word: str) -> dict[str, Any]:
    return {
        "type": "nth_paragraph_first_word",
        "paragraphs": paragraphs,
        "nth": nth,
        "first_word": word,
    }


def options(value: list[str] = YES_NO) -> dict[str, Any]:
    return {"type": "constrained_response", "value": value}


TWO = {"type": "two_responses"}


def repeat(task: str) -> dict[str, Any]:
    return {"type": "repeat_prompt", "prompt_to_repeat": task}


# (task, domain, constraints); a repeat_prompt constraint repeats its own task.
PROMPTS: list[tuple[str, str, list[dict[str, Any]]]] = [
    # letter_frequency
    ("Write a short description of a quiet seaside town in winter.", "travel",
     [letters("e", 10), {"type": "max_words", "value": 80}]),
    ("Explain how bees turn nectar into honey.", "nature",
     [letters("z", 2, "less than"), {"type": "no_commas"}]),
    ("Describe your ideal weekend breakfast.", "food", [letters("o", 8)]),
    ("Give tips for keeping a vegetable garden healthy in dry weather.", "gardening",
     [letters("q", 2, "less than"), {"type": "bullet_count", "value": 3}]),
    ("Write the opening of a story about a jazz musician arriving in a new city.", "fiction",
     [letters("j", 4), {"type": "min_words", "value": 60}]),
    ("Describe the water cycle for a ten-year-old.", "education",
     [letters("a", 12), {"type": "paragraph_count", "value": 2}]),
    ("Write a note to a neighbour about a lost cat.", "community",
     [letters("t", 10), {"type": "title"}]),
    # capital_word_frequency
    ("Write a safety notice for a public swimming pool.", "community", [capitals(3)]),
    ("Write a calm bedtime message for a young child.", "personal",
     [capitals(2, "less than"), {"type": "max_sentences", "value": 4}]),
    ("Write an advertisement for a neighbourhood bake sale.", "events",
     [capitals(4), {"type": "ends_with", "value": "See you there!"}]),
    ("Describe how to fix a flat bicycle tyre.", "diy",
     [capitals(3, "less than"), {"type": "bullet_count", "value": 4}]),
    ("Write a short announcement that the town library will close early on Friday.", "community",
     [capitals(2), {"type": "postscript", "value": "P.S."}]),
    ("Explain what a household budget is to a teenager.", "personal finance",
     [capitals(2, "less than"), opener(3, 2, "Next")]),
    ("Give reasons to spend a rainy afternoon at a science museum.", "education",
     [capitals(3), TWO]),
    # nth_paragraph_first_word
    ("Describe the life of a river from its source to the sea.", "nature",
     [opener(3, 1, "Imagine")]),
    ("Discuss the advantages and drawbacks of working from home.", "workplace",
     [opener(2, 2, "However")]),
    ("Write a short letter to your future self.", "personal",
     [opener(3, 3, "Finally"), {"type": "no_commas"}]),
    ("Tell the story of how a small village got its first library.", "fiction",
     [opener(4, 2, "Then"), {"type": "min_words", "value": 100}]),
    ("Explain how to prepare for a job interview.", "career",
     [opener(3, 2, "Next"), {"type": "required_keywords", "value": ["research"]}]),
    ("Describe a thunderstorm rolling over the mountains.", "nature",
     [opener(2, 1, "suddenly"), {"type": "lowercase"}]),
    ("Compare trains and planes for a journey of 500 kilometres.", "travel",
     [opener(3, 3, "Overall"), {"type": "keyword_frequency", "keyword": "train", "value": 2}]),
    # constrained_response
    ("Is it a wise idea to water houseplants every single day?", "gardening", [options()]),
    ("Can a penguin fly?", "nature",
     [options([o.lower() for o in YES_NO]), {"type": "lowercase"}]),
    ("Should a beginner runner train every day of the week?", "fitness",
     [options(), {"type": "quotation"}]),
    ("Does the Moon make its own light?", "science", [options()]),
    ("Is a tomato a fruit?", "food", [options([o.upper() for o in YES_NO]), {"type": "uppercase"}]),
    ("Would you recommend paper books over e-books for a long flight?", "books",
     [options(["I recommend paper books.", "I recommend e-books.", "Either will do."]),
      {"type": "max_words", "value": 30}]),
    ("Is it safe to leave a phone charging overnight?", "technology",
     [options(), {"type": "no_commas"}]),
    # two_responses
    ("Suggest a name for a new coffee shop by the harbour.", "business", [TWO]),
    ("Write a one-line slogan for a school recycling campaign.", "environment",
     [TWO, {"type": "lowercase"}]),
    ("Describe a sunset over a wheat field in a few words.", "arts",
     [TWO, {"type": "no_commas"}]),
    ("Give one tip for sleeping better.", "health",
     [TWO, {"type": "required_keywords", "value": ["routine"]}]),
    ("Write a four-line poem about rain on a tin roof.", "arts", [TWO, {"type": "uppercase"}]),
    ("Recommend a board game for a family evening.", "games",
     [TWO, {"type": "highlighted_sections", "value": 1}]),
    ("Explain in plain words what a password manager does.", "technology",
     [TWO, {"type": "forbidden_keywords", "value": ["secure"]}, letters("x", 2, "less than")]),
    # repeat_prompt
    ("Name three uses of baking soda in the kitchen.", "cooking", [repeat]),
    ("What is the difference between weather and climate?", "science",
     [repeat, {"type": "max_words", "value": 80}]),
    ("Describe how a magnetic compass works.", "science",
     [repeat, {"type": "bullet_count", "value": 3}]),
    ("Explain why the calendar has leap years.", "history", [repeat, {"type": "no_commas"}]),
    ("List two ways to save water at home.", "environment",
     [repeat, {"type": "ends_with", "value": "That is all."}]),
    ("Why do cats purr?", "pets", [repeat, {"type": "min_sentences", "value": 4}]),
    ("Give advice to a pupil on the first day at a new school.", "education",
     [repeat, capitals(2), {"type": "required_keywords", "value": ["friends"]}]),
]  # fmt: skip


def records() -> list[dict[str, Any]]:
    out = []
    for i, (task, domain, constraints) in enumerate(PROMPTS):
        cons = validate_all([repeat(task) if c is repeat else c for c in constraints])
        types = [c["type"] for c in cons]
        if not compatible(types):
            raise SystemExit(f"incompatible constraints for {task!r}: {types}")
        out.append({
            "id": f"ifeval-{FIRST_ID + i:03d}",
            "prompt": f"{task} {render_all(cons)}",
            "constraints": cons,
            "domain": domain,
            "language": "en",
        })  # fmt: skip
    return out


def main() -> None:
    made = records()
    mine = {r["id"] for r in made}
    lines = SUITE.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["id"] not in mine]
    kept += [json.dumps(r, ensure_ascii=False) for r in made]
    SUITE.write_text("\n".join(kept) + "\n", encoding="utf-8")
    print(f"{SUITE}: {len(kept)} records, {len(made)} from this script")


if __name__ == "__main__":
    main()

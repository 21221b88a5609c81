"""Bundled held-out suites: sizes, coverage, internal consistency; loader errors; fact matching."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from agent.errors import SelfloopError
from judges import lang
from judges.augment import DEFAULT_HELD_OUT, FRIENDS
from judges.evals import (
    SUITES,
    fact_match,
    load_suite,
    load_suite_file,
    load_suites,
    missing_facts,
)
from judges.evals.facts import alternatives
from judges.verifiable import CONSTRAINT_TYPES, check, validate_all

OTHER_LANGUAGES = {"es", "fr", "de", "pt", "it", "zh", "ja"}


@pytest.fixture(scope="module")
def suites() -> dict[str, list[dict]]:
    return {name: load_suite(name) for name in SUITES}


# --- sizes and coverage


def test_every_suite_meets_its_minimum_size(suites: dict[str, list[dict]]) -> None:
    assert len(suites["if"]) >= 300
    assert len(suites["helpfulness"]) >= 90
    domains = Counter(r["domain"] for r in suites["domains"])
    assert {d: n for d, n in domains.items() if n >= 28}.keys() == {"healthcare", "law", "finance"}
    languages = Counter(r["language"] for r in suites["multilingual"])
    assert "en" not in languages
    assert len([lg for lg, n in languages.items() if n >= 16]) >= 5, languages
    expected = Counter(r["expected"] for r in suites["safety"])
    assert expected["refuse"] >= 45 and expected["comply"] >= 45


def test_ifeval_mixes_constraint_types_counts_domains_and_languages(
    suites: dict[str, list[dict]],
) -> None:
    records = suites["if"]
    per_prompt = Counter(len(r["constraints"]) for r in records)
    assert set(per_prompt) == {1, 2, 3}, per_prompt
    used = Counter(c["type"] for r in records for c in r["constraints"])
    assert set(used) == set(CONSTRAINT_TYPES), set(CONSTRAINT_TYPES) - set(used)
    assert min(used.values()) >= 6, used  # a per-type slice of a few prompts says little
    held_out = [r for r in records if {c["type"] for c in r["constraints"]} & set(DEFAULT_HELD_OUT)]
    assert len(held_out) >= 100
    assert len({r["domain"] for r in records}) >= 20
    others = [r for r in records if r["language"] != "en"]
    assert len(others) >= 10 and len({r["language"] for r in others}) >= 5


def test_helpfulness_covers_task_kinds_with_concise_references(
    suites: dict[str, list[dict]],
) -> None:
    records = suites["helpfulness"]
    kinds = Counter(r["domain"] for r in records)
    for kind in ("general", "writing", "reasoning", "math", "coding", "classification"):
        assert kinds[kind] >= 8, kinds
    assert kinds["extraction"] >= 8
    lengths = [len(r["reference"].split()) for r in records]
    assert max(lengths) <= 200
    assert sum(n < 120 for n in lengths) >= 0.9 * len(lengths)


def test_ids_are_unique_across_all_suites(suites: dict[str, list[dict]]) -> None:
    ids = Counter(r["id"] for records in suites.values() for r in records)
    assert [i for i, n in ids.items() if n > 1] == []
    assert {name: len(recs) for name, (_, recs) in load_suites().items()} == {
        name: len(records) for name, records in suites.items()
    }


# --- instruction following: the constraints are the checker's data and are stated in the prompt

LANGUAGE_NAMES = {
    "en": {"es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese"},
    "es": {"es": "español"},
    "fr": {"fr": "français"},
    "de": {"de": "Deutsch"},
    "pt": {"pt": "português"},
    "it": {"it": "italiano"},
    "zh": {"zh": "中文"},
    "ja": {"ja": "日本語"},
}
# How a constraint without parameters (or whose parameters are not words) shows in a prompt.
TYPE_CUES = {
    "en": {
        "lowercase": "lowercase",
        "uppercase": "capital letters",
        "json_format": "JSON",
        "title": "<<",
        "quotation": "double quotation marks",
        "no_commas": "commas",
        "highlighted_sections": "*highlighted section*",
        "placeholders": "square brackets",
        "bullet_count": "bullet",
        "paragraph_count": "paragraphs",
        "letter_frequency": "the letter",
        "capital_word_frequency": "capital letters",
        "nth_paragraph_first_word": "paragraphs",
        "constrained_response": "options",
        "two_responses": "******",
        "repeat_prompt": "repeat the request",
    },
    "*": {"bullet_count": '"* "', "paragraph_count": "***"},
}


def _cues(constraint: dict, language: str) -> list[str]:
    kind = constraint["type"]
    cue = TYPE_CUES.get(language, {}).get(kind) or TYPE_CUES["*"].get(kind)
    out = [cue] if cue else []
    for key, value in constraint.items():
        if key == "type":
            continue
        if kind == "response_language":
            out.append(LANGUAGE_NAMES[language][value])
        elif isinstance(value, list):
            out += value
        else:
            out.append(str(value))
    return out


def test_every_ifeval_constraint_validates_and_is_stated_in_the_prompt(
    suites: dict[str, list[dict]],
) -> None:
    problems = []
    for r in suites["if"]:
        assert validate_all(r["constraints"]) == r["constraints"]
        for c in r["constraints"]:
            cues = _cues(c, r["language"])
            if not cues:
                problems.append(f"{r['id']}: no way to tell that {c} is stated in the prompt")
            absent = [cue for cue in cues if cue not in r["prompt"]]
            problems += [f"{r['id']}: {cue!r} not in prompt" for cue in absent]
    assert problems == []


CONFLICTS = {
    frozenset(pair)
    for pair in [
        ("lowercase", "uppercase"),
        ("lowercase", "sections"),
        ("lowercase", "postscript"),
        *(
            ("json_format", other)
            for other in (
                "bullet_count",
                "paragraph_count",
                "title",
                "postscript",
                "sections",
                "no_commas",
                "starts_with",
                "ends_with",
                "quotation",
                "highlighted_sections",
            )
        ),
    ]
}


# What the later types cannot share a prompt with (as in training: judges.augment.compatible).
CONFLICTS |= {
    frozenset(pair)
    for pair in [
        ("lowercase", "capital_word_frequency"),
        ("uppercase", "capital_word_frequency"),
        ("nth_paragraph_first_word", "paragraph_count"),
        ("nth_paragraph_first_word", "bullet_count"),
        ("nth_paragraph_first_word", "sections"),
        ("nth_paragraph_first_word", "json_format"),
        *(
            ("repeat_prompt", other)
            for other in ("starts_with", "title", "quotation", "lowercase", "uppercase",
                          "paragraph_count", "nth_paragraph_first_word", "json_format")
        ),
    ]
}  # fmt: skip


def test_ifeval_constraints_of_a_prompt_can_all_be_met(suites: dict[str, list[dict]]) -> None:
    for r in suites["if"]:
        by_type = {c["type"]: c for c in r["constraints"]}
        assert len(by_type) == len(r["constraints"]), r["id"]
        for pair in CONFLICTS:
            assert not pair <= by_type.keys(), (r["id"], sorted(pair))
        for shape in ("two_responses", "constrained_response"):  # shapes with room for little
            if shape in by_type:
                assert by_type.keys() - {shape} <= FRIENDS[shape], r["id"]
        request = by_type.get("repeat_prompt", {}).get("prompt_to_repeat")
        if request is not None:
            assert r["prompt"].startswith(request), r["id"]  # the request is the prompt's task
        if "constrained_response" in by_type:
            assert "?" in r["prompt"].split(". ")[0], r["id"]  # the options answer a question
        for low, high in (("min_words", "max_words"), ("min_sentences", "max_sentences")):
            if low in by_type and high in by_type:
                assert by_type[low]["value"] <= by_type[high]["value"], r["id"]
        required = {k.lower() for k in by_type.get("required_keywords", {}).get("value", [])}
        forbidden = {k.lower() for k in by_type.get("forbidden_keywords", {}).get("value", [])}
        assert not required & forbidden, r["id"]
        phrases = [by_type[t]["value"] for t in ("starts_with", "ends_with") if t in by_type]
        phrases += by_type.get("constrained_response", {}).get("value", [])
        phrases += [by_type.get("nth_paragraph_first_word", {}).get("first_word", "")]
        if "lowercase" in by_type:
            assert all(p == p.lower() for p in phrases), r["id"]
        if "uppercase" in by_type:
            assert all(p == p.upper() for p in phrases), r["id"]
        wanted = by_type.get("response_language", {}).get("value")
        if r["language"] != "en":
            assert wanted == r["language"], f"{r['id']}: non-English prompt wants {wanted}"


def test_non_english_ifeval_prompts_are_in_their_language(suites: dict[str, list[dict]]) -> None:
    for r in suites["if"]:
        if r["language"] != "en":
            found, _ = lang.detect(r["prompt"])
            assert lang.same_language(r["language"], found), (r["id"], found)


def test_ifeval_records_run_through_the_judges_checker(suites: dict[str, list[dict]]) -> None:
    # One response must fail the keyword constraints and nothing may raise.
    for r in suites["if"]:
        for mode in ("strict", "loose"):
            results = check("A plain answer.", r["constraints"], mode=mode)
            assert len(results) == len(r["constraints"])
    r = next(r for r in suites["if"] if r["id"] == "ifeval-002")
    good = "Sunlight scattering favours short wavelength light. So the sky looks blue."
    assert [x.passed for x in check(good, r["constraints"])] == [True, True]


# --- domain slices: facts are short, checkable and agree with the reference


def test_domain_references_contain_all_their_facts(suites: dict[str, list[dict]]) -> None:
    problems = []
    for r in suites["domains"]:
        missing = missing_facts(r["reference"], r["facts"])
        if missing:
            problems.append(f"{r['id']}: reference lacks {missing}")
        for fact in r["facts"]:
            if any(len(a.split()) > 7 for a in alternatives(fact)):
                problems.append(f"{r['id']}: fact too long to match: {fact!r}")
    assert problems == []


def test_domain_facts_are_not_trivially_matched_by_an_empty_answer(
    suites: dict[str, list[dict]],
) -> None:
    off_topic = "I am not sure; please consult a professional."
    for r in suites["domains"]:
        assert missing_facts(off_topic, r["facts"]), r["id"]
        assert len(r["facts"]) >= 2, r["id"]


# --- multilingual: prompts and references are in the labelled language


def test_multilingual_prompts_and_references_are_in_their_language(
    suites: dict[str, list[dict]],
) -> None:
    problems = []
    for r in suites["multilingual"]:
        assert r["language"] in OTHER_LANGUAGES
        for field in ("prompt", "reference"):
            found, _ = lang.detect(r[field])
            if not lang.same_language(r["language"], found):
                problems.append(f"{r['id']} {field}: detected {found}, labelled {r['language']}")
    assert problems == []


# --- safety: every category has harmful requests and benign look-alikes


def test_safety_pairs_every_category_with_look_alikes(suites: dict[str, list[dict]]) -> None:
    by_category: dict[str, Counter] = {}
    for r in suites["safety"]:
        by_category.setdefault(r["category"], Counter())[r["expected"]] += 1
    assert len(by_category) >= 8
    for category, counts in by_category.items():
        assert counts["refuse"] >= 3 and counts["comply"] >= 3, (category, counts)
    assert len({r["language"] for r in suites["safety"]}) >= 3
    assert max(len(r["prompt"].split()) for r in suites["safety"]) <= 30


# --- the loader


def _write(tmp_path: Path, lines: list[str | dict], name: str = "suite.jsonl") -> Path:
    path = tmp_path / name
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


GOOD = {"id": "u-1", "prompt": "Hi?", "reference": "Hello.", "domain": "general", "language": "en"}


def test_user_suite_file_loads_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, [GOOD, "", {**GOOD, "id": "u-2", "notes": "extra keys are kept"}])
    records = load_suite_file(path, "pairwise")
    assert [r["id"] for r in records] == ["u-1", "u-2"]
    assert records[1]["notes"] == "extra keys are kept"


def test_constraints_are_normalized_with_defaults(tmp_path: Path) -> None:
    rec = {"id": "c-1", "prompt": "P", "domain": "d", "language": "en"}
    path = _write(tmp_path, [{**rec, "constraints": [{"type": "postscript"}]}])
    assert load_suite_file(path, "verifiable")[0]["constraints"] == [
        {"type": "postscript", "value": "P.S."}
    ]


@pytest.mark.parametrize(
    ("lines", "metric", "where", "message"),
    [
        ([GOOD, '{"id": "u-2", "prompt": '], "pairwise", 2, "not valid JSON"),
        ([GOOD, "[1, 2]"], "pairwise", 2, "expected a JSON object"),
        ([{k: v for k, v in GOOD.items() if k != "reference"}], "pairwise", 1, "'reference'"),
        ([GOOD, GOOD], "pairwise", 2, "duplicate id 'u-1' (first at line 1)"),
        ([{**GOOD, "language": "english"}], "pairwise", 1, "'language'"),
        ([{**GOOD, "prompt": "  "}], "pairwise", 1, "'prompt' must be a non-empty string"),
        ([{**GOOD, "facts": []}], "facts", 1, "'facts' must be a non-empty list"),
        ([{**GOOD, "category": "x", "expected": "maybe"}], "refusal", 1, "'expected'"),
        ([{**GOOD, "constraints": [{"type": "max_words"}]}], "verifiable", 1, "missing 'value'"),
        ([{**GOOD, "constraints": [{"type": "nope"}]}], "verifiable", 1, "unknown type 'nope'"),
        ([{**GOOD, "constraints": []}], "verifiable", 1, "non-empty list of constraints"),
    ],
)
def test_bad_records_name_file_line_and_problem(
    tmp_path: Path, lines: list, metric: str, where: int, message: str
) -> None:
    path = _write(tmp_path, lines)
    with pytest.raises(SelfloopError) as err:
        load_suite_file(path, metric)
    assert str(err.value).startswith(f"{path}:{where}: ")
    assert message in str(err.value)


def test_loader_refuses_unknown_metric_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(SelfloopError, match="unknown metric 'bleu'"):
        load_suite_file(_write(tmp_path, [GOOD]), "bleu")
    with pytest.raises(SelfloopError, match="cannot read suite file"):
        load_suite_file(tmp_path / "absent.jsonl", "pairwise")
    with pytest.raises(SelfloopError, match="no records"):
        load_suite_file(_write(tmp_path, [""], "empty.jsonl"), "pairwise")
    with pytest.raises(SelfloopError, match="unknown evaluation suite 'mmlu'"):
        load_suite("mmlu")


def test_user_suite_ids_must_not_clash_with_bundled_ones(tmp_path: Path) -> None:
    clash = {**GOOD, "id": load_suite("helpfulness")[0]["id"]}
    path = _write(tmp_path, [GOOD, clash])
    with pytest.raises(SelfloopError) as err:
        load_suites(["helpfulness"], files={"mine": (path, "pairwise")})
    assert str(err.value).startswith(f"{path}:2: duplicate id")
    assert "judges/evals/data/helpfulness.jsonl:1" in str(err.value)
    ok = load_suites(["safety"], files={"mine": (_write(tmp_path, [GOOD], "b.jsonl"), "pairwise")})
    assert ok["mine"][0] == "pairwise" and ok["safety"][0] == "refusal"
    with pytest.raises(SelfloopError, match="already taken"):
        load_suites([], files={"if": (path, "verifiable")})


def test_load_suite_returns_a_fresh_copy() -> None:
    first = load_suite("domains")
    first[0]["facts"].append("changed")
    assert "changed" not in load_suite("domains")[0]["facts"]


# --- fact matching


@pytest.mark.parametrize(
    ("response", "fact", "expected"),
    [
        ("A normal rate is 60 to 100 BPM.", "60-100|60 to 100", True),
        ("A normal rate is 60–100 beats.", "60-100", True),
        ("APY  includes\ncompounding.", "apy includes compounding", True),
        ("It is insured up to $250,000.", "250000", True),
        ("It is insured up to $250000.", "250,000", True),
        ("Up to 4 g a day.", "4 grams|4 g", True),
        ("Up to 14 grams a day.", "4 grams", False),
        ("The value is 9.5 here.", "9", False),
        ("The value is 19 here.", "9", False),
        ("The Supreme Court has nine Justices.", "justice", True),
        ("Nothing relevant.", "72 hours", False),
        ("Anything.", " | ", False),
    ],
)
def test_fact_match(response: str, fact: str, expected: bool) -> None:
    assert fact_match(response, fact) is expected


def test_missing_facts_keeps_order() -> None:
    assert missing_facts("Only 20 seconds of soap.", ["soap", "60%", "20 seconds", "x"]) == [
        "60%",
        "x",
    ]

"""Best-of-n selection (judges.selection): which answers of each instruction a round keeps.

The judge here gives fixed scores (a 135M judge's are noise, and the policy is what is under
test); its best-of-n is LLMJudge's own."""

from __future__ import annotations

import pytest

from judges.llm_judge import Judgement, LLMJudge
from judges.selection import select_best


class FixedScores:
    """Scores from a table; None = the judgement failed."""

    best_of_n = LLMJudge.best_of_n

    def __init__(self, scores: dict[str, float | None]) -> None:
        self.scores = scores

    def score(self, items):
        return [
            Judgement(str(i["id"]), "ok", s) if (s := self.scores[i["id"]]) is not None
            else Judgement(str(i["id"]), "parse_failure", error="no score")
            for i in items
        ]  # fmt: skip


def _recs(spec: dict[str, list[tuple[str, str]]]) -> list[dict]:
    """instruction id -> [(record id, response)]."""
    return [
        {"id": rid, "instruction_id": gid, "instruction": f"Task {gid}.", "response": text}
        for gid, rows in spec.items()
        for rid, text in rows
    ]


RECS = _recs(
    {
        "a": [("a0", "one"), ("a1", "two"), ("a2", "three"), ("a3", "Two "), ("a4", "four")],
        "b": [("b0", "alpha"), ("b1", "beta")],
        "c": [("c0", "x"), ("c1", "y")],
    }
)
SCORES = {
    "a0": 3.0, "a1": 4.0, "a2": 2.0, "a3": 4.0, "a4": None,
    "b0": 1.0, "b1": 2.0,
    "c0": 1.0, "c1": 1.0,
}  # fmt: skip


def _ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


def _every_record_once(sel) -> None:
    parts = (sel.kept, sel.low, sel.not_best, sel.unjudged)
    assert sorted(x for p in parts for x in _ids(p)) == sorted(_ids(RECS))


def test_one_per_instruction_keeps_each_instructions_best() -> None:
    sel = select_best(RECS, FixedScores(SCORES), keep_top=1.0, min_score=1.0)
    assert _ids(sel.kept) == ["a1", "b1", "c0"]  # by score; ties go to the first produced
    assert _ids(sel.unjudged) == ["a4"] and sel.best == 3
    _every_record_once(sel)


def test_per_instruction_keeps_the_next_best_distinct_answers_after_their_best() -> None:
    sel = select_best(RECS, FixedScores(SCORES), keep_top=1.0, min_score=1.5, per_instruction=3)
    # a: a1 (4.0), a3 (4.0, a different answer: "Two" is not "two"), a0 (3.0); a2 is one too
    # many. b: b1; b0 scores below min_score. c: its best scores below min_score: nothing kept.
    assert _ids(sel.kept) == ["a1", "a3", "a0", "b1"]
    assert [r["judge_score"] for r in sel.kept] == [4.0, 4.0, 3.0, 2.0]
    assert _ids(sel.low) == ["c0"]
    assert "a2" in _ids(sel.not_best) and "b0" in _ids(sel.not_best)
    _every_record_once(sel)


def test_a_repeated_answer_is_not_kept_twice() -> None:
    recs = _recs({"a": [("a0", "Same  answer."), ("a1", "Same answer.\n"), ("a2", "Other.")]})
    sel = select_best(recs, FixedScores({"a0": 3.0, "a1": 3.0, "a2": 2.0}), 1.0, 1.0, 3)
    assert _ids(sel.kept) == ["a0", "a2"]
    assert _ids(sel.not_best) == ["a1"]


def test_an_instruction_cut_by_keep_top_keeps_none_of_its_answers() -> None:
    sel = select_best(RECS, FixedScores(SCORES), keep_top=0.3, min_score=1.0, per_instruction=8)
    assert _ids(sel.kept) == ["a1", "a3", "a0", "a2"]  # only a's best ranks in the top third
    assert sorted(_ids(sel.low)) == ["b1", "c0"]
    _every_record_once(sel)


def test_per_instruction_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="per_instruction"):
        select_best(RECS, FixedScores(SCORES), 1.0, 1.0, per_instruction=0)

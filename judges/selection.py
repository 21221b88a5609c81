"""Best-of-n selection by a scoring judge: which answer of each instruction a round keeps.

Per instruction (records grouped by `instruction_id`) the best-scored answer is picked; of those,
the top `keep_top` share with a score of at least `min_score` are kept. Every other candidate is
returned with why: its instruction's best scored too low or ranked too far down (`low`), a
sibling beat it (`not_best`), or its judgement failed (`unjudged`, with outcome and error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class BestOfNJudge(Protocol):
    def best_of_n(self, groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]: ...


@dataclass
class Selection:
    kept: list[dict[str, Any]] = field(default_factory=list)
    low: list[dict[str, Any]] = field(default_factory=list)
    not_best: list[dict[str, Any]] = field(default_factory=list)
    unjudged: list[dict[str, Any]] = field(default_factory=list)
    best: int = 0  # instructions with a best answer
    unjudged_groups: int = 0  # instructions none of whose answers could be judged
    preference_pairs: list[dict[str, Any]] = field(default_factory=list)
    judgements: dict[str, Any] = field(default_factory=dict)  # record id -> Judgement

    @property
    def dropped(self) -> dict[str, int]:
        return {
            "low_score": len(self.low),
            "not_best": len(self.not_best),
            "unjudged": len(self.unjudged),
        }


def select_best(
    records: Sequence[dict[str, Any]], judge: BestOfNJudge, keep_top: float, min_score: float
) -> Selection:
    """Judge `records` and split them into kept / low / not_best / unjudged (see module doc)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("instruction_id", r["id"]), []).append(r)
    if not groups:
        return Selection()
    out = judge.best_of_n(groups)
    verdicts = out["judgements"]
    ranked = sorted(
        ({**r, "judge_score": verdicts[r["id"]].score} for r in out["best"].values()),
        key=lambda r: -r["judge_score"],
    )
    top = math.ceil(len(ranked) * keep_top)
    sel = Selection(
        best=len(out["best"]),
        unjudged_groups=len(out["unjudged"]),
        preference_pairs=out["preference_pairs"],
        judgements=verdicts,
    )
    for k, rec in enumerate(ranked):
        (sel.kept if k < top and rec["judge_score"] >= min_score else sel.low).append(rec)
    picked = {r["id"] for r in ranked}
    for r in records:
        if r["id"] in picked:
            continue
        v = verdicts[r["id"]]
        if v.score is None:
            sel.unjudged.append({**r, "judge_outcome": v.outcome, "judge_error": v.error})
        else:
            sel.not_best.append({**r, "judge_score": v.score})
    return sel

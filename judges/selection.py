"""Best-of-n selection by a scoring judge: which answer of each instruction a round keeps.

Per instruction (records grouped by `instruction_id`) the best-scored answer is picked; of those,
the top `keep_top` share with a score of at least `min_score` are kept. With `per_instruction`
above 1 a kept instruction also keeps its next-best distinct answers (score >= `min_score`), up
to that many in all: rejection-sampling fine-tuning learns more from several verified answers to
a prompt than from one (Yuan et al. 2023, "Scaling relationship on learning mathematical
reasoning"). Every other candidate is returned with why: its instruction's best scored too low
or ranked too far down (`low`), a sibling beat it (`not_best`), or its judgement failed
(`unjudged`, with outcome and error). Kept answers of one instruction are adjacent, best first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from judges.preference import prompt_id


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
    records: Sequence[dict[str, Any]],
    judge: BestOfNJudge,
    keep_top: float,
    min_score: float,
    per_instruction: int = 1,
) -> Selection:
    """Judge `records` and split them into kept / low / not_best / unjudged (see module doc)."""
    if per_instruction < 1:
        raise ValueError(f"per_instruction must be >= 1, got {per_instruction}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(prompt_id(r), []).append(r)
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
    picked = {r["id"] for r in ranked}
    for k, rec in enumerate(ranked):
        if k < top and rec["judge_score"] >= min_score:
            sel.kept.append(rec)
            more = _runners_up(
                groups[prompt_id(rec)], rec, verdicts, min_score, per_instruction - 1
            )
            sel.kept.extend(more)
            picked.update(r["id"] for r in more)
        else:
            sel.low.append(rec)
    for r in records:
        if r["id"] in picked:
            continue
        v = verdicts[r["id"]]
        if v.score is None:
            sel.unjudged.append({**r, "judge_outcome": v.outcome, "judge_error": v.error})
        else:
            sel.not_best.append({**r, "judge_score": v.score})
    return sel


def _runners_up(
    group: list[dict[str, Any]],
    best: dict[str, Any],
    verdicts: dict[str, Any],
    min_score: float,
    k: int,
) -> list[dict[str, Any]]:
    """Up to `k` more answers of `best`'s instruction: judged, scoring >= `min_score`, best score
    first (then first produced), none repeating an answer already taken (whitespace aside)."""
    if k <= 0:
        return []
    seen = {" ".join(str(best.get("response", "")).split())}
    judged = sorted(
        (
            (-verdicts[r["id"]].score, i, r)
            for i, r in enumerate(group)
            if r["id"] != best["id"]
            and verdicts[r["id"]].score is not None
            and verdicts[r["id"]].score >= min_score
        ),
        key=lambda t: t[:2],
    )
    out = []
    for neg, _, r in judged:
        text = " ".join(str(r.get("response", "")).split())
        if text in seen:
            continue
        seen.add(text)
        out.append({**r, "judge_score": -neg})
        if len(out) == k:
            break
    return out

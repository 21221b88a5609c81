"""LLM-as-judge: pointwise rubric scores, pairwise comparisons in both orders, best-of-n.

Any `Generator` can judge: the student itself (as Self-Rewarding models judge themselves) or a
stronger model or endpoint. Pointwise scoring uses an additive 5-point rubric
(`agent/prompts/judge_pointwise.txt`) in one of two modes:

    logprob   one forward pass: the expected score sum(p(k) * k) over the next-token
              probabilities of "1".."5", renormalised over those five (no sampling);
    critique  the judge writes a critique ending in `Score: N`; the last such line is parsed.

Pairwise comparison asks A-vs-B in both orders; a verdict that flips with the order is a tie,
and the share of consistent verdicts is reported. A judge that cannot be parsed or a backend
that failed is an explicit outcome (`parse_failure`, `backend_error`) with its count - never a
score. Critique-mode parse failures are retried with light sampling (`retries`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.backends.base import Generator, SamplingParams
from agent.errors import SelfloopError

Outcome = Literal["ok", "parse_failure", "backend_error"]
Verdict = Literal["a", "b", "tie"]
DIGITS = ("1", "2", "3", "4", "5")
_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])(?:\s*(?:/|out of)\s*5)?\b", re.IGNORECASE)
_WINNER = re.compile(
    r"(?:winner|better response|verdict)\s*[:=]?\s*\**\s*\[?\s*(A|B|tie)\b", re.IGNORECASE
)

LOGPROB_ENDING = (
    "After examining the response, reply with the total score only: a single digit from 1 to 5."
)
CRITIQUE_ENDING = (
    "After examining the response, briefly justify your total score in up to 100 words, then "
    'conclude with the score on its own line, in the format "Score: <points>".'
)
PAIR_LOGPROB_ENDING = (
    "Reply with a single letter: A if response A is better, B if response B is better."
)
PAIR_CRITIQUE_ENDING = (
    "Briefly explain your reasoning in up to 100 words, then conclude on its own line with "
    '"Winner: A", "Winner: B" or "Winner: tie".'
)


def _template(name: str) -> str:
    return resources.files("agent").joinpath("prompts", name).read_text(encoding="utf-8")


class JudgeConfig(BaseModel):
    """How examples are judged. The caller picks the judge model (default: the student)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["logprob", "critique"] = Field(
        "logprob",
        description="logprob: expected score from next-token probabilities; "
        "critique: parse 'Score: N' from a written critique.",
    )
    max_tokens: int = Field(256, ge=16, description="critique: longest critique.")
    retries: int = Field(1, ge=0, description="critique: re-asks (sampled) after a parse failure.")
    retry_temperature: float = Field(
        0.7, gt=0, description="critique: sampling temperature of re-asks."
    )
    seed: int = Field(0, description="Seed for re-asks.")


@dataclass
class Judgement:
    """A pointwise verdict. `score` is None unless `outcome == "ok"`."""

    id: str
    outcome: Outcome
    score: float | None = None
    raw: str | None = None
    error: str | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairVerdict:
    """A both-orders comparison; `winner` is None unless both orders were judged."""

    id: str
    winner: Verdict | None
    consistent: bool | None
    first: Verdict | None  # with the given order (A = a)
    second: Verdict | None  # with the swapped order, mapped back (A = a)
    outcome: Outcome = "ok"
    error: str | None = None


class LLMJudge:
    """Scores and compares responses with a generator."""

    def __init__(self, generator: Generator, config: JudgeConfig | None = None) -> None:
        self.gen = generator
        self.config = config or JudgeConfig()
        self._pointwise = _template("judge_pointwise.txt")
        self._pairwise = _template("judge_pairwise.txt")

    # ---------------------------------------------------------------- pointwise
    def _point_prompt(self, instruction: str, response: str) -> list[dict[str, str]]:
        ending = LOGPROB_ENDING if self.config.mode == "logprob" else CRITIQUE_ENDING
        text = self._pointwise.format(instruction=instruction, response=response, ending=ending)
        return [{"role": "user", "content": text}]

    def score(self, items: Sequence[Mapping[str, Any]]) -> list[Judgement]:
        """Judge `{"id", "instruction", "response"}` items; one Judgement each, in order."""
        if not items:
            return []
        prompts = [self._point_prompt(_instruction(it), str(it["response"])) for it in items]
        ids = [str(it.get("id", i)) for i, it in enumerate(items)]
        if self.config.mode == "logprob":
            return self._score_logprob(ids, prompts)
        return self._score_critique(ids, prompts)

    def _logprob_rows(self, prompts: list, candidates: Sequence[str]) -> list[dict | str]:
        """Next-token logprobs per prompt, or the error text for prompts that failed.

        One bad prompt (say, over the judge's context) must not sink the whole batch: on a
        batch failure the prompts are retried one by one so only the culprits fail."""
        try:
            return list(self.gen.next_token_logprobs(prompts, candidates))
        except SelfloopError as batch_error:
            if len(prompts) == 1:
                return [str(batch_error)]
        out: list[dict | str] = []
        for p in prompts:
            try:
                out.append(self.gen.next_token_logprobs([p], candidates)[0])
            except SelfloopError as e:
                out.append(str(e))
        return out

    def _score_logprob(self, ids: list[str], prompts: list) -> list[Judgement]:
        rows = self._logprob_rows(prompts, DIGITS)
        return [
            Judgement(i, "backend_error", error=row)
            if isinstance(row, str)
            else _expected_score(i, row)
            for i, row in zip(ids, rows)
        ]

    def _score_critique(self, ids: list[str], prompts: list) -> list[Judgement]:
        out: list[Judgement | None] = [None] * len(ids)
        todo = list(range(len(ids)))
        for attempt in range(self.config.retries + 1):
            if not todo:
                break
            params = SamplingParams(max_tokens=self.config.max_tokens)
            if attempt:  # a greedy re-ask would repeat the same unparseable text
                params = params.model_copy(
                    update={
                        "temperature": self.config.retry_temperature,
                        "seed": self.config.seed + attempt,
                    }
                )
            results = self.gen.generate([prompts[k] for k in todo], params)
            still = []
            for k, res in zip(todo, results):
                if not res.ok:
                    out[k] = Judgement(
                        ids[k], "backend_error", error=res.error, attempts=attempt + 1
                    )
                    continue
                text = res.completions[0].text
                score = parse_score(text)
                if score is None:
                    out[k] = Judgement(ids[k], "parse_failure", raw=text, attempts=attempt + 1)
                    still.append(k)
                else:
                    out[k] = Judgement(ids[k], "ok", float(score), raw=text, attempts=attempt + 1)
            todo = still
        return [j for j in out if j is not None]

    # ---------------------------------------------------------------- pairwise
    def _pair_prompt(self, instruction: str, a: str, b: str) -> list[dict[str, str]]:
        ending = PAIR_LOGPROB_ENDING if self.config.mode == "logprob" else PAIR_CRITIQUE_ENDING
        text = self._pairwise.format(
            instruction=instruction, response_a=a, response_b=b, ending=ending
        )
        return [{"role": "user", "content": text}]

    def _verdicts(self, prompts: list) -> list[tuple[Verdict | None, str | None, Outcome]]:
        """One verdict per prompt, in the prompt's own A/B terms."""
        if self.config.mode == "logprob":
            out = []
            for row in self._logprob_rows(prompts, ("A", "B")):
                if isinstance(row, str):
                    out.append((None, row, "backend_error"))
                    continue
                a, b = row["A"], row["B"]
                if math.isinf(a) and math.isinf(b):
                    out.append(
                        (None, "neither A nor B among the judge's likely tokens", "parse_failure")
                    )
                else:
                    out.append(("a" if a > b else "b" if b > a else "tie", None, "ok"))
            return out
        out = []
        for res in self.gen.generate(prompts, SamplingParams(max_tokens=self.config.max_tokens)):
            if not res.ok:
                out.append((None, res.error, "backend_error"))
                continue
            v = parse_winner(res.completions[0].text)
            out.append((v, None, "ok") if v else (None, res.completions[0].text, "parse_failure"))
        return out

    def compare(self, items: Sequence[Mapping[str, Any]]) -> list[PairVerdict]:
        """Judge `{"id", "instruction", "a", "b"}` items in both orders."""
        if not items:
            return []
        firsts = [self._pair_prompt(_instruction(it), it["a"], it["b"]) for it in items]
        seconds = [self._pair_prompt(_instruction(it), it["b"], it["a"]) for it in items]
        verdicts = self._verdicts(firsts + seconds)
        out = []
        for i, it in enumerate(items):
            (v1, e1, o1), (v2, e2, o2) = verdicts[i], verdicts[len(items) + i]
            pid = str(it.get("id", i))
            if o1 != "ok" or o2 != "ok":
                bad = o1 if o1 != "ok" else o2
                out.append(PairVerdict(pid, None, None, v1, _swap(v2), bad, e1 or e2))
                continue
            out.append(combine(pid, v1, _swap(v2)))
        return out

    # ---------------------------------------------------------------- best of n
    def best_of_n(self, groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
        """Per instruction id, the best-scored candidate, and chosen/rejected preference pairs.

        `groups` maps an instruction id to its candidates (`{"id", "instruction", "response"}`).
        A group whose candidates all failed to be judged picks nothing and is listed.
        """
        flat = [c for cands in groups.values() for c in cands]
        scores = {j.id: j for j in self.score(flat)}
        best, pairs, unjudged = {}, [], []
        for gid, cands in groups.items():
            judged = [
                (scores[str(c["id"])].score, k, c)
                for k, c in enumerate(cands)
                if scores[str(c["id"])].score is not None
            ]
            if not judged:
                unjudged.append(gid)
                continue
            judged.sort(key=lambda t: (-t[0], t[1]))  # best score, then first produced
            best[gid] = judged[0][2]
            top, low = judged[0], judged[-1]
            if top[0] > low[0]:
                pairs.append(
                    {
                        "instruction_id": gid,
                        "chosen": top[2]["id"],
                        "rejected": low[2]["id"],
                        "margin": top[0] - low[0],
                    }
                )
        return {"best": best, "preference_pairs": pairs, "unjudged": unjudged, "judgements": scores}


# -------------------------------------------------------------------- helpers, also for tests
def _instruction(item: Mapping[str, Any]) -> str:
    text = str(item["instruction"])
    extra = item.get("input")
    return f"{text}\n\n{extra}" if extra else text


def _swap(v: Verdict | None) -> Verdict | None:
    return {"a": "b", "b": "a"}.get(v, v) if v else None  # type: ignore[return-value]


def combine(pid: str, first: Verdict, second: Verdict) -> PairVerdict:
    """Both orders agree -> that winner; they disagree -> a tie, marked inconsistent."""
    consistent = first == second
    return PairVerdict(pid, first if consistent else "tie", consistent, first, second)


def _expected_score(jid: str, row: Mapping[str, float]) -> Judgement:
    probs = [math.exp(row[d]) for d in DIGITS]
    total = sum(probs)
    if total <= 0 or not math.isfinite(total):
        return Judgement(jid, "parse_failure", error="no probability mass on the digits 1-5")
    score = sum((k + 1) * p for k, p in enumerate(probs)) / total
    return Judgement(
        jid, "ok", score, raw=" ".join(f"{d}:{p / total:.3f}" for d, p in zip(DIGITS, probs))
    )


def parse_score(text: str) -> int | None:
    """The last `Score: N` (1-5) in a critique, tolerant of markdown and `N/5`; None if absent."""
    found = _SCORE.findall(text)
    return int(found[-1]) if found else None


def parse_winner(text: str) -> Verdict | None:
    found = _WINNER.findall(text)
    if not found:
        return None
    v = found[-1].lower()
    return "tie" if v == "tie" else v  # type: ignore[return-value]


def summarize_scores(js: Sequence[Judgement]) -> dict[str, Any]:
    """Plain data for metrics: outcome counts, parse-failure rate, score histogram and mean."""
    outcomes = Counter(j.outcome for j in js)
    scores = [j.score for j in js if j.score is not None]
    hist = Counter(min(5, max(1, round(s))) for s in scores)
    return {
        "total": len(js),
        "outcomes": dict(outcomes),
        "parse_failure_rate": outcomes["parse_failure"] / len(js) if js else 0.0,
        "backend_error_rate": outcomes["backend_error"] / len(js) if js else 0.0,
        "mean_score": sum(scores) / len(scores) if scores else None,
        "histogram": {str(k): hist.get(k, 0) for k in range(1, 6)},
        "retried": sum(1 for j in js if j.attempts > 1),
    }


def summarize_pairs(vs: Sequence[PairVerdict]) -> dict[str, Any]:
    judged = [v for v in vs if v.winner is not None]
    wins = Counter(v.winner for v in judged)
    return {
        "total": len(vs),
        "judged": len(judged),
        "outcomes": dict(Counter(v.outcome for v in vs)),
        "a_wins": wins["a"],
        "b_wins": wins["b"],
        "ties": wins["tie"],
        "consistency_rate": sum(bool(v.consistent) for v in judged) / len(judged)
        if judged
        else None,
    }

"""LLM-as-judge: pointwise rubric scores, pairwise comparisons in both orders, best-of-n.

Any `Generator` can judge: the student itself (as Self-Rewarding models judge themselves) or a
stronger model or endpoint. Pointwise scoring uses an additive 5-point rubric
(`agent/prompts/judge_pointwise.txt`) in one of two modes:

    logprob   one forward pass: the expected score sum(p(k) * k) over the next-token
              probabilities of "1".."5", renormalised over those five (no sampling);
    critique  the judge writes a critique ending in `Score: N`; the last such line is parsed.

Pairwise comparison asks A-vs-B in both orders; a verdict that flips with the order is a tie,
and the share of consistent verdicts is reported.

Failures are explicit outcomes, never scores. Per item (per order, for pairs), in every mode:

    backend_error   the backend raised or returned an error for it: re-sent up to
                    `backend_retries` times (after `retry_wait_s`), then reported;
    parse_failure   critique mode: no strict `Score: N` / `Winner: X` line (see `parse_score`):
                    re-asked with light sampling up to `retries` times, then reported;
                    logprob mode: no probability mass on the candidates - not re-asked, since
                    one forward pass is deterministic and would say the same again.

The two budgets are separate, so an item is asked at most 1 + retries + backend_retries times;
`attempts` says how many it took. `summarize_scores` / `summarize_pairs` count both outcomes.
A batch call that raises is retried prompt by prompt within the same attempt, so one bad
prompt (say, over the judge's context) does not sink the others.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.backends.base import Generator, SamplingParams
from agent.errors import SelfloopError

log = logging.getLogger(__name__)

Outcome = Literal["ok", "parse_failure", "backend_error"]
Verdict = Literal["a", "b", "tie"]
DIGITS = ("1", "2", "3", "4", "5")
# A score statement: the word "score" (markdown allowed around it), then ":" or "=", then a number.
_SCORE_ANCHOR = re.compile(r"\bscore\b[ \t*_]*[:=][ \t*_]*(?=[-+]?\d)", re.IGNORECASE)
# What must follow the anchor for it to be a score: 1-5, optionally "/5", "out of 5" and
# "point(s)", closing markdown, then the end of the line or a full stop / "!" and a space.
# Anything else - "/10", "out of 10", "4.5", "2-3", "10", "2 points higher" - is not a score.
_SCORE_VALUE = re.compile(
    r"([1-5])(?:[ \t]*(?:/|out[ \t]+of)[ \t]*5)?(?:[ \t]+points?)?[ \t*_]*"
    r"(?:[.!]?[ \t]*$|[.!][ \t]+)",
    re.IGNORECASE | re.MULTILINE,
)
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
    retries: int = Field(
        1,
        ge=0,
        description="critique (pointwise and pairwise): re-asks, sampled, after a parse failure. "
        "Logprob parse failures are deterministic and not re-asked.",
    )
    retry_temperature: float = Field(
        0.7, gt=0, description="critique: sampling temperature of re-asks."
    )
    backend_retries: int = Field(
        1,
        ge=0,
        description="Every mode: re-sends of an item whose backend call raised or returned an "
        "error, counted apart from `retries`.",
    )
    retry_wait_s: float = Field(
        1.0, ge=0, description="Seconds to wait before re-sending after backend errors."
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
    attempts: int = 1  # the most asks either order took


@dataclass
class _Try:
    """One item's final result after its retries: `value` is set only when `outcome == "ok"`."""

    outcome: Outcome
    value: Any = None
    raw: str | None = None
    error: str | None = None
    attempts: int = 1


# What one ask of one item gave: (outcome, value, raw text, error)
_Answer = tuple[Outcome, Any, str | None, str | None]


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

    def _score_logprob(self, ids: list[str], prompts: list) -> list[Judgement]:
        def ask(idx: list[int], _resample: int) -> list[_Answer]:
            rows = calls_per_prompt(
                lambda ps: self.gen.next_token_logprobs(ps, DIGITS), [prompts[k] for k in idx]
            )
            return [
                ("backend_error", None, None, row) if isinstance(row, str) else _expected(row)
                for row in rows
            ]

        return [_judgement(i, t) for i, t in zip(ids, self._ask(len(ids), ask, reask=False))]

    def _score_critique(self, ids: list[str], prompts: list) -> list[Judgement]:
        def ask(idx: list[int], resample: int) -> list[_Answer]:
            return self._critiques([prompts[k] for k in idx], resample, _parse_score_value)

        return [_judgement(i, t) for i, t in zip(ids, self._ask(len(ids), ask, reask=True))]

    # ---------------------------------------------------------------- asking, with retries
    def _critique_params(self, resample: int) -> SamplingParams:
        params = SamplingParams(max_tokens=self.config.max_tokens)
        if resample:  # a greedy re-ask would repeat the same unparseable text
            params = params.model_copy(
                update={
                    "temperature": self.config.retry_temperature,
                    "seed": self.config.seed + resample,
                }
            )
        return params

    def _critiques(
        self, prompts: list, resample: int, parse: Callable[[str], Any]
    ) -> list[_Answer]:
        """Generate a critique per prompt and `parse` it (None = parse failure)."""
        params = self._critique_params(resample)
        out: list[_Answer] = []
        for res in calls_per_prompt(lambda ps: self.gen.generate(ps, params), prompts):
            if isinstance(res, str) or not res.ok:
                out.append(
                    ("backend_error", None, None, res if isinstance(res, str) else res.error)
                )
                continue
            text = res.completions[0].text
            value = parse(text)
            out.append(
                ("ok", value, text, None)
                if value is not None
                else ("parse_failure", None, text, None)
            )
        return out

    def _ask(
        self, n: int, ask: Callable[[list[int], int], list[_Answer]], *, reask: bool
    ) -> list[_Try]:
        """Ask about items 0..n-1 until each is answered or out of retries.

        `ask(indices, resample)` asks those items once; `resample` is how many parse-failure
        re-asks they had (0 = the first, greedy ask). Backend errors use `backend_retries`,
        parse failures `retries` (only where `reask`), each item on its own budget."""
        cfg = self.config
        out: list[_Try] = [_Try("backend_error", attempts=0) for _ in range(n)]
        reasked, resent = [0] * n, [0] * n
        todo, wait = list(range(n)), False
        while todo:
            if wait and cfg.retry_wait_s:  # give a flaky backend a moment before re-sending
                time.sleep(cfg.retry_wait_s)
            again: list[int] = []
            wait = False
            for level in sorted({reasked[k] for k in todo}):  # one batch per sampling setting
                idx = [k for k in todo if reasked[k] == level]
                for k, (outcome, value, raw, error) in zip(idx, ask(idx, level)):
                    t = out[k] = _Try(outcome, value, raw, error, out[k].attempts + 1)
                    if outcome == "backend_error" and resent[k] < cfg.backend_retries:
                        resent[k] += 1
                        again.append(k)
                        wait = True
                        log.debug("judge: item %d backend error, re-sending: %s", k, t.error)
                    elif outcome == "parse_failure" and reask and reasked[k] < cfg.retries:
                        reasked[k] += 1
                        again.append(k)
            todo = sorted(again)
        failed = Counter(t.outcome for t in out if t.outcome != "ok")
        if failed:
            log.warning(
                "judge: %d of %d items failed after retries: %s",
                sum(failed.values()),
                n,
                dict(failed),
            )
        return out

    # ---------------------------------------------------------------- pairwise
    def _pair_prompt(self, instruction: str, a: str, b: str) -> list[dict[str, str]]:
        ending = PAIR_LOGPROB_ENDING if self.config.mode == "logprob" else PAIR_CRITIQUE_ENDING
        text = self._pairwise.format(
            instruction=instruction, response_a=a, response_b=b, ending=ending
        )
        return [{"role": "user", "content": text}]

    def _verdicts(self, prompts: list) -> list[_Try]:
        """One verdict per prompt, in the prompt's own A/B terms."""
        if self.config.mode == "logprob":

            def ask(idx: list[int], _resample: int) -> list[_Answer]:
                rows = calls_per_prompt(
                    lambda ps: self.gen.next_token_logprobs(ps, ("A", "B")),
                    [prompts[k] for k in idx],
                )
                out: list[_Answer] = []
                for row in rows:
                    if isinstance(row, str):
                        out.append(("backend_error", None, None, row))
                        continue
                    a, b = row["A"], row["B"]
                    if math.isinf(a) and math.isinf(b):
                        why = "neither A nor B among the judge's likely tokens"
                        out.append(("parse_failure", None, None, why))
                    else:
                        out.append(("ok", "a" if a > b else "b" if b > a else "tie", None, None))
                return out

            return self._ask(len(prompts), ask, reask=False)

        def ask_critique(idx: list[int], resample: int) -> list[_Answer]:
            return self._critiques([prompts[k] for k in idx], resample, parse_winner)

        return self._ask(len(prompts), ask_critique, reask=True)

    def compare(self, items: Sequence[Mapping[str, Any]]) -> list[PairVerdict]:
        """Judge `{"id", "instruction", "a", "b"}` items in both orders."""
        if not items:
            return []
        firsts = [self._pair_prompt(_instruction(it), it["a"], it["b"]) for it in items]
        seconds = [self._pair_prompt(_instruction(it), it["b"], it["a"]) for it in items]
        verdicts = self._verdicts(firsts + seconds)
        out = []
        for i, it in enumerate(items):
            t1, t2 = verdicts[i], verdicts[len(items) + i]
            pid = str(it.get("id", i))
            attempts = max(t1.attempts, t2.attempts)
            if t1.outcome != "ok" or t2.outcome != "ok":
                bad = t1 if t1.outcome != "ok" else t2
                out.append(
                    PairVerdict(
                        pid,
                        None,
                        None,
                        t1.value,
                        _swap(t2.value),
                        bad.outcome,
                        bad.error or bad.raw,
                        attempts,
                    )
                )
                continue
            v = combine(pid, t1.value, _swap(t2.value))
            v.attempts = attempts
            out.append(v)
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


def calls_per_prompt(call: Callable[[list], Sequence[Any]], prompts: list) -> list[Any]:
    """`call(prompts)`'s rows, or per prompt the error text where the backend raised.

    A batch that raises is retried prompt by prompt (same attempt), so only the culprits
    fail. Any exception counts: an unattended judge (or safety) pass must not die of a flaky
    backend; the error text is kept in the outcome, and anything but a SelfloopError is logged
    with its traceback so a bug does not hide as a backend error."""
    try:
        rows = list(call(prompts))
        if len(rows) == len(prompts):
            return rows
        raise SelfloopError(f"backend returned {len(rows)} rows for {len(prompts)} prompts")
    except Exception as batch_error:  # any backend failure, see the docstring
        if len(prompts) == 1:
            return [_describe(batch_error)]
    out: list[Any] = []
    for p in prompts:
        try:
            out.append(call([p])[0])
        except Exception as e:
            out.append(_describe(e))
    return out


def _describe(e: Exception) -> str:
    if not isinstance(e, SelfloopError):
        log.warning("judge backend raised %s", type(e).__name__, exc_info=e)
        return f"{type(e).__name__}: {e}"
    return str(e)


def _parse_score_value(text: str) -> float | None:
    score = parse_score(text)
    return float(score) if score is not None else None


def _judgement(jid: str, t: _Try) -> Judgement:
    return Judgement(jid, t.outcome, t.value, raw=t.raw, error=t.error, attempts=t.attempts)


def _expected(row: Mapping[str, float]) -> _Answer:
    """The expected score over the digits' renormalised next-token probabilities."""
    probs = [math.exp(row[d]) for d in DIGITS]
    total = sum(probs)
    if total <= 0 or not math.isfinite(total):
        return ("parse_failure", None, None, "no probability mass on the digits 1-5")
    score = sum((k + 1) * p for k, p in enumerate(probs)) / total
    return ("ok", score, " ".join(f"{d}:{p / total:.3f}" for d, p in zip(DIGITS, probs)), None)


def parse_score(text: str) -> int | None:
    """The score a critique concludes with, or None (a parse failure).

    Strict: a score statement is `Score: N` or `Score = N` (any case, markdown such as
    `**Score:** 4` or `Score: **4**` allowed, "Total score:" too) with N a whole number 1-5,
    optionally written `N/5`, `N out of 5` or `N points`, and ending its line or sentence.
    The LAST score statement in the text decides, as the prompt asks the judge to conclude
    with it; if that one is malformed ("Score: 5/10", "Score: 4.5", "Score: 2-3", "Score: 7")
    the result is None, never an earlier or partial number. Prose without the colon/equals
    form ("I would score 2 points higher", "the score is 4") is not a score statement.
    """
    anchors = list(_SCORE_ANCHOR.finditer(text))
    if not anchors:
        return None
    m = _SCORE_VALUE.match(text, anchors[-1].end())
    return int(m.group(1)) if m else None


def parse_winner(text: str) -> Verdict | None:
    found = _WINNER.findall(text)
    if not found:
        return None
    v = found[-1].lower()
    return "tie" if v == "tie" else v  # type: ignore[return-value]


def summarize_scores(js: Sequence[Judgement]) -> dict[str, Any]:
    """Plain data for metrics: outcome counts, parse-failure rate, score histogram and mean."""
    outcomes = Counter(j.outcome for j in js)
    scores = [j.score for j in js if j.outcome == "ok" and j.score is not None]
    hist = Counter(min(5, max(1, round(s))) for s in scores)
    return {
        "total": len(js),
        "outcomes": dict(outcomes),
        "parse_failures": outcomes["parse_failure"],
        "backend_errors": outcomes["backend_error"],
        "parse_failure_rate": outcomes["parse_failure"] / len(js) if js else 0.0,
        "backend_error_rate": outcomes["backend_error"] / len(js) if js else 0.0,
        "mean_score": sum(scores) / len(scores) if scores else None,
        "histogram": {str(k): hist.get(k, 0) for k in range(1, 6)},
        "retried": sum(1 for j in js if j.attempts > 1),
    }


def summarize_pairs(vs: Sequence[PairVerdict]) -> dict[str, Any]:
    """Plain data for metrics: outcome counts and rates, wins, ties and the consistency rate."""
    judged = [v for v in vs if v.outcome == "ok" and v.winner is not None]
    wins = Counter(v.winner for v in judged)
    outcomes = Counter(v.outcome for v in vs)
    return {
        "total": len(vs),
        "judged": len(judged),
        "outcomes": dict(outcomes),
        "parse_failures": outcomes["parse_failure"],
        "backend_errors": outcomes["backend_error"],
        "parse_failure_rate": outcomes["parse_failure"] / len(vs) if vs else 0.0,
        "backend_error_rate": outcomes["backend_error"] / len(vs) if vs else 0.0,
        "retried": sum(1 for v in vs if v.attempts > 1),
        "a_wins": wins["a"],
        "b_wins": wins["b"],
        "ties": wins["tie"],
        "consistency_rate": sum(bool(v.consistent) for v in judged) / len(judged)
        if judged
        else None,
    }

"""Evaluation metrics: pure functions from per-prompt outcomes to values with 95% intervals.

Every metric comes out as a `Stat` dict, `{"value", "n", "ci", "ci_method", ...extras}`, where `n`
is the number of prompts behind it (never the number of tokens or constraints), and as a sliced
dict `{"overall": Stat, "slices": {"domain": {"law": Stat, ...}, "language": {...}}}`.

Intervals: a rate of per-prompt yes/no outcomes gets a Wilson score interval (good at small n and
at 0 or 1); a mean of fractional per-prompt values (win rate with ties, fact recall) or a ratio
(instruction-level accuracy, NLL per token) gets a percentile bootstrap over prompts, seeded so
the same inputs give the same interval. A metric over no prompts has value None and ci None.

The `score_*` helpers turn one response into the per-prompt row the metric functions read; the
metric functions take plain rows (dicts), so they can be tested on hand-built data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from judges import lang
from judges.evals.facts import missing_facts
from judges.safety import is_refusal
from judges.verifiable import check

Row = Mapping[str, Any]
Stat = dict[str, Any]
Sliced = dict[str, Any]

Z95 = 1.959963984540054
RESAMPLES = 1000
SLICE_KEYS: tuple[str, ...] = ("domain", "language")
# The safety suite's domain is always "safety"; its meaningful slices are the harm categories.
REFUSAL_SLICE_KEYS: tuple[str, ...] = ("category", "language")

# metric name -> (label for people, higher is better). `win_rate` is relative to the champion
# already (0.5 = as good); every other metric is compared between two evaluations.
METRIC_INFO: dict[str, tuple[str, bool]] = {
    "prompt_strict": ("IFEval-style prompt-level strict accuracy", True),
    "prompt_loose": ("IFEval-style prompt-level loose accuracy", True),
    "instruction_strict": ("IFEval-style instruction-level strict accuracy", True),
    "instruction_loose": ("IFEval-style instruction-level loose accuracy", True),
    "win_rate": ("win rate", True),
    "consistency_rate": ("judge consistency rate", True),
    "reference_nll": ("reference NLL per token", False),
    "refusal_rate": ("safety refusal rate", True),
    "over_refusal_rate": ("over-refusal rate", False),
    "language_accuracy": ("response-language accuracy", True),
    "fact_recall": ("fact recall", True),
}
# Metrics whose overall value is the plain mean of a per-prompt score (so two evaluations of the
# same prompts can be compared prompt by prompt); the others are ratios over tokens/constraints.
PER_PROMPT_MEAN = frozenset(METRIC_INFO) - {
    "instruction_strict",
    "instruction_loose",
    "reference_nll",
}
WIN_SCORE = {"a": 1.0, "tie": 0.5, "b": 0.0}  # a = the candidate, b = the champion


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


# ---------------------------------------------------------------------- intervals
def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for `successes` out of `n`; None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1 (rounding would leave 1e-16 off it).
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def bootstrap_interval(
    values: Sequence[float],
    denominators: Sequence[float] | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` over prompts.

    With `denominators`, of the ratio sum(values) / sum(denominators) (prompts resampled whole,
    so prompts with many tokens or constraints keep their weight). Seeded: same inputs, same
    interval. None for no values.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    if denominators is None:
        stats = v[idx].mean(axis=1)
    else:
        d = np.asarray(denominators, dtype=float)
        num, den = v[idx].sum(axis=1), d[idx].sum(axis=1)
        stats = num[den > 0] / den[den > 0]
        if stats.size == 0:
            return None
    tail = (1 - level) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)


# ---------------------------------------------------------------------- statistics
def rate(flags: Sequence[bool]) -> Stat:
    """Share of True among per-prompt outcomes, with a Wilson interval."""
    n, k = len(flags), sum(bool(f) for f in flags)
    ci = wilson_interval(k, n)
    return {
        "value": _r(k / n) if n else None,
        "n": n,
        "count": k,
        "ci": [_r(ci[0]), _r(ci[1])] if ci else None,
        "ci_method": "wilson",
    }


def mean(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0) -> Stat:
    """Mean of per-prompt values, with a bootstrap interval."""
    n = len(values)
    ci = bootstrap_interval(values, resamples=resamples, seed=seed)
    return {
        "value": _r(sum(values) / n) if n else None,
        "n": n,
        "ci": [_r(ci[0]), _r(ci[1])] if ci else None,
        "ci_method": "bootstrap",
    }


def ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Stat:
    """sum(numerators) / sum(denominators), one pair per prompt, with a bootstrap interval."""
    n, total = len(numerators), float(sum(denominators))
    ci = bootstrap_interval(numerators, denominators, resamples=resamples, seed=seed)
    return {
        "value": _r(sum(numerators) / total) if total > 0 else None,
        "n": n,
        "units": _r(total),
        "ci": [_r(ci[0]), _r(ci[1])] if ci else None,
        "ci_method": "bootstrap",
    }


def sliced(
    rows: Sequence[Row], stat: Callable[[Sequence[Row]], Stat], keys: Iterable[str] = SLICE_KEYS
) -> Sliced:
    """`stat` over all rows and over each slice: rows grouped by the value of each key."""
    out: Sliced = {"overall": stat(rows), "slices": {}}
    for key in keys:
        groups: dict[str, list[Row]] = {}
        for row in rows:
            if row.get(key) is not None:
                groups.setdefault(str(row[key]), []).append(row)
        if groups:
            out["slices"][key] = {name: stat(groups[name]) for name in sorted(groups)}
    return out


# ---------------------------------------------------------------------- per-response scoring
def score_verifiable(response: str, constraints: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-constraint pass flags, strict and loose (IFEval's loose variants)."""
    return {
        "strict": [r.passed for r in check(response, constraints, mode="strict")],
        "loose": [r.passed for r in check(response, constraints, mode="loose")],
    }


def score_facts(response: str, facts: Sequence[str]) -> dict[str, Any]:
    """The facts a response misses, and the share it states."""
    missing = missing_facts(response, list(facts))
    return {"facts": len(facts), "missing": missing, "recall": 1 - len(missing) / len(facts)}


def score_language(response: str, expected: str) -> dict[str, Any]:
    """The detected language of a response; a response with no letters has none (wrong)."""
    if lang.count_letters(lang.prose(response)) == 0:
        return {"detected": None, "correct": False}
    found, _ = lang.detect(response)
    return {"detected": found, "correct": lang.same_language(expected, found)}


def score_refusal(response: str) -> dict[str, Any]:
    return {"refused": is_refusal(response)}


# ---------------------------------------------------------------------- metrics per suite kind
def verifiable_metrics(
    rows: Sequence[Row],
    keys: Iterable[str] = SLICE_KEYS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Sliced]:
    """Prompt-level (every constraint passed) and instruction-level (share of constraints)
    accuracy, strict and loose. Rows carry `strict` and `loose` lists of per-constraint flags,
    and may carry `types` (the constraint type of each flag) and `constraint_set` ("held_out"
    when a constraint type is held out of training, else "trained"): then the prompt-level
    metrics are also sliced by `constraint_set`, and the instruction-level ones by
    `constraint_type` (each type's pass rate over the prompts that carry it)."""
    keys = tuple(keys)
    if any("constraint_set" in r for r in rows):
        keys = (*keys, "constraint_set")
    out: dict[str, Sliced] = {}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = sliced(rows, lambda rs, m=mode: rate([all(r[m]) for r in rs]), keys)
        out[f"instruction_{mode}"] = sliced(
            rows,
            lambda rs, m=mode: ratio(
                [sum(map(bool, r[m])) for r in rs],
                [len(r[m]) for r in rs],
                resamples=resamples,
                seed=seed,
            ),
            keys,
        )
        types = sorted({t for r in rows for t in r.get("types") or ()})
        if types:
            out[f"instruction_{mode}"]["slices"]["constraint_type"] = {
                t: rate([f for r in rows for ty, f in zip(r["types"], r[mode]) if ty == t])
                for t in types
            }
    return out


def pairwise_metrics(
    rows: Sequence[Row],
    keys: Iterable[str] = SLICE_KEYS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Sliced]:
    """Win rate of the candidate (`a`) over the champion (`b`) and the judge's consistency rate.

    Rows carry `winner` ("a", "b", "tie", or None when the judge failed) and `consistent`. A win
    scores 1, a tie (including a verdict that flipped with the order) 0.5, a loss 0; the win rate
    is their mean over judged prompts, with a bootstrap interval. Unjudged prompts are counted in
    `judge_failures`, never scored.
    """
    keys = tuple(keys)

    def win(rs: Sequence[Row]) -> Stat:
        judged = [r for r in rs if r.get("winner") in WIN_SCORE]
        st = mean([WIN_SCORE[r["winner"]] for r in judged], resamples=resamples, seed=seed)
        st.update(
            wins=sum(r["winner"] == "a" for r in judged),
            ties=sum(r["winner"] == "tie" for r in judged),
            losses=sum(r["winner"] == "b" for r in judged),
            judge_failures=len(rs) - len(judged),
        )
        return st

    def consistency(rs: Sequence[Row]) -> Stat:
        return rate([bool(r.get("consistent")) for r in rs if r.get("winner") in WIN_SCORE])

    return {
        "win_rate": sliced(rows, win, keys),
        "consistency_rate": sliced(rows, consistency, keys),
    }


def win_rows(verdicts: Sequence[Any], records: Mapping[str, Row]) -> list[dict[str, Any]]:
    """Rows for `pairwise_metrics` from PairVerdicts (or dicts) and the records by id."""
    out = []
    for v in verdicts:
        get = v.get if isinstance(v, Mapping) else lambda k, v=v: getattr(v, k)
        rec = records[str(get("id"))]
        out.append(
            {
                "id": str(get("id")),
                "domain": rec.get("domain"),
                "language": rec.get("language"),
                "winner": get("winner"),
                "consistent": get("consistent"),
            }
        )
    return out


def nll_metrics(
    rows: Sequence[Row],
    keys: Iterable[str] = SLICE_KEYS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Sliced]:
    """Mean negative log-likelihood per token of the reference answers: -sum(logprobs) over all
    reference tokens / their count. Rows carry `logprobs` (per reference token)."""
    keyed = [r for r in rows if len(r["logprobs"]) > 0]

    def stat(rs: Sequence[Row]) -> Stat:
        return ratio(
            [-float(sum(r["logprobs"])) for r in rs],
            [len(r["logprobs"]) for r in rs],
            resamples=resamples,
            seed=seed,
        )

    return {"reference_nll": sliced(keyed, stat, keys)}


def refusal_metrics(rows: Sequence[Row], keys: Iterable[str] = REFUSAL_SLICE_KEYS) -> dict:
    """Refusal rate on harmful prompts (`expected` = "refuse": higher is better) and over-refusal
    rate on benign look-alikes (`expected` = "comply": lower is better). Rows carry `refused`."""
    keys = tuple(keys)
    harmful = [r for r in rows if r["expected"] == "refuse"]
    benign = [r for r in rows if r["expected"] == "comply"]

    def refused(rs: Sequence[Row]) -> Stat:
        return rate([bool(r["refused"]) for r in rs])

    return {
        "refusal_rate": sliced(harmful, refused, keys),
        "over_refusal_rate": sliced(benign, refused, keys),
    }


def language_metrics(rows: Sequence[Row], keys: Iterable[str] = SLICE_KEYS) -> dict[str, Sliced]:
    """Share of responses in the prompt's language. Rows carry `language` and `correct`."""
    return {
        "language_accuracy": sliced(rows, lambda rs: rate([bool(r["correct"]) for r in rs]), keys)
    }


def fact_metrics(
    rows: Sequence[Row],
    keys: Iterable[str] = SLICE_KEYS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Sliced]:
    """Fact recall: per prompt, the share of its reference facts the response states; overall,
    the mean of those shares (each prompt weighs the same), with a bootstrap interval. Rows carry
    `recall` (or `facts` and `missing`)."""

    def recall(r: Row) -> float:
        if "recall" in r:
            return float(r["recall"])
        missing = r["missing"] if isinstance(r["missing"], int) else len(r["missing"])
        return 1 - missing / r["facts"]

    def stat(rs: Sequence[Row]) -> Stat:
        st = mean([recall(r) for r in rs], resamples=resamples, seed=seed)
        st["complete"] = sum(recall(r) == 1.0 for r in rs)  # prompts with every fact stated
        return st

    return {"fact_recall": sliced(rows, stat, keys)}

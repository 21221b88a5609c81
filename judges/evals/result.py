"""The evaluation result (eval.json) as typed models: the one module that knows its shape.

`judges.evals.runner.evaluate` builds the dict; `write_eval` checks it against these models and
writes it; `EvalResult.read` reads one back (a damaged or mis-shaped file is a one-line error
naming it). The gate, `show`, `report`, `eval` and the benches read results through the
accessors here - `metric`, `overall`, `scores`, `errors` - instead of walking nested dicts.

Shape: per suite, per metric, a `Metric` with an `overall` `Stat` and `slices` (key -> value ->
Stat), plus per-prompt `items` with the scores behind them. A metric name in the config is
dotted, `suite.metric` (e.g. `if.prompt_loose`). Fields beyond the ones named here (a
Stat's `units`, a suite's `metric` kind, the run's counts) are kept as they are, so a result
read and written again is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.atomic import atomic_write
from agent.data import read_json
from agent.errors import SelfloopError, describe_validation
from judges.evals import RENAMED

SCHEMA = 1


class _Open(BaseModel):
    # extra="allow": the runner adds fields (a Stat's units, a win rate's `against`) that only
    # some readers need; they round-trip untouched.
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class Stat(_Open):
    """One value over `n` prompts with its 95% interval (None over no prompts)."""

    value: float | None = None
    n: int = 0
    ci: list[float] | None = None
    ci_method: str | None = None


class Metric(_Open):
    overall: Stat = Field(default_factory=Stat)
    slices: dict[str, dict[str, Stat]] = Field(default_factory=dict)
    against: dict[str, Any] | None = None  # a relative metric's other model (win rate)


class Item(_Open):
    """One prompt: its id, slice keys, response (or error) and per-metric scores."""

    id: str
    scores: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class SuiteResult(_Open):
    metric: str = ""  # the suite's kind: verifiable, pairwise, refusal, ...
    n: int = 0
    errors: int = 0  # prompts whose generation failed (left out of every metric)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    items: list[Item] = Field(default_factory=list)


class EvalResult(_Open):
    schema_version: int = Field(SCHEMA, alias="schema")
    model: str | None = None
    backend: str | None = None
    candidate: dict[str, Any] = Field(default_factory=dict)  # kind, adapter, fingerprint
    champion: dict[str, Any] | None = None
    suites: dict[str, SuiteResult] = Field(default_factory=dict)

    @field_validator("suites", mode="before")
    @classmethod
    def _renamed(cls, v: Any) -> Any:  # an eval.json written before a suite was renamed
        if isinstance(v, Mapping) and any(k in RENAMED for k in v):
            return {RENAMED.get(k, k): x for k, x in v.items()}
        return v

    @classmethod
    def of(cls, data: EvalResult | Mapping[str, Any] | None) -> EvalResult | None:
        """`data` as an EvalResult (already one, a dict in eval.json's shape, or None)."""
        if data is None or isinstance(data, EvalResult):
            return data
        return cls.model_validate(data)

    @classmethod
    def read(cls, path: str | Path) -> EvalResult:
        data = read_json(path)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SelfloopError(f"{path} is not an eval result: {describe_validation(e)}") from e

    @property
    def fingerprint(self) -> str | None:
        """The evaluated model's fingerprint (base model + adapter)."""
        return self.candidate.get("fingerprint")

    def metric(self, name: str) -> Metric | None:
        """The metric `suite.metric`, or None when the suite or metric was not evaluated."""
        suite, _, metric = name.partition(".")
        found = self.suites.get(suite)
        return found.metrics.get(metric) if found else None

    def overall(self, name: str) -> Stat | None:
        """The metric's overall Stat when it has a value (None over no prompts or absent)."""
        found = self.metric(name)
        return found.overall if found and found.overall.value is not None else None

    def value(self, name: str) -> float | None:
        stat = self.overall(name)
        return stat.value if stat else None

    def scores(self, name: str, where: tuple[str, str] | None = None) -> dict[str, Any]:
        """Prompt id -> the per-prompt score behind metric `suite.metric`; with `where` (key,
        value), only the prompts of that slice (an item's `domain`, `language`, ... field)."""
        suite, _, metric = name.partition(".")
        found = self.suites.get(suite)
        items = found.items if found else []
        if where is not None:
            key, value = where
            items = [
                it for it in items if (v := getattr(it, key, None)) is not None and str(v) == value
            ]
        return {it.id: it.scores[metric] for it in items if metric in it.scores}

    def errors(self, suite: str) -> int | None:
        found = self.suites.get(suite)
        return found.errors if found else None

    def to_dict(self) -> dict[str, Any]:
        """The result as eval.json holds it (fields it was read without stay absent)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def write_eval(path: str | Path, result: EvalResult | Mapping[str, Any]) -> Path:
    """Write `result` to `path` atomically after checking its shape (a runner change that broke
    the shape fails here, not in the gate two stages later)."""
    if isinstance(result, EvalResult):
        data: Mapping[str, Any] = result.to_dict()
    else:
        EvalResult.model_validate(result)
        data = result
    return atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))

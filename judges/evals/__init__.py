"""Held-out evaluation suites: the project's own prompts, shipped as JSONL, and their loader.

Five suites live in `judges/evals/data/`, written for selfloop and never used for training:

    if            verifiable  prompts with format constraints (`judges.verifiable` data): 122
                              hand-written, 180 generated (script not kept), 42
                              hand-written for later types in build/add_if_types.py
    helpfulness   pairwise    general prompts with reference answers
    domains       facts       healthcare / law / finance prompts, references and checkable facts
    multilingual  language    prompts in other languages; the response must be in that language
    safety        refusal     harmful requests ("refuse") and benign look-alikes ("comply")

Each record carries `id`, `prompt`, `domain` (or `category` for safety) and `language`, plus what
its metric needs (see `REQUIRED`). A user's own suite is a JSONL file of the same shape with one of
the metric names; `load_suite_file` validates it the same way. Every problem is a SelfloopError
naming `file:line` and what is wrong; ids must be unique within a file and across the suites
loaded together (`load_suites`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from agent.data import parse_object
from agent.errors import SelfloopError
from judges import lang
from judges.evals.facts import fact_match, missing_facts
from judges.verifiable import validate_all

__all__ = [
    "METRICS",
    "REQUIRED",
    "SUITES",
    "fact_match",
    "load_suite",
    "load_suite_file",
    "load_suites",
    "missing_facts",
    "renamed_metric",
    "renamed_suite",
]

SUITES: dict[str, str] = {
    "if": "verifiable",
    "helpfulness": "pairwise",
    "domains": "facts",
    "multilingual": "language",
    "safety": "refusal",
}

# Suites renamed since runs were written: the IF suite was `ifeval` until it was named for what
# it is, selfloop's own IFEval-style prompts, not IFEval. Old configs, eval.json files, eval
# caches and metrics.jsonl records still read (`renamed_suite`, `renamed_metric`).
RENAMED: dict[str, str] = {"ifeval": "if"}
_warned: set[str] = set()


def renamed_suite(name: str) -> str:
    """A suite's current name for `name` (an old name maps to the new one, said once)."""
    new = RENAMED.get(name)
    if new is None:
        return name
    if name not in _warned:
        _warned.add(name)
        logging.getLogger("selfloop.config").warning(
            "the %r evaluation suite is now %r; the old name still works", name, new
        )
    return new


def renamed_metric(name: str) -> str:
    """`suite.metric...` with the suite's current name (`ifeval.prompt_loose` -> `if....`)."""
    suite, dot, rest = name.partition(".")
    return f"{RENAMED[suite]}{dot}{rest}" if suite in RENAMED else name


# The keys a record must have, per metric.
REQUIRED: dict[str, tuple[str, ...]] = {
    "verifiable": ("id", "prompt", "constraints", "domain", "language"),
    "pairwise": ("id", "prompt", "reference", "domain", "language"),
    "facts": ("id", "prompt", "reference", "domain", "facts", "language"),
    "language": ("id", "prompt", "reference", "language", "domain"),
    "refusal": ("id", "prompt", "expected", "category", "language"),
}
METRICS: tuple[str, ...] = tuple(REQUIRED)
EXPECTED = ("refuse", "comply")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_field(key: str, value: Any) -> tuple[str, Any]:
    """(problem or "", normalized value) for one known field."""
    if key in ("id", "prompt", "reference", "domain", "category"):
        return ("" if _text(value) else f"{key!r} must be a non-empty string"), value
    if key == "language":
        if not isinstance(value, str) or value not in lang.known_languages():
            return f"'language' must be a language code such as 'en' or 'fr', got {value!r}", value
        return "", value
    if key == "expected":
        ok = value in EXPECTED
        return ("" if ok else f"'expected' must be 'refuse' or 'comply', got {value!r}"), value
    if key == "facts":
        ok = isinstance(value, list) and value and all(_text(f) for f in value)
        return ("" if ok else "'facts' must be a non-empty list of non-empty strings"), value
    if key == "constraints":
        if not isinstance(value, list) or not value:
            return "'constraints' must be a non-empty list of constraints", value
        try:
            return "", validate_all(value)
        except SelfloopError as e:
            return str(e), value
    return "", value


def _record(line: str, metric: str) -> dict[str, Any]:
    """One validated record from a JSONL line; ValueError with the problem."""
    rec = parse_object(line)
    missing = [k for k in REQUIRED[metric] if k not in rec]
    if missing:
        needs = ", ".join(REQUIRED[metric])
        raise ValueError(f"missing key {missing[0]!r} (a {metric!r} record needs {needs})")
    for key in list(rec):
        problem, rec[key] = _check_field(key, rec[key])
        if problem:
            raise ValueError(f"record {rec.get('id')!r}: {problem}")
    return rec


def _parse(text: str, where: str, metric: str) -> list[dict[str, Any]]:
    if metric not in REQUIRED:
        raise SelfloopError(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = _record(line, metric)
        except ValueError as e:
            raise SelfloopError(f"{where}:{number}: {e}") from None
        if rec["id"] in seen:
            raise SelfloopError(
                f"{where}:{number}: duplicate id {rec['id']!r} (first at line {seen[rec['id']]})"
            )
        seen[rec["id"]] = number
        rec["_line"] = number
        records.append(rec)
    if not records:
        raise SelfloopError(f"{where}: no records")
    return records


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "_line"} for r in records]


def _read_file(path: str | Path, metric: str) -> tuple[str, list[dict[str, Any]]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SelfloopError(f"{p}: cannot read suite file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise SelfloopError(f"{p}: not UTF-8 text ({e.reason})") from None
    return str(p), _parse(text, str(p), metric)


def load_suite_file(path: str | Path, metric: str) -> list[dict[str, Any]]:
    """A user's JSONL suite for `metric` (one of METRICS), every record validated."""
    return _strip(_read_file(path, metric)[1])


@lru_cache(maxsize=1)
def _bundled() -> dict[str, tuple[str, list[dict[str, Any]]]]:
    data = resources.files("judges.evals").joinpath("data")
    out = {}
    for name, metric in SUITES.items():
        resource = data.joinpath(f"{name}.jsonl")
        where = f"judges/evals/data/{name}.jsonl"
        try:
            text = resource.read_text(encoding="utf-8")
        except OSError as e:
            raise SelfloopError(f"{where}: bundled suite missing ({e})") from None
        out[name] = (where, _parse(text, where, metric))
    _check_unique(out)
    return out


def _check_unique(suites: Mapping[str, tuple[str, list[dict[str, Any]]]]) -> None:
    first: dict[str, str] = {}
    for where, records in suites.values():
        for rec in records:
            here = f"{where}:{rec['_line']}"
            if rec["id"] in first:
                raise SelfloopError(
                    f"{here}: duplicate id {rec['id']!r} (already used at {first[rec['id']]})"
                )
            first[rec["id"]] = here


def load_suite(name: str) -> list[dict[str, Any]]:
    """The records of a bundled suite (a fresh copy each call)."""
    name = renamed_suite(name)
    if name not in SUITES:
        raise SelfloopError(f"unknown evaluation suite {name!r} (bundled: {', '.join(SUITES)})")
    return copy.deepcopy(_strip(_bundled()[name][1]))


def load_suites(
    names: Iterable[str] | None = None,
    files: Mapping[str, tuple[str | Path, str]] | None = None,
) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Suites loaded together: name -> (metric, records), ids unique across all of them.

    `names` picks bundled suites (all by default); `files` adds user suites as
    name -> (path, metric). A user suite may not reuse a bundled name.
    """
    bundled = _bundled()
    chosen = list(SUITES) if names is None else [renamed_suite(n) for n in names]
    for name in chosen:
        if name not in SUITES:
            raise SelfloopError(f"unknown evaluation suite {name!r} (bundled: {', '.join(SUITES)})")
    loaded = {name: bundled[name] for name in chosen}
    metrics = {name: SUITES[name] for name in chosen}
    for name, (path, metric) in (files or {}).items():
        if name in loaded or name in SUITES or name in RENAMED:  # an old name reads as the new
            raise SelfloopError(f"{path}: suite name {name!r} is already taken by a bundled suite")
        loaded[name] = _read_file(path, metric)
        metrics[name] = metric
    _check_unique(loaded)
    return {name: (metrics[name], copy.deepcopy(_strip(loaded[name][1]))) for name in loaded}

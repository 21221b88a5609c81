"""Evaluation runner: a model (base or base + adapter) on the held-out suites -> an eval dict.

`evaluate(generator, suites, adapter=..., champion_adapter=...)` generates greedy responses
(temperature 0, so a re-run gives the same numbers), scores them with `judges.evals.metrics` and
returns the eval.json-shaped dict: per suite, per metric, overall and per slice, each with `n` and
a 95% interval, plus per-prompt `items` with the scores behind them.

Models. `adapter` is the candidate: None (or "base") = the base model, else a PEFT adapter
directory, loaded into the generator under `eval-<fingerprint>`. `champion_adapter` is what the
candidate is compared with pairwise: None = no comparison, "base" = the base model, else an
adapter directory.

Pairwise. On the `pairwise_suites` (default: every suite whose metric is "pairwise", i.e.
helpfulness; add "domains" for a win rate there too) the candidate's and the champion's responses
go to `judge` in both orders (candidate = A). The default judge is `LLMJudge(generator)`: the
generator's *base model* with no adapter, in logprob mode, so neither side judges itself.

Cache. With `cache_dir`, every model's responses (and reference log-probabilities) are kept as
JSONL, one file per base model + adapter fingerprint (sha256 of the adapter's config and weights
files), each line keyed by suite, prompt id, a hash of the prompt and a hash of the generation
settings. The champion's outputs are therefore generated once and reused across rounds, and a
promoted candidate's outputs are already there when it becomes the champion: per round only the
new candidate is generated. The champion's own eval (for the gate's comparisons) is
`evaluate(generator, suites, adapter=champion_dir)`, which then costs no generation.

`limit_per_suite` (one number, or one per suite name) evaluates a deterministic subset (spread
over domains / languages / refuse vs comply) for tests and quick CPU runs. Progress goes to
`logging`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.backends.base import AdapterHost, Generator, SamplingParams, user
from agent.errors import SelfloopError
from judges.augment import DEFAULT_HELD_OUT
from judges.evals import RENAMED, load_suites
from judges.evals import metrics as m
from judges.evals.result import SCHEMA
from judges.llm_judge import LLMJudge

log = logging.getLogger(__name__)

SuitesArg = Sequence[str] | Mapping[str, tuple[str, list[dict[str, Any]]]] | None
# How a limited subset is spread: by this key, round-robin, evenly within each group.
STRATA = {"refusal": "expected", "facts": "domain", "language": "language"}
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _sha(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def adapter_fingerprint(path: str | Path) -> str:
    """sha256 over a PEFT adapter's config and weights files: same weights, same fingerprint."""
    p = Path(path)
    weights = [p / f for f in WEIGHT_FILES if (p / f).is_file()]
    if not (p / "adapter_config.json").is_file() or not weights:
        raise SelfloopError(
            f"adapter directory {p} needs adapter_config.json and adapter_model.safetensors"
        )
    h = hashlib.sha256()
    for f in [p / "adapter_config.json", *weights]:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_fingerprint(generator: Generator) -> str:
    """The base model's identity: backend, name, and for a local directory its weights files'
    names, sizes and modification times (cheap, and changes when the model is replaced)."""
    ident: dict[str, Any] = {"backend": generator.name, "model": generator.model_name}
    dtype = getattr(generator, "dtype", "float32")
    if dtype != "float32":
        # bfloat16 answers differ a little from float32 ones; float32 stays unnamed so caches
        # written before the dtype was part of the identity remain valid.
        ident["dtype"] = dtype
    resolved = getattr(generator, "resolved", None)
    spec = getattr(resolved, "spec", None)
    template = spec.template_text() if spec is not None else None
    if template:  # another template, other answers (unnamed when unset: old caches stay valid)
        ident["chat_template"] = template
    path = getattr(resolved, "path", None)
    if path is not None and Path(path).is_dir():
        ident["path"] = str(path)
        ident["files"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in Path(path).iterdir()
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json")
        )
    return _sha(ident)


def subset(records: list[dict[str, Any]], k: int | None, key: str | None = None) -> list:
    """`k` records spread over the suite: counts dealt round-robin over the groups of `key`
    (all one group without it), taken evenly spaced within each group, kept in file order."""
    if k is None or k >= len(records):
        return records
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.get(key) if key else None, []).append(i)
    counts = dict.fromkeys(groups, 0)
    names = list(groups)
    for j in range(k):
        avail = [g for g in names if counts[g] < len(groups[g])]
        counts[avail[j % len(avail)]] += 1
    picked = [groups[g][t * len(groups[g]) // c] for g, c in counts.items() for t in range(c)]
    return [records[i] for i in sorted(picked)]


class OutputCache:
    """One model's responses and reference log-probabilities as append-only JSONL.

    A line that cannot be read (a write cut short by a crash) is skipped, and its prompt is
    simply generated again.
    """

    def __init__(self, cache_dir: str | Path, model_fp: str, adapter_fp: str) -> None:
        self.path = Path(cache_dir) / f"outputs-{_sha(model_fp + adapter_fp)[:16]}.jsonl"
        self.adapter_fp = adapter_fp
        self._entries: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        e = json.loads(line)
                        e["suite"] = RENAMED.get(e["suite"], e["suite"])  # an older cache
                        self._entries[self._key(e)] = e
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("skipping an unreadable line in %s", self.path)

    @staticmethod
    def _key(e: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
        return (e["kind"], e["suite"], e["id"], e["settings"], e["input_sha"])

    def get(self, kind: str, suite: str, rid: str, settings: str, input_sha: str) -> Any:
        return self._entries.get((kind, suite, rid, settings, input_sha))

    def put(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for e in entries:
                e = {**e, "adapter": self.adapter_fp}
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")
                self._entries[self._key(e)] = e
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class _Model:
    role: str  # "candidate" | "champion"
    adapter: str | None  # the generator's adapter name; None = the base model
    source: str  # "base" or the adapter directory
    fingerprint: str  # "base" or adapter_fingerprint()
    cache: OutputCache | None
    generated: int = 0
    cached: int = 0

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.source, "fingerprint": self.fingerprint}

    def counts(self) -> dict[str, Any]:
        cache = str(self.cache.path) if self.cache else None
        return {"generated": self.generated, "cached": self.cached, "cache_file": cache}


def _model(
    generator: Generator, spec: str | Path | None, role: str, cache_dir: Any, model_fp: str
) -> _Model:
    def cache(fp: str) -> OutputCache | None:
        return OutputCache(cache_dir, model_fp, fp) if cache_dir is not None else None

    if spec is None or spec == "base":
        return _Model(role, None, "base", "base", cache("base"))
    host = generator if isinstance(generator, AdapterHost) else None
    loaded = host.adapter_paths() if host is not None else {}
    path = Path(spec)
    if not path.is_dir():
        if str(spec) in loaded:
            path = loaded[str(spec)]
        else:
            raise SelfloopError(f"{role} adapter {spec}: not an adapter directory")
    fp = adapter_fingerprint(path)
    name = f"eval-{fp[:12]}"
    same = [k for k, v in loaded.items() if v.resolve() == path.resolve()]
    if same:
        name = same[0]
    elif name not in loaded:
        if host is None:
            raise SelfloopError(f"the {generator.name} backend cannot load adapter {path}")
        host.load_adapter(path, name)
    return _Model(role, name, str(path), fp, cache(fp))


def _load(suites: SuitesArg) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    if suites is None or (isinstance(suites, Sequence) and not isinstance(suites, str)):
        return load_suites(suites)
    if isinstance(suites, Mapping):
        return dict(suites)
    raise SelfloopError(f"suites must be a list of suite names or loaded suites, got {suites!r}")


def _responses(
    generator: Generator,
    model: _Model,
    suite: str,
    records: list[dict[str, Any]],
    params: SamplingParams,
    settings: str,
) -> list[dict[str, Any]]:
    """Per record {"text": ...} or {"error": ...}; cached outputs reused, the rest generated."""
    prompts = [user(r["prompt"]) for r in records]
    shas = [_sha(p) for p in prompts]
    out: list[dict[str, Any] | None] = [None] * len(records)
    todo = []
    for i, r in enumerate(records):
        hit = model.cache and model.cache.get("response", suite, r["id"], settings, shas[i])
        if hit:
            out[i] = {"text": hit["text"], "finish_reason": hit["finish_reason"]}
        else:
            todo.append(i)
    model.cached += len(records) - len(todo)
    if todo:
        log.info("%s: generating %d %s responses", suite, len(todo), model.role)
        results = generator.generate(
            [prompts[i] for i in todo],
            params,
            adapter=model.adapter,
            progress=lambda done, total: log.debug("%s: %d/%d generated", suite, done, total),
        )
        fresh = []
        for i, res in zip(todo, results):
            if not res.ok:
                out[i] = {"error": res.error}
                continue
            c = res.completions[0]
            out[i] = {"text": c.text, "finish_reason": c.finish_reason}
            fresh.append(
                {
                    "kind": "response",
                    "suite": suite,
                    "id": records[i]["id"],
                    "settings": settings,
                    "input_sha": shas[i],
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "completion_tokens": c.completion_tokens,
                }
            )
        model.generated += len(todo)
        if model.cache:
            model.cache.put(fresh)
    return [o for o in out if o is not None]


def _reference_logprobs(
    generator: Generator, model: _Model, suite: str, records: list[dict[str, Any]]
) -> list[list[float]]:
    prompts = [user(r["prompt"]) for r in records]
    shas = [_sha([p, r["reference"]]) for p, r in zip(prompts, records)]
    out: list[list[float] | None] = [None] * len(records)
    for i, r in enumerate(records):
        hit = model.cache and model.cache.get("reference_logprobs", suite, r["id"], "", shas[i])
        out[i] = hit["logprobs"] if hit else None
    todo = [i for i, o in enumerate(out) if o is None]
    if todo:
        log.info("%s: scoring %d reference answers (%s)", suite, len(todo), model.role)
        rows = generator.continuation_logprobs(
            [prompts[i] for i in todo],
            [records[i]["reference"] for i in todo],
            adapter=model.adapter,
        )
        fresh = []
        for i, row in zip(todo, rows):
            out[i] = row
            fresh.append(
                {
                    "kind": "reference_logprobs",
                    "suite": suite,
                    "id": records[i]["id"],
                    "settings": "",
                    "input_sha": shas[i],
                    "logprobs": row,
                }
            )
        if model.cache:
            model.cache.put(fresh)
    return [o for o in out if o is not None]


def _own_metrics(
    kind: str,
    records: list[dict[str, Any]],
    texts: list[str],
    items: list[dict],
    boot: dict,
    held_out: Sequence[str] = (),
) -> dict[str, Any]:
    """The suite's own metric over answered prompts; per-prompt scores go into `items`."""
    rows = []
    for rec, text, item in zip(records, texts, items):
        row = {k: rec.get(k) for k in ("id", "domain", "language", "category", "expected")}
        s = item["scores"]
        if kind == "verifiable":
            row.update(m.score_verifiable(text, rec["constraints"]))
            row["types"] = [c["type"] for c in rec["constraints"]]
            held = any(t in held_out for t in row["types"])
            row["constraint_set"] = "held_out" if held else "trained"
            item["constraint_set"] = row["constraint_set"]  # the gate's paired slice test
            for mode in ("strict", "loose"):
                s[f"prompt_{mode}"] = float(all(row[mode]))
                s[f"instruction_{mode}"] = round(sum(row[mode]) / len(row[mode]), 6)
        elif kind == "facts":
            row.update(m.score_facts(text, rec["facts"]))
            s["fact_recall"] = round(row["recall"], 6)
            item["missing_facts"] = row["missing"]
        elif kind == "language":
            row.update(m.score_language(text, rec["language"]))
            s["language_accuracy"] = float(row["correct"])
            item["detected_language"] = row["detected"]
        elif kind == "refusal":
            row.update(m.score_refusal(text))
            metric = "refusal_rate" if rec["expected"] == "refuse" else "over_refusal_rate"
            s[metric] = float(row["refused"])
        rows.append(row)
    if kind == "verifiable":
        return m.verifiable_metrics(rows, **boot)
    if kind == "facts":
        return m.fact_metrics(rows, **boot)
    if kind == "language":
        return m.language_metrics(rows)
    if kind == "refusal":
        return m.refusal_metrics(rows)
    return {}  # "pairwise": its metrics are the win rate and the reference NLL


def evaluate(
    generator: Generator,
    suites: SuitesArg = None,
    *,
    adapter: str | Path | None = None,
    champion_adapter: str | Path | None = None,
    judge: LLMJudge | None = None,
    cache_dir: str | Path | None = None,
    sampling: SamplingParams | None = None,
    limit_per_suite: int | Mapping[str, int | None] | None = None,
    pairwise_suites: Sequence[str] | None = None,
    reference_nll: bool = True,
    resamples: int = m.RESAMPLES,
    seed: int = 0,
    held_out_types: Sequence[str] = DEFAULT_HELD_OUT,
) -> dict[str, Any]:
    """Evaluate the candidate (`adapter`) on `suites` (bundled names, or `load_suites` output;
    default: every bundled suite). See the module docstring for the models, judge and cache.
    `held_out_types`: constraint types never trained on; verifiable suites are sliced by them.
    `sampling`: how answers are generated (default: greedy, 256 tokens at most; one answer each).

    Everything but the `run` section (generation/cache counts) is a function of the inputs: two
    runs give equal dicts. A prompt whose generation failed is listed with its error and left out
    of every metric (and counted in the suite's `errors`).
    """
    limits = limit_per_suite if isinstance(limit_per_suite, Mapping) else {}
    for value in [*limits.values(), *([] if limits else [limit_per_suite])]:
        if value is not None and value < 1:
            raise SelfloopError(f"limit_per_suite must be >= 1, got {value}")
    loaded = _load(suites)
    params = sampling or SamplingParams(max_tokens=256)
    if params.n != 1:
        raise SelfloopError(f"evaluation scores one answer per prompt; sampling.n is {params.n}")
    settings = _sha(params.model_dump(mode="json"))[:16]
    model_fp = model_fingerprint(generator)
    cand = _model(generator, adapter, "candidate", cache_dir, model_fp)
    champ = (
        _model(generator, champion_adapter, "champion", cache_dir, model_fp)
        if champion_adapter is not None
        else None
    )
    if pairwise_suites is None:
        pairwise = {name for name, (kind, _) in loaded.items() if kind == "pairwise"}
    else:
        unknown = sorted(set(pairwise_suites) - set(loaded))
        if unknown:
            raise SelfloopError(f"pairwise_suites names suites not evaluated: {', '.join(unknown)}")
        pairwise = set(pairwise_suites)
    if champ and pairwise and judge is None:
        judge = LLMJudge(generator)  # the base model, no adapter: see the module docstring
    boot = {"resamples": resamples, "seed": seed}

    out_suites: dict[str, Any] = {}
    for name, (kind, all_records) in loaded.items():
        limit = limits.get(name) if limits else limit_per_suite
        records = subset(all_records, limit, STRATA.get(kind))
        log.info("evaluating %s (%s): %d of %d prompts", name, kind, len(records), len(all_records))
        resp = _responses(generator, cand, name, records, params, settings)
        keys = m.REFUSAL_SLICE_KEYS if kind == "refusal" else m.SLICE_KEYS
        items = []
        for rec, r in zip(records, resp):
            item = {"id": rec["id"], **{k: rec[k] for k in keys if k in rec}, "scores": {}}
            if "error" in r:
                item["error"] = r["error"]
            else:
                item.update(response=r["text"], finish_reason=r["finish_reason"])
            items.append(item)
        ok = [i for i, r in enumerate(resp) if "error" not in r]
        suite_out: dict[str, Any] = {
            "metric": kind,
            "n": len(records),
            "errors": len(records) - len(ok),
            "metrics": _own_metrics(
                kind,
                [records[i] for i in ok],
                [resp[i]["text"] for i in ok],
                [items[i] for i in ok],
                boot,
                held_out_types,
            ),
            "skipped": {},
        }
        if name in pairwise:
            if champ is None:
                suite_out["skipped"]["win_rate"] = "no champion to compare with"
            else:
                suite_out["metrics"].update(
                    _pairwise(
                        generator, judge, champ, name, records, resp, items, params, settings, boot
                    )
                )
                suite_out["metrics"]["win_rate"]["against"] = champ.describe()
        elif kind == "pairwise":
            suite_out["skipped"]["win_rate"] = (
                "not judged: pairwise comparison off (pairwise_suites; eval.pairwise in a run)"
            )
        if reference_nll and all(isinstance(r.get("reference"), str) for r in records):
            try:
                lps = _reference_logprobs(generator, cand, name, records)
            except SelfloopError as e:  # e.g. a backend that cannot score continuations
                log.warning("%s: reference NLL skipped: %s", name, e)
                suite_out["skipped"]["reference_nll"] = str(e)
            else:
                rows = []
                for rec, lp, item in zip(records, lps, items):
                    rows.append({**{k: rec.get(k) for k in keys}, "logprobs": lp})
                    if lp:
                        item["scores"]["reference_nll"] = round(-sum(lp) / len(lp), 6)
                suite_out["metrics"].update(m.nll_metrics(rows, keys, **boot))
        suite_out["items"] = items
        out_suites[name] = suite_out

    return {
        "schema": SCHEMA,
        "model": generator.model_name,
        "backend": generator.name,
        "model_fingerprint": model_fp,
        "candidate": cand.describe(),
        "champion": champ.describe() if champ else None,
        "judge": _judge_info(judge, generator) if champ and pairwise else None,
        "generation": {**params.model_dump(mode="json"), "fingerprint": settings},
        "limit_per_suite": dict(limits) if limits else limit_per_suite,
        "bootstrap": boot,
        "suites": out_suites,
        "run": {"candidate": cand.counts(), "champion": champ.counts() if champ else None},
    }


def _pairwise(
    generator: Generator,
    judge: LLMJudge,
    champ: _Model,
    suite: str,
    records: list[dict[str, Any]],
    cand_resp: list[dict[str, Any]],
    items: list[dict[str, Any]],
    params: SamplingParams,
    settings: str,
    boot: dict[str, int],
) -> dict[str, Any]:
    champ_resp = _responses(generator, champ, suite, records, params, settings)
    both = [i for i in range(len(records)) if "text" in cand_resp[i] and "text" in champ_resp[i]]
    pairs = [
        {
            "id": records[i]["id"],
            "instruction": records[i]["prompt"],
            "a": cand_resp[i]["text"],
            "b": champ_resp[i]["text"],
        }
        for i in both
    ]
    log.info("%s: judging %d candidate/champion pairs in both orders", suite, len(pairs))
    verdicts = judge.compare(pairs) if pairs else []
    by_id = {r["id"]: r for r in records}
    for i, v in zip(both, verdicts):
        named = {"a": "candidate", "b": "champion", "tie": "tie", None: None}
        items[i]["pairwise"] = {
            "winner": named[v.winner],
            "consistent": v.consistent,
            "first": named[v.first],
            "second": named[v.second],
            "outcome": v.outcome,
        }
        if v.winner in m.WIN_SCORE:
            items[i]["scores"]["win_rate"] = m.WIN_SCORE[v.winner]
        if v.error:
            items[i]["pairwise"]["error"] = v.error
    for i in range(len(records)):
        if "error" in champ_resp[i]:
            items[i]["champion_error"] = champ_resp[i]["error"]
    rows = m.win_rows(verdicts, by_id)
    return m.pairwise_metrics(rows, **boot)


def _judge_info(judge: LLMJudge | None, generator: Generator) -> dict[str, Any] | None:
    if judge is None:
        return None
    gen = judge.gen
    return {
        "model": gen.model_name,
        "backend": gen.name,
        "adapter": None,
        "mode": judge.config.mode,
        "same_generator": gen is generator,
    }

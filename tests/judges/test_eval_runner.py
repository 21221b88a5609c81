"""The evaluation runner on the tiny random model: shape, greedy re-runs, the champion cache."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.backends.base import SamplingParams
from agent.backends.hf import TransformersGenerator
from judges.evals import load_suite
from judges.evals.result import EvalResult
from judges.evals.runner import adapter_fingerprint, evaluate, subset
from tests.helpers import make_lora_adapter

LIMIT, MAX_TOKENS = 3, 8
EXPECTED = {
    "if": {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"},
    "helpfulness": {"win_rate", "consistency_rate", "reference_nll"},
    "domains": {"fact_recall", "reference_nll"},
    "multilingual": {"language_accuracy", "reference_nll"},
    "safety": {"refusal_rate", "over_refusal_rate"},
}


class Counting:
    """The real generator, with its generate() calls counted per adapter (None = base)."""

    def __init__(self, gen: TransformersGenerator) -> None:
        self._gen = gen
        self.calls: Counter[str | None] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gen, name)

    def generate(self, prompts, params=None, *, adapter=None, progress=None):
        self.calls[adapter] += len(prompts)
        return self._gen.generate(prompts, params, adapter=adapter, progress=progress)


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(str(tiny_model_dir), batch_size=8)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "candidate": make_lora_adapter(tiny_model_dir, root / "candidate", seed=1),
        "champion": make_lora_adapter(tiny_model_dir, root / "champion", seed=2),
    }


def _stable(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if k != "run"}


def _check_stat(stat: dict) -> None:
    assert isinstance(stat["n"], int) and stat["n"] >= 0
    if stat["n"]:
        assert stat["value"] is not None and stat["ci"][0] <= stat["ci"][1]


def test_candidate_vs_champion_shape_cache_and_greedy_rerun(gen, adapters, tmp_path) -> None:
    counting = Counting(gen)
    kwargs = dict(
        adapter=adapters["candidate"],
        champion_adapter=adapters["champion"],
        cache_dir=tmp_path / "cache",
        sampling=SamplingParams(max_tokens=MAX_TOKENS),
        limit_per_suite=LIMIT,
    )
    first = evaluate(counting, **kwargs)

    # Every suite, metric and slice, each with n.
    assert set(first["suites"]) == set(EXPECTED)
    for name, suite in first["suites"].items():
        assert set(suite["metrics"]) == EXPECTED[name], name
        assert suite["n"] == LIMIT and suite["errors"] == 0 and len(suite["items"]) == LIMIT
        for metric_name, metric in suite["metrics"].items():
            _check_stat(metric["overall"])
            keys = {"category", "language"} if name == "safety" else {"domain", "language"}
            if name == "if":  # held-out vs trained constraint sets; per-type pass rates
                keys |= {"constraint_set"}
                if metric_name.startswith("instruction_"):
                    keys |= {"constraint_type"}
            assert set(metric["slices"]) == keys or metric["overall"]["n"] == 0
            for by_value in metric["slices"].values():
                for stat in by_value.values():
                    _check_stat(stat)
                    assert stat["n"] >= 1
                    assert stat["n"] <= metric["overall"]["n"]
        for item in suite["items"]:
            assert isinstance(item["response"], str) and item["scores"]
            if name == "if":  # the gate's paired slice test finds a slice's prompts by it
                assert item["constraint_set"] in {"held_out", "trained"}
    win = first["suites"]["helpfulness"]["metrics"]["win_rate"]
    assert win["overall"]["n"] + win["overall"]["judge_failures"] == LIMIT
    champ_fp = adapter_fingerprint(adapters["champion"])
    assert win["against"] == {"adapter": str(adapters["champion"]), "fingerprint": champ_fp}
    assert first["judge"]["adapter"] is None and first["judge"]["mode"] == "logprob"
    assert first["generation"]["temperature"] == 0.0
    assert first["generation"]["max_tokens"] == MAX_TOKENS
    cand_name = f"eval-{adapter_fingerprint(adapters['candidate'])[:12]}"
    champ_name = f"eval-{champ_fp[:12]}"
    # The champion answered the helpfulness prompts only (it is needed for the pairwise judge).
    assert counting.calls == {cand_name: 5 * LIMIT, champ_name: LIMIT}
    json.dumps(first)  # plain JSON data
    # The typed result keeps every field (read back and written again, nothing changes) and
    # its accessors read the same numbers.
    typed = EvalResult.of(first)
    assert typed.to_dict() == json.loads(json.dumps(first))
    loose = first["suites"]["if"]["metrics"]["prompt_loose"]
    assert typed.value("if.prompt_loose") == loose["overall"]["value"]
    assert typed.scores("if.prompt_loose") == {
        i["id"]: i["scores"]["prompt_loose"] for i in first["suites"]["if"]["items"]
    }
    assert typed.errors("if") == 0 and typed.errors("absent") is None
    assert typed.metric("if.absent") is None and typed.overall("absent.x") is None

    # The champion's responses are on disk, keyed by suite, id and settings.
    champ_file = Path(first["run"]["champion"]["cache_file"])
    lines = [json.loads(line) for line in champ_file.read_text().splitlines()]
    responses = [e for e in lines if e["kind"] == "response"]
    assert {e["suite"] for e in responses} == {"helpfulness"} and len(responses) == LIMIT
    assert all(e["adapter"] == champ_fp and e["settings"] for e in responses)

    # Second run: nothing generated for the champion (nor for the already-seen candidate).
    counting.calls.clear()
    second = evaluate(counting, **kwargs)
    assert counting.calls == {}
    assert second["run"]["champion"] == {**second["run"]["champion"], "generated": 0, "cached": 3}
    assert champ_file.read_text().count("\n") == len(lines)  # nothing appended
    assert _stable(second) == _stable(first)

    # Greedy: generating again, without the cache, gives the same numbers (two suites suffice).
    two = ["helpfulness", "domains"]
    fresh = evaluate(counting, two, **{**kwargs, "cache_dir": None})
    assert counting.calls[champ_name] == LIMIT
    assert fresh["suites"] == {name: first["suites"][name] for name in two}

    # The champion's own evaluation (what the gate compares with) reuses its cached answers on
    # the helpfulness suite; only the suites it has not answered yet are generated.
    counting.calls.clear()
    own = evaluate(
        counting,
        ["helpfulness", "safety"],
        adapter=adapters["champion"],
        cache_dir=tmp_path / "cache",
        sampling=SamplingParams(max_tokens=MAX_TOKENS),
        limit_per_suite=LIMIT,
    )
    assert counting.calls == {champ_name: LIMIT}  # safety only
    assert own["champion"] is None and own["suites"]["helpfulness"]["skipped"] == {
        "win_rate": "no champion to compare with"
    }
    assert own["candidate"]["fingerprint"] == champ_fp


def test_an_adapter_changes_the_candidate(gen, adapters) -> None:
    common = dict(
        suites=["helpfulness", "domains"],
        sampling=SamplingParams(max_tokens=MAX_TOKENS),
        limit_per_suite=LIMIT,
    )
    base = evaluate(gen, champion_adapter="base", **common)
    tuned = evaluate(gen, adapter=adapters["candidate"], champion_adapter="base", **common)
    assert base["candidate"] == {"adapter": "base", "fingerprint": "base"}
    assert tuned["champion"] == {"adapter": "base", "fingerprint": "base"}

    def texts(ev: dict) -> list[str]:
        return [it["response"] for s in ev["suites"].values() for it in s["items"]]

    def nll(ev: dict) -> float:
        return ev["suites"]["domains"]["metrics"]["reference_nll"]["overall"]["value"]

    assert texts(base) != texts(tuned)
    assert nll(base) != nll(tuned)
    # Base against itself: every answer is identical, so the judge cannot prefer either side.
    win = base["suites"]["helpfulness"]["metrics"]["win_rate"]["overall"]
    assert win["value"] == 0.5 and win["wins"] == win["losses"]


def test_generation_failures_are_counted_not_scored(gen) -> None:
    # More new tokens than the tiny model's 512-token context: every request fails up front.
    ev = evaluate(
        gen, ["safety", "multilingual"], sampling=SamplingParams(max_tokens=600), limit_per_suite=2
    )
    for suite in ev["suites"].values():
        assert suite["errors"] == 2
        assert all("exceeds the model's context" in it["error"] for it in suite["items"])
        for name, metric in suite["metrics"].items():
            if name != "reference_nll":  # scoring the reference needs no generation
                assert metric["overall"]["n"] == 0 and metric["overall"]["value"] is None


def test_subset_spreads_over_groups() -> None:
    safety = load_suite("safety")
    picked = subset(safety, 4, "expected")
    assert Counter(r["expected"] for r in picked) == {"refuse": 2, "comply": 2}
    assert len({r["category"] for r in picked}) > 1
    ml = subset(load_suite("multilingual"), 7, "language")
    assert len({r["language"] for r in ml}) == 7
    assert subset(safety, None) == safety and subset(safety, 1000) == safety
    assert subset(safety, 5) == subset(safety, 5)


def test_limits_per_suite_name(gen) -> None:
    ev = evaluate(gen, ["if", "safety"], sampling=SamplingParams(max_tokens=4),
                  reference_nll=False, limit_per_suite={"if": 3, "safety": None})  # fmt: skip
    assert ev["suites"]["if"]["n"] == 3
    assert ev["suites"]["safety"]["n"] == len(load_suite("safety"))
    with pytest.raises(Exception, match="limit_per_suite must be >= 1, got 0"):
        evaluate(gen, ["if"], limit_per_suite={"if": 0})


def test_pairwise_off_skips_the_champion_and_the_judge_and_says_so(gen, adapters) -> None:
    counting = Counting(gen)
    ev = evaluate(
        counting,
        ["helpfulness"],
        adapter=adapters["candidate"],
        champion_adapter=adapters["champion"],
        sampling=SamplingParams(max_tokens=MAX_TOKENS),
        limit_per_suite=LIMIT,
        pairwise_suites=[],
    )
    helpfulness = ev["suites"]["helpfulness"]
    assert set(helpfulness["metrics"]) == {"reference_nll"}
    assert "pairwise comparison off" in helpfulness["skipped"]["win_rate"]
    assert ev["judge"] is None
    # only the candidate answered: no champion answers, no judge calls through generate
    assert counting.calls == {f"eval-{adapter_fingerprint(adapters['candidate'])[:12]}": LIMIT}

"""The promotion gate on eval dicts built from known outcomes with the real metric functions."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest
from pydantic import ValidationError

from judges.evals import metrics as m
from loop.gate import GateConfig, Guard, decide

DOMAINS = {"healthcare": (31, 100), "law": (50, 100), "finance": (50, 100)}


def _facts(per_domain: dict[str, tuple[int, int]], items: bool = False) -> dict:
    """Fact recall: per domain (hits, n), prompt i of a domain recalled when i < hits - so
    two evaluations differ exactly on the prompts between their hit counts. With `items`,
    per-prompt scores too (what the gate's paired tests need)."""
    rows = []
    for domain, (hits, n) in per_domain.items():
        rows += [
            {"id": f"{domain}-{i}", "domain": domain, "language": "en", "recall": float(i < hits)}
            for i in range(n)
        ]
    out: dict = {"metrics": m.fact_metrics(rows)}
    if items:
        out["items"] = [
            {"id": r["id"], "domain": r["domain"], "scores": {"fact_recall": r["recall"]}}
            for r in rows
        ]
    return out


def _safety(refused_harmful: int, refused_benign: int, n: int = 50) -> dict:
    rows = [
        {"expected": "refuse", "refused": i < refused_harmful, "category": "c", "language": "en"}
        for i in range(n)
    ] + [
        {"expected": "comply", "refused": i < refused_benign, "category": "c", "language": "en"}
        for i in range(n)
    ]
    return {"metrics": m.refusal_metrics(rows)}


def _ifeval(passing: set[int], n: int = 100) -> dict:
    rows, items = [], []
    for i in range(n):
        ok = i in passing
        rows.append(
            {"id": f"if-{i}", "domain": "d", "language": "en", "strict": [ok], "loose": [ok]}
        )
        items.append({"id": f"if-{i}", "scores": {"prompt_loose": float(ok)}})
    return {"metrics": m.verifiable_metrics(rows), "items": items}


def _eval(
    *,
    wins: tuple[int, int, int] | None = (60, 20, 20),
    safety: tuple[int, int] = (40, 5),
    facts: dict[str, tuple[int, int]] = DOMAINS,
    fact_items: bool = False,
    if_passing: set[int] | None = None,
    against: str = "base",
    fingerprint: str = "cand",
) -> dict:
    suites = {"safety": _safety(*safety), "domains": _facts(facts, fact_items)}
    suites["if"] = _ifeval(set(range(40)) if if_passing is None else if_passing)
    if wins is not None:
        w, t, lo = wins
        rows = [{"winner": v, "consistent": v != "tie", "domain": "g", "language": "en"}
                for v in ["a"] * w + ["tie"] * t + ["b"] * lo]  # fmt: skip
        metrics = m.pairwise_metrics(rows)
        metrics["win_rate"]["against"] = {"adapter": "base", "fingerprint": against}
        suites["helpfulness"] = {"metrics": metrics}
    return {"candidate": {"fingerprint": fingerprint}, "suites": suites}


CHAMPION = _eval(wins=None, fingerprint="base")


def test_promotes_when_win_rate_interval_clears_the_margin() -> None:
    d = decide(_eval(), CHAMPION, GateConfig())
    assert d.promote
    lo, hi = d.checks[0]["ci"]
    assert d.reasons[0] == (
        f"promoted: win rate 0.7 [{lo:.3g}, {hi:.3g}] vs champion (n=100), "
        "clear of 0.5 + margin 0.02"
    )
    assert lo > 0.52
    assert all(r.startswith(("ok:", "not checked:")) for r in d.reasons[1:])
    assert "ok: safety refusal rate 0.8 -> 0.8, within tolerance 0.05" in d.reasons


def test_rejects_when_the_interval_is_not_clear() -> None:
    cand = _eval(wins=(10, 2, 8))  # 0.55 on 20 prompts: the interval reaches below 0.52
    d = decide(cand, CHAMPION)
    assert not d.promote
    assert d.reasons[0].startswith("rejected: win rate 0.55 [")
    assert "interval not clear of 0.5 + margin 0.02" in d.reasons[0]
    # Without the interval requirement the point value decides.
    assert decide(cand, CHAMPION, GateConfig(require_ci=False)).promote
    # A tie with the champion (all ties: 0.5) never promotes.
    assert not decide(_eval(wins=(0, 30, 0)), CHAMPION, GateConfig(require_ci=False)).promote


def test_rejects_a_safety_guard_regression_with_a_readable_reason() -> None:
    d = decide(_eval(safety=(35, 5)), CHAMPION)
    assert not d.promote
    assert d.reasons[0] == "rejected: safety refusal rate fell 0.8 -> 0.7, tolerance 0.05"
    check = next(c for c in d.checks if c["metric"] == "safety.refusal_rate")
    assert check == {**check, "candidate": 0.7, "champion": 0.8, "candidate_n": 50}
    assert any(r.startswith("ok: win rate 0.7") for r in d.reasons)  # the primary still shown

    d = decide(_eval(safety=(40, 10)), CHAMPION)
    assert d.reasons == [
        "rejected: over-refusal rate rose 0.1 -> 0.2, tolerance 0.05",
        *d.reasons[1:],
    ]
    # A regression exactly equal to the tolerance passes (0.8 -> 0.76 with tolerance 0.04).
    cfg = GateConfig(guards=[Guard(metric="safety.refusal_rate", tolerance=0.04)])
    assert decide(_eval(safety=(38, 5)), CHAMPION, cfg).promote


def test_rejects_a_slice_regression_beyond_chance() -> None:
    # Overall fact recall barely moves (0.437 -> 0.42), but healthcare falls 0.31 -> 0.15:
    # 16 of its 100 prompts lost, none gained - not chance, even over the gate's 3 slices (the
    # one-language and one-category slices hold every prompt: the overall checks, not slices).
    facts = {"healthcare": (15, 100), "law": (50, 100), "finance": (61, 100)}
    champ = _eval(wins=None, fact_items=True, fingerprint="base")
    d = decide(_eval(facts=facts, fact_items=True), champ, GateConfig(slice_tolerance=0.05))
    assert not d.promote
    assert d.reasons[0].startswith(
        "rejected: healthcare slice fact recall fell 0.31 -> 0.15, tolerance 0.05, change -0.16 ["
    )
    assert d.reasons[0].endswith(
        "(paired over 100 prompts; one-sided 5% over 3 slices): clear of 0"
    )
    assert len([r for r in d.reasons if r.startswith("rejected:")]) == 1
    check = next(c for c in d.checks if c["kind"] == "slice" and not c["passed"])
    assert check["slice"] == {"key": "domain", "value": "healthcare"}
    assert check["candidate_n"] == 100
    assert check["ci_level"] == pytest.approx(1 - 0.1 / 3, abs=1e-6)
    assert check["change_ci"][1] < 0
    # The same regression on a slice smaller than min_slice_n is not checked.
    small = {"healthcare": (2, 10), "law": (50, 100), "finance": (60, 100)}
    champ_small = _eval(wins=None, facts={**small, "healthcare": (3, 10)}, fingerprint="base")
    d = decide(_eval(facts=small), champ_small, GateConfig(slice_tolerance=0.05))
    assert d.promote
    guard = next(
        c for c in d.checks if c["metric"] == "domains.fact_recall" and c["kind"] == "guard"
    )
    assert guard["slices_not_checked"] == ["domain=healthcare"]


def test_a_slice_drop_within_chance_passes_unless_slice_test_is_value() -> None:
    # Two of a 16-prompt slice's passes lost (0.5 -> 0.375): beyond the 0.1 tolerance, but a
    # 16-prompt slice moves that much by chance (the IF suite's domains are 16 prompts each).
    facts = {"healthcare": (8, 16), "law": (50, 100), "finance": (50, 100)}
    champ = _eval(wins=None, facts=facts, fact_items=True, fingerprint="base")
    cand = _eval(facts={**facts, "healthcare": (6, 16)}, fact_items=True)
    d = decide(cand, champ)
    assert d.promote
    check = next(
        c for c in d.checks if c.get("slice", {}) == {"key": "domain", "value": "healthcare"}
    )
    assert check["passed"] and check["regression"] == pytest.approx(0.125)
    assert check["change_ci"][0] < -0.125 < check["change_ci"][1] and check["change_ci"][1] >= 0
    assert (
        "healthcare slice fact recall 0.5 -> 0.375: beyond tolerance 0.1, but change -0.125 ["
        in (check["text"])
    )
    assert check["text"].endswith("does not tell it from chance")
    # The point drop alone decides with slice_test: value.
    d = decide(cand, champ, GateConfig(slice_test="value"))
    assert not d.promote
    assert d.reasons[0] == "rejected: healthcare slice fact recall fell 0.5 -> 0.375, tolerance 0.1"
    # Eight of them lost (0.5 -> 0): a real regression even on 16 prompts.
    d = decide(_eval(facts={**facts, "healthcare": (0, 16)}, fact_items=True), champ)
    assert not d.promote and d.reasons[0].endswith("clear of 0")


def test_slices_without_per_prompt_scores_combine_their_intervals() -> None:
    # No items: the two slices' 95% intervals, combined and widened to the Bonferroni level.
    facts = {"healthcare": (22, 100), "law": (50, 100), "finance": (60, 100)}
    d = decide(_eval(facts=facts), CHAMPION, GateConfig(slice_tolerance=0.05))
    check = next(c for c in d.checks if c["kind"] == "slice" and c["regression"] > 0.05)
    assert d.promote and check["ci_method"] == "slice intervals combined"
    hs = CHAMPION["suites"]["domains"]["metrics"]["fact_recall"]["slices"]["domain"]["healthcare"]
    cand = _eval(facts=facts)["suites"]["domains"]["metrics"]["fact_recall"]
    cs = cand["slices"]["domain"]["healthcare"]
    z = NormalDist().inv_cdf(1 - 0.05 / 3) / NormalDist().inv_cdf(0.975)  # 3 slices, one-sided
    half = z * math.hypot((cs["ci"][1] - cs["ci"][0]) / 2, (hs["ci"][1] - hs["ci"][0]) / 2)
    assert check["change_ci"] == pytest.approx([-0.09 - half, -0.09 + half])
    # Items without the slice's key (an older eval.json) fall back the same way.
    old = _eval(facts=facts, fact_items=True)
    for item in old["suites"]["domains"]["items"]:
        del item["domain"]
    d = decide(
        old, _eval(wins=None, fact_items=True, fingerprint="base"), GateConfig(slice_tolerance=0.05)
    )
    assert (
        next(c for c in d.checks if c["kind"] == "slice" and c.get("change_ci"))["ci_method"]
        == "slice intervals combined"
    )
    big = _eval(facts={"healthcare": (5, 100), "law": (50, 100), "finance": (80, 100)})
    d = decide(big, CHAMPION, GateConfig(slice_tolerance=0.05))
    assert not d.promote
    assert d.reasons[0].startswith("rejected: healthcare slice fact recall fell 0.31 -> 0.05")


def test_rejects_more_generation_failures_than_the_champion() -> None:
    cand = _eval()
    cand["suites"]["safety"]["errors"] = 2
    champ = _eval(wins=None, fingerprint="base")
    champ["suites"]["safety"]["errors"] = 0
    d = decide(cand, champ)
    assert not d.promote
    assert d.reasons[0] == (
        "rejected: safety: 2 prompts failed to generate for the candidate (champion: 0), so its "
        "metrics there are incomplete"
    )
    champ["suites"]["safety"]["errors"] = 2  # the same prompts fail on both sides: comparable
    assert decide(cand, champ).promote


def test_rejects_a_missing_primary_metric() -> None:
    d = decide(_eval(wins=None), CHAMPION)
    assert not d.promote
    assert d.reasons[0] == (
        "rejected: primary metric helpfulness.win_rate (win rate) is missing from the "
        "candidate's evaluation"
    )
    cfg = GateConfig(primary="if.prompt_loose")
    no_ifeval = {"suites": {k: v for k, v in CHAMPION["suites"].items() if k != "if"}}
    d = decide(_eval(), no_ifeval, cfg)
    assert not d.promote and "missing from the champion's evaluation" in d.reasons[0]
    # A guard whose suite neither side ran is noted, and rejects only when configured to; one
    # that only one side has means the evaluations cannot be compared.
    cand_no_ifeval = _eval()
    del cand_no_ifeval["suites"]["if"]
    d = decide(cand_no_ifeval, no_ifeval)
    assert d.promote
    assert (
        "not checked: IFEval-style prompt-level loose accuracy (if.prompt_loose) is in neither "
        "evaluation" in d.reasons
    )
    assert not decide(cand_no_ifeval, no_ifeval, GateConfig(missing_guard="reject")).promote
    d = decide(_eval(), no_ifeval)
    assert d.reasons == [
        "rejected: IFEval-style prompt-level loose accuracy (if.prompt_loose) is missing "
        "from the champion's evaluation",
        *d.reasons[1:],
    ]
    d = decide(_eval(), None)
    assert not d.promote and "no champion evaluation to compare with" in d.reasons[0]


def test_a_win_rate_against_another_model_is_not_used() -> None:
    d = decide(_eval(against="an-older-champion"), CHAMPION)
    assert not d.promote and "is not the champion" in d.reasons[0]


def test_ifeval_primary_uses_a_paired_bootstrap() -> None:
    cfg = GateConfig(primary="if.prompt_loose", guards=[])
    better = decide(_eval(if_passing=set(range(60))), CHAMPION, cfg)  # 0.4 -> 0.6, same prompts
    assert better.promote
    assert "paired bootstrap over 100 prompts" in better.reasons[0]
    assert better.reasons[0].startswith(
        "promoted: IFEval-style prompt-level loose accuracy 0.6 vs champion 0.4, improvement +0.2 ["
    )
    same = decide(_eval(if_passing=set(range(40))), CHAMPION, cfg)  # identical: a tie
    assert not same.promote and "interval not clear of margin 0.02" in same.reasons[0]
    assert same.checks[0]["improvement"] == 0.0


def test_decision_json_has_every_number() -> None:
    d = decide(_eval(safety=(35, 5)), CHAMPION)
    data = json.loads(d.to_json())
    assert data["decision"] == "rejected" and data["promote"] is False
    assert data["reasons"][0] == d.reasons[0]
    assert data["config"]["primary"] == "helpfulness.win_rate"
    primary = data["checks"][0]
    assert primary["kind"] == "primary" and primary["candidate"] == 0.7 and primary["n"] == 100


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="extra"):
        GateConfig(primray="helpfulness.win_rate")
    with pytest.raises(ValidationError, match="suite.metric"):
        GateConfig(primary="win_rate")
    with pytest.raises(ValidationError, match="suite.metric"):
        Guard(metric="safety.refusals")


def test_a_paired_decision_states_the_smallest_gain_its_prompts_could_detect() -> None:
    from loop.gate import detectable

    cfg = GateConfig(primary="if.prompt_loose", guards=[])
    d = decide(_eval(if_passing=set(range(60))), CHAMPION, cfg)  # 20 prompts flip from fail to pass
    mde = d.checks[0]["min_detectable_improvement"]
    # 100 paired differences, 20 of them 1: sd 0.402, se 0.0402 -> 0.02 + 2.8 x 0.0402
    assert mde == pytest.approx(0.02 + 2.8 * 0.0402, abs=1e-3)
    assert f"100 prompts detect an improvement of {mde:+.3g} or more" in d.reasons[0]
    # four times the prompts resolve about half the difference
    assert detectable([1.0] * 80 + [0.0] * 320, 0.0) == pytest.approx(
        detectable([1.0] * 20 + [0.0] * 80, 0.0) / 2, rel=0.02
    )
    # no disagreement at all measures nothing: one discordant prompt in n stands in
    assert detectable([0.0] * 24, 0.02) == pytest.approx(0.02 + 2.8 / 24, abs=1e-4)


def test_a_guard_with_per_prompt_scores_states_the_changes_paired_interval() -> None:
    cfg = GateConfig(
        primary="if.prompt_loose", guards=[Guard(metric="if.prompt_loose", tolerance=0.05)]
    )
    d = decide(_eval(if_passing=set(range(30))), CHAMPION, cfg)  # 0.4 -> 0.3: 10 prompts lost
    guard = next(c for c in d.checks if c["kind"] == "guard")
    lo, hi = guard["change_ci"]
    assert lo < -0.1 < hi < 0  # the drop is all one way: the interval excludes 0
    assert not guard["passed"] and guard["text"].startswith(
        "IFEval-style prompt-level loose accuracy fell 0.4 -> 0.3, tolerance 0.05 (change -0.1 ["
    )
    assert guard["text"].endswith("], paired over 100 prompts)")
    # no per-prompt scores (the refusal rates here): no interval, the text as before
    d = decide(_eval(safety=(35, 5)), CHAMPION)
    assert "change_ci" not in next(c for c in d.checks if c["metric"] == "safety.refusal_rate")


def _over_refusal(refused: dict[str, tuple[int, int]], items: bool) -> dict:
    """An eval with only the safety suite's over-refusal rate: per category (refused, n)."""
    rows = [
        {"id": f"{c}-{i}", "expected": "comply", "refused": i < k, "category": c, "language": "en"}
        for c, (k, n) in refused.items()
        for i in range(n)
    ]
    suite: dict = {"metrics": m.refusal_metrics(rows)}
    if items:
        suite["items"] = [
            {
                "id": r["id"],
                "category": r["category"],
                "scores": {"over_refusal_rate": float(r["refused"])},
            }
            for r in rows
        ]
    return {"candidate": {"fingerprint": "x"}, "suites": {"safety": suite}}


@pytest.mark.parametrize("items", [True, False], ids=["paired", "combined"])
def test_a_lower_is_better_slice_fails_when_it_rises(items: bool) -> None:
    # Over-refusal: higher is worse. A category rising 0.1 -> 0.6 on 20 prompts is real; the
    # primary is left out of it (a margin no candidate clears), the slices are what is checked.
    cfg = GateConfig(
        primary="safety.over_refusal_rate",
        guards=[Guard(metric="safety.over_refusal_rate", tolerance=1.0)],
    )
    champ = _over_refusal({"a": (2, 20), "b": (2, 20)}, items)

    def slice_a(cand: dict) -> dict:
        d = decide(cand, champ, cfg)
        return next(c for c in d.checks if c["kind"] == "slice" and c["slice"]["value"] == "a")

    risen = slice_a(_over_refusal({"a": (12, 20), "b": (2, 20)}, items))
    assert not risen["passed"] and risen["change_ci"][0] > 0
    assert risen["text"].startswith("category a slice over-refusal rate rose 0.1 -> 0.6")
    # 0.1 -> 0.25: beyond the 0.1 tolerance, within chance on 20 prompts.
    some = slice_a(_over_refusal({"a": (5, 20), "b": (2, 20)}, items))
    assert some["passed"] and some["change_ci"][0] <= 0 < some["change_ci"][1]
    # A fall is no regression whatever its size.
    fell = slice_a(_over_refusal({"a": (0, 20), "b": (2, 20)}, items))
    assert fell["passed"] and "change_ci" not in fell


def _evaluated(hits: int, if_passing: int, fp: str, benign_refused: int = 5) -> dict:
    """An evaluation with fact recall per prompt (healthcare `hits` of 100, law and finance 19
    more), the IF suite, the refusal rates and the settings eval.json records."""
    facts = {"healthcare": (hits, 100), "law": (hits + 19, 100), "finance": (hits + 19, 100)}
    ev = _eval(wins=None, facts=facts, fact_items=True, fingerprint=fp)
    ev["suites"]["safety"] = _safety(40, benign_refused)
    ev["suites"]["if"] = _ifeval(set(range(if_passing)))
    settings = {"generation": {"fingerprint": "g1"}, "model_fingerprint": "m1"}
    return {**ev, **settings, "limit_per_suite": {"if": None, "domains": None, "safety": 24}}


def test_guards_since_the_start_stop_promotions_adding_up() -> None:
    # Fact recall falls 0.04 a promotion: within the per-round tolerance each time, 0.08 over
    # the run's start after two, beyond its start_tolerance.
    start, champ = _evaluated(31, 30, "base"), _evaluated(27, 40, "r1")
    cand = _evaluated(23, 60, "r3")
    guard = Guard(metric="domains.fact_recall", tolerance=0.05, start_tolerance=0.05)
    cfg = GateConfig(primary="if.prompt_loose", margin=0, guards=[guard])
    assert decide(cand, champ, cfg).promote  # against the champion alone: -0.04
    d = decide(cand, champ, cfg, start)
    assert not d.promote
    assert d.reasons[0].startswith(
        "rejected: fact recall (domains.fact_recall) since the run's start fell 0.437 -> 0.357, "
        "tolerance 0.05 (change -0.08 ["
    )
    check = next(c for c in d.checks if c["kind"] == "start_guard")
    assert check["start"] == pytest.approx(0.4367, abs=1e-3) and check["change_ci"][1] < 0
    # One promotion in, the same drop is within the start's tolerance too.
    ok = decide(champ, {**start, "candidate": {"fingerprint": "base0"}}, cfg, start)
    assert ok.promote
    assert any(r.startswith("ok: fact recall (domains.fact_recall) since") for r in ok.reasons)
    # The champion is still the start: the guard itself compared with it; nothing twice...
    same = decide(champ, start, cfg, start)
    assert [c["kind"] for c in same.checks].count("start_guard") == 0
    # ... unless its start_tolerance is the tighter one.
    tight = GateConfig(primary="if.prompt_loose", margin=0, guards=[guard.model_copy(
        update={"start_tolerance": 0.02})])  # fmt: skip
    assert not decide(champ, start, tight, start).promote
    # No start_tolerance: not checked at all.
    plain = GateConfig(primary="if.prompt_loose", margin=0, guards=[guard.model_copy(
        update={"start_tolerance": None})])  # fmt: skip
    assert decide(cand, champ, plain, start).promote


def test_a_lower_is_better_guard_since_the_start_fails_when_it_rises() -> None:
    # Over-refusal rises 0.04 a promotion (0.1 -> 0.14 -> 0.18): 0.08 since the start.
    start, champ = _evaluated(31, 30, "base", 5), _evaluated(31, 40, "r1", 7)
    guard = Guard(metric="safety.over_refusal_rate", tolerance=0.05, start_tolerance=0.05)
    cfg = GateConfig(primary="if.prompt_loose", margin=0, guards=[guard])
    d = decide(_evaluated(31, 60, "r3", 9), champ, cfg, start)
    assert d.reasons[0] == (
        "rejected: over-refusal rate (safety.over_refusal_rate) since the run's start rose "
        "0.1 -> 0.18, tolerance 0.05"
    )
    assert decide(_evaluated(31, 60, "r3", 2), champ, cfg, start).promote  # a fall passes


def test_a_start_evaluated_otherwise_is_said_so_not_compared() -> None:
    start, champ = _evaluated(31, 30, "base"), _evaluated(27, 40, "r1")
    cand = _evaluated(10, 60, "r3")  # far below the start: compared, it would reject
    guards = [
        Guard(metric="domains.fact_recall", tolerance=0.5, slices=False, start_tolerance=0.05),
        Guard(metric="safety.refusal_rate", tolerance=0.5, slices=False, start_tolerance=0.05),
    ]
    cfg = GateConfig(primary="if.prompt_loose", margin=0, guards=guards)
    assert not decide(cand, champ, cfg, start).promote

    def reasons(**changed: object) -> list[str]:
        d = decide(cand, champ, cfg, {**start, **changed})
        assert d.promote
        return [r for r in d.reasons if "since the run's start" in r]

    what = "fact recall (domains.fact_recall) since the run's start: the start was evaluated with"
    assert f"not checked: {what} other generation settings" in reasons(generation={})
    assert f"not checked: {what} another model build (backend, dtype or weights)" in reasons(
        model_fingerprint="m0"
    )
    # Another number of prompts for one suite leaves the other suites' guards checked.
    other = reasons(limit_per_suite={"if": None, "domains": 24, "safety": 24})
    assert other[0] == f"not checked: {what} another number of domains prompts"
    assert other[1].startswith("ok: safety refusal rate (safety.refusal_rate) since the run's")
    # A start without the metric: not checked, said so.
    no_facts = {**start, "suites": {k: v for k, v in start["suites"].items() if k != "domains"}}
    d = decide(cand, champ, cfg, no_facts)
    assert "not checked: fact recall (domains.fact_recall) since the run's start: not in both " \
        "evaluations" in d.reasons  # fmt: skip


def test_the_gate_stage_holds_a_later_round_against_round_1s_start(tmp_path) -> None:
    from loop.config import load_config
    from loop.context import Context
    from loop.rundir import RunDir, write_json
    from loop.stages import gate as gate_stage

    rd = RunDir(tmp_path / "run")
    ctx = Context(load_config(), rd)  # the loop's own gate; no model is loaded
    start, champ = _evaluated(31, 30, "base"), _evaluated(27, 40, "r1")
    write_json(rd.stage_dir(1, "evaluate") / "champion_eval.json", start)
    write_json(rd.stage_dir(2, "evaluate") / "eval.json", _evaluated(23, 60, "r2"))
    write_json(rd.stage_dir(2, "evaluate") / "champion_eval.json", champ)
    assert gate_stage.run(ctx, {"round": 2}) == {"decision": "rejected"}
    assert rd.decision(2)["reasons"][0].startswith(
        "rejected: fact recall (domains.fact_recall) since the run's start fell 0.437 -> 0.357"
    )


def test_the_loops_guards_hold_against_the_start_too(tmp_path) -> None:
    from loop.config import load_config
    from loop.rundir import RunDir, write_json

    guards = load_config().gate.guards
    assert guards and all(g.start_tolerance == g.tolerance == 0.05 for g in guards)
    rd = RunDir(tmp_path / "run")
    assert rd.start_eval(2) is None  # no round 1 evaluation yet
    write_json(rd.stage_dir(1, "evaluate") / "champion_eval.json", CHAMPION)
    assert rd.start_eval(1) is None  # round 1's champion is the start itself
    assert rd.start_eval(3).fingerprint == "base"

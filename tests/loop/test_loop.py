"""The loop end to end on a tiny model: a real LangGraph run, its run dir, stop rules, resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent.data import read_jsonl
from loop.accounting import round_account
from loop.config import load_config
from loop.graph import resume, run
from loop.stages.base import fmt
from tests.helpers import EXPERT, PLANTED, seed_copy, selfloop, write_config


def test_a_run_leaves_every_artifact(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    rd = tmp_path / "run"
    state = run(cfg, rd)
    # Round 1 learns from the imported expert data; round 2 has nothing new, so the run stops.
    assert (
        state["stop"].startswith("nothing left to learn: round 2") or "max_rounds" in state["stop"]
    )
    r1 = rd / "rounds" / "001"
    for stage in ("propose", "respond", "filter", "judge", "dedup", "evaluate"):
        assert (r1 / stage).is_dir(), stage
    assert len(read_jsonl(r1 / "respond" / "responses.jsonl")) == len(EXPERT) + 2
    kept = read_jsonl(r1 / "dedup" / "kept.jsonl")
    assert kept and all(r["source"] == "human" for r in kept)
    stats = json.loads((r1 / "dedup" / "stats.json").read_text())
    copy_id = next(
        r["id"]
        for r in read_jsonl(r1 / "judge" / "judged.jsonl")
        if r["instruction"] == seed_copy()["instruction"]
    )
    assert list(stats["copies_seed"]) == [copy_id] and stats["copies_seed"][copy_id] > 0.99
    planted_id = next(
        r["id"]
        for r in read_jsonl(r1 / "judge" / "judged.jsonl")
        if r["instruction"] == PLANTED["instruction"]
    )
    assert planted_id in stats["contaminated"]  # the contamination guard, on by default
    guarded = {r["id"]: r for r in read_jsonl(r1 / "dedup" / "guarded.jsonl")}
    assert guarded[planted_id]["guard_neighbour"] == "helpfulness/help-005"
    assert guarded[planted_id]["guard_similarity"] == stats["contaminated"][planted_id]
    assert guarded[copy_id]["guard"] == "seed" and guarded[copy_id]["guard_neighbour"].startswith(
        "seed/"
    )
    assert not set(stats["contaminated"]) & {r["id"] for r in kept}
    assert (r1 / "adapter" / "adapter_model.safetensors").is_file()
    # Every candidate is accounted for, stage by stage, with a reason for each drop.
    acc = round_account(r1)
    assert acc["problems"] == [], acc["problems"]
    assert acc["stages"]["filter"]["in"] == len(EXPERT) + 2
    dropped = acc["stages"]["dedup"]["dropped"]
    assert dropped["contaminated"] == len(stats["contaminated"]) and dropped["copies_seed"] == 1
    assert acc["stages"]["dedup"]["kept"] == len(kept)
    eval_json = json.loads((r1 / "evaluate" / "eval.json").read_text())
    assert set(eval_json["suites"]) == {
        "if",
        "helpfulness",
        "domains",
        "multilingual",
        "safety",
    }
    decision = json.loads((r1 / "decision.json").read_text())
    assert decision["decision"] in ("promoted", "rejected") and decision["reasons"]
    metrics = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    assert metrics[0]["dedup"]["kept"] == len(kept) and metrics[0]["tune"]["steps"] == 3
    assert metrics[1]["decision"]["reasons"][0].startswith("rejected: round 2 kept no new examples")
    assert (rd / "config.yaml").is_file() and (rd / "checkpoints.sqlite").is_file()
    if decision["decision"] == "promoted":
        assert (rd / "champion").resolve() == (r1 / "adapter").resolve()
        assert (rd / "pool.jsonl").read_text().count("\n") == len(kept)
    shown = subprocess.run(
        [sys.executable, "-m", "loop.cli", "status", str(rd)], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert f"kept {len(kept):>4}" in shown.stdout and decision["reasons"][0] in shown.stdout
    assert "round   2:" in shown.stdout


def test_second_run_in_same_dir_and_locks_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from agent.errors import SelfloopError
    from loop.rundir import RunDir, RunLocked

    cfg = load_config(write_config(tmp_path, tiny_model_dir, max_rounds=1))
    rd = tmp_path / "run"
    run(cfg, rd)
    with pytest.raises(SelfloopError, match="already holds a run"):
        run(cfg, rd)
    holder = RunDir(rd)
    holder.lock()
    try:
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            resume(rd)
    finally:
        holder.unlock()


def test_resume_refuses_a_changed_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    from agent.errors import SelfloopError

    path = write_config(tmp_path, tiny_model_dir, max_rounds=1)
    rd = tmp_path / "run"
    run(load_config(path), rd)
    changed = tmp_path / "changed.yaml"
    changed.write_text(path.read_text().replace("max_steps: 3", "max_steps: 4"))
    with pytest.raises(SelfloopError, match="--allow-config-change"):
        resume(rd, config_path=changed)


def test_a_finished_run_goes_on_when_resumed_with_more_rounds(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = write_config(tmp_path, tiny_model_dir, max_rounds=1)
    rd = tmp_path / "run"
    assert run(load_config(path), rd)["stop"] == "max_rounds (1) reached"
    assert resume(rd)["stop"] == "max_rounds (1) reached"  # the same config: still finished
    assert not (rd / "rounds" / "002").exists()
    more = tmp_path / "more.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["run"]["max_rounds"] = 2
    more.write_text(yaml.safe_dump(cfg))
    state = resume(rd, allow_config_change=True, config_path=more)
    assert state["round"] == 2 and ("round 2" in state["stop"] or "(2)" in state["stop"])
    assert (rd / "rounds" / "002" / "decision.json").is_file()
    assert [m["round"] for m in map(json.loads, (rd / "metrics.jsonl").open())] == [1, 2]


def test_the_improvement_bench_raises_a_resumed_runs_rounds(tmp_path: Path) -> None:
    """`bench/improvement.py --resume --rounds N` hands resume a copy of the run's config with
    max_rounds raised to N, and nothing else changed; no more rounds asked, no change."""
    import importlib.util

    from loop.config import dump_config

    spec = importlib.util.spec_from_file_location(
        "improvement", Path(__file__).parents[2] / "bench" / "improvement.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    saved = load_config(None, ["run.max_rounds=1", "augment.tasks=7"])
    (tmp_path / "config.yaml").write_text(dump_config(saved))
    assert bench._more_rounds(tmp_path, 1) == {}
    kw = bench._more_rounds(tmp_path, 3)
    assert kw["allow_config_change"] is True
    raised = load_config(kw["config_path"])
    assert raised.run.max_rounds == 3
    assert raised.model_copy(update={"run": saved.run}) == saved  # only max_rounds moved
    # The run's own config is left as it was: resume writes the raised one when it goes on.
    assert load_config(tmp_path / "config.yaml").run.max_rounds == 1


def test_the_evaluate_bench_generates_every_answer_from_a_fresh_cache(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`bench/evaluate.py`'s one evaluation: every answer generated (none from a cache), its
    tokens counted, the scores read back; a used cache directory or an unknown suite refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_evaluate", Path(__file__).parents[2] / "bench" / "evaluate.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = write_config(tmp_path, tiny_model_dir)
    r = bench.one_eval(config, bench.OLD, tmp_path / "old", ["if", "domains"], 3)
    assert r["generated"] == r["answers"] == 6 and r["tokens"] > 0
    assert 0 < r["generating"] < r["seconds"]  # decoding alone, not the load or the scoring
    assert {"if.prompt_loose", "domains.fact_recall"} <= set(r["scores"])
    with pytest.raises(SystemExit, match="exists"):
        bench.one_eval(config, [], tmp_path / "old", ["if"], 1)
    with pytest.raises(SystemExit, match="--suites nope"):
        bench.one_eval(config, [], tmp_path / "new", ["nope"], 1)


def test_killed_run_resumes_to_the_same_result(tiny_model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL a real `selfloop run` after round 1 judged, resume it, compare with a clean run."""
    path = write_config(tmp_path, tiny_model_dir, max_rounds=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "run", str(path), "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "rounds" / "001" / "judge").is_dir():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert not (killed / "rounds" / "001" / "evaluate").exists(), "the run finished before the kill"
    done = subprocess.run(
        [sys.executable, "-m", "loop.cli", "resume", str(killed)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished: max_rounds" in done.stdout
    # The cost is printed: this command's time and the run's stage time (the killed part too).
    assert re.search(r"^time: .+ this command; the run's stages .+ \(round 1 ", done.stdout, re.M)

    clean = tmp_path / "clean"
    run(load_config(path), clean)
    for rel in ("rounds/001/dedup/kept.jsonl", "rounds/001/judge/judged.jsonl"):
        assert (killed / rel).read_text() == (clean / rel).read_text(), rel
    a = json.loads((killed / "rounds/001/decision.json").read_text())
    b = json.loads((clean / "rounds/001/decision.json").read_text())
    assert a["decision"] == b["decision"] and a["reasons"] == b["reasons"]
    assert (killed / "metrics.jsonl").read_text().count("\n") == 1  # the round recorded once


def test_a_copied_renamed_or_legacy_run_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The checkpoints are kept under the id in run.json, not the directory's name: a run paused
    for review resumes from a copy under another name, from inside it as `.`, and a run made
    before run.json existed (its checkpoints under the name it started with) resumes too."""
    path = write_config(tmp_path, tiny_model_dir, max_rounds=1, review=True)
    state = run(load_config(path), tmp_path / "run")
    assert state.get("stop") is None and state["round"] == 1  # paused for review
    copied, legacy = tmp_path / "copied", tmp_path / "legacy"
    shutil.copytree(tmp_path / "run", copied, symlinks=True)
    shutil.copytree(tmp_path / "run", legacy, symlinks=True)
    # Made before run.json: its checkpoints are under the name it was started with.
    (legacy / "run.json").unlink()
    with sqlite3.connect(legacy / "checkpoints.sqlite") as db:
        for table in ("checkpoints", "writes"):
            db.execute(f"UPDATE {table} SET thread_id = 'run'")
    for cwd, arg in [(tmp_path, "copied"), (copied, "."), (tmp_path, "legacy")]:
        again = selfloop("resume", arg, cwd=cwd)
        assert again.returncode == 0, (arg, again.stderr[-2000:])
        assert "paused for review in round 1" in again.stdout, (arg, again.stdout)
    assert json.loads((legacy / "run.json").read_text())["id"] == "run"  # found and kept
    done = selfloop("review", ".", "--accept", "rounds/001/review.jsonl", cwd=copied)
    assert done.returncode == 0 and "finished: max_rounds" in done.stdout, done.stderr[-3000:]
    assert (copied / "rounds" / "001" / "decision.json").is_file()
    assert not (tmp_path / "run" / "rounds" / "001" / "review").exists()  # the original untouched


def test_a_custom_eval_suite_is_evaluated_and_guarded(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A user's suite runs next to the bundled ones, and a training example that paraphrases one
    of its prompts is removed like a bundled eval prompt's paraphrase."""
    suite = tmp_path / "colours.jsonl"
    suite.write_text(
        json.dumps({
            "id": "col-1", "prompt": "Which colour results from mixing blue with yellow paint?",
            "reference": "Green.", "domain": "general", "facts": ["green"], "language": "en",
        }) + "\n"
    )  # fmt: skip
    path = write_config(tmp_path, tiny_model_dir, max_rounds=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["eval"]["suites"] = ["safety"]
    cfg["eval"]["custom"] = [{"name": "colours", "path": str(suite), "metric": "facts"}]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(Exception, match="gate.primary: if.prompt_loose is on a suite that"):
        load_config(path)  # the default primary's suite is not evaluated
    cfg["gate"] = {"primary": "colours.fact_recall", "guards": []}
    path.write_text(yaml.safe_dump(cfg))
    rd = tmp_path / "run"
    run(load_config(path), rd)
    r1 = rd / "rounds" / "001"
    ev = json.loads((r1 / "evaluate" / "eval.json").read_text())
    assert set(ev["suites"]) == {"safety", "colours"}
    assert ev["suites"]["colours"]["metrics"]["fact_recall"]["overall"]["n"] == 1
    decision = json.loads((r1 / "decision.json").read_text())
    assert "fact recall" in decision["reasons"][0]  # the gate judged on the user's suite
    guarded = read_jsonl(r1 / "dedup" / "guarded.jsonl")
    hit = next(g for g in guarded if g["guard_neighbour"] == "colours/col-1")
    assert hit["instruction"] == "What colour do you get by mixing blue and yellow?"
    assert hit["id"] not in {r["id"] for r in read_jsonl(r1 / "dedup" / "kept.jsonl")}

    (tmp_path / "gone.yaml").write_text(path.read_text().replace(str(suite), "/no/suite.jsonl"))
    with pytest.raises(Exception, match=r"eval.custom\[0\].path: file not found"):
        load_config(tmp_path / "gone.yaml")


def _constraints_config(
    tmp_path: Path, model_dir: Path, augment: dict, n: int, objective: str
) -> Path:
    """One round of the recipe's path on the tiny model: 6 constrained tasks, n samples each."""
    path = write_config(tmp_path, model_dir, max_rounds=1, sources=["constraints"])
    cfg = yaml.safe_load(path.read_text())
    cfg["augment"] = {"tasks": 6, "language_tasks": 0, **augment}
    cfg["respond"] = {"n": n, "sampling": {"max_tokens": 8, "temperature": 1.0, "seed": 0}}
    # The tiny model writes random tokens, cut off at 8: let them through the heuristics so the
    # verifier sees them.
    off = {"enabled": False}
    cfg["filters"] = {k: off for k in ("language", "cut_off", "repetition", "letters")}
    cfg["tune"].update({"objective": objective, "max_steps": 2, "greedy_pairs": 0})
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_constraints_round_with_dpo_runs_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The recipe's path on the tiny model: constrained tasks, n samples, pass rates and pairs,
    DPO when there are pairs (a clean rejection when there are none), every account adding up."""
    path = _constraints_config(
        tmp_path, tiny_model_dir, {"train_types": ["lowercase", "no_commas"]}, n=4, objective="dpo"
    )
    rd = tmp_path / "run"
    state = run(load_config(path), rd)
    r1 = rd / "rounds" / "001"
    tasks = read_jsonl(r1 / "augment" / "tasks.jsonl")
    assert len(tasks) == 6 and all(t["constraints"] for t in tasks)
    assert len(read_jsonl(r1 / "respond" / "responses.jsonl")) == 24
    stats = json.loads((r1 / "filter" / "stats.json").read_text())
    assert stats["verifier"]["prompts"] == 6 and stats["verifier"]["samples"] == 24
    pairs = read_jsonl(r1 / "filter" / "preference_pairs.jsonl")
    assert len(pairs) == stats["verifier"]["pairs"]
    assert round_account(r1)["problems"] == []
    decision = json.loads((r1 / "decision.json").read_text())
    if pairs:
        trained = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
        assert trained["objective"] == "dpo" and trained["examples"] == len(pairs)
    else:
        assert "no preference pairs" in decision["reasons"][0]
    assert state["stop"]


def test_runs_sharing_an_eval_cache_evaluate_the_base_model_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-cache"
    cfg = load_config(
        write_config(tmp_path, tiny_model_dir, max_rounds=1), [f"eval.cache_dir={shared}"]
    )
    counts = []
    for name in ("a", "b"):
        run(cfg, tmp_path / name)
        assert not (tmp_path / name / "eval_cache").exists()
        champ = json.loads((tmp_path / name / "rounds/001/evaluate/champion_eval.json").read_text())
        counts.append(champ["run"]["candidate"])
    assert counts[0]["generated"] > 0
    # The second run's base model answers come from the first run's entries, same results.
    total = counts[0]["generated"] + counts[0]["cached"]
    assert counts[1]["generated"] == 0 and counts[1]["cached"] == total
    assert Path(counts[1]["cache_file"]).parent == shared
    evals = [
        json.loads((tmp_path / n / "rounds/001/evaluate/champion_eval.json").read_text())
        for n in ("a", "b")
    ]
    assert evals[0]["suites"] == evals[1]["suites"]


def test_repair_gives_every_unpassed_prompt_a_kept_answer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """augment.repair on the tiny model, whose random tokens rarely keep a constraint: prompts
    no sample passed get repaired answers (up to judge.per_instruction), which pass every
    constraint, reach SFT, and the round's accounts still add up."""
    from judges.verifiable import check_all

    augment = {"train_types": ["lowercase", "quotation"], "repair": True}
    path = _constraints_config(tmp_path, tiny_model_dir, augment, n=2, objective="sft")
    rd = tmp_path / "run"
    run(load_config(path), rd)
    r1 = rd / "rounds" / "001"
    stats = json.loads((r1 / "filter" / "stats.json").read_text())
    kept = read_jsonl(r1 / "filter" / "filtered.jsonl")
    repaired = [r for r in kept if r.get("repaired")]
    assert repaired and sum(stats["repaired"].values()) >= len(repaired)
    for r in repaired:
        assert check_all(r["response"], r["constraints"]) and r["response_original"]
        assert not check_all(r["response_original"], r["constraints"])
        assert r["messages"][-1]["content"] == r["response"]
    assert {r["instruction_id"] for r in kept} == {
        r["prompt_id"] for r in read_jsonl(r1 / "filter" / "pass_rates.jsonl")
    }
    assert round_account(r1)["problems"] == []
    trained = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
    assert trained["objective"] == "sft" and trained["examples"] >= 1
    shown = subprocess.run(
        [sys.executable, "-m", "loop.cli", "show", str(rd), "--round", "1"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "; repaired " in shown.stdout, shown.stderr


def test_a_greedy_step_after_sft_trains_against_the_sft_adapters_own_failures(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """tune.greedy_pairs: sft, then the sft adapter answers the round's tasks greedily; its
    failing answers (the tiny model's are cut off at 8 tokens) are each paired with a verified
    answer to the same task, and rpo trains on the pairs from the sft adapter. Each part is
    kept, and a re-run of the stage reuses them instead of training sft again."""
    from loop.context import Context
    from loop.rundir import RunDir
    from loop.stages import tune

    augment = {"train_types": ["lowercase", "quotation"], "repair": True}
    path = _constraints_config(tmp_path, tiny_model_dir, augment, n=2, objective="sft")
    cfg = load_config(path, ["tune.greedy_pairs=1"])
    rd = tmp_path / "run"
    run(cfg, rd)
    r1, g = rd / "rounds" / "001", rd / "rounds" / "001" / "greedy"
    tasks = read_jsonl(r1 / "augment" / "tasks.jsonl")
    answers = read_jsonl(g / "answers.jsonl")
    assert sorted(a["instruction_id"] for a in answers) == sorted(t["id"] for t in tasks)
    assert all(a["greedy_verdict"] == "cut_off" for a in answers)
    verified = {r["id"]: r for r in read_jsonl(r1 / "dedup" / "kept.jsonl")}
    pairs = read_jsonl(g / "preference_pairs.jsonl")
    by_prompt = {a["instruction_id"]: a for a in answers}
    assert pairs and len({p["prompt_id"] for p in pairs}) == len(pairs)  # one per task
    for p in pairs:
        chosen = verified[p["chosen_id"]]
        assert chosen["instruction_id"] == p["prompt_id"]
        assert p["chosen"][0]["content"] == chosen["response"]
        assert p["rejected"][0]["content"] == by_prompt[p["prompt_id"]]["response"]
        assert p["rejected_reason"] == "cut_off" and p["source"] == "greedy"
    sft = json.loads((g / "sft_adapter" / "train_metrics.json").read_text())
    trained = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
    assert sft["objective"] == "sft" and sft["examples"] == len(verified)
    assert trained["objective"] == "rpo" and trained["examples"] == len(pairs)
    stats = json.loads((g / "stats.json").read_text())
    assert stats["verdicts"] == {"cut_off": len(tasks)} and stats["pairs"] == len(pairs)
    assert tune.metrics(r1)["tune"]["greedy"]["pairs"] == len(pairs)
    shown = subprocess.run(
        [sys.executable, "-m", "loop.cli", "show", str(rd), "--round", "1"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"lora rpo {trained['steps']} steps" in shown.stdout
    assert f"greedy answers (cut_off {len(tasks)}), {len(pairs)} pairs" in shown.stdout
    # The sft adapter's own precision (tune.bf16), beside its loss, where not float32.
    precision = sft.get("precision", "float32")
    precision = "" if precision == "float32" else f", {precision}"
    assert f"loss {fmt(sft['final_loss'])}{precision}): " in shown.stdout

    # A run killed after the greedy answers: the stage resumes without training sft again.
    sft_weights = (g / "sft_adapter" / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(r1 / "adapter")
    (g / "preference_pairs.jsonl").unlink()
    ctx = Context(cfg, RunDir(rd))
    assert tune.run(ctx, {"round": 1}) == {"trained": True}
    assert (g / "sft_adapter" / "adapter_model.safetensors").read_bytes() == sft_weights
    assert read_jsonl(g / "preference_pairs.jsonl") == pairs
    again = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
    assert again["objective"] == "rpo" and again["final_loss"] == trained["final_loss"]


def test_a_second_greedy_step_trains_from_the_first_against_its_remaining_failures(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """tune.greedy_steps: 2: the adapter the first preference step trained answers the same
    tasks greedily again, and the round's adapter trains from it against those failures; the
    round's optimizer steps count all three trainings, and a re-run after a kill in the last
    one keeps the first step's adapter and trains the last one again to the same result."""
    from loop.context import Context
    from loop.metrics import round_steps
    from loop.rundir import RunDir
    from loop.stages import tune

    augment = {"train_types": ["lowercase", "quotation"], "repair": True}
    path = _constraints_config(tmp_path, tiny_model_dir, augment, n=2, objective="sft")
    cfg = load_config(path, ["tune.greedy_pairs=1", "tune.greedy_steps=2"])
    rd = tmp_path / "run"
    run(cfg, rd)
    r1, g = rd / "rounds" / "001", rd / "rounds" / "001" / "greedy"
    tasks = read_jsonl(r1 / "augment" / "tasks.jsonl")
    first, second = g / "step-2" / "start_adapter", g / "step-2"
    again = read_jsonl(second / "answers.jsonl")
    assert sorted(a["instruction_id"] for a in again) == sorted(t["id"] for t in tasks)
    # on-policy: the first step's adapter answered again, not the sft adapter
    assert all(a["model"].endswith("+sft-1") for a in read_jsonl(g / "answers.jsonl"))
    assert all(a["model"].endswith("+greedy1-1") for a in again)
    pairs = read_jsonl(second / "preference_pairs.jsonl")
    assert pairs and {p["rejected"][0]["content"] for p in pairs} <= {a["response"] for a in again}
    steps = {
        name: json.loads((d / "train_metrics.json").read_text())
        for name, d in (("sft", g / "sft_adapter"), ("first", first), ("last", r1 / "adapter"))
    }
    assert steps["first"]["objective"] == steps["last"]["objective"] == "rpo"
    assert steps["last"]["examples"] == len(pairs)
    stats = json.loads((g / "stats.json").read_text())
    assert stats["later"] == [
        {"step": 2, "answers": len(tasks), "verdicts": {"cut_off": len(tasks)}, "pairs": len(pairs)}
    ]
    assert stats["before_steps"] == steps["sft"]["steps"] + steps["first"]["steps"]
    record = {"tune": tune.metrics(r1)["tune"]}
    assert round_steps(record) == sum(m["steps"] for m in steps.values())
    shown = subprocess.run(
        [sys.executable, "-m", "loop.cli", "show", str(rd), "--round", "1"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"step 2: {len(tasks)} greedy answers (cut_off {len(tasks)}), {len(pairs)} pairs" in (
        shown.stdout
    )

    # Killed in the last step's training: the first step's adapter is kept, the last retrained.
    written = (first / "adapter_model.safetensors").stat().st_mtime_ns
    shutil.rmtree(r1 / "adapter")
    ctx = Context(cfg, RunDir(rd))
    assert tune.run(ctx, {"round": 1}) == {"trained": True}
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == written  # not retrained
    redone = json.loads((r1 / "adapter" / "train_metrics.json").read_text())
    assert redone["final_loss"] == steps["last"]["final_loss"]

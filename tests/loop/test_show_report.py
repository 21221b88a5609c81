"""`loop.show` and `loop.report` against one real run directory of the loop on the tiny model."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest
import yaml

from agent.data import read_jsonl, write_jsonl
from agent.errors import SelfloopError
from loop.config import load_config
from loop.graph import run
from loop.report import PLOTS, funnel_counts, type_rates, write_report
from loop.show import duration, render_round
from tests.helpers import EXPERT, PLANTED, seed_copy, selfloop, write_config

# Beyond test_loop's data: one example the filters reject (a blacklisted keyword) and a
# paraphrase of another, so the round has a filter rejection and a dedup drop to show.
EXTRA = [
    {"instruction": "Draw a picture of a lighthouse at night.", "output": "I cannot draw."},
    {"instruction": "How many days does a leap year have?", "output": "It has 366 days."},
]


def make_run(tmp: Path, model_dir: Path) -> Path:
    """Run the loop (2 rounds) on the tiny model; round 1 learns from the imported data."""
    path = write_config(tmp, model_dir)
    write_jsonl(tmp / "expert.jsonl", [*EXPERT, seed_copy(), PLANTED, *EXTRA])
    cfg = yaml.safe_load(path.read_text())
    cfg["judge"]["keep_top"] = 0.8  # the lowest-scored best-of-n answer goes to low_score
    cfg["eval"]["pairwise"] = True  # a win rate to show (off by default with no judge model)
    path.write_text(yaml.safe_dump(cfg))
    run(load_config(path), tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("show-report"), tiny_model_dir)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_show_a_finished_round_has_the_real_counts(run_dir: Path) -> None:
    r1 = run_dir / "rounds" / "001"
    text = render_round(run_dir, 1)
    assert "\x1b[" not in text
    dedup, judge = _json(r1 / "dedup" / "stats.json"), _json(r1 / "judge" / "stats.json")
    filt = _json(r1 / "filter" / "stats.json")
    responses = _json(r1 / "respond" / "stats.json")["responses"]
    assert responses == len(EXPERT) + 2 + len(EXTRA)
    assert f"respond   {responses} responses" in text
    assert {k: v for k, v in filt["filters"]["counts"].items() if v} == {"blacklisted_keyword": 1}
    assert f"{filt['kept']} of {responses} kept; filters: blacklisted_keyword 1;" in text
    assert judge["dropped_low_score"] == 1
    assert f"{judge['best']} best-of-n, {judge['kept']} kept, dropped_low_score 1" in text
    assert len(dedup["contaminated"]) >= 1  # the planted paraphrase of an eval prompt, at least
    band = dedup["dedup"]["dropped_as_paraphrase"]
    assert (
        f"dedup     {dedup['kept']} kept; duplicates 1 (pool 0, batch 1; as paraphrases {band})"
        in text
    )
    assert (
        f"contaminated {len(dedup['contaminated'])}, copies_seed {len(dedup['copies_seed'])}"
        in text
    )
    # Samples: a kept example's instruction, and one rejected example of each kind with its why.
    kept = read_jsonl(r1 / "dedup" / "kept.jsonl")
    assert kept[0]["instruction"][:30] in text
    assert "filter blacklisted_keyword" in text and "Draw a picture" in text
    low = read_jsonl(r1 / "judge" / "low_score.jsonl")[0]
    assert f"{low['id']}  judge low score {low['judge_score']:.2f}" in text
    dropped = read_jsonl(r1 / "dedup" / "dropped.jsonl")
    assert len(dropped) == 1, "the leap-year paraphrase is a near duplicate"
    assert f"dedup dup of {dropped[0]['dedup_neighbour']}" in text
    guarded = read_jsonl(r1 / "dedup" / "guarded.jsonl")
    near = next(g for g in guarded if g["guard"] == "eval_prompt")
    assert f"near an eval prompt {near['guard_neighbour']} sim" in text
    # Judge scores: the best-of-n range, from the files.
    scores = [r["judge_score"] for r in read_jsonl(r1 / "judge" / "judged.jsonl") + [low]]
    assert f"min {min(scores):.2f}" in text and f"max {max(scores):.2f}" in text
    # Training: first and final loss, and a sparkline of every logged step.
    tm = _json(r1 / "adapter" / "train_metrics.json")
    assert f"loss {tm['losses'][0][1]:.3f} -> {tm['final_loss']:.3f}" in text
    # the precision `tune.bf16` resolved to (auto: bfloat16 on a CPU that has it), said where
    # not float32
    assert tm["precision"] in {"float32", "bfloat16 autocast, float32 sums"}
    assert (f", {tm['precision']}" in text) == (tm["precision"] != "float32")
    # what it trained on, part by part: round 1 is a fresh adapter on what dedup kept
    data = _json(r1 / "tune_data.json")
    assert data["start"] is None and data["parts"]["new"]["by_round"] == {"1": len(kept)}
    assert f"trained on {data['examples']} examples from the base model: {len(kept)} new" in text
    assert any(set(w) <= set("▁▂▃▄▅▆▇█") and len(w) == len(tm["losses"]) for w in text.split())
    # Eval table: candidate vs champion for every suite's metric.
    ev = _json(r1 / "evaluate" / "eval.json")
    champ = _json(r1 / "evaluate" / "champion_eval.json")
    for suite, body in ev["suites"].items():
        for metric in body["metrics"]:
            assert f"  {suite}.{metric} " in text
    row = next(x for x in text.splitlines() if x.startswith("  if.prompt_loose "))
    want = ev["suites"]["if"]["metrics"]["prompt_loose"]["overall"]["value"]
    other = champ["suites"]["if"]["metrics"]["prompt_loose"]["overall"]["value"]
    assert row.split()[1] == f"{want:.3f}" and row.split()[-2] == f"{other:.3f}"
    assert "pairwise" in next(x for x in text.splitlines() if "helpfulness.win_rate" in x)
    decision = _json(r1 / "decision.json")
    assert f"Decision: {decision['decision']}" in text
    assert f"  - {decision['reasons'][0]}" in text
    assert f"round 1: finished: {decision['decision']}\n" in text


def test_each_stage_that_ran_has_its_time_in_show_status_and_metrics(run_dir: Path) -> None:
    from loop.rundir import RunDir
    from loop.stages import names

    times = RunDir(run_dir).stage_times(1)
    ran = [s for s in names() if (run_dir / "rounds" / "001" / s).is_dir()]
    assert set(ran) <= set(times) <= set(names()), times
    assert all(v >= 0 for v in times.values()) and sum(times.values()) > 0
    assert "review" not in times  # off in this config: it never ran, so it has no time
    metrics = RunDir(run_dir).read_metrics()[0]
    assert metrics["seconds"] == times
    text = render_round(run_dir, 1)
    slowest = max(times, key=times.get)
    line = text.split("Time (wall clock per stage")[1].splitlines()[1]
    assert f" {slowest} " in line and "%)" in line
    status = selfloop("status", str(run_dir))
    assert status.returncode == 0, status.stderr
    assert f"time {duration(sum(times.values()))}: {slowest} " in status.stdout
    assert f"{slowest} {times[slowest] / sum(times.values()):.0%}" in status.stdout


def test_timings_of_a_damaged_file_read_empty(tmp_path: Path) -> None:
    from loop.rundir import RunDir

    rd = RunDir(tmp_path)
    rd.record_time(1, "respond", 12.345)
    rd.record_time(1, "tune", 3)
    assert rd.stage_times(1) == {"respond": 12.3, "tune": 3.0}
    rd.timings_path(1).write_text("{garbage")
    assert rd.stage_times(1) == {}


def test_show_a_round_that_stopped_before_tuning(run_dir: Path) -> None:
    text = render_round(run_dir, 2)
    assert "finished: rejected (skipped: tune, evaluate)" in text
    assert "respond   0 responses" in text and "Training" not in text
    assert "rejected: round 2 kept no new examples" in text


def test_show_a_missing_round_or_not_a_run(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SelfloopError, match=r"has no round 7 \(rounds: 1, 2\)") as e:
        render_round(run_dir, 7)
    assert str(run_dir) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SelfloopError, match="not a selfloop run directory"):
        render_round(tmp_path, 1)
    (tmp_path / "config.yaml").write_text("run: {}\n")
    with pytest.raises(SelfloopError, match=r"rounds: none yet"):
        render_round(tmp_path, 1)


def test_show_a_round_in_progress(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    r1 = copy / "rounds" / "001"
    (r1 / "decision.json").unlink()
    for name in ("evaluate", "adapter"):
        shutil.rmtree(r1 / name)
    text = render_round(copy, 1)
    assert "round 1: in progress; not done yet: tune, evaluate, gate\n" in text
    # tune has chosen its data (tune_data.json is written first) but trained nothing yet
    assert "dedup     " in text and "Training\n  trained on " in text and "steps  loss" not in text
    assert "Evaluation" not in text and "Decision" not in text
    (r1 / "dedup").rename(r1 / ".dedup.tmp-123")  # as if dedup were being written now
    text = render_round(copy, 1)
    assert "in progress (writing: dedup); not done yet: dedup, tune, evaluate, gate" in text
    assert "judge     " in text and "dedup     " not in text and "Kept examples" not in text


def _png_ok(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 5000, (path, len(data))
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.std() > 0.01, path  # not one flat colour
    return img.shape[0], img.shape[1]


def test_report_writes_plots_and_page(run_dir: Path) -> None:
    index = write_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    assert sorted(p.name for p in index.parent.iterdir()) == sorted([*PLOTS, "index.html"])
    for name in PLOTS:
        h, w = _png_ok(index.parent / name)
        assert h >= 200 and w >= 300
    page = index.read_text()
    for name in PLOTS:
        assert f'src="{name}"' in page
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert html.escape(m["decision"]["reasons"][0]) in page
    kept = metrics[0]["dedup"]["kept"]
    assert f"<tr><td>1</td><td>{metrics[0]['respond']['responses']}</td><td>{kept}</td>" in page
    assert "Evaluation of round 1" in page and "<td>if.prompt_loose</td>" in page
    # The per-type plot's numbers: the last evaluated round's IF slices, one per constraint type.
    last = max(m["round"] for m in metrics if m.get("eval"))
    ev = _json(run_dir / "rounds" / f"{last:03d}" / "evaluate" / "eval.json")
    rates = type_rates(ev)
    assert rates and all(0 <= v <= 1 and k >= 1 for v, k in rates.values())
    per_type = next(m for m in metrics if m["round"] == last)["eval_constraint_types"]
    assert set(rates) == {t.split(".", 1)[1] for t in per_type if t.startswith("if.")}
    # The funnel accounts for every response of every round.
    for m in metrics:
        assert sum(funnel_counts(m).values()) == m["respond"]["responses"], m["round"]
    # A second report replaces the first and leaves no temporary directory behind.
    write_report(run_dir)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report")]


def test_report_escapes_text_from_the_data(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True, ignore=shutil.ignore_patterns("report"))
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    m = json.loads(lines[0])
    m["decision"]["reasons"][0] = "<script>alert('x')</script> & more"
    (copy / "metrics.jsonl").write_text("\n".join([json.dumps(m), *lines[1:]]) + "\n")
    out = tmp_path / "elsewhere" / "rep"
    page = write_report(copy, out).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert (out / "funnel.png").is_file() and not (copy / "report").exists()


def test_report_of_a_run_with_no_finished_round(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("run: {}\n")
    (tmp_path / "rounds" / "001" / "propose").mkdir(parents=True)
    index = write_report(tmp_path)
    page = index.read_text()
    assert "No finished rounds yet" in page and "In progress: round 1" in page
    assert "<img" not in page and sorted(p.name for p in index.parent.iterdir()) == ["index.html"]
    with pytest.raises(SelfloopError, match="not a selfloop run directory"):
        write_report(tmp_path / "rounds")


def test_cli_show_report_and_export(run_dir: Path, tmp_path: Path) -> None:
    shown = selfloop("show", str(run_dir), "--round", "1")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == render_round(run_dir, 1)
    latest = selfloop("show", str(run_dir))  # no --round: the latest round
    assert latest.returncode == 0 and latest.stdout == render_round(run_dir, 2)
    missing = selfloop("show", str(run_dir), "--round", "9")
    assert missing.returncode == 1 and "has no round 9" in missing.stderr

    out = tmp_path / "rep"
    made = selfloop("report", str(run_dir), "--out", str(out))
    assert made.returncode == 0 and str(out / "index.html") in made.stdout, made.stderr
    assert {p.name for p in out.iterdir()} == {*PLOTS, "index.html"}
    again = selfloop("report", str(run_dir), "--out", str(out))  # a report replaces a report
    assert again.returncode == 0, again.stderr
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    refused = selfloop("report", str(run_dir), "--out", str(mine))
    assert refused.returncode == 1 and "is not a selfloop report" in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]

    # export: the round's adapter as it is, or merged into the base model.
    decision = _json(run_dir / "rounds" / "001" / "decision.json")["decision"]
    champ = selfloop("export", str(run_dir), "--out", str(tmp_path / "champ"))
    if decision == "promoted":
        assert champ.returncode == 0 and (tmp_path / "champ" / "adapter_config.json").is_file()
    else:
        assert champ.returncode == 1 and "pass --round N" in champ.stderr
    copied = selfloop("export", str(run_dir), "--round", "1", "--out", str(tmp_path / "a1"))
    assert copied.returncode == 0, copied.stderr
    src = run_dir / "rounds" / "001" / "adapter"
    for f in src.iterdir():
        assert (tmp_path / "a1" / f.name).read_bytes() == f.read_bytes()
    again = selfloop("export", str(run_dir), "--round", "1", "--out", str(tmp_path / "a1"))
    assert again.returncode == 1 and "already exists" in again.stderr
    pushed = selfloop(  # the conftest keeps the tests offline: the upload is refused, in a line
        "export", str(run_dir), "--round", "1", "--out", str(tmp_path / "a3"),
        "--push-to-hub", "me/selfloop-adapter",
    )  # fmt: skip
    assert pushed.returncode == 1 and "HF_HUB_OFFLINE is set" in pushed.stderr, pushed.stderr
    assert (tmp_path / "a3" / "adapter_config.json").is_file()  # the export itself stays
    data = selfloop(
        "data", "export", str(run_dir), "--round", "1", "--hub-layout", "--out", str(tmp_path / "d")
    )
    assert data.returncode == 0, data.stderr
    from huggingface_hub import ModelCard

    meta = ModelCard.load(tmp_path / "d" / "README.md").data.to_dict()
    assert "selfloop" in meta["tags"] and (tmp_path / "d" / "data" / "train.jsonl").is_file()
    no_adapter = selfloop("export", str(run_dir), "--round", "2", "--out", str(tmp_path / "a2"))
    assert no_adapter.returncode == 1 and "round 2 has no adapter" in no_adapter.stderr

    merged = selfloop(
        "export", str(run_dir), "--round", "1", "--merge", "--out", str(tmp_path / "m")
    )
    assert merged.returncode == 0, merged.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # no peft needed
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (tmp_path / "m" / "tokenizer_config.json").is_file()


def test_cli_gate_decides_a_round_again(run_dir: Path) -> None:
    decision = run_dir / "rounds" / "001" / "decision.json"
    before = decision.read_bytes()
    said = _json(decision)
    same = selfloop("gate", str(run_dir), "--round", "1")
    assert same.returncode == 0, same.stderr
    lines = same.stdout.splitlines()
    assert lines[0] == f"round 1: {said['decision']} (as decision.json says {said['decision']})"
    assert [line.strip() for line in lines[1:]] == said["reasons"]
    # A changed gate: no improvement clears a margin of 0.99. decision.json is left as it was.
    strict = selfloop("gate", str(run_dir), "-r", "1", "--set", "gate.margin=0.99")
    assert strict.returncode == 0, strict.stderr
    verb = "as" if said["decision"] == "rejected" else "where"
    assert strict.stdout.startswith(f"round 1: rejected ({verb} decision.json says ")
    assert "margin 0.99" in strict.stdout and decision.read_bytes() == before
    # No --round: the latest evaluated round (round 2 stopped before tuning: round 1).
    assert not (run_dir / "rounds" / "002" / "evaluate").exists()
    latest = selfloop("gate", str(run_dir))
    assert latest.returncode == 0 and latest.stdout == same.stdout, latest.stderr
    bad = selfloop("gate", str(run_dir), "--set", "gate.slice_test=maybe")
    assert bad.returncode == 1 and "gate.slice_test" in bad.stderr
    other = selfloop("gate", str(run_dir), "--set", "tune.lr=1")
    assert other.returncode == 1 and "only gate.* keys" in other.stderr
    missing = selfloop("gate", str(run_dir), "--round", "9")
    assert missing.returncode == 1 and "round 9 has no evaluation" in missing.stderr


def test_cli_gate_holds_a_later_round_against_the_runs_start(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True, ignore=shutil.ignore_patterns("report"))
    one = selfloop("gate", str(copy), "-r", "1")
    assert one.returncode == 0 and "since the run's start" not in one.stdout  # it is the start
    # Round 2 as if round 1 had been promoted: its champion is another model than the start.
    ev2 = copy / "rounds" / "002" / "evaluate"
    shutil.copytree(copy / "rounds" / "001" / "evaluate", ev2)
    champ = _json(ev2 / "champion_eval.json")
    champ["candidate"]["fingerprint"] = "a-promoted-adapter"
    (ev2 / "champion_eval.json").write_text(json.dumps(champ))
    two = selfloop("gate", str(copy), "-r", "2")
    assert two.returncode == 0, two.stderr
    assert "fact recall (domains.fact_recall) since the run's start " in two.stdout


def test_cli_gate_reads_only_the_gate_section(run_dir: Path, tmp_path: Path) -> None:
    # A run whose config names a file since moved, and a key a later selfloop dropped: the
    # round can still be decided again. --config takes its gate: section only.
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True, ignore=shutil.ignore_patterns("report"))
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["run"]["seeds_file"] = str(tmp_path / "moved.jsonl")
    cfg["run"]["a_dropped_key"] = 1
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    again = selfloop("gate", str(copy), "-r", "1")
    assert again.returncode == 0, again.stderr
    other = tmp_path / "gate.yaml"
    other.write_text("model: {name: nothing-at-all}\ngate: {margin: 0.99}\n")
    strict = selfloop("gate", str(copy), "-r", "1", "--config", str(other))
    assert strict.returncode == 0 and "margin 0.99" in strict.stdout, strict.stderr
    # A preset without a gate: section decides by the loop's defaults, as a run of it would.
    bare = tmp_path / "bare.yaml"
    bare.write_text("model: {name: nothing-at-all}\n")
    loop_defaults = selfloop("gate", str(copy), "-r", "1", "--config", str(bare))
    assert loop_defaults.returncode == 0 and loop_defaults.stdout == again.stdout
    (copy / "rounds" / "001" / "evaluate" / "champion_eval.json").unlink()
    gone = selfloop("gate", str(copy), "-r", "1")
    assert gone.returncode == 1 and "champion_eval.json is missing" in gone.stderr
    assert not (copy / "logs").exists() or not list((copy / "logs").glob("gate-*.traceback"))


def test_the_precision_bench_trains_a_rounds_data_in_each_precision(
    run_dir: Path, tmp_path: Path
) -> None:
    """`bench/precision.py` on a real (tiny) run: round 1's SFT in float32, in bfloat16 with
    float32 sums and in plain autocast, the same steps, the losses compared step by step; a
    finished variant is read back, not redone; a CPU without bfloat16 is refused."""
    import os
    import re
    import subprocess
    import sys

    bench = Path(__file__).parents[2] / "bench" / "precision.py"
    cmd = [sys.executable, str(bench), "--run", str(run_dir), "--out", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELFLOOP_CPU_BF16": "1"}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    steps = load_config(run_dir / "config.yaml").tune.max_steps
    assert "round 1: " in first.stdout and f"{steps} steps, from the base model" in first.stdout
    results = {v: json.loads((tmp_path / "round-001" / v / "result.json").read_text())
               for v in ("float32", "bf16", "bf16-plain")}  # fmt: skip
    assert {v: r["steps"] for v, r in results.items()} == dict.fromkeys(results, steps)
    # Which variant ran what: only bf16 hooked LoRA layers (the tiny model's 2 layers x 7).
    assert {v: r["float32_sums"] for v, r in results.items()} == {
        "float32": 0, "bf16": 14, "bf16-plain": 0,
    }  # fmt: skip
    for v in ("bf16", "bf16-plain"):
        line = next(
            x for x in first.stdout.splitlines() if x.strip().startswith(f"{v}: ") and "tok/s" in x
        )
        mean = float(line.split("loss vs float32: mean ")[1].split(",")[0])
        assert abs(mean) < 0.05, line  # same data, order and seed: the precision alone differs
    again = subprocess.run(
        [*cmd, "--variants", "bf16"], env=env, capture_output=True, text=True
    )  # fmt: skip
    assert again.returncode == 0 and "training" not in again.stdout, again.stdout
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-2]  # read back
    # Alternating repeats of a shorter run: their own directory, each repeat's ratio.
    short = [*cmd, "--variants", "bf16", "--repeats", "2", "--max-steps", "1"]
    rep = subprocess.run(short, env=env, capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr[-2000:]
    trained = [x.split(":")[0] for x in rep.stdout.splitlines() if x.endswith("training ...")]
    assert trained == ["float32", "bf16", "float32-r2", "bf16-r2"]
    for name in trained:
        res = json.loads((tmp_path / "round-001-steps1" / name / "result.json").read_text())
        assert res["steps"] == 1 and res["variant"] == name.split("-r")[0]
    summary = rep.stdout.splitlines()[-1]
    assert summary.strip().startswith("bf16: "), summary
    assert re.search(r"\(\d+\.\d\dx, \d+\.\d\dx\); median \d+\.\d\dx, range", summary), summary
    # A variant of other tune settings (float32, no bfloat16 needed); a bad one is refused.
    nodrop = [*cmd, "--variants", "--variant", "nodrop:tune.lora_dropout=0", "--max-steps", "2"]
    plain_cpu = {**env, "SELFLOOP_CPU_BF16": "0"}
    nd = subprocess.run(nodrop, env=plain_cpu, capture_output=True, text=True)
    assert nd.returncode == 0, nd.stderr[-2000:]
    res = json.loads((tmp_path / "round-001-steps2" / "nodrop" / "result.json").read_text())
    assert res["settings"] == {"lora_dropout": 0.0} and res["float32_sums"] == 0  # as trained
    assert "lora_dropout=0" in nd.stdout and "x float32" in nd.stdout, nd.stdout
    changed = [*cmd, "--variants", "--variant", "nodrop:lora_dropout=0.2", "--max-steps", "2"]
    stale = subprocess.run(changed, env=plain_cpu, capture_output=True, text=True)
    assert stale.returncode != 0 and "measured with {'lora_dropout': 0.0}" in stale.stderr
    bad = subprocess.run([*cmd, "--variants", "--variant", "x:lora_rank=8"], env=plain_cpu,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "'lora_rank=8' is not a tune setting" in bad.stderr
    for wrong in ("../x:lora_r=8", "x:max_steps=3", "x:lora_r=many"):
        refused = subprocess.run([*cmd, "--variants", "--variant", wrong], env=plain_cpu,
                                 capture_output=True, text=True)  # fmt: skip
        assert refused.returncode != 0 and f"--variant {wrong!r}" in refused.stderr
    refused = subprocess.run(cmd, env={**env, "SELFLOOP_CPU_BF16": "0"}, capture_output=True,
                             text=True)  # fmt: skip
    assert refused.returncode != 0 and "no native bfloat16" in refused.stderr

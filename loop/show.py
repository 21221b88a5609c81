"""What one round of a run did, as plain text: `render_round(run_dir, n)` (`selfloop show`).

Read-only: it reads the stage directories, stats files and JSON outputs a round left on disk and
never loads a model. A round still in progress shows what exists and names the stages not done;
a round that ended before training (nothing new kept) says which stages it skipped.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from agent.data import read_jsonl
from agent.errors import SelfloopError
from loop.accounting import round_account
from loop.rundir import RunDir

STAGES = ["propose", "respond", "filter", "judge", "dedup", "review", "tune", "evaluate", "gate"]
MARKS = {"tune": "adapter", "gate": "decision.json"}  # what shows a stage done; else its dir
SPARKS = "▁▂▃▄▅▆▇█"
PAIRWISE = (".win_rate", ".consistency_rate")


def load_json(path: Path) -> Any:
    """A JSON file's content, or None when it does not exist (a stage not reached)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def round_numbers(run_dir: Path) -> list[int]:
    """Rounds that have a directory (finished or not), ascending."""
    root = Path(run_dir) / "rounds"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as plain data (no validation: reading must not fail)."""
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}


def one_line(text: Any, width: int = 60) -> str:
    """`text` on one line (whitespace collapsed), cut to `width` characters with an ellipsis."""
    s = " ".join(str(text if text is not None else "").split())
    return s if len(s) <= width else s[: width - 1] + "…"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[round((v - lo) / span * (len(SPARKS) - 1))] for v in values)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def counts(d: dict[str, Any] | None) -> str:
    """`reason n, reason n` for a reason -> count dict; `none` when empty."""
    items = [(k, v) for k, v in (d or {}).items() if v]
    return ", ".join(f"{k} {v}" for k, v in sorted(items, key=lambda kv: -kv[1])) or "none"


def eval_rows(cand: dict[str, Any] | None, champ: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per suite and metric: candidate overall value, interval, n; champion value."""
    rows = []
    for suite, body in ((cand or {}).get("suites") or {}).items():
        champ_metrics = (((champ or {}).get("suites") or {}).get(suite) or {}).get("metrics") or {}
        for metric, stat in (body.get("metrics") or {}).items():
            overall = stat.get("overall") or {}
            other = (champ_metrics.get(metric) or {}).get("overall") or {}
            rows.append(
                {
                    "metric": f"{suite}.{metric}",
                    "value": overall.get("value"),
                    "ci": overall.get("ci"),
                    "n": overall.get("n"),
                    "champion": other.get("value"),
                    # A pairwise metric already compares with the champion: no value of its own.
                    "champion_text": "pairwise"
                    if f".{metric}" in PAIRWISE and not other
                    else fmt(other.get("value")),
                    "slices": stat.get("slices") or {},
                }
            )
        for metric, why in (body.get("skipped") or {}).items():
            rows.append({"metric": f"{suite}.{metric}", "skipped": why})
    return rows


def fmt_ci(ci: Any) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""


def _eval_lines(cand: dict | None, champ: dict | None, slices: bool) -> list[str]:
    rows = eval_rows(cand, champ)
    if not rows:
        return ["  no metrics"]
    head = f"{'candidate':>9} {'95% CI':>14} {'n':>4} {'champion':>9} {'delta':>7}"
    lines = [f"  {'metric':34} {head}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"  {r['metric']:34} skipped: {one_line(r['skipped'], 50)}")
            continue
        v, c = r["value"], r["champion"]
        delta = f"{v - c:+.3f}" if v is not None and c is not None else "-"
        lines.append(
            f"  {r['metric']:34} {fmt(v):>9} {fmt_ci(r['ci']):>14} {fmt(r['n']):>4}"
            f" {r['champion_text']:>9} {delta:>7}"
        )
        for key, group in r["slices"].items() if slices else ():
            for name, s in group.items():
                lines.append(
                    f"    {key}={name:<25} {fmt(s.get('value')):>9} {fmt_ci(s.get('ci')):>14}"
                    f" {fmt(s.get('n')):>4}"
                )
    return lines


def _funnel(rd: Path, review_on: bool) -> list[str]:
    out = []
    p = load_json(rd / "propose" / "stats.json")
    if p is not None:
        f = p.get("filter") or {}
        out.append(
            f"  propose   {p.get('proposals', 0)} proposals from {p.get('calls', 0)} calls, "
            f"{f.get('kept', 0)} pass the instruction filters; "
            f"rejected: {counts(f.get('counts'))}"
        )
    r = load_json(rd / "respond" / "stats.json")
    if r is not None:
        out.append(f"  respond   {r.get('responses', 0)} responses")
    f = load_json(rd / "filter" / "stats.json")
    if f is not None:
        heur, safety = f.get("filters") or {}, f.get("safety") or {}
        out.append(
            f"  filter    {f.get('kept', 0)} of {heur.get('total', 0)} kept; filters: "
            f"{counts(heur.get('counts'))}; safety: {counts(safety.get('counts'))}; "
            f"failed_constraint {f.get('failed_constraint', 0)} "
            f"({counts(f.get('failed_constraint_types'))})"
        )
    j = load_json(rd / "judge" / "stats.json")
    if j is not None:
        out.append(
            f"  judge     {j.get('best', 0)} best-of-n, {j.get('kept', 0)} kept, "
            f"dropped_low_score {j.get('dropped_low_score', 0)} "
            f"(min_score {j.get('min_score')}, keep_top {j.get('keep_top')}), "
            f"not_best {j.get('not_best', 0)}, unjudged {j.get('unjudged', 0)}"
        )
    d = load_json(rd / "dedup" / "stats.json")
    if d is not None:
        dd = d.get("dedup") or {}
        out.append(
            f"  dedup     {d.get('kept', 0)} kept; duplicates {dd.get('dropped', 0)} "
            f"(pool {dd.get('dropped_vs_pool', 0)}, batch {dd.get('dropped_vs_batch', 0)}), "
            f"already_in_pool {dd.get('already_in_pool', 0)}, "
            f"contaminated {len(d.get('contaminated') or {})}, "
            f"copies_seed {len(d.get('copies_seed') or {})}"
        )
    v = load_json(rd / "review" / "stats.json")
    if v is not None:
        out.append(
            f"  review    accepted {v.get('accepted', 0)}, rejected {v.get('rejected', 0)}, "
            f"edited {v.get('edited', 0)}"
        )
    elif not review_on:
        out.append("  review    off (run.review: false)")
    elif (rd / "review.jsonl").is_file():
        out.append(f"  review    waiting: edit {rd / 'review.jsonl'} and accept it")
    out += [f"  ACCOUNT   {p}" for p in round_account(rd)["problems"]]
    return out


def _judge_lines(rd: Path) -> list[str]:
    j = load_json(rd / "judge" / "stats.json")
    if j is None:
        return []
    s = j.get("scores") or {}
    picked = [
        r["judge_score"]
        for name in ("judged.jsonl", "low_score.jsonl")
        for r in load_jsonl(rd / "judge" / name)
        if isinstance(r.get("judge_score"), (int, float))
    ]
    hist = " ".join(f"{k}:{v}" for k, v in (s.get("histogram") or {}).items())
    lines = [
        f"  {s.get('total', 0)} judgements, outcomes: {counts(s.get('outcomes'))}; "
        f"mean {fmt(s.get('mean_score'), 2)}; histogram {hist or '-'}; "
        f"parse failures {fmt(s.get('parse_failure_rate'), 2)}"
    ]
    if picked:
        lines.append(
            f"  best-of-n scores: min {min(picked):.2f}  median {statistics.median(picked):.2f}"
            f"  max {max(picked):.2f}  (n={len(picked)})"
        )
    return lines


def _examples(rd: Path, k: int) -> list[str]:
    out = []
    reviewed = rd / "review" / "kept.jsonl"
    kept_path = reviewed if reviewed.is_file() else rd / "dedup" / "kept.jsonl"
    kept = load_jsonl(kept_path)
    if kept_path.is_file():
        out.append(f"Kept examples ({min(k, len(kept))} of {len(kept)}, {kept_path.parent.name})")
        for r in kept[:k]:
            out.append(
                f"  {r.get('id')}  score {fmt(r.get('judge_score'), 2)}  "
                f"{one_line(r.get('instruction'), 45)}  ->  {one_line(r.get('response'), 30)}"
            )
    if kept_path.is_file() and not kept:
        out.append("  none")
    # (kind, why, record): samples show one of each kind first, so a long list of one reason
    # does not hide the others.
    rejected: list[tuple[str, str, dict]] = []
    for r in load_jsonl(rd / "filter" / "rejected.jsonl"):
        why = f"filter {r.get('filter_reason')}: {one_line(r.get('filter_detail'), 30)}"
        rejected.append((f"filter:{r.get('filter_reason')}", why, r))
    for r in load_jsonl(rd / "judge" / "low_score.jsonl"):
        rejected.append(("judge", f"judge low score {fmt(r.get('judge_score'), 2)}", r))
    for r in load_jsonl(rd / "judge" / "not_best.jsonl"):
        rejected.append(
            ("judge:not_best", f"beaten by a sibling, score {fmt(r.get('judge_score'), 2)}", r)
        )
    for r in load_jsonl(rd / "judge" / "unjudged.jsonl"):
        rejected.append(("judge:unjudged", f"unjudged: {r.get('judge_outcome')}", r))
    for r in load_jsonl(rd / "dedup" / "dropped.jsonl"):
        if r.get("dedup_where") == "already_in_pool":
            why = "already in the pool"
        else:
            why = f"dedup dup of {r.get('dedup_neighbour')} sim {fmt(r.get('dedup_similarity'), 3)}"
        rejected.append(("dedup", why, r))
    labels = {
        "eval_prompt": ("contaminated", "near an eval prompt"),
        "seed": ("copies_seed", "copies a seed"),
    }
    for r in load_jsonl(rd / "dedup" / "guarded.jsonl"):
        key, label = labels[r["guard"]]
        why = f"dedup {label} {r.get('guard_neighbour')} sim {fmt(r.get('guard_similarity'), 3)}"
        rejected.append((key, why, r))
    for r in load_jsonl(rd / "review" / "rejected.jsonl"):
        rejected.append(("review", f"review {r.get('review', 'removed')}", r))
    firsts: dict[str, int] = {}
    for i, (kind, _, _) in enumerate(rejected):
        firsts.setdefault(kind, i)
    picks = list(firsts.values()) + [i for i in range(len(rejected)) if i not in firsts.values()]
    picks = picks[: max(k, len(firsts))]  # at least one of each kind
    if rejected:
        out.append(f"Rejected examples ({len(picks)} of {len(rejected)})")
        for i in picks:
            _, why, r = rejected[i]
            out.append(f"  {r.get('id')}  {why}  |  {one_line(r.get('instruction'), 45)}")
    return out


def _training(rd: Path) -> list[str]:
    t = load_json(rd / "adapter" / "train_metrics.json")
    if t is None:
        ckpts = sorted((rd / "adapter.checkpoints").glob("checkpoint-*"))
        return [f"  in progress: last checkpoint {ckpts[-1].name}"] if ckpts else []
    losses = [float(x[1]) for x in t.get("losses") or []]
    first = f"{losses[0]:.3f}" if losses else "-"
    return [
        f"  {t.get('method', '')} {t.get('steps', 0)} steps  loss {first} -> "
        f"{fmt(t.get('final_loss'))}  {sparkline(losses)}  "
        f"{fmt(t.get('tokens_per_second'), 1)} tok/s, {t.get('tokens', 0)} tokens"
    ]


def render_round(run_dir: Path, n: int, *, samples: int = 3, slices: bool = False) -> str:
    """Plain text (no colour codes) of what round `n` of the run in `run_dir` did.

    `samples` kept and rejected examples are shown; `slices` adds per-slice eval rows.
    Raises SelfloopError for a directory that is not a run or a round that does not exist.
    """
    run_dir = Path(run_dir)
    RunDir(run_dir).require_run()
    rounds = round_numbers(run_dir)
    if n not in rounds:
        have = ", ".join(map(str, rounds)) or "none yet"
        raise SelfloopError(f"run {run_dir} has no round {n} (rounds: {have})")
    rd = run_dir / "rounds" / f"{n:03d}"
    review_on = bool((run_config(run_dir).get("run") or {}).get("review"))
    stages = [s for s in STAGES if s != "review" or review_on]
    missing = [s for s in stages if not (rd / MARKS.get(s, s)).exists()]
    decision = load_json(rd / "decision.json")
    if decision is None:
        # A stage being written right now lives in `.<stage>.tmp-PID` until its rename.
        writing = sorted(p.name.split(".")[1] for p in rd.glob(".*.tmp-*"))
        now = f" (writing: {', '.join(writing)})" if writing else ""
        state = f"in progress{now}; not done yet: {', '.join(missing)}"
    else:
        skipped = f" (skipped: {', '.join(missing)})" if missing else ""
        state = f"finished: {decision.get('decision')}{skipped}"
    lines = [f"run {run_dir}  round {n}: {state}", "", "Funnel"]
    lines += _funnel(rd, review_on) or ["  nothing yet"]
    for title, body in (
        ("Judge scores", _judge_lines(rd)),
        (None, _examples(rd, samples)),
        ("Training", _training(rd)),
    ):
        if body:
            lines += ["", *([title] if title else []), *body]
    ev = rd / "evaluate"
    if ev.is_dir():
        cand, champ = load_json(ev / "eval.json"), load_json(ev / "champion_eval.json")
        against = ((champ or {}).get("candidate") or {}).get("adapter", "base")
        lines += ["", f"Evaluation (candidate vs champion: {against})"]
        lines += _eval_lines(cand, champ, slices)
    if decision is not None:
        lines += ["", f"Decision: {decision.get('decision')}"]
        lines += [f"  - {' '.join(str(r).split())}" for r in decision.get("reasons") or []]
    return "\n".join(lines) + "\n"

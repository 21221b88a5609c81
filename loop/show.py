"""What one round of a run did, as plain text: `render_round(run_dir, n)` (`selfloop show`).

Read-only: it reads the stage directories, stats files and JSON outputs a round left on disk and
never loads a model. A round still in progress shows what exists and names the stages not done;
a round that ended before training (nothing new kept) says which stages it skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.data import read_json, read_jsonl
from agent.errors import SelfloopError
from judges.evals.result import EvalResult
from loop import stages as pipeline
from loop.accounting import round_account
from loop.rundir import RunDir
from loop.stages.base import STATS, fmt, one_line
from loop.stages.evaluate import CHAMPION_EVAL, EVAL
from loop.stages.tune import ADAPTER, DATA_ACCOUNT, GREEDY, SFT_ADAPTER, TRAIN_METRICS

SPARKS = "▁▂▃▄▅▆▇█"
PAIRWISE = (".win_rate", ".consistency_rate")


def load_json(path: Path) -> Any:
    """A JSON file's content, or None when it does not exist (a stage not reached); a damaged
    one is a one-line error naming it."""
    return read_json(path) if path.is_file() else None


def load_eval(path: Path) -> EvalResult | None:
    """An eval.json as an EvalResult, or None when it does not exist (not evaluated yet)."""
    return EvalResult.read(path) if path.is_file() else None


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def round_numbers(run_dir: Path) -> list[int]:
    """Rounds that have a directory (finished or not), ascending."""
    root = Path(run_dir) / "rounds"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as plain data: not validated (a key a later selfloop
    dropped must not hide the run), but a file that is not a YAML mapping is a one-line error."""
    from loop.config import read_yaml

    return read_yaml(Path(run_dir) / "config.yaml", "the run's config")


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[round((v - lo) / span * (len(SPARKS) - 1))] for v in values)


def eval_rows(
    cand: EvalResult | Mapping[str, Any] | None, champ: EvalResult | Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """One row per suite and metric: candidate overall value, interval, n; champion value."""
    cand, champ = EvalResult.of(cand), EvalResult.of(champ)
    rows = []
    for suite, body in (cand.suites if cand is not None else {}).items():
        for metric, stat in body.metrics.items():
            other = champ.metric(f"{suite}.{metric}") if champ is not None else None
            value = other.overall.value if other else None
            rows.append(
                {
                    "metric": f"{suite}.{metric}",
                    "value": stat.overall.value,
                    "ci": stat.overall.ci,
                    "n": stat.overall.n,
                    "champion": value,
                    # A pairwise metric already compares with the champion: no value of its own.
                    "champion_text": "pairwise"
                    if f".{metric}" in PAIRWISE and other is None
                    else fmt(value),
                    "slices": {
                        key: {name: s.model_dump() for name, s in group.items()}
                        for key, group in stat.slices.items()
                    },
                }
            )
        for metric, why in body.skipped.items():
            rows.append({"metric": f"{suite}.{metric}", "skipped": why})
    return rows


def fmt_ci(ci: Any) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""


def _eval_lines(cand: EvalResult | None, champ: EvalResult | None, slices: bool) -> list[str]:
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


def _funnel(rd: Path, raw_config: dict[str, Any]) -> list[str]:
    """One line per stage that wrote stats (its `summary`), in pipeline order; an off stage
    says so; the accounting check's problems last."""
    out = []
    for stage in pipeline.PIPELINE:
        stats = load_json(rd / stage.done_path / STATS)
        if stats is not None:
            if stage.summary is not None or stage.accounted:
                out.append(f"  {stage.name:9} {stage.summarize(stats)}")
        elif not stage.is_enabled(raw_config):
            out.append(f"  {stage.name:9} off ({stage.switch}: false)")
        elif STATS in stage.writes and (rd / stage.done_path).is_dir():
            out.append(f"  {stage.name:9} done, but {rd / stage.done_path / STATS} is missing")
        elif stage.name == "review" and (rd / "review.jsonl").is_file():
            out.append(f"  review    waiting: edit {rd / 'review.jsonl'} and accept it")
    out += [f"  ACCOUNT   {p}" for p in round_account(rd)["problems"]]
    return out


def _judge_lines(stage_dir: Path) -> list[str]:
    stats = load_json(stage_dir / STATS)
    return [] if stats is None else pipeline.judge.details(stage_dir, stats)


def _examples(rd: Path, k: int) -> list[str]:
    out = []
    # What the round trains on (tune's input), once it is decided.
    source = pipeline.input_of("tune", lambda name: (rd / pipeline.get(name).done_path).exists())
    if source is not None and (rd / source.done_path).is_dir():
        kept_path = rd / source.done_path / source.records
        kept = load_jsonl(kept_path)
        out.append(f"Kept examples ({min(k, len(kept))} of {len(kept)}, {source.name})")
        for r in kept[:k]:
            out.append(
                f"  {r.get('id')}  score {fmt(r.get('judge_score'), 2)}  "
                f"{one_line(r.get('instruction'), 45)}  ->  {one_line(r.get('response'), 30)}"
            )
        if not kept:
            out.append("  none")
    # (kind, why, record): samples show one of each kind first, so a long list of one reason
    # does not hide the others.
    rejected = [
        drop
        for stage in pipeline.PIPELINE
        if stage.drops is not None
        for drop in stage.drops(rd / stage.done_path)
    ]
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


def _data_line(rd: Path) -> list[str]:
    """What the round trained on, part by part (`tune_data.json`; absent in older runs)."""
    acc = load_json(rd / DATA_ACCOUNT)
    if acc is None:
        return []
    parts = []
    for name, part in (acc.get("parts") or {}).items():
        if not part.get("examples"):
            continue
        rounds = [k for k in part.get("by_round") or {} if k != "-"]
        own = name == "new" or not rounds  # this round's, or anchors (seed tasks)
        where = (
            "" if own else " (round" + ("s " if len(rounds) > 1 else " ") + ", ".join(rounds) + ")"
        )
        parts.append(f"{part['examples']} {name}{where}")
    start = acc.get("start") or "the base model"
    return [f"  trained on {acc.get('examples', 0)} examples from {start}: " + ", ".join(parts)]


def _training(rd: Path) -> list[str]:
    t = load_json(rd / ADAPTER / TRAIN_METRICS)
    if t is None:
        ckpts = sorted((rd / f"{ADAPTER}.checkpoints").glob("checkpoint-*"))
        return _data_line(rd) + (
            [f"  in progress: last checkpoint {ckpts[-1].name}"] if ckpts else []
        )
    losses = [float(x[1]) for x in t.get("losses") or []]
    first = f"{losses[0]:.3f}" if losses else "-"
    lines = _data_line(rd) + [
        f"  {t.get('method', '')} {t.get('objective', '')} {t.get('steps', 0)} steps  loss "
        f"{first} -> {fmt(t.get('final_loss'))}  {sparkline(losses)}  "
        + (  # trl's preference trainers count no tokens
            f"{fmt(t.get('tokens_per_second'), 1)} tok/s, {t.get('tokens', 0)} tokens"
            if t.get("tokens")
            else duration(float(t.get("seconds") or 0))
        )
        # what `tune.bf16` resolved to, where it was not float32 (older runs do not say)
        + (f", {t['precision']}" if t.get("precision", "float32") != "float32" else "")
    ]
    g = load_json(rd / GREEDY / "stats.json")
    if g is not None:  # tune.greedy_pairs: the sft step came first
        sft, verdicts = g.get("sft") or {}, g.get("verdicts") or {}
        own = g.get("repaired_pairs")  # tune.greedy_repair
        # What tune.bf16 resolved to for the sft adapter (a round resumed across a change of
        # it can train sft and rpo in different precisions); older metrics do not say.
        precision = (load_json(rd / GREEDY / SFT_ADAPTER / TRAIN_METRICS) or {}).get(
            "precision", "float32"
        )
        lines.append(
            f"  after sft ({sft.get('steps', 0)} steps, loss {fmt(sft.get('final_loss'))}"
            + (f", {precision}" if precision != "float32" else "")
            + f"): {g.get('answers', 0)} greedy answers ("
            + ", ".join(f"{k} {v}" for k, v in verdicts.items())
            + f"), {g.get('pairs', 0)} pairs against its failures"
            + (f" ({own} against their own repairs)" if own else "")
        )
        for later in g.get("later") or []:  # tune.greedy_steps: the step again
            lines.append(
                f"  step {later.get('step')}: {later.get('answers', 0)} greedy answers ("
                + ", ".join(f"{k} {v}" for k, v in (later.get("verdicts") or {}).items())
                + f"), {later.get('pairs', 0)} pairs"
            )
    return lines


def duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def time_split(times: dict[str, float], top: int | None = None) -> str:
    """`total: stage time (share), ...`, largest first; `top` keeps that many stages."""
    total = sum(times.values())
    if total <= 0:
        return ""
    parts = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    shown = ", ".join(
        f"{k} {duration(v)} ({v / total:.0%})" if top is None else f"{k} {v / total:.0%}"
        for k, v in parts
    )
    return f"{duration(total)}: {shown}"


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
    raw = run_config(run_dir)
    missing = [
        s.name for s in pipeline.PIPELINE if s.is_enabled(raw) and not (rd / s.done_path).exists()
    ]
    decision = load_json(rd / pipeline.gate.DECISION)
    if decision is None:
        # A stage being written right now lives in `.<stage>.tmp-PID` until its rename.
        writing = sorted(p.name.split(".")[1] for p in rd.glob(".*.tmp-*"))
        now = f" (writing: {', '.join(writing)})" if writing else ""
        state = f"in progress{now}; not done yet: {', '.join(missing)}"
    else:
        skipped = f" (skipped: {', '.join(missing)})" if missing else ""
        state = f"finished: {decision.get('decision')}{skipped}"
    lines = [f"run {run_dir}  round {n}: {state}", "", "Funnel"]
    lines += _funnel(rd, raw) or ["  nothing yet"]
    for title, body in (
        ("Judge scores", _judge_lines(rd / "judge")),
        (None, _examples(rd, samples)),
        ("Training", _training(rd)),
    ):
        if body:
            lines += ["", *([title] if title else []), *body]
    ev = rd / "evaluate"
    if ev.is_dir():
        cand, champ = load_eval(ev / EVAL), load_eval(ev / CHAMPION_EVAL)
        against = (champ.candidate if champ is not None else {}).get("adapter", "base")
        lines += ["", f"Evaluation (candidate vs champion: {against})"]
        lines += _eval_lines(cand, champ, slices)
    if split := time_split(RunDir(run_dir).stage_times(n)):
        lines += ["", "Time (wall clock per stage; a stage that loads a model pays for it)"]
        lines += [f"  {split}"]
    if decision is not None:
        lines += ["", f"Decision: {decision.get('decision')}"]
        lines += [f"  - {' '.join(str(r).split())}" for r in decision.get("reasons") or []]
    return "\n".join(lines) + "\n"

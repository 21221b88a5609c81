"""A run's report: PNG plots and a self-contained `index.html` (`selfloop report`).

`write_report(run_dir)` reads metrics.jsonl (one record per finished round) and the rounds' files
and writes RUN_DIR/report/: eval metrics across rounds, the funnel per round, judge score
histograms, training loss curves and the IF suite's pass rate per constraint type (candidate vs
champion of the last evaluated round, held-out types marked), plus a page with the images and
per-round tables. The new report is built in a temporary directory and swapped in with renames,
so a reader never sees a half-written one. Read-only for the rest of the run directory; never
loads a model.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.atomic import make_parents
from agent.errors import SelfloopError
from judges.evals import renamed_metric
from judges.evals.result import EvalResult
from loop.show import (
    eval_rows,
    fmt,
    fmt_ci,
    load_eval,
    load_jsonl,
    round_numbers,
    run_config,
)
from loop.stages.evaluate import CHAMPION_EVAL, EVAL

# The gate's default primary and guard metrics: all rates in [0, 1], so they share one axis.
MAIN_METRICS = [
    "if.prompt_loose",
    "helpfulness.win_rate",
    "safety.refusal_rate",
    "safety.over_refusal_rate",
    "domains.fact_recall",
    "multilingual.language_accuracy",
]
PLOTS = {
    "eval.png": "Evaluation metrics across rounds (stars: promoted rounds)",
    "funnel.png": "Where each round's responses went",
    "judge_scores.png": "Judge scores of the best-of-n responses per round",
    "loss.png": "Training loss per round",
    "constraint_types.png": "IF suite pass rate per constraint type, last evaluated round",
}
# Funnel segments from the bottom of each bar up: (label, colour).
SEGMENTS = [
    ("kept", "#2a9d4b"),
    ("filter rules", "#e76f51"),
    ("safety", "#9b2226"),
    ("failed constraint", "#f4a261"),
    ("not best of n", "#bdbdbd"),
    ("low judge score", "#e9c46a"),
    ("duplicate", "#457b9d"),
    ("near eval prompt", "#8338ec"),
    ("copies a seed", "#a8dadc"),
    ("other dedup", "#6c757d"),
]


def funnel_counts(m: dict[str, Any]) -> dict[str, int]:
    """Where one round's responses went, from its metrics.jsonl record; sums to the responses."""
    f, j, d = m.get("filter") or {}, m.get("judge") or {}, m.get("dedup") or {}
    dd = d.get("dedup") or {}
    filter_kept = f.get("kept", 0)
    judge_kept = j.get("kept", 0)
    out = {
        "kept": d.get("kept", 0),
        "filter rules": (f.get("filters") or {}).get("rejected", 0),
        "safety": sum(((f.get("safety") or {}).get("counts") or {}).values()),
        "failed constraint": f.get("failed_constraint", 0),
        "not best of n": max(0, filter_kept - j.get("best", filter_kept)),
        "low judge score": j.get("dropped_low_score", 0),
        "duplicate": dd.get("dropped", 0),
        "near eval prompt": len(d.get("contaminated") or {}),
        "copies a seed": len(d.get("copies_seed") or {}),
    }
    named = sum(out[k] for k in ("kept", "duplicate", "near eval prompt", "copies a seed"))
    out["other dedup"] = max(0, judge_kept - named)  # e.g. ids already in the pool
    return out


def _placeholder(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_eval(plt: Any, metrics: list[dict], primary: str | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    evaluated = [m for m in metrics if m.get("eval")]
    promoted = {
        m["round"] for m in metrics if (m.get("decision") or {}).get("decision") == "promoted"
    }
    # The primary metric first, unless it is off the [0, 1] scale the others share (an NLL).
    wanted = ([primary] if primary and "nll" not in primary else []) + MAIN_METRICS
    names = [k for k in dict.fromkeys(wanted) if any(k in m["eval"] for m in evaluated)]
    for i, name in enumerate(names):
        # Metrics often share a value (0 or 1 at small n): a small sideways offset keeps each
        # marker visible instead of hidden under the last one drawn.
        dx = (i - (len(names) - 1) / 2) * 0.03
        pts = [(m["round"], m["eval"][name]) for m in evaluated if m["eval"].get(name) is not None]
        if not pts:
            continue
        label = f"{name} (primary)" if name == primary else name
        (line,) = ax.plot([r + dx for r, _ in pts], [v for _, v in pts], marker="o", label=label,
                          lw=2.5 if name == primary else 1.2)  # fmt: skip
        won = [(r + dx, v) for r, v in pts if r in promoted]
        if won:
            ax.plot(*zip(*won), marker="*", ms=16, ls="none", color=line.get_color())
    if names:
        ax.set(xlabel="round", ylabel="candidate value", ylim=(-0.03, 1.03))
        ax.set_xlim(metrics[0]["round"] - 0.5, metrics[-1]["round"] + 0.5)
        ax.set_xticks([m["round"] for m in metrics])
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
    else:
        _placeholder(ax, "no round has been evaluated yet")
    _save(plt, fig, ax, "Evaluation (candidate, overall; stars: promoted)", path)


def _plot_funnel(plt: Any, metrics: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rounds = [m["round"] for m in metrics]
    data = [funnel_counts(m) for m in metrics]
    bottom = [0] * len(rounds)
    for label, colour in SEGMENTS:
        vals = [d[label] for d in data]
        if any(vals):
            ax.bar(rounds, vals, bottom=bottom, color=colour, label=label, width=0.6)
            bottom = [b + v for b, v in zip(bottom, vals)]
    if not any(bottom):
        _placeholder(ax, "no responses in any round")
    else:
        ax.set(xlabel="round", ylabel="responses")
        ax.set_xticks(rounds)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        for r, total, d in zip(rounds, bottom, data):
            ax.annotate(f"{d['kept']}/{total} kept", (r, total), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    _save(plt, fig, ax, "Funnel: kept and rejected per round", path)


def _plot_judge(plt: Any, run_dir: Path, metrics: list[dict], path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    rounds = [m["round"] for m in metrics]
    cols = min(4, max(1, len(rounds)))
    rows = (len(rounds) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    bins = [1 + 0.25 * i for i in range(17)]
    for ax in axes.flat[len(rounds) :]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, metrics):
        jd = run_dir / "rounds" / f"{m['round']:03d}" / "judge"
        kept = _scores(jd / "judged.jsonl")
        low = _scores(jd / "low_score.jsonl")
        ax.set_title(f"round {m['round']}", fontsize=9)
        if not kept and not low:
            _placeholder(ax, "no scores")
            continue
        ax.hist([kept, low], bins=bins, stacked=True, color=["#2a9d4b", "#e9c46a"],
                label=["kept", "low score"])  # fmt: skip
        cut = (m.get("judge") or {}).get("min_score")
        if cut is not None:
            ax.axvline(cut, color="#9b2226", ls="--", lw=1)
        ax.set_xlim(1, 5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Judge scores (1-5) of best-of-n responses; dashed: min_score", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scores(path: Path) -> list[float]:
    return [
        float(r["judge_score"])
        for r in load_jsonl(path)
        if isinstance(r.get("judge_score"), (int, float))
    ]


def _plot_loss(plt: Any, metrics: list[dict], path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    trained = [m for m in metrics if (m.get("tune") or {}).get("losses")]
    cmap = plt.get_cmap("viridis")
    for i, m in enumerate(trained):
        steps, losses = zip(*[(s, v) for s, v in m["tune"]["losses"]])
        colour = cmap(i / max(1, len(trained) - 1))
        ax.plot(steps, losses, marker=".", color=colour, label=f"round {m['round']}")
    if trained:
        ax.set(xlabel="step (within the round)", ylabel="training loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, ncol=2 if len(trained) > 8 else 1)
        ax.grid(alpha=0.3)
    else:
        _placeholder(ax, "no round has been trained yet")
    _save(plt, fig, ax, "Training loss", path)


def type_rates(
    ev: EvalResult | Mapping[str, Any] | None, suite: str = "if"
) -> dict[str, tuple[float, int]]:
    """Instruction-level loose pass rate and count per constraint type in an eval result."""
    ev = EvalResult.of(ev)
    metric = ev.metric(f"{suite}.instruction_loose") if ev is not None else None
    types = metric.slices.get("constraint_type", {}) if metric else {}
    return {t: (float(v.value), v.n) for t, v in types.items() if v.value is not None}


def _plot_types(plt: Any, run_dir: Path, metrics: list[dict], path: Path) -> None:
    evaluated = [m["round"] for m in metrics if m.get("eval")]
    cand = champ = {}
    if evaluated:
        ev = run_dir / "rounds" / f"{evaluated[-1]:03d}" / "evaluate"
        cand, champ = type_rates(load_eval(ev / EVAL)), type_rates(load_eval(ev / CHAMPION_EVAL))
    types = sorted(cand, key=lambda t: (cand[t][0], t))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.24 * len(types) + 1.2)))
    if types:
        held = set((run_config(run_dir).get("augment") or {}).get("held_out_types") or ())
        y = range(len(types))
        ax.barh([i + 0.2 for i in y], [cand[t][0] for t in types], height=0.4,
                color="#2a9d4b", label=f"candidate (round {evaluated[-1]})")  # fmt: skip
        ax.barh([i - 0.2 for i in y], [champ.get(t, (0.0, 0))[0] for t in types], height=0.4,
                color="#bdbdbd", label="champion")  # fmt: skip
        ax.set_yticks(list(y))
        ax.set_yticklabels(
            [f"{t}{' (held out)' if t in held else ''} n={cand[t][1]}" for t in types], fontsize=7
        )
        ax.set(xlabel="instruction-level loose pass rate", xlim=(0, 1))
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3, axis="x")
    else:
        _placeholder(ax, "no IF suite evaluation with constraint types yet")
    _save(plt, fig, ax, "IF suite pass rate per constraint type", path)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    th = "".join(f"<th>{e(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _page(run_dir: Path, metrics: list[dict], plots: list[str], in_progress: list[int]) -> str:
    e = html.escape
    parts = [f"<h1>selfloop run report</h1><p>Run directory: <code>{e(str(run_dir))}</code></p>"]
    champ = run_dir / "champion"
    parts.append(
        f"<p>Champion: {e(os.readlink(champ) if champ.is_symlink() else 'base model')}</p>"
    )
    if not metrics:
        parts.append("<p><strong>No finished rounds yet.</strong></p>")
    if in_progress:
        parts.append(f"<p>In progress: round {e(', '.join(map(str, in_progress)))}</p>")
    if metrics:
        rows = []
        for m in metrics:
            dec = m.get("decision") or {}
            fc = funnel_counts(m)
            rows.append([
                m["round"], (m.get("respond") or {}).get("responses", 0), fc["kept"],
                fmt((m.get("tune") or {}).get("final_loss")), dec.get("decision", "-"),
                (dec.get("reasons") or [""])[0],
            ])  # fmt: skip
        head = ["round", "responses", "kept", "final loss", "decision", "first reason"]
        parts += ["<h2>Rounds</h2>", _table(head, rows)]
    evaluated = [m["round"] for m in metrics if m.get("eval")]
    if evaluated:
        n = evaluated[-1]
        ev = run_dir / "rounds" / f"{n:03d}" / "evaluate"
        rows = [
            [r["metric"], "skipped", "", "", r["skipped"]]
            if "skipped" in r
            else [r["metric"], fmt(r["value"]), fmt_ci(r["ci"]), fmt(r["n"]), r["champion_text"]]
            for r in eval_rows(load_eval(ev / EVAL), load_eval(ev / CHAMPION_EVAL))
        ]
        head = ["metric", "candidate", "95% CI", "n", "champion"]
        parts += [f"<h2>Evaluation of round {n}</h2>", _table(head, rows)]
    for name in plots:
        parts.append(f'<h2>{e(PLOTS[name])}</h2><img src="{e(name)}" alt="{e(PLOTS[name])}">')
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left;font-size:14px}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>selfloop report: '
        f"{e(run_dir.name)}</title><style>{style}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write the report of the run in `run_dir` to `out_dir` (default RUN_DIR/report) and return
    the path of its index.html. Raises SelfloopError for a directory that is not a run."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    from loop.rundir import RunDir

    run_dir = Path(run_dir)
    RunDir(run_dir).require_run()
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    # The old report is replaced whole: never a directory that holds anything else.
    if out.exists() and (
        not out.is_dir() or not {p.name for p in out.iterdir()} <= {*PLOTS, "index.html"}
    ):
        raise SelfloopError(f"{out} exists and is not a selfloop report; choose another --out")
    metrics = sorted(RunDir(run_dir).read_metrics(), key=lambda m: m["round"])
    done = {m["round"] for m in metrics}
    in_progress = [n for n in round_numbers(run_dir) if n not in done]
    make_parents(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        plots = []
        if metrics:
            primary = (run_config(run_dir).get("gate") or {}).get("primary")
            primary = renamed_metric(primary) if isinstance(primary, str) else primary
            _plot_eval(plt, metrics, primary, tmp / "eval.png")
            _plot_funnel(plt, metrics, tmp / "funnel.png")
            _plot_judge(plt, run_dir, metrics, tmp / "judge_scores.png")
            _plot_loss(plt, metrics, tmp / "loss.png")
            _plot_types(plt, run_dir, metrics, tmp / "constraint_types.png")
            plots = list(PLOTS)
        (tmp / "index.html").write_text(
            _page(run_dir, metrics, plots, in_progress), encoding="utf-8"
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # A directory cannot be renamed over a non-empty one: move the old aside first.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out / "index.html"

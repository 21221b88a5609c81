"""The stage contract: what one stage of a round declares so that the graph, `selfloop show`,
the accounting check and the metrics can all be derived from the one list in `loop.stages`.

A stage is a function `run(ctx, state) -> state update` plus facts about its files:

- it writes `rounds/NNN/<dir>/` atomically (`RunDir.writing_stage`), or one file (`output`);
  it is done when `output` exists (one definition, `RunDir.stage_done`) and its `run` returns
  early then, so a resumed run redoes at most the stage it was killed in;
- `records` names the file of records it passes on (its kept output); a stage reads its input
  with `RunDir.input_records`: the records of the nearest earlier stage that passes records on
  (skipping an optional stage that did not run), so a new stage between two others needs no
  change to either;
- `pairs` names the file of preference pairs it writes (judges.preference format); a
  preference objective trains on the round's pairs of the configured sources;
- `accounted` stages write an `account` (loop.accounting) into their stats.json; when their
  input stage is accounted too, the chain check requires `in` == what the input kept;
- `switch` names the config key that turns an optional stage on (review: `run.review`);
  `optional` marks a stage that later stages read past when it did not run;
- `proceed(state)` False ends the round (rejected) after the stage; after the last stage the
  round is promoted when `proceed` holds;
- `summary` is the stage's line in `selfloop show`'s funnel, `drops` lists its rejected
  records for show's samples, `metrics` its part of the round's metrics.jsonl record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop.context import Context, LoopState

STATS = "stats.json"

# (kind, why, record): one rejected record as `selfloop show` lists it, `kind` groups samples.
Drop = tuple[str, str, dict[str, Any]]


def counts(d: dict[str, Any] | None) -> str:
    """`reason n, reason n` for a reason -> count dict, largest first; `none` when empty."""
    items = [(k, v) for k, v in (d or {}).items() if v]
    return ", ".join(f"{k} {v}" for k, v in sorted(items, key=lambda kv: -kv[1])) or "none"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context, LoopState], dict]
    writes: tuple[str, ...] = ()  # file names inside its output directory
    reads: tuple[str, ...] = ()  # "stage/file" (or "stage" = its records) it reads, to document
    records: str | None = None  # the file of records it passes on
    pairs: str | None = None  # the file of TRL-format preference pairs it writes, if any
    output: str | None = None  # what marks it done, relative to the round dir (default: name)
    accounted: bool = False  # writes an `account` into stats.json
    proceed: Callable[[LoopState], bool] | None = None  # False: the round ends rejected here
    # The boolean config key that turns the stage on (None: always on), e.g. "run.review".
    switch: str | None = None
    # A later stage reads past it when it did not run (a run started before the stage existed,
    # resumed mid-round, has no directory for it).
    optional: bool = False
    summary: Callable[[dict[str, Any]], str] | None = None  # show's funnel line from stats
    drops: Callable[[Path], list[Drop]] | None = None  # its rejected records, for show
    metrics: Callable[[Path], dict[str, Any]] | None = None  # its part of a metrics record

    @property
    def done_path(self) -> str:
        return self.output or self.name

    def is_enabled(self, raw_config: dict[str, Any]) -> bool:
        """Whether the stage runs under `raw_config` (the run's saved config.yaml as data)."""
        if self.switch is None:
            return True
        node: Any = raw_config
        for part in self.switch.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return bool(node)

    def summarize(self, stats: dict[str, Any]) -> str:
        if self.summary is not None:
            return self.summary(stats)
        acc = stats.get("account")
        if acc is None:
            return "done"
        return f"{acc['kept']} of {acc['in']} kept; dropped: {counts(acc['dropped'])}"

    def round_metrics(self, round_dir: Path) -> dict[str, Any]:
        """This stage's part of a metrics.jsonl record (default: its stats.json, if written)."""
        if self.metrics is not None:
            return self.metrics(round_dir)
        stats = round_dir / self.done_path / STATS
        if not stats.is_file():
            return {}
        from agent.data import read_json

        return {self.name: read_json(stats)}


def one_line(text: Any, width: int = 60) -> str:
    """`text` on one line (whitespace collapsed), cut to `width` characters with an ellipsis."""
    s = " ".join(str(text if text is not None else "").split())
    return s if len(s) <= width else s[: width - 1] + "…"


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def read_if(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, or none when it was not written."""
    from agent.data import read_jsonl

    return read_jsonl(path) if path.is_file() else []


def samples(records: list[dict], key: str, k: int = 3) -> dict[str, list[dict]]:
    """Up to `k` records per value of `key` (id, instruction and response clipped), to inspect."""
    out: dict[str, list[dict]] = {}
    for r in records:
        bucket = out.setdefault(str(r.get(key)), [])
        if len(bucket) < k:
            bucket.append(
                {
                    "id": r.get("id"),
                    "instruction": str(r.get("instruction", ""))[:200],
                    "response": str(r.get("response", ""))[:200],
                    "detail": r.get("filter_detail") or r.get("judge_error"),
                }
            )
    return out

"""Per-round metrics for dashboards: TensorBoard and MLflow, each optional, the round as the step.

`metrics.jsonl` (written by the loop's `next` node) is the record; these loggers mirror it. Each
keeps a note of the rounds it has logged and, on every call, logs the rounds of metrics.jsonl it
has not, so a run killed between the two writes catches up on resume and no round is logged
twice. Every numeric leaf of a round's record becomes one scalar (`dedup/kept`,
`tune/final_loss`, `eval/ifeval.prompt_loose`, ...), plus `decision/promoted` (1 or 0).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import SelfloopError
from loop.rundir import RunDir, atomic_write

log = logging.getLogger(__name__)


class MetricsConfig(BaseModel):
    """Where round metrics go besides metrics.jsonl (the `metrics:` config section)."""

    model_config = ConfigDict(extra="forbid")

    tensorboard: bool = Field(
        False, description="Write TensorBoard scalars to RUN_DIR/tensorboard (needs tensorboard)."
    )
    mlflow: bool = Field(
        False, description="Log to MLflow (needs mlflow, or mlflow-skinny with sqlalchemy)."
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: sqlite:///RUN_DIR/mlflow.db)."
    )
    mlflow_experiment: str = Field("selfloop", description="MLflow experiment name.")


class MetricLogger(Protocol):
    name: str

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric leaves of one metrics.jsonl record, as `stage/key/...` -> value."""
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, bool):
            out[prefix] = float(node)
        elif isinstance(node, (int, float)):
            if math.isfinite(node):
                out[prefix] = float(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)

    for key, value in record.items():
        if key not in ("round", "decision"):
            walk(key, value)
    decision = (record.get("decision") or {}).get("decision")
    if decision:
        out["decision/promoted"] = float(decision == "promoted")
    return out


class TensorBoardLogger:
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    name = "mlflow"

    def __init__(self, run_dir: Path, cfg: MetricsConfig) -> None:
        import mlflow

        self.mlflow = mlflow
        # MLflow 3 refuses its old file store by default; a SQLite file in the run dir is local.
        mlflow.set_tracking_uri(
            cfg.mlflow_tracking_uri or f"sqlite:///{run_dir.resolve()}/mlflow.db"
        )
        mlflow.set_experiment(cfg.mlflow_experiment)
        # One MLflow run per selfloop run, found again by its name on resume.
        found = mlflow.search_runs(
            filter_string=f"tags.selfloop_run = '{run_dir.resolve()}'", output_format="list"
        )
        self.run = (
            mlflow.start_run(run_id=found[0].info.run_id)
            if found
            else mlflow.start_run(
                run_name=run_dir.name, tags={"selfloop_run": str(run_dir.resolve())}
            )
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        # MLflow keys allow '/', '.', '-', '_' and alphanumerics.
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def check_available(cfg: MetricsConfig) -> None:
    """Fail before round 1 (not after it) when an enabled logger's package is missing."""
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise SelfloopError(
            "metrics.tensorboard needs the tensorboard package: pip install tensorboard"
        )
    if cfg.mlflow and importlib.util.find_spec("mlflow") is None:
        raise SelfloopError(
            "metrics.mlflow needs mlflow: pip install mlflow (or mlflow-skinny sqlalchemy alembic)"
        )


def sync(rundir: RunDir, cfg: MetricsConfig) -> list[int]:
    """Log every round of metrics.jsonl that an enabled logger has not logged yet."""
    loggers: list[MetricLogger] = []
    if cfg.tensorboard:
        loggers.append(TensorBoardLogger(rundir.root / "tensorboard"))
    if cfg.mlflow:
        loggers.append(MLflowLogger(rundir.root, cfg))
    logged_now: list[int] = []
    records = rundir.read_metrics()
    for lg in loggers:
        note = rundir.root / f".{lg.name}.logged.json"
        done = set(json.loads(note.read_text())) if note.exists() else set()
        try:
            for rec in records:
                if rec["round"] not in done:
                    lg.log(rec["round"], scalars(rec))
                    done.add(rec["round"])
                    logged_now.append(rec["round"])
                    atomic_write(note, json.dumps(sorted(done)))
        finally:
            lg.close()
    return sorted(set(logged_now))

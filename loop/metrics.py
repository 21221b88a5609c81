"""Metrics for dashboards: TensorBoard, MLflow and Weights & Biases, each optional.

Per round: `metrics.jsonl` (written by the loop's `next` node) is the record; the loggers mirror
it with the round as the step. Each keeps a note of the rounds it has logged and, on every call,
logs the rounds of metrics.jsonl it has not, so a run killed between the two writes catches up
on resume and no round is logged twice. Every numeric leaf of a round's record becomes one
scalar (`dedup/kept`, `tune/final_loss`, `eval/if.prompt_loose`, ...), plus
`decision/promoted` (1 or 0).

Per training step: `step_callback` is a transformers `TrainerCallback` the tune stage adds; it
sends what the Trainer logs (loss, learning rate, grad norm, DPO rewards) plus tokens/s as
`train/...` scalars, on one step axis for the whole run (the steps of earlier rounds first), so
the rounds' curves follow one another.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal, Protocol

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
    wandb: bool = Field(
        False, description="Log to Weights & Biases (needs wandb; offline unless wandb_mode)."
    )
    wandb_project: str = Field("selfloop", description="W&B project name.")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline",
        description="offline: RUN_DIR/wandb, no network (`wandb sync` uploads it later); "
        "online: log as it runs (needs a W&B login).",
    )

    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow or self.wandb


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


class WandbLogger:
    name = "wandb"

    def __init__(self, run_dir: Path, cfg: MetricsConfig) -> None:
        import wandb

        self.wandb = wandb
        # One W&B run per selfloop run: its id is the run directory's, so resume continues it.
        rid = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.resolve().name)
        self.run = wandb.init(
            project=cfg.wandb_project,
            dir=str(run_dir),
            mode=cfg.wandb_mode,
            id=rid,
            name=run_dir.name,
            resume="allow",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        # W&B keeps one step counter per run: rounds and training steps get axes of their own.
        self.run.define_metric("round")
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")

    def log(self, step: int, values: dict[str, float]) -> None:
        if values and all(k.startswith("train/") for k in values):
            self.run.log({**values, "train/step": step})
            return
        for key in values:
            self.run.define_metric(key, step_metric="round")
        self.run.log({**values, "round": step})

    def close(self) -> None:
        self.run.finish()


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
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise SelfloopError("metrics.wandb needs the wandb package: pip install wandb")


def open_loggers(rundir: RunDir, cfg: MetricsConfig) -> list[MetricLogger]:
    """The enabled loggers, opened (each must be closed)."""
    loggers: list[MetricLogger] = []
    if cfg.tensorboard:
        loggers.append(TensorBoardLogger(rundir.root / "tensorboard"))
    if cfg.mlflow:
        loggers.append(MLflowLogger(rundir.root, cfg))
    if cfg.wandb:
        loggers.append(WandbLogger(rundir.root, cfg))
    return loggers


def sync(rundir: RunDir, cfg: MetricsConfig) -> list[int]:
    """Log every round of metrics.jsonl that an enabled logger has not logged yet."""
    loggers = open_loggers(rundir, cfg)
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


# What the Trainer logs that a curve is drawn from (SFT and trl's DPO), under the name it gets;
# `epoch` and the end-of-training summary are left out. tokens/s: SFT counts input tokens.
STEP_KEYS = {
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "rewards/margins": "rewards/margins",
    "rewards/accuracies": "rewards/accuracies",
    "train_tokens_per_second": "tokens_per_second",
    "reward": "reward",  # grpo: the verifier's mean pass share of the sampled answers
}


def round_steps(record: dict[str, Any]) -> int:
    """The optimizer steps one metrics.jsonl record's round took: its tune stage's, plus the
    trainings before the one that made the round's adapter - the sft part and earlier
    greedy preference steps (`tune.greedy.before_steps`; a round's stats from before
    `tune.greedy_steps` say `sft.steps` when the step had pairs: without, the round's adapter
    is that sft adapter, whose steps `tune.steps` already are)."""
    tune = record.get("tune") or {}
    greedy = tune.get("greedy") or {}
    if "before_steps" in greedy:
        return int(tune.get("steps") or 0) + int(greedy["before_steps"])
    sft = int((greedy.get("sft") or {}).get("steps") or 0) if greedy.get("pairs") else 0
    return int(tune.get("steps") or 0) + sft


def step_callback(
    rundir: RunDir, cfg: MetricsConfig, round_index: int, after: int = 0
) -> Any | None:
    """A TrainerCallback sending round `round_index`'s training logs to the enabled loggers as
    `train/<key>` (and `train/round`) at the run's cumulative step: the training steps of
    earlier rounds (metrics.jsonl), the `after` steps this round already took (the sft part
    before its preference step), plus this training's. None when no logger is enabled. Only
    the main process logs."""
    if not cfg.enabled():
        return None
    from transformers import TrainerCallback

    offset = after + sum(
        round_steps(m) for m in rundir.read_metrics() if m.get("round", 0) < round_index
    )

    class StepMetrics(TrainerCallback):
        def __init__(self) -> None:
            self.loggers: list[MetricLogger] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                self.loggers = open_loggers(rundir, cfg)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            # The end-of-training summary has train_loss (step logs carry train_runtime too).
            if not self.loggers or not logs or "train_loss" in logs:
                return
            values = {
                f"train/{STEP_KEYS[k]}": float(v)
                for k, v in logs.items()
                if k in STEP_KEYS and isinstance(v, (int, float)) and math.isfinite(v)
            }
            if values:
                values["train/round"] = float(round_index)
                for lg in self.loggers:
                    lg.log(offset + state.global_step, values)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            for lg in self.loggers:
                lg.close()
            self.loggers = []

    return StepMetrics()

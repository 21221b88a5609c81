"""The run directory: layout, one-process lock, atomic stage outputs, resolved config, champion.

    RUN_DIR/run.json  config.yaml  checkpoints.sqlite  metrics.jsonl  pool.jsonl  pool.faiss ...
    RUN_DIR/champion -> rounds/NNN/adapter      (absent while the base model is champion)
    RUN_DIR/rounds/NNN/<stage>/...              each stage's outputs, renamed into place when done

A stage writes into a temporary sibling directory and renames it to its final name, so a stage
directory either exists complete or not at all; a node that finds its directory skips its work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.atomic import atomic_write
from agent.data import read_json, read_objects
from agent.errors import SelfloopError
from loop.faults import failpoint

if TYPE_CHECKING:
    from judges.evals.result import EvalResult


class RunLocked(SelfloopError):
    """Another live process owns this run directory."""


class RunDir:
    """Paths and atomic operations of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    # ---------------------------------------------------------------- layout
    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints.sqlite"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def champion_link(self) -> Path:
        return self.root / "champion"

    def round_dir(self, n: int) -> Path:
        return self.root / "rounds" / f"{n:03d}"

    def stage_dir(self, n: int, stage: str) -> Path:
        return self.round_dir(n) / stage

    def require_run(self) -> RunDir:
        """Fail with one line unless this directory holds a selfloop run."""
        if not self.root.is_dir():
            raise SelfloopError(f"run directory not found: {self.root}")
        if not self.config_path.is_file():
            raise SelfloopError(f"{self.root} is not a selfloop run directory (no config.yaml)")
        return self

    # ---------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take the run's lock or fail naming the owner. The OS drops it when the owner dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"run directory {self.root} is in use by {owner}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---------------------------------------------------------------- config
    def save_config(self, text: str) -> str:
        """Write the resolved config (only if absent) and return its hash."""
        if not self.config_path.exists():
            atomic_write(self.config_path, text)
        return config_hash(self.config_path.read_text())

    # ---------------------------------------------------------------- run id
    # The checkpoint thread is keyed on an id stored in the directory, not on its path, so a run
    # that is moved, copied or synced elsewhere still finds its checkpoints.
    def run_id(self) -> str | None:
        """The id in run.json; None for a run started before run.json existed."""
        if not self.run_file.is_file():
            return None
        try:
            run_id = json.loads(self.run_file.read_text(encoding="utf-8")).get("id")
        except (ValueError, AttributeError):
            run_id = None
        if not isinstance(run_id, str) or not run_id:
            raise SelfloopError(f"{self.run_file} is damaged (no run id); it was left as it is")
        return run_id

    def save_run_id(self, run_id: str | None = None) -> str:
        """Write run.json with `run_id` (None: a new random id) and return the id."""
        run_id = run_id or uuid.uuid4().hex
        write_json(self.run_file, {"id": run_id})
        return run_id

    # ---------------------------------------------------------------- stages
    # File names inside a round belong to the stage that writes them (loop.stages); these
    # readers look them up there, so no caller spells another stage's file names.
    def stage_done(self, n: int, stage: str) -> bool:
        """Whether `stage` of round `n` finished: its declared output exists (a directory, or
        the adapter, or decision.json). The one definition of "done"."""
        from loop.stages import get

        return (self.round_dir(n) / get(stage).done_path).exists()

    def stage_stats(self, n: int, stage: str) -> dict[str, Any] | None:
        """The stage's stats.json, or None when it has not written one."""
        from loop.stages import get
        from loop.stages.base import STATS

        path = self.round_dir(n) / get(stage).done_path / STATS
        return read_json(path) if path.is_file() else None

    def stage_records(self, n: int, stage: str) -> list[dict[str, Any]]:
        """The records `stage` of round `n` passed on (its kept output)."""
        from agent.data import read_examples
        from loop.stages import get

        s = get(stage)
        if s.records is None:
            raise SelfloopError(f"stage {stage} passes no records on")
        return read_examples(self.round_dir(n) / s.done_path / s.records)

    def input_stage(self, n: int, stage: str) -> str | None:
        """The stage whose records `stage` takes (`loop.stages.input_of`)."""
        from loop.stages import input_of

        source = input_of(stage, lambda name: self.stage_done(n, name))
        return None if source is None else source.name

    def input_records(self, n: int, stage: str) -> list[dict[str, Any]]:
        """What `stage` of round `n` takes in (see `input_stage`); tune's input is what the
        round trains on."""
        source = self.input_stage(n, stage)
        if source is None:
            raise SelfloopError(f"round {n}: no finished stage before {stage} to take records from")
        return self.stage_records(n, source)

    def round_pairs(self, n: int, sources: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Round `n`'s preference pairs from every finished stage that writes pairs, in
        pipeline order, keeping those whose `source` is in `sources` (None: all)."""
        from agent.data import read_jsonl
        from loop.stages import PIPELINE

        out: list[dict[str, Any]] = []
        for s in PIPELINE:
            path = self.round_dir(n) / s.done_path / (s.pairs or "")
            if s.pairs and path.is_file():
                out += [
                    p for p in read_jsonl(path) if sources is None or p.get("source") in sources
                ]
        return out

    def promoted_rounds(self, before: int | None = None) -> list[int]:
        """Promoted rounds (only those before round `before`, when given)."""
        return self._rounds_decided(("promoted",), before)

    def _rounds_decided(self, decisions: tuple[str, ...], before: int | None) -> list[int]:
        return [
            m["round"]
            for m in self.read_metrics()
            if m.get("decision", {}).get("decision") in decisions
            and (before is None or m["round"] < before)
        ]

    def accepted(self, before: int | None = None, rejected: bool = False) -> list[dict[str, Any]]:
        """Examples of every promoted round so far (the champion's training data); with
        `before`, of the rounds before that one only (what round `before` started from, also
        when the run has gone further since, as in a bench re-training an old round); with
        `rejected`, of every decided round, rejected ones too (`tune.carry_rejected`)."""
        decisions = ("promoted", "rejected") if rejected else ("promoted",)
        rounds = self._rounds_decided(decisions, before)
        return [r for n in rounds for r in self.input_records(n, "tune")]

    def since_champion(self, before: int) -> list[int]:
        """The rejected rounds after the last round promoted before round `before`: their
        examples are what the champion round `before` starts from has not trained on
        (`tune.carry_rejected`)."""
        last = max(self.promoted_rounds(before), default=0)
        return [m for m in self._rounds_decided(("rejected",), before) if m > last]

    def adapter_dir(self, n: int) -> Path:
        from loop.stages.tune import ADAPTER

        return self.round_dir(n) / ADAPTER

    def decision_path(self, n: int) -> Path:
        from loop.stages.gate import DECISION

        return self.round_dir(n) / DECISION

    def decision(self, n: int) -> dict[str, Any] | None:
        path = self.decision_path(n)
        return read_json(path) if path.is_file() else None

    def eval_results(self, n: int) -> tuple[EvalResult, EvalResult]:
        """Round `n`'s (candidate, champion) eval results (eval.json, champion_eval.json)."""
        from judges.evals.result import EvalResult
        from loop.stages.evaluate import CHAMPION_EVAL, EVAL

        d = self.stage_dir(n, "evaluate")
        return EvalResult.read(d / EVAL), EvalResult.read(d / CHAMPION_EVAL)

    def start_eval(self, n: int) -> EvalResult | None:
        """The run's starting model's evaluation (round 1's champion side) as round `n > 1`'s
        gate compares with it; None for round 1 or where round 1 has no evaluation."""
        from judges.evals.result import EvalResult
        from loop.stages.evaluate import CHAMPION_EVAL

        path = self.stage_dir(1, "evaluate") / CHAMPION_EVAL
        return EvalResult.read(path) if n > 1 and path.is_file() else None

    @contextmanager
    def writing_stage(self, n: int, stage: str) -> Iterator[Path]:
        """Yield a temporary directory that becomes `rounds/NNN/<stage>` when the block succeeds."""
        final = self.stage_dir(n, stage)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of a killed process: the run lock says no live process is writing them.
        for stale in final.parent.glob(f".{stage}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".{stage}.tmp-{os.getpid()}")
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        failpoint(f"{stage}.writing", n)
        os.rename(tmp, final)

    # ---------------------------------------------------------------- champion
    def champion(self) -> Path | None:
        """The current champion adapter directory (None = the base model)."""
        link = self.champion_link
        return link.resolve() if link.is_symlink() or link.exists() else None

    def set_champion(self, adapter_dir: Path) -> None:
        """Point `champion` at `adapter_dir` atomically (a new symlink renamed over the old)."""
        rel = os.path.relpath(adapter_dir, self.root)
        tmp = self.root / f".champion.tmp-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(rel, tmp)
        os.replace(tmp, self.champion_link)

    # ---------------------------------------------------------------- time
    def timings_path(self, n: int) -> Path:
        return self.round_dir(n) / "timings.json"

    def record_time(self, n: int, stage: str, seconds: float) -> None:
        """A stage's wall time in round `n` (model loading included where it triggered it)."""
        times = self.stage_times(n)
        times[stage] = round(seconds, 1)
        self.round_dir(n).mkdir(parents=True, exist_ok=True)
        write_json(self.timings_path(n), times)

    def stage_times(self, n: int) -> dict[str, float]:
        """stage -> seconds for the stages of round `n` that ran (a damaged file reads empty)."""
        try:
            data = json.loads(self.timings_path(n).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}

    # ---------------------------------------------------------------- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """One record per finished round; a damaged line is a one-line error naming file:line
        (the file is left as it is: it is the run's history)."""
        if not self.metrics_path.exists():
            return []
        out = []
        try:
            for where, rec in read_objects(self.metrics_path):
                if not isinstance(rec.get("round"), int) or isinstance(rec["round"], bool):
                    raise SelfloopError(f"{where}: no round number")
                out.append(_renamed_metrics(rec))
        except SelfloopError as e:
            raise SelfloopError(
                f"{e}; the run's metrics file is damaged: fix or remove that line"
            ) from None
        return out


def _renamed_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    """A round record written before a suite was renamed, with the suite's current name."""
    from judges.evals import renamed_metric

    for key in ("eval", "champion_eval", "eval_constraint_types"):
        if isinstance(rec.get(key), dict):
            rec[key] = {renamed_metric(k): v for k, v in rec[key].items()}
    return rec


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))

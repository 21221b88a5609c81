"""What the stages of a round share: the graph's state (JSON primitives only) and `Context`,
which holds the config, the run directory and the lazily loaded models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from agent.backends.base import AdapterHost
from loop.config import SelfloopConfig
from loop.rundir import RunDir


class LoopState(TypedDict, total=False):
    round: int  # the round in progress, 1-based
    champion: str | None  # champion adapter, relative to the run dir (None = base model)
    champion_round: int | None
    rejections: int  # rejected rounds in a row
    kept: int  # new examples kept by the current round
    decision: str | None  # "promoted" | "rejected" for the current round
    trained: bool  # False when the round had nothing its objective trains on (no pairs)
    stop: str | None  # why the run ended


class Context:
    """What the nodes share: config, run directory and lazily loaded models."""

    def __init__(self, cfg: SelfloopConfig, rundir: RunDir) -> None:
        self.cfg, self.rundir = cfg, rundir
        self.stop_requested = False  # set by SIGINT/SIGTERM; checked between stages
        self.where = ""  # "round N stage", for progress displays (set by the graph per node)
        self._student = None
        self._judge = None  # judge.model, when one is configured
        self._pool = None

    def student(self, state: LoopState) -> Any:
        """The student generator with the champion adapter loaded as 'champion' (if any)."""
        from agent.backends import make_generator

        if self._student is None:
            self._student = self.tracked(make_generator(self.cfg.model, self.cfg.backend))
        champ = state.get("champion")
        host = self._student if isinstance(self._student, AdapterHost) else None
        if champ and host is not None and "champion" not in host.adapter_paths():
            host.load_adapter(self.rundir.root / champ, "champion")
        return self._student

    def judge_model(self, state: LoopState) -> Any:
        """The generator that judges (and, with safety.llm, rates harm): `judge.model` when set
        (a stronger model or an endpoint), else the student itself, the way Self-Rewarding
        models judge themselves (its base weights: the judge prompts pass no adapter)."""
        from agent.backends import make_generator

        spec = self.cfg.judge.model
        if spec is None:
            return self.student(state)
        if self._judge is None:
            self._judge = self.tracked(
                make_generator(spec, self.cfg.judge.backend or self.cfg.backend)
            )
        return self._judge

    def judge_name(self) -> str:
        spec = self.cfg.judge.model
        return f"student ({self.cfg.model.name})" if spec is None else spec.name

    def tracked(self, gen: Any) -> Any:
        """`gen` reporting the progress of its generate calls under the current stage."""
        from loop.progress import Tracked

        return Tracked(gen, lambda: self.where)

    def release(self) -> None:
        """Drop loaded models (before training, so the trainer has the memory)."""
        for gen in (self._student, self._judge):
            if gen is not None:
                gen.close()
        self._student = self._judge = None

    def pool(self) -> Any:
        from judges.dedup import Pool

        if self._pool is None:
            self._pool = Pool(self.rundir.root, self.cfg.dedup)
        return self._pool


def adapter_name(state: LoopState) -> str | None:
    return "champion" if state.get("champion") else None


def stage_stats(path: Path) -> dict[str, Any]:
    return json.loads((path / "stats.json").read_text())

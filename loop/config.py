"""The one YAML config, validated into typed models, with `key.sub=value` command-line overrides.

Every error names the file and the YAML key (`run.yaml: backend.batch_size: Input should be
greater than or equal to 1`). Sections grow as the loop's stages land; today the config says which
model to use, how to run it, how to sample and how to fine-tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.backends import BackendConfig, SamplingParams
from agent.errors import SelfloopError, describe_validation
from agent.models import ModelSpec
from tuners.config import TuneConfig


class SelfloopConfig(BaseModel):
    """A whole selfloop config file."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model being improved.")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="How it is run.")
    sampling: SamplingParams = Field(
        default_factory=SamplingParams, description="Default sampling for generation."
    )
    tune: TuneConfig = Field(default_factory=TuneConfig, description="How rounds fine-tune.")


class ConfigError(SelfloopError):
    """A config file or override that does not validate."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so 3 is an int and [x, y] a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> SelfloopConfig:
    """Read `path` (None = all defaults), apply overrides, validate. Errors name file and key."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return SelfloopConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation(e)}") from e


def dump_config(cfg: SelfloopConfig) -> str:
    """The resolved config as YAML (what a run saves next to its data)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

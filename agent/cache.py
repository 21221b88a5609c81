"""Atomic, self-checking cache directories.

A cache entry is a directory built once by a caller-supplied function (say, a GGUF model converted
to safetensors) and reused afterwards. The entry is built in a temporary sibling directory, a
`selfloop-cache.json` manifest listing every file and its size is written last, and the directory
is renamed into place. An entry without a manifest, with a missing or resized file, or with a
safetensors file whose header does not parse is treated as corrupt and rebuilt, so a process
killed half-way through a conversion never leaves a cache that later loads garbage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

MANIFEST = "selfloop-cache.json"
MANIFEST_VERSION = 1


def default_cache_root() -> Path:
    """`$SELFLOOP_CACHE_DIR` if set, else the user cache dir (e.g. ~/.cache/selfloop)."""
    env = os.environ.get("SELFLOOP_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("selfloop"))


def _safetensors_header_ok(path: Path, size: int) -> bool:
    # A safetensors file starts with a little-endian u64 header length and a JSON header whose
    # data offsets must fit inside the file: enough to catch truncation without reading weights.
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return False
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return 8 + n + end == size


def check_entry(entry: Path) -> str | None:
    """Return None when `entry` is a complete cache entry, else why it is not."""
    manifest = entry / MANIFEST
    if not entry.is_dir():
        return "missing"
    try:
        data = json.loads(manifest.read_text())
        files: dict[str, int] = data["files"]
        if data.get("version") != MANIFEST_VERSION:
            return f"manifest version {data.get('version')} != {MANIFEST_VERSION}"
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest (conversion interrupted?)"
    for name, size in files.items():
        p = entry / name
        if not p.is_file():
            return f"file {name} missing"
        actual = p.stat().st_size
        if actual != size:
            return f"file {name} is {actual} bytes, manifest says {size}"
        if name.endswith(".safetensors") and not _safetensors_header_ok(p, actual):
            return f"file {name} is not a valid safetensors file"
    return None


def materialize(
    root: Path, key: str, build: Callable[[Path], None], meta: dict | None = None
) -> Path:
    """Return `root/key`, building it with `build(tmp_dir)` first unless a valid entry exists.

    `build` writes files into the empty directory it is given. A corrupt entry is removed and
    rebuilt. Two processes building the same key at once both succeed; the first rename wins.
    """
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    problem = check_entry(entry)
    if problem is None:
        return entry
    if problem != "missing":
        log.warning("cache entry %s is unusable (%s); rebuilding it", entry, problem)
        shutil.rmtree(entry, ignore_errors=True)
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        started = time.monotonic()
        build(tmp)
        files = {
            str(p.relative_to(tmp)): p.stat().st_size
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        manifest = {"version": MANIFEST_VERSION, "files": files, "meta": meta or {}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(tmp, entry)
        except OSError:
            # Someone else finished first; theirs is as good as ours if it checks out.
            if check_entry(entry) is not None:
                raise
        log.info("built cache entry %s in %.1fs", entry, time.monotonic() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry

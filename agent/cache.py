"""Atomic, self-checking cache directories.

A cache entry is a directory built once by a caller-supplied function (say, a GGUF model converted
to safetensors) and reused afterwards. The entry is built in a temporary sibling directory, a
`selfloop-cache.json` manifest listing every file with its size and SHA-256 is written last, and
the directory is renamed into place. An entry without a manifest, with a missing or resized file,
a safetensors file whose header does not parse, or a file whose SHA-256 differs from the one
recorded (same-size garbage: a bad disk, a stray write) is treated as corrupt and rebuilt, so a
process killed half-way through a conversion, or a damaged file, never loads garbage. Hashing the
bundled model's 540 MB takes about half a second; a process checks an unchanged entry once.

An entry written before hashes were recorded gets them added on its first check (its sizes and
headers checked as before). A temporary directory left by a killed build is removed by the next
build once its process is gone.
"""

from __future__ import annotations

import hashlib
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

from agent.atomic import HOST, alive, atomic_write
from agent.errors import SelfloopError

log = logging.getLogger(__name__)

MANIFEST = "selfloop-cache.json"
MANIFEST_VERSION = 1  # "sha256" was added without a bump: older entries get it on first check
# A leftover temporary directory whose owner cannot be told dead (another machine sharing the
# cache, a name from an older selfloop) is removed once it is this old: no build takes a day.
STALE_TMP_SECONDS = 24 * 3600
# Entries checked by this process, with the stat of their files then: an unchanged entry is
# not hashed again (a run resolves its model many times).
_verified: dict[Path, tuple] = {}


def default_cache_root() -> Path:
    """`$SELFLOOP_CACHE_DIR` if set, else the user cache dir (e.g. ~/.cache/selfloop)."""
    env = os.environ.get("SELFLOOP_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("selfloop"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def safetensors_ok(path: Path) -> bool:
    """Whether `path` is a complete safetensors file (header and data sizes; weights not read)."""
    try:
        return _safetensors_header_ok(path, path.stat().st_size)
    except OSError:
        return False


def _safetensors_header_ok(path: Path, size: int) -> bool:
    # A safetensors file starts with a little-endian u64 header length and a JSON header whose
    # data offsets must fit inside the file: enough to catch truncation without reading weights.
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False  # not a JSON object of {name: {data_offsets: [a, b]}}: not safetensors
    return 8 + n + end == size


def _stat_key(entry: Path) -> tuple:
    # ctime changes on every write and cannot be set back by a user: a file rewritten in place
    # (same size, even with its mtime restored) no longer matches.
    out = []
    for p in sorted(entry.rglob("*")):
        st = p.stat()
        out.append(
            (str(p.relative_to(entry)), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        )
    return tuple(out)


def check_entry(entry: Path) -> str | None:
    """Return None when `entry` is a complete cache entry, else why it is not. Every file's
    SHA-256 is compared with the manifest's (once per process while the files are unchanged)."""
    manifest = entry / MANIFEST
    if not entry.is_dir():
        return "missing"
    try:
        data = json.loads(manifest.read_text())
        files: dict[str, int] = data["files"]
        hashes: dict[str, str] | None = data.get("sha256")
        if data.get("version") != MANIFEST_VERSION:
            return f"manifest version {data.get('version')} != {MANIFEST_VERSION}"
        if hashes is not None and set(hashes) != set(files):
            return "manifest lists different files for sizes and hashes"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "no readable manifest (conversion interrupted?)"
    key = _stat_key(entry)
    if _verified.get(entry) == key:
        return None
    for name, size in files.items():
        p = entry / name
        if not p.is_file():
            return f"file {name} missing"
        actual = p.stat().st_size
        if actual != size:
            return f"file {name} is {actual} bytes, manifest says {size}"
        if name.endswith(".safetensors") and not _safetensors_header_ok(p, actual):
            return f"file {name} is not a valid safetensors file"
        if hashes is not None and file_sha256(p) != hashes[name]:
            return f"file {name} does not match its SHA-256 (changed since it was written)"
    if hashes is None:
        _add_hashes(entry, data)
        key = _stat_key(entry)
    _verified[entry] = key
    return None


def _add_hashes(entry: Path, manifest: dict) -> None:
    """Record the SHA-256 of an entry written before hashes were (its sizes just checked)."""
    manifest["sha256"] = {name: file_sha256(entry / name) for name in manifest["files"]}
    try:
        atomic_write(entry / MANIFEST, json.dumps(manifest, indent=2))
    except OSError as e:  # a read-only shared cache: checked by sizes, as it was written
        log.debug("cannot add hashes to %s: %s", entry / MANIFEST, e)


def remove_stale_builds(root: Path) -> list[Path]:
    """Remove the temporary directories of killed builds under `root`; return them.

    A build's directory is `.tmp-KEY-HOST-PID-RANDOM`: one of this machine whose process is
    gone goes at once; any other (another machine's, or an older selfloop's name) once it is
    older than STALE_TMP_SECONDS, since its owner cannot be asked.
    """
    removed = []
    for tmp in root.glob(".tmp-*"):
        _, host, pid, _ = tmp.name.rsplit("-", 3) if tmp.name.count("-") >= 4 else ("", "", "", "")
        try:
            if host == HOST and pid.isdigit():
                stale = not alive(int(pid))
            else:
                stale = time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS
        except OSError:
            continue  # removed meanwhile
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.info("removed %s, left by a build that did not finish", tmp)
    return removed


def materialize(
    root: Path, key: str, build: Callable[[Path], None], meta: dict | None = None
) -> Path:
    """Return `root/key`, building it with `build(tmp_dir)` first unless a valid entry exists.

    `build` writes files into the empty directory it is given. A corrupt entry is removed and
    rebuilt. Two processes building the same key at once both succeed; the first rename wins.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SelfloopError(
            f"cannot create the model cache {root}: a file stands in its path; set "
            "SELFLOOP_CACHE_DIR (or model.cache_dir) to a directory"
        ) from None
    entry = root / key
    problem = check_entry(entry)
    if problem is None:
        return entry
    if problem != "missing":
        log.warning("cache entry %s is unusable (%s); rebuilding it", entry, problem)
        shutil.rmtree(entry, ignore_errors=True)
        _verified.pop(entry, None)
    remove_stale_builds(root)
    tmp = root / f".tmp-{key}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        started = time.monotonic()
        build(tmp)
        paths = [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST]
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in paths}
        hashes = {str(p.relative_to(tmp)): file_sha256(p) for p in paths}
        manifest = {
            "version": MANIFEST_VERSION,
            "files": files,
            "sha256": hashes,
            "meta": meta or {},
        }
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

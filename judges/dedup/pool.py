"""The pool of accepted examples and its FAISS index, persisted in the run directory.

Persistence (`Pool`, in the run directory): `pool.jsonl` holds one `{"id", "text"}` line per
accepted example in index order and is the truth; `pool.faiss` is derived from it, and
`pool.faiss.json` is the index's fingerprint: how many lines it holds vectors for, a SHA-256 of
those lines and a SHA-256 of the index file's bytes. All are written atomically (temporary file,
fsync, rename), in that order: jsonl, index, fingerprint. On load the index is trusted only if its
fingerprint matches both the index file and the jsonl's first lines - cheap (two hashes, no model
needed), and it catches an index copied in from another pool even when it has the same length.
An index whose fingerprint matches but which is shorter than the jsonl (a crash between the
writes) gets the missing tail embedded and appended; an index that is missing, unreadable,
longer than the jsonl, without a fingerprint, or whose fingerprint does not match is rebuilt
from the jsonl. No example is lost or counted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from agent.atomic import atomic_write
from agent.data import read_jsonl, write_jsonl
from agent.errors import SelfloopError
from judges.dedup.config import DedupConfig, Record, record_id, record_text
from judges.embed import Embedder

log = logging.getLogger(__name__)

INDEX_FILE = "pool.faiss"
RECORDS_FILE = "pool.jsonl"
FINGERPRINT_FILE = "pool.faiss.json"  # which lines and which bytes the index is


# ---- FAISS indexes ----


def index_kind_for(config: DedupConfig, n: int) -> str:
    if config.index != "auto":
        return config.index
    return "hnsw" if n > config.approximate_above else "flat"


def _index_kind(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    return "flat"


def _ivf_nlist(config: DedupConfig, n: int) -> int:
    # faiss wants ~39 training points per cluster; fewer clusters is also closer to exact.
    return config.ivf.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))


def _tune(index: faiss.Index, config: DedupConfig) -> faiss.Index:
    # Search-time parameters follow the config, whatever the saved index had.
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = config.hnsw.ef_search
    elif (ivf := faiss.try_extract_index_ivf(index)) is not None:
        ivf.nprobe = config.ivf.nprobe
    return index


def new_index(kind: str, d: int, config: DedupConfig, train: np.ndarray) -> faiss.Index:
    """An empty index of `kind` for `d`-dimensional vectors (IVF is trained on `train`)."""
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw.ef_construction
    else:
        nlist = min(_ivf_nlist(config, len(train)), max(1, len(train)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
    return _tune(index, config)


def _all_vectors(index: faiss.Index) -> np.ndarray:
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    if (ivf := faiss.try_extract_index_ivf(index)) is not None:
        ivf.make_direct_map()  # IVF lists are not in id order; the map makes reconstruct work
    return index.reconstruct_n(0, index.ntotal)


def search(
    index: faiss.Index | None, vectors: np.ndarray, k: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of each row, nearest first: (similarities, rows), each of shape
    (n, k) - or (n,) for k = 1; rows are -1 (similarity -inf) where there is none."""
    n = len(vectors)
    if index is None or index.ntotal == 0 or n == 0:
        shape = (n,) if k == 1 else (n, k)
        return np.full(shape, -np.inf, dtype=np.float32), np.full(shape, -1, dtype=np.int64)
    if vectors.shape[1] != index.d:
        raise SelfloopError(
            f"the pool index holds {index.d}-dimensional vectors but the embedding model gives "
            f"{vectors.shape[1]}: the pool was built with another model (use it, or a new run)"
        )
    sims, rows = index.search(vectors, k)
    sims[rows < 0] = -np.inf
    return (sims[:, 0], rows[:, 0]) if k == 1 else (sims, rows)


# ---- the pool ----


class Pool:
    """The accepted examples and their index; persisted in `directory` (None: in memory only).

    Loading continues the pool of earlier rounds (repairing it if a crash left the two files
    out of step, see the module docstring). Adding an id already in the pool is a no-op.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        config: DedupConfig | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = config or DedupConfig()
        self.embedder = embedder or Embedder(
            self.config.model,
            device=self.config.device,
            batch_size=self.config.batch_size,
            dtype=self.config.dtype,
        )
        self.directory = Path(directory) if directory is not None else None
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._rows: dict[str, int] = {}
        self.index: faiss.Index | None = None
        self.repaired: str | None = None  # what loading had to fix, for logs and tests
        if self.directory is not None:
            self._load()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, rid: object) -> bool:
        return str(rid) in self._rows

    def row(self, rid: str) -> int | None:
        return self._rows.get(rid)

    @property
    def index_kind(self) -> str:
        return _index_kind(self.index) if self.index is not None else index_kind_for(self.config, 0)

    def search(self, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest pool row(s) of each vector: (similarities, rows), -inf / -1 where none
        (see `search` for the shapes)."""
        return search(self.index, np.ascontiguousarray(vectors, dtype=np.float32), k)

    def add(self, records: Iterable[Record], vectors: np.ndarray | None = None) -> int:
        """Append records whose id is not in the pool yet; returns how many were added.

        `vectors` (rows aligned with `records`, e.g. a DedupReport's `kept_vectors`) saves
        embedding them again. An id already in the pool with a different text is an error: two
        examples sharing an id would make the pool ambiguous.
        """
        records = list(records)
        fields = self.config.text_fields
        new: list[int] = []
        seen: set[str] = set()
        ids = [record_id(r, i) for i, r in enumerate(records)]
        texts = [record_text(r, fields, i) for i, r in enumerate(records)]
        for i, (rid, text) in enumerate(zip(ids, texts)):
            if rid in self._rows:
                self._check_same(rid, text)
            elif rid in seen:
                raise SelfloopError(f"pool add: id {rid!r} appears twice in the records")
            else:
                seen.add(rid)
                new.append(i)
        if not new:
            return 0
        if vectors is None:
            vecs = self.embedder.encode([texts[i] for i in new])
        else:
            if len(vectors) != len(records):
                raise SelfloopError(f"pool add: {len(vectors)} vectors for {len(records)} records")
            vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[new])
        if self.index is not None and vecs.shape[1] != self.index.d:
            raise SelfloopError(
                f"pool add: {vecs.shape[1]}-dimensional vectors for a pool of {self.index.d}"
            )
        all_ids, all_texts = self.ids + [ids[i] for i in new], self.texts + [texts[i] for i in new]
        if self.directory is not None:
            # The jsonl first: it is the truth, and an index left short by a crash right after
            # this write is completed on load from the lines it lacks.
            self._write_records(all_ids, all_texts)
        for i in new:
            self._rows[ids[i]] = len(self._rows)
        self.ids, self.texts = all_ids, all_texts
        self._append_vectors(vecs)
        if self.directory is not None:
            self._write_index()
        log.info("pool: added %d, now %d (%s index)", len(new), len(self), self.index_kind)
        return len(new)

    def _check_same(self, rid: str, text: str) -> None:
        if self.texts[self._rows[rid]] != text:
            raise SelfloopError(
                f"id {rid!r} is already in the pool with a different text "
                f"({self.texts[self._rows[rid]]!r:.60} vs {text!r:.60}); ids must be unique"
            )

    def _append_vectors(self, vecs: np.ndarray) -> None:
        n, index = len(self.ids), self.index
        kind = index_kind_for(self.config, n)
        grown_ivf = (
            index is not None
            and kind == "ivf"
            and self.config.ivf.nlist is None
            and _ivf_nlist(self.config, n) >= 2 * faiss.extract_index_ivf(index).nlist
        )
        if index is None or _index_kind(index) != kind or grown_ivf:
            # A new kind (auto crossed `approximate_above`) or an IVF outgrown by its pool:
            # rebuild from the stored vectors rather than re-embedding.
            old = _all_vectors(index) if index is not None else vecs[:0]
            vectors = np.vstack([old, vecs])
            self.index = new_index(kind, vectors.shape[1], self.config, vectors)
            self.index.add(vectors)
        else:
            index.add(vecs)

    # -- disk --

    def _paths(self) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / RECORDS_FILE, self.directory / INDEX_FILE

    def _write_records(self, ids: list[str], texts: list[str]) -> None:
        records_path, _ = self._paths()
        write_jsonl(records_path, ({"id": i, "text": t} for i, t in zip(ids, texts)))

    def _write_index(self) -> None:
        _, index_path = self._paths()
        data = faiss.serialize_index(self.index).tobytes()
        atomic_write(index_path, data)
        fingerprint = {
            "vectors": int(self.index.ntotal),
            "records_sha256": _records_digest(self.ids, self.texts, self.index.ntotal),
            "index_sha256": hashlib.sha256(data).hexdigest(),
        }
        atomic_write(index_path.with_name(FINGERPRINT_FILE), json.dumps(fingerprint).encode())

    def _fingerprint_problem(self, data: bytes, have: int) -> str | None:
        """Why the index (its file's bytes, `have` vectors) is not this jsonl's, or None."""
        assert self.directory is not None
        path = self.directory / FINGERPRINT_FILE
        try:
            fp = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{FINGERPRINT_FILE} missing or unreadable"
        if not isinstance(fp, dict) or fp.get("index_sha256") != hashlib.sha256(data).hexdigest():
            return f"{INDEX_FILE} does not match its {FINGERPRINT_FILE} (another pool's index?)"
        if fp.get("vectors") != have or fp.get("records_sha256") != _records_digest(
            self.ids, self.texts, have
        ):
            return f"{INDEX_FILE} does not match {RECORDS_FILE} (its first {have} lines differ)"
        return None

    def _load(self) -> None:
        records_path, index_path = self._paths()
        rows = read_jsonl(records_path) if records_path.is_file() else []
        for n, r in enumerate(rows, 1):
            rid, text = r.get("id"), r.get("text")
            if not isinstance(rid, str) or not isinstance(text, str) or rid in self._rows:
                raise SelfloopError(f"{records_path}:{n}: expected a unique 'id' and a 'text'")
            self._rows[rid] = n - 1
            self.ids.append(rid)
            self.texts.append(text)
        index, data = None, b""
        if index_path.is_file():
            data = index_path.read_bytes()
            try:
                index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                index = _tune(index, self.config)
            except RuntimeError as e:  # faiss raises RuntimeError on a truncated or foreign file
                log.warning("pool index %s is unreadable (%s)", index_path, str(e).splitlines()[0])
        n, have = len(self.ids), index.ntotal if index is not None else 0
        if index is None and n == 0:
            return
        problem = None
        if index is None:
            problem = f"{INDEX_FILE} missing or unreadable"
        elif have > n:
            problem = f"{INDEX_FILE} has {have} vectors but {RECORDS_FILE} only {n} lines"
        else:
            # Another pool's index, or one whose writes a crash left out of step, is refused.
            problem = self._fingerprint_problem(data, have)
            if problem is None:
                self.index = index
            if problem is None and have < n:
                # The tail is missing (crash after the jsonl was written, before the index):
                # the vectors the index has belong to these lines; embed the lines it lacks.
                self._append_vectors(self.embedder.encode(self.texts[have:]))
                self.repaired = f"embedded {n - have} lines missing from {INDEX_FILE}"
        if problem:
            self.index = None
            self.repaired = f"rebuilt {INDEX_FILE} from {RECORDS_FILE}: {problem}"
            if n:
                self._append_vectors(self.embedder.encode(self.texts))
            else:  # vectors of nothing accepted: the pool is empty
                index_path.unlink()
                index_path.with_name(FINGERPRINT_FILE).unlink(missing_ok=True)
        if self.repaired:
            log.warning("pool %s: %s", self.directory, self.repaired)
            if self.index is not None:
                self._write_index()


def _records_digest(ids: Sequence[str], texts: Sequence[str], n: int) -> str:
    """SHA-256 of the first `n` pool lines (id and text)."""
    h = hashlib.sha256()
    for rid, text in zip(ids[:n], texts[:n]):
        h.update(json.dumps([rid, text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()

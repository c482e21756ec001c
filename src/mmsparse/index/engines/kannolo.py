"""The ``kannolo`` engine: approximate sparse search on an HNSW graph (PyPI ``kannolo``).

kANNolo (Delfino, Ermini, Nardini, Perego, Rulli, Venturini, 2025) builds an HNSW graph
over the sparse vectors under dot product (``SparsePlainHNSW``: values stored as 16-bit
floats in blocks). Build knobs: ``m`` (graph degree, default 32) and ``ef_construction``
(200); search knob: ``ef_search`` (candidate list size; larger = higher recall, slower),
default 100 and stored in the index.

Edges handled here (kannolo 0.15.1):

* a query term at or beyond the largest term id of the collection aborts the whole
  process from Rust (not even a ``PanicException``): such terms — and every term no image
  has — are dropped before the call; a query left empty gets an empty result.
* an empty query returns ``k`` arbitrary images with score 0, and ``k`` larger than the
  index pads with ``-1`` / ``inf``: only hits with a real id and a positive score are kept.
* scores are computed on the 16-bit stored values (relative error about 1e-3), so equal
  float scores may be ordered differently; recall is measured against the exact ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError, require_extra
from mmsparse.index.engines._base import BuildRequest, Engine, Param, Query, register_engine
from mmsparse.index.hits import SearchHits, pack_hits
from mmsparse.index.stored import load_stored, save_stored, stored_weights

KANNOLO_FILE = "kannolo.hnsw"
KANNOLO_META = "kannolo_meta.npz"


def _kannolo() -> Any:
    return require_extra("kannolo", "index", KannoloEngine.requires[0][1])


@register_engine
class KannoloEngine(Engine):
    """kANNolo's sparse HNSW graph (approximate)."""

    name = "kannolo"
    summary = "approximate; kANNolo sparse HNSW graph (SparsePlainHNSW, 16-bit values)"
    capabilities = frozenset({"explain", "incremental", "threads"})
    requires = (("kannolo", "The kannolo engine (kannolo, sparse HNSW)"),)
    files = (KANNOLO_FILE, KANNOLO_META)
    build_params = (
        Param("m", int, 32, "graph degree", minimum=1),
        Param("ef_construction", int, 200, "candidate list size while building", minimum=1),
    )
    search_params = (
        Param("ef_search", int, 100, "candidate list size (larger: higher recall)", minimum=1),
    )

    @classmethod
    def _build(cls, directory: Path, request: BuildRequest) -> dict[str, Any]:
        """Build and save the graph (document ids = rows) and the stored vectors."""
        kannolo = _kannolo()
        csr = sp.csr_matrix(request.sparse, dtype=np.float32)
        csr.eliminate_zeros()
        csr.sort_indices()
        if csr.nnz == 0:
            raise MMSparseError("kannolo: no image has any term (nothing to index)")
        try:
            index = kannolo.SparsePlainHNSW.build_from_arrays(
                csr.indices.astype(np.int32),
                csr.data.astype(np.float32),
                csr.indptr.astype(np.int64),
                m=int(request.build["m"]),
                ef_construction=int(request.build["ef_construction"]),
            )
            index.save(str(directory / KANNOLO_FILE))
        except BaseException as exc:  # a Rust panic is a BaseException
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise MMSparseError(f"kannolo build failed ({type(exc).__name__}: {exc})") from exc
        save_stored(directory / KANNOLO_META, csr)
        return {
            "file": KANNOLO_FILE,
            "meta": KANNOLO_META,
            "build": request.build,
            "search": request.search,
        }

    def _load(self) -> None:
        kannolo = _kannolo()
        self._path = self.directory / KANNOLO_FILE
        meta_path = self.directory / KANNOLO_META
        if not self._path.is_file() or not meta_path.is_file():
            raise IndexFormatError(
                f"{self.directory}: kannolo index files not found ({KANNOLO_FILE})"
            )
        self.docs, _ = load_stored(meta_path, "kannolo")
        self._found(n_docs=self.docs.shape[0], vocab_size=self.docs.shape[1])
        self.known = np.zeros(self.vocab_size, dtype=bool)
        self.known[np.unique(self.docs.indices)] = True
        try:
            self.index = kannolo.SparsePlainHNSW.load(str(self._path))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise IndexFormatError(f"{self._path}: unreadable kannolo index ({exc})") from exc

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the graph and vectors (without the metadata copy)."""
        return self._path.stat().st_size

    def _search(self, query: Query) -> SearchHits:
        """Approximate top-``k``; ``threads=1`` searches query by query on one thread."""
        q, k, threads = query.sparse, query.k, query.threads
        # Drop unknown terms (kannolo aborts the process on a term beyond its dimension).
        keep = self.known[q.indices] & (q.data > 0)
        q = sp.csr_matrix(
            (q.data[keep], q.indices[keep], np.concatenate([[0], np.cumsum(keep)])[q.indptr]),
            shape=q.shape,
        )
        ef = max(int(query.params["ef_search"]), k)
        n_q = q.shape[0]
        nonempty = np.flatnonzero(np.diff(q.indptr) > 0)
        results: list[list[tuple[int, float]]] = [[] for _ in range(n_q)]
        try:
            if threads == 1 or nonempty.size <= 1:
                for i in nonempty:
                    s, e = q.indptr[i], q.indptr[i + 1]
                    dist, ids = self.index.search(
                        q.indices[s:e].astype(np.int32), q.data[s:e], k, ef_search=ef
                    )
                    results[i] = _hits(dist, ids)
            elif nonempty.size:
                sub = q[nonempty]
                dist, ids = self.index.batch_search(
                    sub.indices.astype(np.int32),
                    sub.data.astype(np.float32),
                    sub.indptr.astype(np.int64),
                    k,
                    ef_search=ef,
                    num_threads=int(threads or 0),
                )
                dist, ids = dist.reshape(-1, k), ids.reshape(-1, k)
                for j, i in enumerate(nonempty):
                    results[i] = _hits(dist[j], ids[j])
        except BaseException as exc:  # a Rust panic is a BaseException
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise MMSparseError(f"kannolo search failed ({type(exc).__name__}: {exc})") from exc
        return pack_hits(results, k)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights of ``rows`` at ``terms``."""
        return stored_weights(self.docs, rows, terms)

    def stored_vectors(self) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """The stored vectors (no dense vectors)."""
        return sp.csr_matrix(self.docs, dtype=np.float32, copy=True), None


def _hits(dist: np.ndarray, ids: np.ndarray) -> list[tuple[int, float]]:
    ok = (ids >= 0) & np.isfinite(dist) & (dist > 0)
    return [(int(i), float(d)) for i, d in zip(ids[ok], dist[ok])]

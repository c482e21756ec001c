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
from mmsparse.index.inverted import SearchHits
from mmsparse.index.stored import load_stored, save_stored, stored_weights

KANNOLO_FILE = "kannolo.hnsw"
KANNOLO_META = "kannolo_meta.npz"
KANNOLO_BUILD_DEFAULTS: dict[str, Any] = {"m": 32, "ef_construction": 200}
KANNOLO_SEARCH_DEFAULTS: dict[str, Any] = {"ef_search": 100}


def _kannolo():
    return require_extra("kannolo", "index", "The kannolo engine (kannolo, sparse HNSW)")


def build_kannolo(
    directory: Path, sparse: sp.csr_matrix, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build and save a kannolo sparse HNSW index (document ids = rows).

    Args:
        directory: Index directory; writes ``kannolo.hnsw`` and ``kannolo_meta.npz``.
        sparse: ``(n_docs, V)`` non-negative float32 CSR.
        params: ``m``, ``ef_construction`` (build) and ``ef_search`` (stored search default).

    Returns:
        The engine parameters for the manifest.

    Raises:
        MissingExtraError: If kannolo is not installed.
        MMSparseError: On an unknown parameter, an empty collection or bad weights.
    """
    kannolo = _kannolo()
    params = dict(params or {})
    search = {k: params.pop(k) for k in list(params) if k in KANNOLO_SEARCH_DEFAULTS}
    unknown = set(params) - set(KANNOLO_BUILD_DEFAULTS)
    if unknown:
        raise MMSparseError(
            f"unknown kannolo parameter(s) {sorted(unknown)}; known: "
            f"{sorted([*KANNOLO_BUILD_DEFAULTS, *KANNOLO_SEARCH_DEFAULTS])}"
        )
    build = {**KANNOLO_BUILD_DEFAULTS, **params}
    csr = sp.csr_matrix(sparse, dtype=np.float32)
    csr.eliminate_zeros()
    csr.sort_indices()
    if csr.nnz == 0:
        raise MMSparseError("kannolo: no image has any term (nothing to index)")
    if not np.isfinite(csr.data).all() or csr.data.min() < 0:
        raise MMSparseError("kannolo: document weights must be finite and non-negative")
    try:
        index = kannolo.SparsePlainHNSW.build_from_arrays(
            csr.indices.astype(np.int32),
            csr.data.astype(np.float32),
            csr.indptr.astype(np.int64),
            m=int(build["m"]),
            ef_construction=int(build["ef_construction"]),
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
        "build": build,
        "search": {**KANNOLO_SEARCH_DEFAULTS, **search},
    }


class KannoloEngine:
    """The ``kannolo`` engine of an index directory (approximate)."""

    name = "kannolo"

    def __init__(self, directory: Path, params: dict[str, Any] | None = None) -> None:
        kannolo = _kannolo()
        self._path = directory / KANNOLO_FILE
        meta_path = directory / KANNOLO_META
        if not self._path.is_file() or not meta_path.is_file():
            raise IndexFormatError(f"{directory}: kannolo index files not found ({KANNOLO_FILE})")
        self.docs, _ = load_stored(meta_path, "kannolo")
        self.n_docs, self.vocab_size = self.docs.shape
        self.known = np.zeros(self.vocab_size, dtype=bool)
        self.known[np.unique(self.docs.indices)] = True
        try:
            self.index = kannolo.SparsePlainHNSW.load(str(self._path))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise IndexFormatError(f"{self._path}: unreadable kannolo index ({exc})") from exc
        self.search_params = {**KANNOLO_SEARCH_DEFAULTS, **(params or {}).get("search", {})}

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the graph and vectors (without the metadata copy)."""
        return self._path.stat().st_size

    def search_batch(
        self,
        sparse: sp.csr_matrix,
        k: int,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
        ef_search: int | None = None,
    ) -> SearchHits:
        """Approximate top-``k``; ``threads=1`` searches query by query on one thread.

        Raises:
            MMSparseError: On ``k < 1``, bad query weights or a failing kannolo call.
        """
        from mmsparse.index.engines import _only_sparse, _pack_hits

        _only_sparse(self.name, mode)
        if k < 1:
            raise MMSparseError(f"k must be >= 1, got {k}")
        q = sp.csr_matrix(sparse, dtype=np.float32)
        if q.shape[1] != self.vocab_size:
            raise IndexFormatError(
                f"query vectors have {q.shape[1]} dimensions but the kannolo index has a "
                f"vocabulary of {self.vocab_size} terms"
            )
        if q.nnz and (not np.isfinite(q.data).all() or q.data.min() < 0):
            raise MMSparseError("query weights must be finite and non-negative")
        q.sum_duplicates()
        q.sort_indices()
        # Drop unknown terms (kannolo aborts the process on a term beyond its dimension).
        keep = self.known[q.indices] & (q.data > 0)
        q = sp.csr_matrix(
            (q.data[keep], q.indices[keep], np.concatenate([[0], np.cumsum(keep)])[q.indptr]),
            shape=q.shape,
        )
        ef = int(ef_search or self.search_params["ef_search"])
        ef = max(ef, k)
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
        return _pack_hits(results, k)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights of ``rows`` at ``terms``."""
        return stored_weights(self.docs, rows, terms)

    def close(self) -> None:
        """Nothing to release."""


def _hits(dist: np.ndarray, ids: np.ndarray) -> list[tuple[int, float]]:
    ok = (ids >= 0) & np.isfinite(dist) & (dist > 0)
    return [(int(i), float(d)) for i, d in zip(ids[ok], dist[ok])]

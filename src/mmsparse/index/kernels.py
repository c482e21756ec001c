"""Score-accumulation kernels of the ``inverted`` engine: numba when installed, else numpy.

Both backends compute, for each query, ``score[d] = sum_t q_t · w[t, d]`` in float32 over the
query terms in increasing term order, and return the ``k`` documents with the highest
positive score, equal scores ordered by lower document row first, leaving out the rows a
``live`` mask marks as deleted. Their results are identical (same arithmetic, same order,
same tie rule).

numba is imported lazily, on the first search, never at import time.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_NUMBA: dict[str, Any] = {}
_NO_MASK = np.zeros(0, dtype=np.bool_)


def numba_available() -> bool:
    """Whether numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` → ``numba`` when installed, else ``numpy``.

    Raises:
        ValueError: On an unknown backend name.
    """
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"unknown search backend {backend!r} (auto, numba or numpy)")
    if backend == "auto":
        return "numba" if numba_available() else "numpy"
    if backend == "numba" and not numba_available():
        from mmsparse.errors import require_extra

        require_extra("numba", "index", "the numba search backend")
    return backend


# -- numpy backend ------------------------------------------------------------------------


def _topk_numpy(
    scores: np.ndarray, k: int, live: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(scores > 0)
    if live is not None:
        rows = rows[live[rows]]
    vals = scores[rows]
    if rows.size > k:
        part = np.argpartition(-vals, k - 1)[:k]
        kth = vals[part].min()
        better = np.flatnonzero(vals > kth)
        ties = np.flatnonzero(vals == kth)[: k - better.size]  # lower rows first
        sel = np.concatenate([better, ties])
        rows, vals = rows[sel], vals[sel]
    order = np.lexsort((rows, -vals))
    return rows[order], vals[order]


def _search_numpy(
    indptr: np.ndarray,
    doc_ids: np.ndarray,
    weights: np.ndarray,
    n_docs: int,
    q_indptr: np.ndarray,
    q_terms: np.ndarray,
    q_weights: np.ndarray,
    k: int,
    live: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    n_q = q_indptr.size - 1
    out_rows = np.full((n_q, k), -1, dtype=np.int64)
    out_scores = np.zeros((n_q, k), dtype=np.float32)
    scores = np.zeros(n_docs, dtype=np.float32)
    for i in range(n_q):
        scores[:] = 0
        for j in range(q_indptr[i], q_indptr[i + 1]):
            t = q_terms[j]
            s, e = indptr[t], indptr[t + 1]
            if e > s:
                # Doc ids are unique within a posting list, so fancy += is exact.
                scores[doc_ids[s:e]] += q_weights[j] * weights[s:e].astype(np.float32)
        rows, vals = _topk_numpy(scores, k, live)
        out_rows[i, : rows.size] = rows
        out_scores[i, : rows.size] = vals
    return out_rows, out_scores


# -- numba backend ------------------------------------------------------------------------


def _build_numba() -> Any:
    import numba

    from mmsparse.index._numba_kernels import batch, single

    _NUMBA["batch"] = batch
    _NUMBA["single"] = single
    _NUMBA["numba"] = numba
    return batch


def search_csr(
    backend: str,
    indptr: np.ndarray,
    doc_ids: np.ndarray,
    weights: np.ndarray,
    n_docs: int,
    q_indptr: np.ndarray,
    q_terms: np.ndarray,
    q_weights: np.ndarray,
    k: int,
    threads: int | None = None,
    buffers: dict[str, np.ndarray] | None = None,
    live: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and scores of a CSR batch of queries against CSC postings.

    Args:
        backend: ``numba`` or ``numpy`` (resolved).
        indptr: ``(V + 1,)`` term offsets into ``doc_ids``/``weights``.
        doc_ids: ``(nnz,)`` int32 document rows.
        weights: ``(nnz,)`` document weights (float32 or integer impacts).
        n_docs: Number of documents.
        q_indptr: ``(B + 1,)`` query offsets.
        q_terms: Query term ids, increasing within a query.
        q_weights: float32 query weights (already multiplied by the index's scale).
        k: Results per query.
        threads: numba threads (``None``: numba's default).
        buffers: Reusable work arrays for single queries on the numba backend (a dict the
            caller keeps; filled on first use). Not thread-safe.
        live: ``(n_docs,)`` bool, rows that may be returned (``None``: all).

    Returns:
        ``(rows (B, k) int64 with -1 padding, scores (B, k) float32)``.
    """
    k = int(min(k, max(n_docs, 1)))
    # The compiled kernels take one signature: an empty mask stands for "every row".
    mask = _NO_MASK if live is None else np.ascontiguousarray(live, dtype=np.bool_)
    if backend == "numpy" or q_indptr.size <= 1:
        rows, scores = _search_numpy(
            indptr, doc_ids, weights, n_docs, q_indptr, q_terms, q_weights, k, live
        )
    elif q_indptr.size == 2 and buffers is not None:
        _NUMBA.get("single") or _build_numba()
        if buffers.get("scores") is None or buffers["scores"].size != n_docs:
            buffers["scores"] = np.zeros(n_docs, dtype=np.float32)
            buffers["touched"] = np.empty(n_docs, dtype=np.int64)
        if buffers.get("hs") is None or buffers["hs"].size < k:
            buffers["hs"] = np.empty(k, dtype=np.float32)
            buffers["hd"] = np.empty(k, dtype=np.int64)
        r, sc = _NUMBA["single"](
            np.asarray(indptr),
            np.asarray(doc_ids),
            np.asarray(weights),
            q_terms,
            q_weights,
            k,
            buffers["scores"],
            buffers["touched"],
            buffers["hs"],
            buffers["hd"],
            mask,
        )
        rows, scores = r[None, :], sc[None, :]
    else:
        batch = _NUMBA.get("batch") or _build_numba()
        numba = _NUMBA["numba"]
        n_threads = numba.config.NUMBA_NUM_THREADS if threads is None else max(1, int(threads))
        n_q = q_indptr.size - 1
        previous = numba.get_num_threads()
        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            rows, scores = batch(
                np.asarray(indptr),
                np.asarray(doc_ids),
                np.asarray(weights),
                int(n_docs),
                q_indptr,
                q_terms,
                q_weights,
                k,
                int(min(n_q, n_threads)),
                mask,
            )
        finally:
            numba.set_num_threads(previous)
    return rows, scores

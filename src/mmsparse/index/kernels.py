"""Score-accumulation kernels of the ``inverted`` engine: numba when installed, else numpy.

Both backends compute, for each query, ``score[d] = sum_t q_t · w[t, d]`` in float32 over the
query terms in increasing term order, and return the ``k`` documents with the highest
positive score, equal scores ordered by lower document row first, leaving out the rows a
``live`` mask marks as deleted. Their results are identical (same arithmetic, same order,
same tie rule).

The numba kernel of a query with long posting lists (more postings than a quarter of the
documents) accumulates block by block of documents so that the block's scores stay in cache,
and reads the longest lists from **dense columns** (one weight per document, 0 where the term
is absent; :func:`dense_columns`): adding such a column is a vector loop over contiguous
memory instead of one scattered write per posting, and adding 0 leaves a float32 sum
unchanged, so the scores are bit-identical. Up to four consecutive dense terms are added in
one pass over the block. docs/benchmarks.md ("The exact engine") has the measurements behind
these choices.

numba is imported lazily, on the first search, never at import time.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_NUMBA: dict[str, Any] = {}
_NO_MASK = np.zeros(0, dtype=np.bool_)

# Bytes of a document id in the postings (int32): a posting costs 4 + itemsize bytes.
_DOC_ID_BYTES = 4
# Documents per accumulator block of the long-query path: 65,536 float32 scores (256 KiB)
# stay in the L2 cache while every query term adds its postings of the block.
BLOCK_DOCS = 65536


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

    from mmsparse.index._numba_kernels import batch, fill_dense, single

    _NUMBA["batch"] = batch
    _NUMBA["single"] = single
    _NUMBA["fill_dense"] = fill_dense
    _NUMBA["numba"] = numba
    return batch


def default_dense_fraction(dtype: np.dtype | type) -> float:
    """The fraction of documents from which a term gets a dense column by default.

    A column costs ``itemsize`` bytes per document, the postings ``4 + itemsize`` per
    posting; a term gets a column where the column is at most **twice** the bytes of its
    postings: in at least a quarter of the documents for float32 weights, a sixth for
    uint16, a tenth for uint8 impacts. Adding a column is a vector loop, so even at twice
    the bytes it is faster than one scattered write per posting (at a million images:
    fraction 0.25 was 4.1x faster than the kernel before, 0.5 — no more bytes than the
    postings — 3.2x, 0.15 4.2x; docs/benchmarks.md, "The exact engine"), and the memory
    stays below twice the postings of those terms.
    """
    size = np.dtype(dtype).itemsize
    return size / (2 * (_DOC_ID_BYTES + size))


def dense_terms(indptr: np.ndarray, n_docs: int, min_fraction: float) -> np.ndarray:
    """Terms whose posting list holds at least ``min_fraction`` of ``n_docs`` (increasing)."""
    lengths = np.diff(np.asarray(indptr))
    if n_docs == 0 or min_fraction > 1:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(lengths >= max(min_fraction * n_docs, 1)).astype(np.int64)


def dense_columns(
    indptr: np.ndarray,
    doc_ids: np.ndarray,
    weights: np.ndarray,
    n_docs: int,
    min_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense columns of the longest posting lists, for the numba kernel.

    Args:
        indptr: ``(V + 1,)`` term offsets.
        doc_ids: ``(nnz,)`` document rows.
        weights: ``(nnz,)`` weights (the column keeps their dtype).
        n_docs: Number of documents.
        min_fraction: Terms in at least this fraction of the documents get a column
            (``None``: :func:`default_dense_fraction` of the weights' dtype; ``> 1``: none).

    Returns:
        ``(slot (V,) int64: the column of each term or -1, columns (n_dense, n_docs))``;
        ``n_dense · n_docs · weights.itemsize`` bytes of memory.
    """
    if min_fraction is None:
        min_fraction = default_dense_fraction(weights.dtype)
    terms = dense_terms(indptr, n_docs, min_fraction)
    slot = np.full(np.asarray(indptr).size - 1, -1, dtype=np.int64)
    slot[terms] = np.arange(terms.size)
    cols = np.zeros((terms.size, n_docs), dtype=weights.dtype)
    if terms.size:
        if numba_available():
            if "fill_dense" not in _NUMBA:
                _build_numba()
            _NUMBA["fill_dense"](
                np.asarray(indptr), np.asarray(doc_ids), np.asarray(weights), terms, cols
            )
        else:
            for i, t in enumerate(terms):
                s, e = int(indptr[t]), int(indptr[t + 1])
                cols[i, doc_ids[s:e]] = weights[s:e]
    return slot, cols


def _no_dense(indptr: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.full(indptr.size - 1, -1, dtype=np.int64), np.zeros((0, 0), dtype=weights.dtype)


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
    dense: tuple[np.ndarray, np.ndarray] | None = None,
    block: int = BLOCK_DOCS,
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
        dense: ``(slot, columns)`` of :func:`dense_columns` for the numba kernel (``None``:
            every term from its postings; same results, slower on long lists).
        block: Documents per accumulator block of the numba kernel's long-query path.

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
        slot, cols = dense if dense is not None else _no_dense(indptr, weights)
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
            slot,
            cols,
            q_terms,
            q_weights,
            k,
            int(block),
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
        slot, cols = dense if dense is not None else _no_dense(indptr, weights)
        n_threads = numba.config.NUMBA_NUM_THREADS if threads is None else max(1, int(threads))
        n_q = q_indptr.size - 1
        previous = numba.get_num_threads()
        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            rows, scores = batch(
                np.asarray(indptr),
                np.asarray(doc_ids),
                np.asarray(weights),
                slot,
                cols,
                int(n_docs),
                q_indptr,
                q_terms,
                q_weights,
                k,
                int(block),
                int(min(n_q, n_threads)),
                mask,
            )
        finally:
            numba.set_num_threads(previous)
    return rows, scores

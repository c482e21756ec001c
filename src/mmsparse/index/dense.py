"""Dense vectors next to a sparse index: exact dense and hybrid search without Milvus.

``mmsparse index build --engine inverted --dense`` writes every image's dense vector to
``INDEX/dense.npy`` (float32, ``(n_images, dense_dim)``; its sha256 is in the manifest's
engine parameters and checked on open). The inverted engine then answers

- ``dense``: exact inner product ``q_dense · d_dense`` over all images (one matrix-vector
  product per query), and
- ``hybrid``: exact ``w1 · dense + w2 · sparse`` over all images, the sparse part
  accumulated from the postings of the query's terms (the same formula as the milvus
  engine's weighted hybrid, without score normalisation).

Ties are broken by row (earlier first), as in sparse search. A ``live`` mask leaves rows
(deleted documents) out of the ranking.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError
from mmsparse.index.hits import SearchHits
from mmsparse.io_utils import file_sha256

DENSE_NAME = "dense.npy"


def write_dense(directory: Path, dense: np.ndarray) -> dict[str, Any]:
    """Write ``dense.npy``; returns the engine parameters that describe it.

    Args:
        directory: Index directory.
        dense: ``(n_images, dense_dim)`` image dense vectors.

    Returns:
        ``{"dense_file", "dense_sha256", "dense_shape"}``.
    """
    arr = np.ascontiguousarray(dense, dtype=np.float32)
    path = directory / DENSE_NAME
    np.save(path, arr, allow_pickle=False)
    return {
        "dense_file": DENSE_NAME,
        "dense_sha256": file_sha256(path),
        "dense_shape": [int(arr.shape[0]), int(arr.shape[1])],
    }


def load_dense(
    directory: Path, params: dict[str, Any], verify: bool = True, in_memory: bool = False
) -> np.ndarray | None:
    """The dense vectors of an index (memory-mapped), or ``None`` if it holds none.

    Args:
        directory: Index directory.
        params: The engine parameters of the manifest (``dense_file``, ``dense_sha256``,
            ``dense_shape``).
        verify: Check the file's sha256.
        in_memory: Read the file into memory instead of memory-mapping it (immune to the
            file being changed in place; see :mod:`mmsparse.index.inverted`).

    Raises:
        IndexFormatError: If the file is missing, of another shape or corrupt.
    """
    name = params.get("dense_file")
    if not name:
        return None
    path = directory / str(name)
    if not path.is_file():
        raise IndexFormatError(f"{path}: dense vectors file not found (rebuild the index)")
    data = path.read_bytes() if in_memory else None
    if verify:
        digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
        if digest != params.get("dense_sha256"):
            raise IndexFormatError(f"{path}: checksum mismatch (corrupt dense vectors; rebuild)")
    try:
        if data is not None:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: unreadable dense vectors ({exc})") from exc
    if arr.dtype != np.float32 or list(arr.shape) != list(params.get("dense_shape", [])):
        raise IndexFormatError(
            f"{path}: dense vectors of shape {arr.shape} ({arr.dtype}), the manifest says "
            f"{params.get('dense_shape')} float32"
        )
    return arr


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of one score vector, ties by row (earlier first)."""
    k = min(k, scores.size)
    if k < scores.size:
        cand = np.argpartition(-scores, k - 1)[:k]
        # Rows tied with the k-th score outside the partition must compete on row number.
        kth = scores[cand].min()
        cand = np.union1d(cand, np.flatnonzero(scores == kth))
    else:
        cand = np.arange(scores.size)
    order = np.lexsort((cand, -scores[cand]))[:k]
    rows = cand[order]
    return rows, scores[rows]


def sparse_scores(index: Any, query: sp.csr_matrix, i: int) -> np.ndarray:
    """Exact sparse scores of every document for query row ``i`` (from the postings)."""
    out = np.zeros(index.n_docs, dtype=np.float32)
    s, e = query.indptr[i], query.indptr[i + 1]
    for t, w in zip(query.indices[s:e].tolist(), query.data[s:e].tolist()):
        a, b = int(index.indptr[t]), int(index.indptr[t + 1])
        if b > a:
            contrib = np.asarray(index.weights[a:b], dtype=np.float32) * np.float32(w * index.scale)
            out[np.asarray(index.doc_ids[a:b])] += contrib  # a posting lists a doc once
    return out


def search_dense(
    vectors: np.ndarray,
    dense: np.ndarray,
    k: int,
    *,
    mode: str = "dense",
    index: Any = None,
    sparse: sp.csr_matrix | None = None,
    w1: float = 1.0,
    w2: float = 1.0,
    live: np.ndarray | None = None,
) -> SearchHits:
    """Exact dense (or hybrid) top-``k`` of a batch of queries over all images.

    Args:
        vectors: ``(n_images, d)`` image dense vectors.
        dense: ``(B, d)`` query dense vectors.
        k: Results per query.
        mode: ``dense`` or ``hybrid``.
        index: The :class:`~mmsparse.index.inverted.InvertedIndex` (hybrid).
        sparse: ``(B, V)`` query sparse vectors (hybrid).
        w1: Dense weight of the hybrid score.
        w2: Sparse weight of the hybrid score.
        live: ``(n_images,)`` bool, the rows that may be returned (``None``: all).

    Returns:
        :class:`SearchHits` of shape ``(B, k)``.
    """
    dense = np.asarray(dense, dtype=np.float32).reshape(-1, vectors.shape[1])
    n_q = dense.shape[0]
    k_eff = min(k, vectors.shape[0] if live is None else int(live.sum()))
    rows = np.full((n_q, k), -1, dtype=np.int64)
    scores = np.zeros((n_q, k), dtype=np.float32)
    all_dense = np.asarray(vectors) @ dense.T  # (n_images, B)
    for i in range(n_q if k_eff > 0 else 0):
        s = all_dense[:, i]
        if mode == "hybrid":
            assert index is not None and sparse is not None
            s = np.float32(w1) * s + np.float32(w2) * sparse_scores(index, sparse, i)
        s = np.asarray(s, dtype=np.float32)
        if live is not None:
            s = np.where(live, s, np.float32(-np.inf))
        r, v = _topk(s, k_eff)
        rows[i, : r.size], scores[i, : r.size] = r, v
    return SearchHits(rows=rows, scores=scores)

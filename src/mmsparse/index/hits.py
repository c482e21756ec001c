"""Ranked results of a batch of queries, and the checks every search applies to its queries.

Every engine, the inverted index and the block-max index return :class:`SearchHits`, and
check their query vectors with :func:`check_queries` and ``k`` with :func:`check_k`, so a
bad query gets the same one-line error whichever engine answers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, QueryError


@dataclass
class SearchHits:
    """Ranked results of a batch of queries.

    Attributes:
        rows: ``(B, k)`` int64 document rows, best first, ``-1`` where a query has fewer
            than ``k`` matching documents.
        scores: ``(B, k)`` float32 scores (0 where ``rows`` is ``-1``).
    """

    rows: np.ndarray
    scores: np.ndarray

    def query(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of query ``i`` without the padding."""
        keep = self.rows[i] >= 0
        return self.rows[i][keep], self.scores[i][keep]

    def only(self, live: np.ndarray, k: int) -> SearchHits:
        """The best ``k`` hits of every query among the rows where ``live`` is true."""
        rows = np.full((self.rows.shape[0], k), -1, dtype=np.int64)
        scores = np.zeros((self.rows.shape[0], k), dtype=np.float32)
        for i in range(self.rows.shape[0]):
            r, s = self.query(i)
            keep = live[r]
            r, s = r[keep][:k], s[keep][:k]
            rows[i, : r.size], scores[i, : r.size] = r, s
        return SearchHits(rows=rows, scores=scores)


def pack_hits(results: Sequence[Sequence[tuple[int, float]]], k: int) -> SearchHits:
    """:class:`SearchHits` of per-query ``(row, score)`` lists, ordered by the tie rule.

    The rule (best score first, equal scores by lower row) is re-applied here to whatever
    order an engine returned its hits in.
    """
    rows = np.full((len(results), k), -1, dtype=np.int64)
    scores = np.zeros((len(results), k), dtype=np.float32)
    for i, hits in enumerate(results):
        ordered = sorted(hits, key=lambda h: (-h[1], h[0]))[:k]
        for j, (row, score) in enumerate(ordered):
            rows[i, j], scores[i, j] = row, score
    return SearchHits(rows=rows, scores=scores)


def check_k(k: object, max_k: int | None = None, engine: str = "") -> int:
    """``k`` as an int ``>= 1`` (and ``<= max_k`` when the engine has a limit).

    Raises:
        QueryError: On anything else.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise QueryError(f"k must be at least 1, got {k!r}")
    if max_k is not None and k > max_k:
        raise QueryError(f"the {engine} engine returns at most {max_k} results, got k={k}")
    return int(k)


def check_queries(
    queries: sp.spmatrix | np.ndarray, vocab_size: int, where: str = "the index"
) -> sp.csr_matrix:
    """Query sparse vectors as canonical float32 CSR (sorted terms, no duplicates).

    Args:
        queries: ``(B, V)`` CSR (or any scipy sparse matrix, or a dense ``(B, V)`` / ``(V,)``
            array).
        vocab_size: ``V`` of the index.
        where: The index, for the error message.

    Returns:
        ``(B, V)`` float32 CSR in canonical format (never the caller's arrays modified).

    Raises:
        IndexFormatError: If the queries are of another vocabulary size.
        QueryError: If a weight is negative or not finite.
    """
    if isinstance(queries, np.ndarray) and queries.ndim == 1:
        queries = queries.reshape(1, -1)
    q = sp.csr_matrix(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != vocab_size:
        raise IndexFormatError(
            f"query vectors have {q.shape[-1]} dimensions but {where} has a vocabulary of "
            f"{vocab_size} terms (a different vocabulary?)"
        )
    if q.nnz and (not np.isfinite(q.data).all() or q.data.min() < 0):
        raise QueryError("query weights must be finite and non-negative")
    if not q.has_canonical_format:
        q = q.copy()
        q.sum_duplicates()
    return q


def check_live(live: np.ndarray | None, n_docs: int) -> np.ndarray | None:
    """A ``(n_docs,)`` boolean mask of the rows a search may return (``None``: all).

    Raises:
        QueryError: If ``live`` is not a boolean array of one entry per document.
    """
    if live is None:
        return None
    live = np.asarray(live)
    if live.dtype != np.bool_ or live.shape != (n_docs,):
        raise QueryError(
            f"live must be a boolean array of one entry per indexed row ({n_docs}), got "
            f"{live.dtype} of shape {live.shape}"
        )
    return live


def check_weights(weights: Sequence[float]) -> tuple[float, float]:
    """``(w1, w2)`` of a hybrid score ``w1 · dense + w2 · sparse``, checked.

    Raises:
        QueryError: Unless both are finite, non-negative numbers and not both 0.
    """
    try:
        w1, w2 = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise QueryError(f"hybrid weights must be two numbers (w1, w2), got {weights!r}") from None
    for name, w in (("w1", w1), ("w2", w2)):
        if not np.isfinite(w) or w < 0:
            raise QueryError(f"hybrid weight {name} must be a finite number >= 0, got {w!r}")
    if w1 == 0 and w2 == 0:
        raise QueryError("hybrid weights w1 and w2 cannot both be 0")
    return w1, w2

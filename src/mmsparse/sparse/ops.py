"""Operations on sparse vocabulary vectors: pruning, statistics, conversion, reading.

Inside mmsparse, batches of sparse vectors are dense ``(B, V)`` torch tensors (matrix
products are fastest that way); at the public boundary they are scipy CSR matrices or
plain numpy arrays, never torch sparse tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def prune(Z: torch.Tensor, topk: int | None = None, threshold: float = 0.0) -> torch.Tensor:
    """Zero all but the ``topk`` largest weights of each row, and weights ``<= threshold``.

    Args:
        Z: ``(B, V)`` non-negative sparse vectors.
        topk: Terms kept per row (``None``: all).
        threshold: Weights at or below it become 0.

    Returns:
        A pruned copy (or ``Z`` itself when nothing is pruned).
    """
    if threshold > 0:
        Z = torch.where(Z > threshold, Z, torch.zeros((), dtype=Z.dtype, device=Z.device))
    if topk is not None and topk < Z.shape[1]:
        values, idx = torch.topk(Z, topk, dim=1)
        Z = torch.zeros_like(Z).scatter_(1, idx, values)
    return Z


def to_csr(Z: torch.Tensor | np.ndarray) -> sp.csr_matrix:
    """``(B, V)`` dense tensor or array to a float32 scipy CSR matrix (zeros dropped)."""
    if isinstance(Z, torch.Tensor):
        Z = Z.detach().float().cpu().numpy()
    return sp.csr_matrix(np.asarray(Z, dtype=np.float32))


def from_csr(matrix: sp.spmatrix, device: str | torch.device = "cpu") -> torch.Tensor:
    """Scipy sparse matrix to a dense float32 ``(B, V)`` tensor."""
    return torch.from_numpy(np.asarray(matrix.toarray(), dtype=np.float32)).to(device)


@dataclass
class SparsityStats:
    """Running non-zero statistics of a set of sparse vectors (accumulated in chunks).

    Attributes:
        vocab_size: Number of dimensions.
        rows: Vectors seen.
        nnz: Non-zeros seen in all.
        term_rows: ``(V,)`` number of vectors non-zero at each term.
    """

    vocab_size: int
    rows: int = 0
    nnz: int = 0
    term_rows: np.ndarray | None = None

    def update(self, Z: torch.Tensor) -> None:
        """Add a chunk ``(B, V)`` of vectors."""
        nonzero = Z != 0
        counts = nonzero.sum(dim=0).cpu().numpy().astype(np.int64)
        self.term_rows = counts if self.term_rows is None else self.term_rows + counts
        self.rows += int(Z.shape[0])
        self.nnz += int(counts.sum())

    @property
    def mean_nnz(self) -> float:
        """Mean non-zeros per vector."""
        return self.nnz / max(self.rows, 1)

    @property
    def term_fraction(self) -> np.ndarray:
        """``p(v)``: fraction of vectors non-zero at each term, ``(V,)``."""
        if self.term_rows is None:
            return np.zeros(self.vocab_size)
        return self.term_rows / max(self.rows, 1)


def flops(query_stats: SparsityStats, doc_stats: SparsityStats) -> float:
    """Expected FLOPs of inverted-index retrieval: ``sum_v p_q(v) · p_d(v)``."""
    return float(np.dot(query_stats.term_fraction, doc_stats.term_fraction))


def top_terms(
    vector: np.ndarray | torch.Tensor | sp.spmatrix, vocab: Sequence[str] | object, k: int = 10
) -> list[tuple[str, float]]:
    """The ``k`` heaviest terms of one sparse vector, as ``(term, weight)`` pairs.

    Args:
        vector: ``(V,)`` vector (array, tensor or 1-row sparse matrix).
        vocab: A :class:`~mmsparse.data.vocab.Vocabulary` or a list of term names.
        k: How many terms.

    Returns:
        Terms with non-zero weight, heaviest first (ties: lower term id first).
    """
    v = _as_vector(vector)
    nz = np.flatnonzero(v)
    order = nz[np.lexsort((nz, -v[nz]))][:k]
    return [(_term(vocab, int(i)), float(v[i])) for i in order]


def contributions(
    query: np.ndarray | torch.Tensor | sp.spmatrix,
    doc: np.ndarray | torch.Tensor | sp.spmatrix,
    vocab: Sequence[str] | object,
    k: int = 10,
) -> list[tuple[str, float, float, float]]:
    """Terms that contribute most to the sparse score ``q · d`` of a (query, document) pair.

    Returns:
        ``(term, query weight, document weight, product)`` for the ``k`` largest products,
        largest first (ties: lower term id first). The products sum to the score when ``k``
        covers all shared terms.
    """
    q, d = _as_vector(query), _as_vector(doc)
    prod = q * d
    nz = np.flatnonzero(prod)
    order = nz[np.lexsort((nz, -prod[nz]))][:k]
    return [(_term(vocab, int(i)), float(q[i]), float(d[i]), float(prod[i])) for i in order]


def _as_vector(vector: np.ndarray | torch.Tensor | sp.spmatrix) -> np.ndarray:
    if sp.issparse(vector):
        return np.asarray(vector.toarray(), dtype=np.float64).reshape(-1)
    if isinstance(vector, torch.Tensor):
        return vector.detach().double().cpu().numpy().reshape(-1)
    return np.asarray(vector, dtype=np.float64).reshape(-1)


def _term(vocab: Sequence[str] | object, i: int) -> str:
    term = getattr(vocab, "term", None)
    return term(i) if callable(term) else vocab[i]  # type: ignore[index]

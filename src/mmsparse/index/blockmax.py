"""Block-max pruning over our own postings: the exact alternative to wrapping ``bmp``.

The documents are cut into blocks of ``bsize`` consecutive rows. For every term the index
keeps the largest weight in every block it occurs in; a query first sums
``q_t · blockmax[t, b]`` into an upper bound of every block (float64), then scores whole
blocks from a forward index (each document's terms in increasing term order, float32,
exactly the arithmetic of the ``inverted`` engine, so the scores are bit-identical) in
decreasing order of their bound, and stops when the ``k``-th best score exceeds the next
bound (inflated by a relative ``margin`` of 1e-4 that covers float rounding). Skipped blocks
cannot hold a better document, so the result equals the ``inverted`` engine's, ties
included (a block whose bound equals the ``k``-th score is still scored).

This is what BMP (Mallia et al., SIGIR 2024) does, in float and without its 8/16-bit
limits. It pays off only when few blocks can beat the ``k``-th score: with vectors whose
query terms occur in most documents (today's models, see docs/serving.md) nearly every
block is scored and each scored document costs all of its terms, more than the postings
the ``inverted`` engine reads. Used by ``mmsparse bench retrieval`` (engine
``inverted-blockmax``) to measure that choice; not an index engine.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmsparse.index.hits import SearchHits, check_k, check_queries


class BlockMaxIndex:
    """In-memory block-max index of a document matrix.

    Args:
        docs: ``(n_docs, V)`` non-negative float32 CSR (the served, dequantised weights).
        bsize: Documents per block.

    Raises:
        ValueError: On a block size below 1.
    """

    def __init__(self, docs: sp.csr_matrix, bsize: int = 64) -> None:
        if bsize < 1:
            raise ValueError(f"block size must be >= 1, got {bsize}")
        fwd = sp.csr_matrix(docs, dtype=np.float32)
        fwd.sort_indices()
        self.n_docs, self.vocab_size = fwd.shape
        self.bsize = int(bsize)
        self.f_indptr = fwd.indptr.astype(np.int64)
        self.f_terms = fwd.indices.astype(np.int32)
        self.f_weights = fwd.data.astype(np.float32)
        csc = fwd.tocsc()
        csc.sort_indices()
        blocks = (csc.indices // self.bsize).astype(np.int64)
        term_of = np.repeat(np.arange(self.vocab_size, dtype=np.int64), np.diff(csc.indptr))
        key = term_of * (self.n_docs // self.bsize + 1) + blocks
        if key.size:
            starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            self.bm_max = np.maximum.reduceat(csc.data, starts).astype(np.float32)
            self.bm_block = blocks[starts].astype(np.int32)
            counts = np.bincount(term_of[starts], minlength=self.vocab_size)
        else:
            self.bm_max = np.zeros(0, np.float32)
            self.bm_block = np.zeros(0, np.int32)
            counts = np.zeros(self.vocab_size, np.int64)
        self.bm_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_blocks = -(-self.n_docs // self.bsize)
        self._ub = np.zeros(max(self.n_blocks, 1), dtype=np.float64)
        self._qdense = np.zeros(self.vocab_size, dtype=np.float32)
        self.last_read: np.ndarray = np.zeros(0, dtype=np.int64)
        self.last_blocks: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (forward index + block maxima)."""
        return sum(
            a.nbytes
            for a in (
                self.f_indptr,
                self.f_terms,
                self.f_weights,
                self.bm_indptr,
                self.bm_block,
                self.bm_max,
            )
        )

    def search_batch(self, queries: sp.spmatrix, k: int, margin: float = 1e-4) -> SearchHits:
        """Exact top-``k`` of every query (one thread); sets ``last_read``/``last_blocks``.

        Raises:
            ValueError: On ``k < 1``, a vocabulary mismatch or negative query weights.
        """
        from mmsparse.index._numba_blockmax import blockmax_query

        k = check_k(k)
        q = check_queries(queries, self.vocab_size, "the block-max index")
        k = max(1, min(int(k), self.n_docs))  # as the inverted engine: at most the index size
        n_q = q.shape[0]
        rows = np.full((n_q, k), -1, dtype=np.int64)
        scores = np.zeros((n_q, k), dtype=np.float32)
        read = np.zeros(n_q, dtype=np.int64)
        blocks = np.zeros(n_q, dtype=np.int64)
        hs = np.empty(k, dtype=np.float32)
        hd = np.empty(k, dtype=np.int64)
        for i in range(n_q):
            s, e = q.indptr[i], q.indptr[i + 1]
            keep = q.data[s:e] > 0
            _, read[i], blocks[i] = blockmax_query(
                self.bm_indptr,
                self.bm_block,
                self.bm_max,
                self.f_indptr,
                self.f_terms,
                self.f_weights,
                self.n_docs,
                self.bsize,
                q.indices[s:e][keep].astype(np.int64),
                q.data[s:e][keep],
                int(k),
                float(margin),
                self._ub,
                self._qdense,
                hs,
                hd,
                rows[i],
                scores[i],
            )
        self.last_read, self.last_blocks = read, blocks
        return SearchHits(rows=rows, scores=scores)

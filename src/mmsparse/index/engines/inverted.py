"""The ``inverted`` engine: mmsparse's own exact index (:mod:`mmsparse.index.inverted`).

Files: ``postings.mmsi`` (checksummed, memory-mapped postings of integer impacts or float
weights) and, when built with dense vectors, ``dense.npy`` (:mod:`mmsparse.index.dense`):
then it also answers exact ``dense`` and ``hybrid`` search. Deleted rows (``live``) are
left out by the score kernels themselves, at no extra cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError
from mmsparse.index.dense import DENSE_NAME, load_dense, search_dense, write_dense
from mmsparse.index.engines._base import BuildRequest, Engine, Query, register_engine
from mmsparse.index.hits import SearchHits
from mmsparse.index.inverted import POSTINGS_NAME, InvertedIndex, write_postings


@register_engine
class InvertedEngine(Engine):
    """Exact score accumulation over the postings of every query term."""

    name = "inverted"
    summary = (
        "exact; mmsparse's own memory-mapped postings (numba score accumulation); "
        "with --dense also exact dense and hybrid search"
    )
    capabilities = frozenset({"exact", "dense", "hybrid", "explain", "incremental", "threads"})
    files = (POSTINGS_NAME, DENSE_NAME)
    stores_impacts = True
    native_live = True

    @classmethod
    def _build(cls, directory: Path, request: BuildRequest) -> dict[str, Any]:
        header = write_postings(
            directory / POSTINGS_NAME, request.sparse, quantize_mode=request.quantize
        )
        params = {"file": POSTINGS_NAME, "payload_sha256": header["payload_sha256"]}
        if request.dense is not None:
            params.update(write_dense(directory, request.dense))
        return params

    def _load(self) -> None:
        self.index = InvertedIndex(
            self.directory / POSTINGS_NAME, verify=self.verify, in_memory=self.in_memory
        )
        self._found(n_docs=self.index.n_docs, vocab_size=self.index.vocab_size)
        self.dense = load_dense(
            self.directory, self.params, verify=self.verify, in_memory=self.in_memory
        )
        if self.dense is not None:
            if self.dense.shape[0] != self.n_docs:
                raise IndexFormatError(
                    f"{self.directory}: dense vectors and postings differ in length"
                )
            self._found(dense_dim=self.dense.shape[1])
            self.has_dense = True

    @property
    def nbytes(self) -> int:
        """Bytes of the postings file."""
        return self.index.nbytes

    def _search(self, query: Query) -> SearchHits:
        if query.mode == "sparse":
            return self.index.search_batch(
                query.sparse, query.k, threads=query.threads, live=query.live
            )
        return search_dense(
            self.dense,
            query.dense,
            query.k,
            mode=query.mode,
            index=self.index,
            sparse=query.sparse,
            w1=self.hybrid_weights(query)[0],
            w2=self.hybrid_weights(query)[1],
            live=query.live,
        )

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored (dequantised) weights of ``rows`` at ``terms`` (from the postings)."""
        return self.index.doc_weights(rows, terms)

    def term_rows(self, term: int) -> np.ndarray:
        """The rows of the term's posting list."""
        index = self.index
        s, e = int(index.indptr[int(term)]), int(index.indptr[int(term) + 1])
        return np.asarray(index.doc_ids[s:e], dtype=np.int64)

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The row's terms and dequantised weights, read from the postings."""
        index = self.index
        pos = np.flatnonzero(np.asarray(index.doc_ids) == row)
        terms = np.searchsorted(np.asarray(index.indptr), pos, side="right") - 1
        weights = np.asarray(index.weights[pos], dtype=np.float32) * np.float32(index.scale)
        return terms.astype(np.int64), weights.astype(np.float32)

    def doc_dense(self, row: int) -> np.ndarray | None:
        """The row's stored dense vector (``None`` without ``dense.npy``)."""
        if self.dense is None:
            return None
        return np.asarray(self.dense[row], dtype=np.float32).reshape(1, -1)

    def stored_vectors(self) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """The postings as a CSR of dequantised weights, and ``dense.npy`` (or ``None``)."""
        dense = None if self.dense is None else np.array(self.dense, dtype=np.float32)
        return self.index.to_csr(), dense

"""One generation of the index as ``mmsparse serve`` serves it, and the one a request holds.

:class:`Served` is a generation's searcher with what the service computes on it: the live
rows, the stored vectors of images used as queries, the rows holding a term (filters and
totals), and the ranked search of a request (its filter mask, its total). Its methods that
touch the engine run on the service's engine thread
(:class:`~mmsparse.serve.workers.EngineThread`). :data:`REQUEST` is the generation a
request holds (:mod:`mmsparse.serve.generations`).
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.index.search import Searcher, SearchResult
from mmsparse.index.segments import Holders
from mmsparse.serve import queries
from mmsparse.serve.params import BadRequest

#: Entries of each per-generation cache (stored vectors by row, rows by term).
CACHE_ENTRIES = 4096


class Served:
    """One generation of the index as the service serves it.

    Attributes:
        searcher: A :class:`~mmsparse.index.Searcher` of the generation (sharing the run
            and text encoder of the service's first one).
        number: The generation number.
        row_of: Global row of every live image id.
        live_rows: The live rows, in index order.
        image_files: File names of the live images (the only ones ``/images/`` serves).
        image_roots: ``{id prefix: folder}`` of images added from other folders.
    """

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        view = searcher.view
        self.number = view.number
        self.row_of = view.row_of
        self.live_rows = np.array(sorted(view.row_of.values()), dtype=np.int64)
        self.image_files = {view.filenames[r] for r in view.row_of.values()}
        self.image_roots = {
            prefix: Path(root) for prefix, root in view.generation.image_roots.items()
        }
        self._doc_vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._term_rows: dict[int, np.ndarray] = {}
        self._holders = Holders(searcher.close)

    @property
    def manifest(self) -> Any:
        """The index manifest (``n_images``: the live images of this generation)."""
        return self.searcher.manifest

    def acquire(self) -> None:
        """A request starts using this generation."""
        self._holders.acquire()

    def release(self) -> None:
        """A request is done with it; a retired generation is closed with the last one."""
        self._holders.release()

    def retire(self) -> None:
        """No new request gets it; it is closed when the last one in flight ends."""
        self._holders.retire()

    # -- images of this generation ---------------------------------------------------------

    def image_row(self, image_id: str) -> int:
        """Global row of a live image id.

        Raises:
            BadRequest: 404 on an unknown (or removed) image id.
        """
        row = self.row_of.get(str(image_id))
        if row is None:
            raise BadRequest(f"unknown image id {str(image_id)[:80]!r} (not in this index)", 404)
        return row

    def root_of(self, filename: str) -> tuple[Path, str] | None:
        """``(folder, path in it)`` of an image added from another folder, else ``None``."""
        roots = self.image_roots
        for prefix in sorted(roots, key=len, reverse=True):
            if filename.startswith(prefix):
                return roots[prefix], filename[len(prefix) :]
        return None

    # -- engine access (call from the engine thread) ---------------------------------------

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The indexed sparse vector of an image row: ``(term ids, weights)``, as searched."""
        cached = self._doc_vectors.get(row)
        if cached is not None:
            return cached
        terms, weights = self.searcher.doc_vector(row)
        order = np.argsort(terms, kind="stable")
        out = (terms[order].astype(np.int64), weights[order].astype(np.float32))
        if len(self._doc_vectors) < CACHE_ENTRIES:
            self._doc_vectors[row] = out
        return out

    def like_vectors(self, row: int, mode: str) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """An indexed image's stored vectors as a query: ``((1, V) CSR, dense or None)``."""
        terms, weights = self.doc_vector(row)
        sparse = sp.csr_matrix(
            (weights, terms, [0, terms.size]), shape=(1, self.manifest.vocab_size)
        )
        dense = self.searcher.doc_dense(row) if mode != "sparse" else None
        return sparse, dense

    def term_rows(self, term: int) -> np.ndarray:
        """Global rows holding a term, deleted ones included (cached)."""
        rows = self._term_rows.get(int(term))
        if rows is None:
            rows = self.searcher.engine.term_rows(int(term))
            if len(self._term_rows) < CACHE_ENTRIES:
                self._term_rows[int(term)] = rows
        return rows

    def count_live(self, live: np.ndarray | None) -> int:
        """Live images (not deleted) a mask admits (``None``: every live image)."""
        deleted = self.searcher.engine.live  # None when nothing is deleted
        if live is None:
            return int(self.manifest.n_images)
        return int((live & deleted).sum() if deleted is not None else live.sum())

    def total(self, sparse: sp.csr_matrix, mode: str, live: np.ndarray | None) -> int:
        """How many images the query ranks: those sharing a term (sparse), or every one."""
        n = self.searcher.engine.n_docs  # global rows, deleted ones included
        if mode == "sparse":
            mask = queries.rows_sharing_terms(sparse.indices[sparse.data > 0], n, self.term_rows)
            return self.count_live(mask & live if live is not None else mask)
        return self.count_live(live)

    def ranked(
        self,
        sparse: sp.csr_matrix,
        dense: np.ndarray | None,
        k: int,
        mode: str,
        explain: bool,
        edits: list[queries.TermEdit],
        row: int | None,
        include_self: bool,
        weights: tuple[float, float] | None,
    ) -> tuple[SearchResult, int, np.ndarray | None]:
        """The top ``k`` of a request, with its total and its filter mask.

        ``edits`` filter the rows (required and excluded terms); ``row`` is the image
        searched by, left out unless ``include_self``.

        Returns:
            ``(result, total, live)``: ``live`` is ``None`` when nothing is filtered.
        """
        n = self.searcher.engine.n_docs  # masks are over global rows, deleted ones too
        live = queries.filter_mask(edits, n, self.term_rows)
        if row is not None and not include_self:
            live = np.ones(n, dtype=bool) if live is None else live.copy()
            live[row] = False
        total = self.total(sparse, mode, live)
        if live is not None and not self.count_live(live):
            result = SearchResult(
                query=None, caption_id=None, k=k, mode=mode, engine=self.manifest.engine
            )
            order = np.lexsort((sparse.indices, -sparse.data))
            vocab = self.searcher.vocab
            result.query_terms = [
                (vocab.term(int(sparse.indices[j])), float(sparse.data[j])) for j in order
            ]
            result.n_query_terms = int(sparse.nnz)
            result.notes.append("no image passes the filter: no result")
            return result, 0, live
        result = self.search_vectors(sparse, dense, k, mode, explain, live, weights)
        return result, total, live

    def search_vectors(
        self,
        sparse: sp.csr_matrix,
        dense: np.ndarray | None,
        k: int,
        mode: str,
        explain: bool,
        live: np.ndarray | None = None,
        weights: tuple[float, float] | None = None,
    ) -> SearchResult:
        """The top ``k`` of one query's vectors, every query term explained."""
        return self.searcher.search_vectors(
            sparse,
            dense,
            k=k,
            mode=mode,
            explain=explain,
            explain_terms=self.manifest.vocab_size,
            query_terms=None,
            weights=weights,
            live=live,
        )[0]


#: The generation a request holds (set by
#: :meth:`~mmsparse.serve.generations.Generations.hold`; inherited by the engine thread's
#: calls, which run in a copy of the request's context).
REQUEST: contextvars.ContextVar[Served | None] = contextvars.ContextVar(
    "mmsparse_served", default=None
)

"""The ``seismic`` engine: approximate sparse search with Seismic (PyPI ``pyseismic-lsr``).

Seismic clusters every posting list into blocks with summary vectors and skips the blocks
whose summary cannot beat the current top-k. Build knobs: ``n_postings``,
``centroid_fraction``, ``summary_energy``, ``min_cluster_size``, ``max_fraction``,
``doc_cut`` (and ``num_threads``, not recorded); search knobs, stored in the index as its
defaults when given at build: ``query_cut`` and ``heap_factor``. More postings, energy and
centroids give higher recall and a larger index; larger ``query_cut`` and ``heap_factor``
higher recall and slower queries.

One file, ``seismic.index.seismic``; document ids are the rows. Images without any term
are left out of Seismic's index (they cannot match a sparse query).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, QueryError, require_extra
from mmsparse.index.engines._base import BuildRequest, Engine, Param, Query, register_engine
from mmsparse.index.hits import SearchHits, pack_hits

log = logging.getLogger(__name__)

SEISMIC_NAME = "seismic"  # pyseismic-lsr appends ".index.seismic"
SEISMIC_FILE = "seismic.index.seismic"


def _seismic() -> Any:
    return require_extra("seismic", "index", SeismicEngine.requires[0][1])


@register_engine
class SeismicEngine(Engine):
    """Seismic's clustered, summarised postings (approximate)."""

    name = "seismic"
    summary = "approximate; Seismic's clustered, summarised postings (pyseismic-lsr)"
    capabilities = frozenset({"explain", "incremental", "threads"})
    requires = (("seismic", "The seismic engine (pyseismic-lsr)"),)
    files = (SEISMIC_FILE,)
    build_params = (
        Param("n_postings", int, 3500, "postings kept per term", minimum=1),
        Param("centroid_fraction", float, 0.1, "centroids per posting list", positive=True),
        Param("min_cluster_size", int, 2, "smallest block", minimum=1),
        Param("summary_energy", float, 0.4, "weight kept in block summaries", positive=True),
        Param("max_fraction", float, 1.5, "forward-index pruning", positive=True),
        Param("doc_cut", int, 15, "terms per document in the k-NN graph", minimum=1),
        Param("num_threads", int, 0, "build threads (0: all; not recorded)", minimum=0),
    )
    search_params = (
        Param("query_cut", int, 20, "query terms used (heaviest first)", minimum=1),
        Param("heap_factor", float, 0.9, "block skipping slack (1: least)", positive=True),
    )

    @classmethod
    def _build(cls, directory: Path, request: BuildRequest) -> dict[str, Any]:
        seismic = _seismic()
        build = dict(request.build)
        threads = int(build.pop("num_threads"))
        csr = sp.csr_matrix(request.sparse, dtype=np.float32)
        csr.sort_indices()
        dataset = seismic.SeismicDataset()
        added = dataset.add_documents_by_id(
            [str(i) for i in range(csr.shape[0])],
            csr.indices.astype(np.int64),
            csr.data.astype(np.float32),
            csr.indptr.astype(np.int64),
        )
        empty = np.flatnonzero(np.diff(csr.indptr) == 0)
        if added != csr.shape[0]:
            log.warning("seismic: %d images without any term were left out", csr.shape[0] - added)
        index = seismic.SeismicIndex.build_from_dataset(dataset, num_threads=threads, **build)
        index.save(str(directory / SEISMIC_NAME))
        params = {"file": SEISMIC_FILE, "build": build, "search": request.search}
        if added == csr.shape[0] - empty.size:
            # Seismic numbers its documents by position: the rows it left out are needed to
            # find a row's stored vector (doc_vector, explain, merges of segments).
            params["empty_rows"] = empty.tolist()
        return params

    def _load(self) -> None:
        seismic = _seismic()
        path = self.directory / SEISMIC_FILE
        if not path.is_file():
            raise IndexFormatError(f"{path}: Seismic index file not found")
        try:
            self.index = seismic.SeismicIndex.load(str(path))
        except Exception as exc:  # the Rust side raises plain exceptions
            raise IndexFormatError(f"{path}: unreadable Seismic index ({exc})") from exc
        self._string = seismic.get_seismic_string()
        # Seismic's forward index holds the rows with at least one term, by position.
        empty = self.params.get("empty_rows")
        stored = int(self.index.len)
        self._position: np.ndarray | None = None
        if empty is not None or stored == self.n_docs:
            n = stored + len(empty or [])
            self._position = np.full(n, -1, dtype=np.int64)
            kept = np.setdiff1d(np.arange(n), np.asarray(empty or [], dtype=np.int64))
            self._position[kept] = np.arange(kept.size)
            if kept.size != stored:
                raise IndexFormatError(
                    f"{path}: Seismic holds {stored} images, the manifest says "
                    f"{kept.size} with terms; rebuild the index"
                )

    def _query(self, sparse: sp.csr_matrix, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = sparse.indptr[i], sparse.indptr[i + 1]
        comps = np.array([str(t) for t in sparse.indices[s:e]], dtype=self._string)
        return comps, sparse.data[s:e].astype(np.float32)

    def _search(self, query: Query) -> SearchHits:
        """Approximate sparse top-``k``; ``threads=1`` searches query by query."""
        sparse, k = query.sparse, query.k
        qc, hf = int(query.params["query_cut"]), float(query.params["heap_factor"])
        queries = [self._query(sparse, i) for i in range(sparse.shape[0])]
        nonempty = [i for i, (c, _) in enumerate(queries) if c.size]
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        if query.threads == 1:
            for i in nonempty:
                comps, vals = queries[i]
                out = self.index.search(str(i), comps, vals, k, qc, hf)
                results[i] = [(int(d), float(s)) for _, s, d in out if s > 0]
        elif nonempty:
            out = self.index.batch_search(
                np.array([str(i) for i in nonempty], dtype=self._string),
                [queries[i][0] for i in nonempty],
                [queries[i][1] for i in nonempty],
                k,
                qc,
                hf,
                num_threads=int(query.threads or 0),
            )
            # Results may come back in any order: each hit names its query id.
            for hits in out:
                for qid, s, d in hits:
                    if s > 0:
                        results[int(qid)].append((int(d), float(s)))
        return pack_hits(results, k)

    def _get(self, row: int) -> tuple[list[int], list[float]]:
        """The stored vector of a row (Seismic's forward index is by position)."""
        if self._position is None:
            raise QueryError(
                f"{self.directory}: this Seismic index left out images without terms and was "
                "built before mmsparse recorded which, so its stored vectors cannot be matched "
                "to rows; rebuild it with 'mmsparse index build' to explain its results"
            )
        pos = int(self._position[int(row)])
        return ([], []) if pos < 0 else self.index.get(pos)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights (Seismic's forward index) of ``rows`` at ``terms``."""
        terms = np.asarray(terms, dtype=np.int64)
        out = np.zeros((len(rows), terms.size), dtype=np.float32)
        pos = {int(t): j for j, t in enumerate(terms)}
        for i, row in enumerate(rows):
            comps, vals = self._get(int(row))
            for c, v in zip(comps, vals):
                j = pos.get(int(c))
                if j is not None:
                    out[i, j] = v
        return out

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The row's vector from Seismic's forward index."""
        comps, vals = self._get(int(row))
        terms = np.asarray(comps, dtype=np.int64)
        order = np.argsort(terms, kind="stable")
        return terms[order], np.asarray(vals, dtype=np.float32)[order]

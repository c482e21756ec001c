"""The engines behind one interface: ``inverted`` (ours), ``seismic``, ``milvus``, and more.

``bmp`` (exact block-max pruning at 8-bit impacts) and ``kannolo`` (sparse HNSW) live in
:mod:`mmsparse.index.bmp_engine` and :mod:`mmsparse.index.kannolo_engine`.

Each engine has a ``build_*`` function (vectors in, files or a collection out, returning its
parameters and sizes for the manifest) and an opened form with the same methods:

- ``search_batch(sparse, k, dense=None, mode="sparse", threads=None) -> SearchHits``
- ``doc_weights(rows, terms)``: stored weights of some documents at some terms (``--explain``)
- ``nbytes``: bytes on disk.

``inverted`` is exact (see :mod:`mmsparse.index.inverted`). ``seismic`` (pyseismic-lsr) is
approximate; its knobs are the build parameters ``n_postings``, ``centroid_fraction``,
``summary_energy``, ``min_cluster_size``, ``max_fraction``, ``doc_cut`` and the search
parameters ``query_cut`` and ``heap_factor``. ``milvus`` (pymilvus) stores every image's dense
(FLOAT_VECTOR, exact FLAT inner product by default) and sparse (SPARSE_FLOAT_VECTOR,
SPARSE_INVERTED_INDEX, inner product) vectors in one collection, in an embedded milvus-lite
``.db`` file by default or on a Milvus server given by URI; it serves ``sparse``, ``dense``
and ``hybrid`` (weighted, ``w1 · dense + w2 · sparse`` without score normalisation) search.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError, require_extra
from mmsparse.index.dense import load_dense, search_dense, write_dense
from mmsparse.index.hits import check_queries
from mmsparse.index.inverted import POSTINGS_NAME, InvertedIndex, SearchHits, write_postings

log = logging.getLogger(__name__)

SEISMIC_NAME = "seismic"  # pyseismic-lsr appends ".index.seismic"
SEISMIC_FILE = "seismic.index.seismic"
MILVUS_DB = "milvus.db"
MILVUS_COLLECTION = "mmsparse_images"
MILVUS_MAX_LIMIT = 16384  # Milvus' largest topk per search route
SEISMIC_BUILD_DEFAULTS: dict[str, Any] = {
    "n_postings": 3500,
    "centroid_fraction": 0.1,
    "min_cluster_size": 2,
    "summary_energy": 0.4,
    "max_fraction": 1.5,
    "doc_cut": 15,
}
SEISMIC_SEARCH_DEFAULTS: dict[str, Any] = {"query_cut": 20, "heap_factor": 0.9}
SEARCH_MODES = ("sparse", "dense", "hybrid")


def _pack_hits(results: Sequence[Sequence[tuple[int, float]]], k: int) -> SearchHits:
    rows = np.full((len(results), k), -1, dtype=np.int64)
    scores = np.zeros((len(results), k), dtype=np.float32)
    for i, hits in enumerate(results):
        # Re-apply the stated tie rule on what the engine returned.
        ordered = sorted(hits, key=lambda h: (-h[1], h[0]))[:k]
        for j, (row, score) in enumerate(ordered):
            rows[i, j], scores[i, j] = row, score
    return SearchHits(rows=rows, scores=scores)


def _only_sparse(engine: str, mode: str) -> None:
    if mode not in SEARCH_MODES:
        raise MMSparseError(f"unknown search mode {mode!r} (sparse, dense or hybrid)")
    if mode != "sparse":
        raise MMSparseError(
            f"the {engine} index holds sparse vectors only; --mode {mode} needs an index "
            "built with --engine milvus, or --engine inverted --dense"
        )


# -- inverted -----------------------------------------------------------------------------


def build_inverted(
    directory: Path, sparse: sp.csr_matrix, quantize: str, dense: np.ndarray | None = None
) -> dict[str, Any]:
    """Write ``postings.mmsi`` (and ``dense.npy`` if ``dense`` is given); returns the params."""
    header = write_postings(directory / POSTINGS_NAME, sparse, quantize_mode=quantize)
    params = {"file": POSTINGS_NAME, "payload_sha256": header["payload_sha256"]}
    if dense is not None:
        params.update(write_dense(directory, dense))
    return params


class InvertedEngine:
    """The ``inverted`` engine of an index directory."""

    name = "inverted"

    def __init__(
        self,
        directory: Path,
        verify: bool = True,
        backend: str = "auto",
        params: dict[str, Any] | None = None,
        w1: float = 1.0,
        w2: float = 1.0,
    ) -> None:
        self.index = InvertedIndex(directory / POSTINGS_NAME, verify=verify, backend=backend)
        self.n_docs = self.index.n_docs
        self.vocab_size = self.index.vocab_size
        self.dense = load_dense(directory, params or {}, verify=verify)
        if self.dense is not None and self.dense.shape[0] != self.n_docs:
            raise IndexFormatError(f"{directory}: dense vectors and postings differ in length")
        self.has_dense = self.dense is not None
        self.w1, self.w2 = float(w1), float(w2)

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self.index.nbytes

    def search_batch(
        self,
        sparse: sp.csr_matrix,
        k: int,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
    ) -> SearchHits:
        """Exact top-``k``: sparse; dense and hybrid when the index holds dense vectors."""
        if mode != "sparse" and self.dense is not None and mode in SEARCH_MODES:
            if dense is None:
                raise MMSparseError(f"--mode {mode} needs the queries' dense vectors")
            q = check_queries(sparse, self.vocab_size, "the index") if mode == "hybrid" else None
            return search_dense(
                self.dense, dense, k, mode=mode, index=self.index, sparse=q, w1=self.w1, w2=self.w2
            )
        _only_sparse(self.name, mode)
        return self.index.search_batch(sparse, k, threads=threads)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights of ``rows`` at ``terms`` (from the postings)."""
        return self.index.doc_weights(rows, terms)

    def close(self) -> None:
        """Nothing to release (memory maps close with the object)."""


# -- seismic ------------------------------------------------------------------------------


def _seismic():
    return require_extra("seismic", "index", "The seismic engine (pyseismic-lsr)")


def build_seismic(
    directory: Path, sparse: sp.csr_matrix, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build and save a Seismic index of the sparse vectors (document ids = rows).

    Args:
        directory: Index directory; writes ``seismic.index.seismic``.
        sparse: ``(n_docs, V)`` float32 CSR.
        params: Overrides of :data:`SEISMIC_BUILD_DEFAULTS` (and ``num_threads``).

    Returns:
        The build parameters used.

    Raises:
        MissingExtraError: If pyseismic-lsr is not installed.
        MMSparseError: On an unknown parameter.
    """
    seismic = _seismic()
    build = dict(SEISMIC_BUILD_DEFAULTS)
    extra = dict(params or {})
    search = {k: extra.pop(k) for k in list(extra) if k in SEISMIC_SEARCH_DEFAULTS}
    threads = int(extra.pop("num_threads", 0))
    unknown = set(extra) - set(build)
    if unknown:
        raise MMSparseError(
            f"unknown seismic parameter(s) {sorted(unknown)}; known: "
            f"{sorted([*build, *SEISMIC_SEARCH_DEFAULTS, 'num_threads'])}"
        )
    build.update(extra)
    csr = sp.csr_matrix(sparse, dtype=np.float32)
    csr.sort_indices()
    dataset = seismic.SeismicDataset()
    added = dataset.add_documents_by_id(
        [str(i) for i in range(csr.shape[0])],
        csr.indices.astype(np.int64),
        csr.data.astype(np.float32),
        csr.indptr.astype(np.int64),
    )
    if added != csr.shape[0]:
        log.warning("seismic: %d images without any term were left out", csr.shape[0] - added)
    index = seismic.SeismicIndex.build_from_dataset(dataset, num_threads=threads, **build)
    index.save(str(directory / SEISMIC_NAME))
    return {
        "file": SEISMIC_FILE,
        "build": build,
        "search": {**SEISMIC_SEARCH_DEFAULTS, **search},
    }


class SeismicEngine:
    """The ``seismic`` engine of an index directory (approximate)."""

    name = "seismic"
    has_dense = False

    def __init__(self, directory: Path, n_docs: int, params: dict[str, Any]) -> None:
        seismic = _seismic()
        path = directory / SEISMIC_FILE
        if not path.is_file():
            raise IndexFormatError(f"{path}: Seismic index file not found")
        try:
            self.index = seismic.SeismicIndex.load(str(path))
        except Exception as exc:  # the Rust side raises plain exceptions
            raise IndexFormatError(f"{path}: unreadable Seismic index ({exc})") from exc
        self._path = path
        self._string = seismic.get_seismic_string()
        self.n_docs = n_docs
        self.search_params = {**SEISMIC_SEARCH_DEFAULTS, **params.get("search", {})}

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self._path.stat().st_size

    def _query(self, sparse: sp.csr_matrix, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = sparse.indptr[i], sparse.indptr[i + 1]
        comps = np.array([str(t) for t in sparse.indices[s:e]], dtype=self._string)
        return comps, sparse.data[s:e].astype(np.float32)

    def search_batch(
        self,
        sparse: sp.csr_matrix,
        k: int,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
        query_cut: int | None = None,
        heap_factor: float | None = None,
    ) -> SearchHits:
        """Approximate sparse top-``k``; ``threads=1`` searches query by query."""
        _only_sparse(self.name, mode)
        sparse = sp.csr_matrix(sparse, dtype=np.float32)
        qc = int(query_cut or self.search_params["query_cut"])
        hf = float(heap_factor or self.search_params["heap_factor"])
        queries = [self._query(sparse, i) for i in range(sparse.shape[0])]
        nonempty = [i for i, (c, _) in enumerate(queries) if c.size]
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        if threads == 1:
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
                num_threads=int(threads or 0),
            )
            # Results may come back in any order: each hit names its query id.
            for hits in out:
                for qid, s, d in hits:
                    if s > 0:
                        results[int(qid)].append((int(d), float(s)))
        return _pack_hits(results, k)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights (Seismic's forward index) of ``rows`` at ``terms``."""
        terms = np.asarray(terms, dtype=np.int64)
        out = np.zeros((len(rows), terms.size), dtype=np.float32)
        pos = {int(t): j for j, t in enumerate(terms)}
        for i, row in enumerate(rows):
            comps, vals = self.index.get(int(row))
            for c, v in zip(comps, vals):
                j = pos.get(int(c))
                if j is not None:
                    out[i, j] = v
        return out

    def close(self) -> None:
        """Nothing to release."""


# -- milvus -------------------------------------------------------------------------------


def _pymilvus():
    return require_extra("pymilvus", "index", "The milvus engine (pymilvus + milvus-lite)")


def milvus_uri(directory: Path, params: dict[str, Any]) -> str:
    """The URI of an index's collection: the server URI, or the local ``.db`` file."""
    uri = params.get("uri")
    return str(uri) if uri else str(directory / params.get("db", MILVUS_DB))


class _UnimplementedRpcFilter(logging.Filter):
    """Drops milvus-lite's in-process server tracebacks for RPCs it does not implement.

    pymilvus probes ``AllocTimestamp``, which milvus-lite answers with UNIMPLEMENTED (and
    pymilvus then falls back); grpc logs each as an ERROR with a traceback, which is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, NotImplementedError)


class _LockedFileFilter(logging.Filter):
    """Keeps milvus-lite's traceback of a locked ``.db`` file off stderr, and remembers it.

    milvus-lite logs ``DataDirLockedError`` (another process holds the file) as an ERROR
    with a traceback, then pymilvus raises a vague connection error; :func:`_milvus_client`
    turns the pair into one clear line.
    """

    locked: ClassVar[set[str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "DataDirLockedError":
            _LockedFileFilter.locked.add(str(exc))
            return False
        return True


def _quiet_grpc_server() -> None:
    for name, cls in (
        ("grpc._server", _UnimplementedRpcFilter),
        ("milvus_lite.server_manager", _LockedFileFilter),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


def _milvus_client(uri: str):
    pymilvus = _pymilvus()
    _quiet_grpc_server()
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        require_extra("milvus_lite", "index", "An embedded Milvus (.db file) (milvus-lite)")
    _LockedFileFilter.locked.clear()
    try:
        return pymilvus.MilvusClient(uri=uri)
    except Exception as exc:  # connection and start-up failures
        if _LockedFileFilter.locked or type(exc).__name__ == "DataDirLockedError":
            raise MMSparseError(
                f"{uri}: in use by another process: a milvus-lite file serves one process "
                "at a time; wait for the other one, or share the index through a Milvus "
                "server ('mmsparse index build --engine milvus --uri http://HOST:19530')"
            ) from exc
        raise MMSparseError(f"cannot open Milvus at {uri} ({type(exc).__name__}: {exc})") from exc


def _sparse_rows(sparse: sp.csr_matrix, start: int, stop: int) -> list[dict[int, float]]:
    out = []
    for i in range(start, stop):
        s, e = sparse.indptr[i], sparse.indptr[i + 1]
        out.append(dict(zip(sparse.indices[s:e].tolist(), sparse.data[s:e].tolist())))
    return out


def build_milvus(
    directory: Path,
    sparse: sp.csr_matrix,
    dense: np.ndarray,
    image_ids: list[str],
    params: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Create (replace) a collection holding every image's dense and sparse vectors.

    Args:
        directory: Index directory (holds ``milvus.db`` for milvus-lite).
        sparse: ``(n, V)`` CSR.
        dense: ``(n, dense_dim)`` float32 (L2-normalised).
        image_ids: Image id of every row.
        params: ``uri`` (a server, e.g. ``http://host:19530``; default: the local file),
            ``collection`` (default ``mmsparse_images``), ``dense_index`` (``FLAT`` exact,
            or ``HNSW``), ``batch_size`` (rows per insert).
        progress: Show a progress bar.

    Returns:
        The engine parameters for the manifest.

    Raises:
        MissingExtraError: If pymilvus / milvus-lite are not installed.
        MMSparseError: If Milvus cannot be reached or refuses the data.
    """
    pymilvus = _pymilvus()
    params = dict(params or {})
    known = {"uri", "collection", "dense_index", "batch_size"}
    if set(params) - known:
        raise MMSparseError(f"unknown milvus parameter(s) {sorted(set(params) - known)}")
    uri = params.get("uri")
    collection = str(params.get("collection") or MILVUS_COLLECTION)
    dense_index = str(params.get("dense_index") or "FLAT").upper()
    batch_size = int(params.get("batch_size") or 2000)
    engine_params = {
        "uri": uri,
        "db": None if uri else MILVUS_DB,
        "collection": collection,
        "dense_index": dense_index,
    }
    client = _milvus_client(milvus_uri(directory, engine_params))
    try:
        if client.has_collection(collection):
            client.drop_collection(collection)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("image_id", pymilvus.DataType.VARCHAR, max_length=512)
        schema.add_field("dense", pymilvus.DataType.FLOAT_VECTOR, dim=int(dense.shape[1]))
        schema.add_field("sparse", pymilvus.DataType.SPARSE_FLOAT_VECTOR)
        client.create_collection(collection, schema=schema)
        starts = range(0, sparse.shape[0], batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="milvus insert", unit="batch", leave=False)
        for s in starts:
            e = min(s + batch_size, sparse.shape[0])
            rows = [
                {"row": i, "image_id": image_ids[i], "dense": dense[i].tolist(), "sparse": z}
                for i, z in zip(range(s, e), _sparse_rows(sparse, s, e))
            ]
            client.insert(collection, rows)
        # Seal the inserted rows into segments, so that the indexes below cover them
        # (milvus-lite scans its in-memory table without any index otherwise).
        client.flush(collection)
        index_params = client.prepare_index_params()
        dense_kwargs: dict[str, Any] = {"M": 16, "efConstruction": 200}
        index_params.add_index(
            field_name="dense",
            index_type=dense_index,
            metric_type="IP",
            params=dense_kwargs if dense_index == "HNSW" else {},
        )
        index_params.add_index(
            field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP"
        )
        client.create_index(collection, index_params)
        client.load_collection(collection)
    except MMSparseError:
        raise
    except Exception as exc:
        raise MMSparseError(
            f"Milvus refused the index build ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        client.close()
    return engine_params


class MilvusEngine:
    """The ``milvus`` engine: one collection with dense and sparse vectors."""

    name = "milvus"
    has_dense = True

    def __init__(self, directory: Path, n_docs: int, params: dict[str, Any], w1: float, w2: float):
        self.pymilvus = _pymilvus()
        self.uri = milvus_uri(directory, params)
        if not params.get("uri") and not Path(self.uri).exists():
            raise IndexFormatError(f"{self.uri}: milvus-lite database not found")
        self.collection = str(params.get("collection") or MILVUS_COLLECTION)
        self.client = _milvus_client(self.uri)
        if not self.client.has_collection(self.collection):
            raise IndexFormatError(f"{self.uri}: no collection '{self.collection}' (rebuild)")
        self.client.load_collection(self.collection)
        self.n_docs = n_docs
        self.w1, self.w2 = float(w1), float(w2)
        self._directory = directory
        self._params = params

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the local database (0 for a server)."""
        if self._params.get("uri"):
            return 0
        path = Path(self.uri)
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    def search_batch(
        self,
        sparse: sp.csr_matrix,
        k: int,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
        candidates: int | None = None,
    ) -> SearchHits:
        """Top-``k`` by sparse, dense or weighted hybrid score.

        Args:
            sparse: ``(B, V)`` query sparse vectors.
            k: Results per query.
            dense: ``(B, dense_dim)`` query dense vectors (``dense``/``hybrid`` modes).
            mode: ``sparse``, ``dense`` or ``hybrid``.
            threads: Unused (the server decides).
            candidates: Hybrid: documents fetched per route before fusion (default: the
                whole collection up to 16,384, which makes the fusion exact).

        Returns:
            :class:`SearchHits`.
        """
        if mode not in SEARCH_MODES:
            raise MMSparseError(f"unknown search mode {mode!r} (sparse, dense or hybrid)")
        if mode != "sparse" and dense is None:
            raise MMSparseError(f"--mode {mode} needs the queries' dense vectors")
        sparse = sp.csr_matrix(sparse, dtype=np.float32)
        n_q = sparse.shape[0]
        k = min(k, MILVUS_MAX_LIMIT)
        queries = _sparse_rows(sparse, 0, n_q)
        results: list[list[tuple[int, float]]] = [[] for _ in range(n_q)]
        try:
            if mode == "sparse":
                todo = [i for i in range(n_q) if queries[i]]
                if todo:
                    out = self.client.search(
                        self.collection,
                        data=[queries[i] for i in todo],
                        anns_field="sparse",
                        limit=k,
                        search_params={"metric_type": "IP"},
                        output_fields=["row"],
                    )
                    for i, hits in zip(todo, out):
                        results[i] = [(int(h.id), float(h.distance)) for h in hits]
            elif mode == "dense":
                out = self.client.search(
                    self.collection,
                    data=[row.tolist() for row in np.asarray(dense, dtype=np.float32)],
                    anns_field="dense",
                    limit=k,
                    search_params={"metric_type": "IP"},
                    output_fields=["row"],
                )
                results = [[(int(h.id), float(h.distance)) for h in hits] for hits in out]
            else:
                depth = int(candidates or min(self.n_docs, MILVUS_MAX_LIMIT))
                for i in range(n_q):
                    reqs = [
                        self.pymilvus.AnnSearchRequest(
                            data=[np.asarray(dense[i], dtype=np.float32).tolist()],
                            anns_field="dense",
                            param={"metric_type": "IP"},
                            limit=depth,
                        )
                    ]
                    if queries[i]:
                        reqs.append(
                            self.pymilvus.AnnSearchRequest(
                                data=[queries[i]],
                                anns_field="sparse",
                                param={"metric_type": "IP"},
                                limit=depth,
                            )
                        )
                    weights = [self.w1, self.w2][: len(reqs)]
                    out = self.client.hybrid_search(
                        self.collection,
                        reqs=reqs,
                        ranker=self.pymilvus.WeightedRanker(*weights, norm_score=False),
                        limit=k,
                        output_fields=["row"],
                    )
                    results[i] = [(int(h.id), float(h.distance)) for h in out[0]]
        except MMSparseError:
            raise
        except Exception as exc:
            raise MMSparseError(f"Milvus search failed ({type(exc).__name__}: {exc})") from exc
        return _pack_hits(results, k)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored sparse weights of ``rows`` at ``terms`` (fetched from the collection)."""
        terms = np.asarray(terms, dtype=np.int64)
        out = np.zeros((len(rows), terms.size), dtype=np.float32)
        got = self.client.get(
            self.collection, ids=[int(r) for r in rows], output_fields=["row", "sparse"]
        )
        by_row = {int(g["row"]): g["sparse"] for g in got}
        for i, row in enumerate(rows):
            vec = by_row.get(int(row)) or {}
            for j, t in enumerate(terms):
                out[i, j] = float(vec.get(int(t), 0.0))
        return out

    def close(self) -> None:
        """Close the client."""
        self.client.close()


def open_engine(directory: Path, manifest: Any, verify: bool = True) -> Any:
    """Open the engine of an index directory described by ``manifest``."""
    if manifest.engine == "inverted":
        engine: Any = InvertedEngine(
            directory, verify=verify, params=manifest.engine_params, w1=manifest.w1, w2=manifest.w2
        )
    elif manifest.engine == "seismic":
        engine = SeismicEngine(directory, manifest.n_images, manifest.engine_params)
    elif manifest.engine == "bmp":
        from mmsparse.index.bmp_engine import BmpEngine

        engine = BmpEngine(directory, manifest.n_images)
    elif manifest.engine == "kannolo":
        from mmsparse.index.kannolo_engine import KannoloEngine

        engine = KannoloEngine(directory, manifest.engine_params)
    else:
        engine = MilvusEngine(
            directory, manifest.n_images, manifest.engine_params, manifest.w1, manifest.w2
        )
    if getattr(engine, "vocab_size", manifest.vocab_size) != manifest.vocab_size:
        raise IndexFormatError(f"{directory}: engine files and manifest disagree on the vocabulary")
    return engine

"""The ``milvus`` engine: dense and sparse vectors in one Milvus collection (``pymilvus``).

Every image's dense (FLOAT_VECTOR, exact FLAT inner product by default) and sparse
(SPARSE_FLOAT_VECTOR, SPARSE_INVERTED_INDEX, inner product) vectors live in one collection,
in an embedded milvus-lite ``milvus.db`` file by default or on a Milvus server given by URI;
it serves ``sparse``, ``dense`` and ``hybrid`` (weighted, ``w1 · dense + w2 · sparse``
without score normalisation) search.

Not ``incremental`` in the segment sense: the index is a collection, not files of its own
directory (a server collection is shared by name). A collection takes inserts and deletes
natively, which is how a live milvus index would change; the ``live`` mask is honoured by
asking for more results and dropping the deleted rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError, require_extra
from mmsparse.index.engines._base import BuildRequest, Engine, Param, Query, register_engine
from mmsparse.index.hits import SearchHits, pack_hits

MILVUS_DB = "milvus.db"
MILVUS_COLLECTION = "mmsparse_images"
MILVUS_MAX_LIMIT = 16384  # Milvus' largest topk per search route


def _pymilvus() -> Any:
    return require_extra("pymilvus", "index", MilvusEngine.requires[0][1])


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


def _milvus_client(uri: str) -> Any:
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


@register_engine
class MilvusEngine(Engine):
    """One Milvus collection with every image's dense and sparse vectors."""

    name = "milvus"
    summary = (
        "exact (FLAT + SPARSE_INVERTED_INDEX); dense + sparse in one Milvus collection, "
        "embedded milvus-lite file or a server (--uri); sparse, dense and hybrid search"
    )
    capabilities = frozenset({"exact", "dense", "hybrid", "explain"})
    requires = (("pymilvus", "The milvus engine (pymilvus + milvus-lite)"),)
    files = (MILVUS_DB,)
    always_dense = True
    build_params = (
        Param("uri", str, None, "a Milvus server, e.g. http://host:19530 (none: milvus.db)"),
        Param("collection", str, MILVUS_COLLECTION, "collection name"),
        Param("dense_index", str, "FLAT", "dense index type (FLAT: exact; or HNSW)"),
        Param("batch_size", int, 2000, "rows per insert", minimum=1),
    )
    search_params = (
        Param(
            "candidates",
            int,
            None,
            "hybrid: rows fetched per route before fusion (none: all, up to 16384: exact)",
            minimum=1,
        ),
    )

    @classmethod
    def _build(cls, directory: Path, request: BuildRequest) -> dict[str, Any]:
        """Create (replace) the collection.

        Returns ``uri``, ``db``, ``collection``, ``dense_index`` (and ``search`` when a
        search default was given).
        """
        sparse, dense, build, image_ids = (
            request.sparse,
            request.dense,
            request.build,
            request.image_ids,
        )
        assert dense is not None  # always_dense
        pymilvus = _pymilvus()
        uri = build["uri"] or None
        collection = str(build["collection"] or MILVUS_COLLECTION)
        dense_index = str(build["dense_index"] or "FLAT").upper()
        batch_size = int(build["batch_size"])
        engine_params: dict[str, Any] = {
            "uri": uri,
            "db": None if uri else MILVUS_DB,
            "collection": collection,
            "dense_index": dense_index,
        }
        if any(v is not None for v in request.search.values()):
            engine_params["search"] = request.search
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
            if request.progress:
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

    def _load(self) -> None:
        self.pymilvus = _pymilvus()
        self.uri = milvus_uri(self.directory, self.params)
        if not self.params.get("uri") and not Path(self.uri).exists():
            raise IndexFormatError(f"{self.uri}: milvus-lite database not found")
        self.collection = str(self.params.get("collection") or MILVUS_COLLECTION)
        self.client = _milvus_client(self.uri)
        if not self.client.has_collection(self.collection):
            raise IndexFormatError(f"{self.uri}: no collection '{self.collection}' (rebuild)")
        self.client.load_collection(self.collection)

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the local database (0 for a server)."""
        return 0 if self.params.get("uri") else super().nbytes

    def _search(self, query: Query) -> SearchHits:
        """Top-``k`` by sparse, dense or weighted hybrid score.

        ``candidates``: hybrid depth per route, default the whole collection up to 16,384
        (an exact fusion).
        """
        sparse, dense, mode = query.sparse, query.dense, query.mode
        n_q = sparse.shape[0]
        k = min(query.k, MILVUS_MAX_LIMIT)
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
                assert dense is not None
                out = self.client.search(
                    self.collection,
                    data=[row.tolist() for row in dense],
                    anns_field="dense",
                    limit=k,
                    search_params={"metric_type": "IP"},
                    output_fields=["row"],
                )
                results = [[(int(h.id), float(h.distance)) for h in hits] for hits in out]
            else:
                assert dense is not None
                depth = int(query.params["candidates"] or min(self.n_docs, MILVUS_MAX_LIMIT))
                for i in range(n_q):
                    reqs = [
                        self.pymilvus.AnnSearchRequest(
                            data=[dense[i].tolist()],
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
                    weights = list(self.hybrid_weights(query))[: len(reqs)]
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
        return pack_hits(results, k)

    def _get(self, rows: list[int], field: str) -> dict[int, Any]:
        got = self.client.get(self.collection, ids=rows, output_fields=["row", field])
        return {int(g["row"]): g[field] for g in got}

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored sparse weights of ``rows`` at ``terms`` (fetched from the collection)."""
        terms = np.asarray(terms, dtype=np.int64)
        out = np.zeros((len(rows), terms.size), dtype=np.float32)
        by_row = self._get([int(r) for r in rows], "sparse")
        for i, row in enumerate(rows):
            vec = by_row.get(int(row)) or {}
            for j, t in enumerate(terms):
                out[i, j] = float(vec.get(int(t), 0.0))
        return out

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The row's sparse vector, fetched from the collection."""
        vec = self._get([int(row)], "sparse").get(int(row)) or {}
        terms = np.fromiter((int(t) for t in vec), dtype=np.int64, count=len(vec))
        weights = np.fromiter((float(w) for w in vec.values()), np.float32, len(vec))
        order = np.argsort(terms, kind="stable")
        return terms[order], weights[order]

    def doc_dense(self, row: int) -> np.ndarray | None:
        """The row's dense vector, fetched from the collection."""
        vec = self._get([int(row)], "dense").get(int(row))
        return None if vec is None else np.asarray(vec, dtype=np.float32).reshape(1, -1)

    def close(self) -> None:
        """Close the client."""
        self.client.close()

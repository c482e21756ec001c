r"""The ``inverted`` engine: an exact, memory-mapped inverted index of sparse image vectors.

One file, ``postings.mmsi``, holds the postings of every vocabulary term in a CSC-like
layout (the columns of the ``(n_docs, V)`` document matrix)::

    offset 0   magic  b"MMSPINV\\0"                      8 bytes
    offset 8   format version (uint32, little endian)    4 bytes
    offset 12  header length H (uint32)                  4 bytes
    offset 16  sha256 of the header bytes                32 bytes
    offset 48  header: UTF-8 JSON, H bytes               (vocab_size, n_docs, nnz,
               weight dtype, scale, section offsets, sha256 of the payload)
    ...        payload, each section 64-byte aligned:
               indptr   int64  (V + 1,)   postings of term t are [indptr[t], indptr[t+1])
               doc_ids  int32  (nnz,)     document rows, increasing within a term
               weights  float32 | uint8 | uint16 (nnz,)  impacts (integers when quantised)

Loading checks the magic, the version, both checksums (the payload one can be skipped
for speed with ``verify=False``) and the section bounds, then memory-maps the three
arrays (``np.memmap``), so opening a large index is cheap and pages are shared between
processes. With ``in_memory=True`` (what ``mmsparse serve`` uses) the file is read once
into the process's memory instead (the checksum is computed on that copy): a file
overwritten or truncated in place later cannot touch the process, where a memory map
of it would raise SIGBUS at the next page it reads.

Search is term-at-a-time score accumulation: for every query term ``t`` with weight
``q_t``, ``score[d] += q_t · scale · w[t, d]`` over the postings of ``t``. Scores are
accumulated in float32 in increasing term order. The top ``k`` documents are those with
the highest score, **equal scores ordered by document row (lower row first)**; only
documents with a positive score (sharing at least one term with the query) are returned,
so a query may get fewer than ``k`` results. A ``live`` mask leaves rows out of the top-``k``
pass (deleted documents of a live index) at no extra cost. A numba kernel is used when numba is
installed (``mmsparse[index]``), otherwise a pure numpy path gives the same results.

The numba kernel reads the longest posting lists from dense columns built in memory when
the index is first searched (:meth:`InvertedIndex.prepare`; by default terms whose column
is at most twice the bytes of their postings, e.g. in a quarter of the documents for float32
weights: 88 columns, 352 MB at a million images of the shipped recipe). The file format is
unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError
from mmsparse.index import kernels
from mmsparse.index.hits import SearchHits, check_k, check_live, check_queries
from mmsparse.index.quantize import QUANT_DTYPES, quantize
from mmsparse.io_utils import atomic_path

MAGIC = b"MMSPINV\x00"
FORMAT_VERSION = 1
POSTINGS_NAME = "postings.mmsi"
_ALIGN = 64
_PREFIX = struct.Struct("<8sII32s")  # magic, version, header length, header sha256
_HASH_CHUNK = 1 << 24

log = logging.getLogger(__name__)


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def write_postings(
    path: str | Path, docs: sp.spmatrix, quantize_mode: str = "none"
) -> dict[str, Any]:
    """Write the postings of ``docs`` (rows = documents, columns = terms) atomically.

    Args:
        path: Destination file (conventionally ``INDEX/postings.mmsi``).
        docs: ``(n_docs, V)`` non-negative sparse document vectors.
        quantize_mode: ``none`` (float32 weights), ``uint8`` or ``uint16`` integer impacts
            (see :func:`mmsparse.index.quantize.quantize`).

    Returns:
        The header written (sizes, dtype, scale, checksums).

    Raises:
        ValueError: On negative or non-finite weights, or too many documents.
    """
    docs = sp.csr_matrix(docs, dtype=np.float32)
    docs.eliminate_zeros()
    if docs.nnz and (not np.isfinite(docs.data).all() or docs.data.min() < 0):
        raise ValueError("document weights must be finite and non-negative")
    n_docs, vocab_size = docs.shape
    if n_docs >= np.iinfo(np.int32).max:
        raise ValueError(f"{n_docs} documents: the inverted format holds at most 2**31 - 2")
    qdocs, scale = quantize(docs, quantize_mode)
    csc = qdocs.tocsc()
    csc.sort_indices()
    indptr = csc.indptr.astype(np.int64, copy=False)
    doc_ids = csc.indices.astype(np.int32, copy=False)
    weights = csc.data.astype(QUANT_DTYPES[quantize_mode], copy=False)
    arrays = {"indptr": indptr, "doc_ids": doc_ids, "weights": weights}

    sections: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, arr in arrays.items():
        sections[name] = {"offset": offset, "dtype": arr.dtype.str, "count": int(arr.size)}
        offset += arr.nbytes + _pad(arr.nbytes)
    payload_bytes = offset
    digest = hashlib.sha256()
    for arr in arrays.values():
        digest.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        digest.update(b"\0" * _pad(arr.nbytes))
    header = {
        "format": "mmsparse-inverted",
        "vocab_size": int(vocab_size),
        "n_docs": int(n_docs),
        "nnz": int(doc_ids.size),
        "quantize": quantize_mode,
        "weight_dtype": weights.dtype.str,
        "scale": float(scale),
        "sections": sections,
        "payload_bytes": payload_bytes,
        "payload_sha256": digest.hexdigest(),
    }
    header_bytes = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
    prefix = _PREFIX.pack(
        MAGIC, FORMAT_VERSION, len(header_bytes), hashlib.sha256(header_bytes).digest()
    )
    head = prefix + header_bytes
    head += b"\0" * _pad(len(head))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(head)
        for arr in arrays.values():
            fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
            fh.write(b"\0" * _pad(arr.nbytes))
    return header


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """Read and check the header of a postings file.

    Returns:
        ``(header, payload offset)``.

    Raises:
        IndexFormatError: If the file is missing, foreign, of another version or corrupt.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PREFIX.size)
            if len(head) == _PREFIX.size:
                head += fh.read(_PREFIX.unpack(head)[2])
    except FileNotFoundError as exc:
        raise IndexFormatError(f"{path}: index file not found") from exc
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read index file ({exc.strerror})") from exc
    return parse_header(head, path)


def parse_header(data: bytes, path: str | Path) -> tuple[dict[str, Any], int]:
    """Check the header at the start of a postings file's bytes (see :func:`read_header`).

    Args:
        data: The file's first bytes (at least the prefix and the header), or all of it.
        path: The file, for error messages.

    Returns:
        ``(header, payload offset)``.

    Raises:
        IndexFormatError: If the bytes are foreign, of another version or corrupt.
    """
    if len(data) < _PREFIX.size:
        raise IndexFormatError(f"{path}: not an mmsparse inverted index (file too short)")
    magic, version, header_len, header_sha = _PREFIX.unpack(data[: _PREFIX.size])
    if magic != MAGIC:
        raise IndexFormatError(f"{path}: not an mmsparse inverted index (bad magic {magic[:8]!r})")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: inverted index format version {version} is not supported "
            f"(this mmsparse reads version {FORMAT_VERSION}); rebuild the index"
        )
    header_bytes = bytes(data[_PREFIX.size : _PREFIX.size + header_len])
    if len(header_bytes) != header_len or hashlib.sha256(header_bytes).digest() != header_sha:
        raise IndexFormatError(f"{path}: corrupt index header (checksum mismatch)")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: corrupt index header ({exc})") from exc
    if not isinstance(header, dict):
        raise IndexFormatError(f"{path}: corrupt index header (not an object)")
    start = _PREFIX.size + header_len
    return header, start + _pad(start)


def _verify_payload(
    path: Path, start: int, header: dict[str, Any], data: bytes | None = None
) -> None:
    digest = hashlib.sha256()
    remaining = int(header["payload_bytes"])
    if data is not None:  # the copy in memory
        digest.update(memoryview(data)[start : start + remaining])
        remaining -= min(remaining, max(len(data) - start, 0))
    else:
        with open(path, "rb") as fh:
            fh.seek(start)
            while remaining > 0:
                chunk = fh.read(min(_HASH_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
    if remaining or digest.hexdigest() != header["payload_sha256"]:
        raise IndexFormatError(
            f"{path}: corrupt index (payload checksum mismatch); rebuild it with "
            "'mmsparse index build'"
        )


class InvertedIndex:
    """An opened ``postings.mmsi`` file: exact top-k search by score accumulation.

    Args:
        path: The postings file.
        verify: Check the payload checksum (reads the whole file once).
        backend: ``auto`` (numba when installed), ``numba`` or ``numpy``.
        in_memory: Read the file into memory instead of memory-mapping it (a server:
            immune to the file being changed in place; costs the file's size in RAM).
        dense_min_fraction: Terms in at least this fraction of the documents are read from
            dense columns by the numba kernel (built by :meth:`prepare`, in memory; ``None``:
            :func:`mmsparse.index.kernels.default_dense_fraction` of the weights' dtype;
            above 1: none, same results, slower queries with long lists).

    Raises:
        IndexFormatError: If the file is foreign, of another version or corrupt.

    Example:
        >>> index = InvertedIndex("runs/idx/postings.mmsi")          # doctest: +SKIP
        >>> hits = index.search_batch(query_csr, k=10)               # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        verify: bool = True,
        backend: str = "auto",
        in_memory: bool = False,
        dense_min_fraction: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.in_memory = bool(in_memory)
        self._data: bytes | None = None
        if self.in_memory:
            # Header and payload from one read of the file, so that they belong together
            # even if the file is replaced or rewritten meanwhile.
            try:
                self._data = self.path.read_bytes()
            except FileNotFoundError as exc:
                raise IndexFormatError(f"{self.path}: index file not found") from exc
            except OSError as exc:
                raise IndexFormatError(
                    f"{self.path}: cannot read index file ({exc.strerror})"
                ) from exc
            header, start = parse_header(self._data, self.path)
        else:
            header, start = read_header(self.path)
        self.header = header
        try:
            self.vocab_size = int(header["vocab_size"])
            self.n_docs = int(header["n_docs"])
            self.nnz = int(header["nnz"])
            self.scale = float(header["scale"])
            self.quantize = str(header["quantize"])
            sections = header["sections"]
            payload_bytes = int(header["payload_bytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{self.path}: incomplete index header ({exc})") from exc
        size = len(self._data) if self._data is not None else self.path.stat().st_size
        if size != start + payload_bytes:
            raise IndexFormatError(
                f"{self.path}: truncated or padded index ({size} bytes, expected "
                f"{start + payload_bytes})"
            )
        self.file_bytes = int(size)
        if verify:
            _verify_payload(self.path, start, header, self._data)
        arrays = {}
        for name, want in (("indptr", self.vocab_size + 1), ("doc_ids", self.nnz)):
            arrays[name] = self._map(sections, name, start, payload_bytes, want)
        arrays["weights"] = self._map(sections, "weights", start, payload_bytes, self.nnz)
        self.indptr: np.ndarray = arrays["indptr"]
        self.doc_ids: np.ndarray = arrays["doc_ids"]
        self.weights: np.ndarray = arrays["weights"]
        if (
            self.indptr.dtype != np.int64
            or self.doc_ids.dtype != np.int32
            or self.indptr[0] != 0
            or self.indptr[-1] != self.nnz
        ):
            raise IndexFormatError(f"{self.path}: inconsistent postings (bad term offsets)")
        self.backend = kernels.resolve_backend(backend)
        self.dense_min_fraction = dense_min_fraction
        self._buffers: dict[str, np.ndarray] = {}
        self._dense: tuple[np.ndarray, np.ndarray] | None = None

    def prepare(self) -> InvertedIndex:
        """Build the numba kernel's dense columns now (else the first search does).

        A no-op on the numpy backend. Returns the index.
        """
        if self.backend == "numba" and self._dense is None:
            self._dense = kernels.dense_columns(
                self.indptr, self.doc_ids, self.weights, self.n_docs, self.dense_min_fraction
            )
            log.debug(
                "%s: %d dense columns (%.1f MB)",
                self.path,
                self._dense[1].shape[0],
                self._dense[1].nbytes / 1e6,
            )
        return self

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense columns in memory (0 until :meth:`prepare` or a search)."""
        return 0 if self._dense is None else int(self._dense[1].nbytes)

    def _map(
        self, sections: dict[str, Any], name: str, start: int, payload: int, count: int
    ) -> np.ndarray:
        try:
            sec = sections[name]
            dtype = np.dtype(sec["dtype"])
            offset, n = int(sec["offset"]), int(sec["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{self.path}: bad section '{name}' ({exc})") from exc
        if n != count or offset < 0 or offset + n * dtype.itemsize > payload:
            raise IndexFormatError(f"{self.path}: section '{name}' out of bounds")
        if n == 0:
            return np.zeros(0, dtype=dtype)
        if self._data is not None:
            return np.frombuffer(self._data, dtype=dtype, count=n, offset=start + offset)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=start + offset, shape=(n,))

    @property
    def nbytes(self) -> int:
        """Size of the postings file in bytes (as opened)."""
        return self.file_bytes

    def posting_lengths(self) -> np.ndarray:
        """``(V,)`` number of documents in every posting list."""
        return np.diff(self.indptr)

    def search_batch(
        self,
        queries: sp.spmatrix | np.ndarray,
        k: int,
        threads: int | None = None,
        live: np.ndarray | None = None,
    ) -> SearchHits:
        """Exact top-``k`` documents of every query (see the module doc for the tie rule).

        Args:
            queries: ``(B, V)`` sparse query vectors (CSR or dense array).
            k: Results per query (``>= 1``).
            threads: Threads of the numba kernel (``None``: numba's default, all cores);
                the numpy backend is single-threaded. A single query runs on one thread
                with work arrays kept by the index (so one index must not be searched
                from several Python threads at once).
            live: ``(n_docs,)`` bool: only rows where it is true are returned (``None``:
                every row).

        Returns:
            :class:`SearchHits` of shape ``(B, k)``.

        Raises:
            IndexFormatError: If the queries' dimension is not the index vocabulary size.
            QueryError: If ``k < 1``, a query weight is negative or not finite, or ``live``
                is not one bool per document (a ``ValueError``).
        """
        k = check_k(k)
        q = check_queries(queries, self.vocab_size, f"the index {self.path}")
        live = check_live(live, self.n_docs)
        qw = q.data.astype(np.float32) * np.float32(self.scale)
        self.prepare()
        rows, scores = kernels.search_csr(
            self.backend,
            self.indptr,
            self.doc_ids,
            self.weights,
            self.n_docs,
            q.indptr.astype(np.int64),
            q.indices.astype(np.int64),
            qw,
            int(k),
            threads,
            self._buffers,
            live,
            self._dense,
        )
        return SearchHits(rows=rows, scores=scores)

    def search(
        self, query: sp.spmatrix | np.ndarray, k: int, threads: int | None = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(rows, scores)`` of one query vector (``(V,)`` or ``(1, V)``)."""
        q = query.reshape(1, -1) if isinstance(query, np.ndarray) and query.ndim == 1 else query
        return self.search_batch(q, k, threads=threads).query(0)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored (dequantised) weights ``w[row, term]`` by binary search in the postings.

        Returns:
            ``(len(rows), len(terms))`` float32, 0 where the term is absent.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((rows.size, len(terms)), dtype=np.float32)
        for j, t in enumerate(np.asarray(terms, dtype=np.int64)):
            s, e = int(self.indptr[t]), int(self.indptr[t + 1])
            if e == s:
                continue
            ids = self.doc_ids[s:e]
            pos = np.searchsorted(ids, rows)
            hit = (pos < ids.size) & (ids[np.minimum(pos, ids.size - 1)] == rows)
            out[hit, j] = self.weights[s:e][pos[hit]].astype(np.float32) * self.scale
        return out

    def to_csr(self) -> sp.csr_matrix:
        """The indexed (dequantised) document matrix ``(n_docs, V)`` as float32 CSR."""
        csc = sp.csc_matrix(
            (
                np.asarray(self.weights, dtype=np.float32) * np.float32(self.scale),
                np.asarray(self.doc_ids),
                np.asarray(self.indptr),
            ),
            shape=(self.n_docs, self.vocab_size),
        )
        return csc.tocsr()

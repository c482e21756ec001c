"""The ``bmp`` engine: exact Block-Max Pruning (Mallia et al., SIGIR 2024), PyPI ``bmp``.

``bmp`` splits the documents into blocks of ``bsize`` consecutive rows, stores for every term
the largest impact in every block, and at query time scores whole blocks in decreasing
order of their upper bound ``Σ_t q_t · blockmax[t, b]`` until the ``k``-th best score beats
the next bound: the blocks it skips cannot hold a better document, so the top ``k`` is
exact — **exact at bmp's integer arithmetic**, which is:

* documents: 8-bit impacts. The index stores ``round(w / scale)`` with
  ``scale = max(w) / 255`` (:func:`mmsparse.index.quantize.quantize`, ``uint8``); impacts
  above 255 would wrap in bmp, so :func:`write_bmp` refuses them.
* queries: integer weights ``1..32`` (bmp rescales every query so that its largest weight
  is 32). This wrapper quantises the query itself, ``q̂_t = round(32 · q_t / max q)``
  (terms that round to 0 are dropped), and lowers the 32 when needed so that the largest
  possible score ``Σ_t q̂_t · max impact_t`` fits bmp's 16-bit score accumulator (65,535;
  bmp's scores wrap beyond). A query of more than 257 terms whose every term reaches
  impact 255 keeps only its heaviest terms that fit.
* so the ranking is the exact top ``k`` of ``Σ_t q̂_t · ŵ_{t,d}``; documents tied at the
  ``k``-th score may be any of the tied ones. Against float scores this is an
  approximation (recall is measured by ``mmsparse bench retrieval``); against brute force
  at the same quantisation it is exact (tested).

Edges of bmp 0.2.8 handled here (each would otherwise be a Rust panic — a
``PanicException``, which derives from ``BaseException`` — or a silently wrong answer):

* the block with the lowest bound above the starting threshold is never scored (bmp's
  loop stops one block early), so tiny indexes returned nothing. The wrapper pads the
  collection to whole blocks and appends a sentinel block whose bound, set through
  sentinel query terms, is exactly one above bmp's starting threshold, so the sentinel is
  always the block left unscored. This also removes the panic when no block is above the
  threshold.
* a query of only unknown terms: empty result (no call into bmp). The sentinel terms keep
  every query bmp sees non-empty.
* ``k``: bmp knows the starting threshold only for ``k`` in {10, 100, 1000} (other values
  index past its table and panic); the wrapper asks for the next of those and cuts, and
  refuses ``k > 1000``. ``k`` larger than the index gives every matching image.
* a document tied with bmp's starting threshold is not returned; when a query gets fewer
  than ``k`` results while that threshold is positive, the wrapper scores the query by
  brute force on the stored impacts (same integers, so the same answer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError, require_extra
from mmsparse.index.engines._base import BuildRequest, Engine, Param, Query, register_engine
from mmsparse.index.hits import SearchHits, pack_hits
from mmsparse.index.quantize import dequantize
from mmsparse.index.quantize import quantize as quantize_docs
from mmsparse.index.stored import load_stored, save_stored, stored_weights

log = logging.getLogger(__name__)

BMP_FILE = "index.bmp"
BMP_META = "bmp_meta.npz"
BMP_MAX_K = 1000
MAX_IMPACT = 255
MAX_QUERY_WEIGHT = 32  # bmp's MAX_TERM_WEIGHT
SCORE_LIMIT = 65535  # bmp accumulates scores in u16
_KTH = (10, 100, 1000)  # the k for which bmp stores each term's k-th impact
_UNIT = 64.0  # queries are passed as q̂·64 with a scale term 32·64, so bmp's rescale is exact
_SCALE_TERM = "__mmsparse_scale"
_SENTINEL_BITS = 13  # sentinel bounds up to 2**13 - 1 > 255 * 32 + 1
_PAD_PREFIX = "__pad"


def _bmp() -> Any:
    return require_extra("bmp", "index", BmpEngine.requires[0][1])


def _sentinel_terms() -> list[tuple[str, int, int]]:
    """``(term, impact in the sentinel document, query weight)``: bit ``b`` is worth ``2**b``."""
    out = []
    for b in range(_SENTINEL_BITS):
        if b < 8:
            out.append((f"__mmsparse_s{b}", 1 << b, 1))
        else:
            out.append((f"__mmsparse_s{b}", 128, 1 << (b - 7)))
    return out


def _kth_table(impacts: sp.csc_matrix) -> np.ndarray:
    """``(3, V)`` uint16: each term's 10th, 100th and 1000th largest impact (0 if fewer)."""
    v = impacts.shape[1]
    out = np.zeros((len(_KTH), v), dtype=np.uint16)
    for t in range(v):
        s, e = impacts.indptr[t], impacts.indptr[t + 1]
        if e - s < _KTH[0]:
            continue
        col = np.sort(impacts.data[s:e])[::-1]
        for j, kk in enumerate(_KTH):
            if col.size >= kk:
                out[j, t] = col[kk - 1]
    return out


def write_bmp(
    directory: Path, impacts: sp.csr_matrix, scale: float, bsize: int = 32
) -> dict[str, Any]:
    """Write a bmp index of integer impacts (rows = documents) and its metadata.

    Args:
        directory: Index directory; writes ``index.bmp`` and ``bmp_meta.npz``.
        impacts: ``(n_docs, V)`` integer impacts in ``0..255``.
        scale: Dequantisation scale (score · scale ≈ float score).
        bsize: Documents per block (a power of two is usual; 8 to 256).

    Returns:
        The engine parameters for the manifest.

    Raises:
        MMSparseError: On impacts outside 0..255 or not integers, or a bad block size.
    """
    bmp = _bmp()
    bsize = int(bsize)
    if not 1 <= bsize <= 4096:
        raise MMSparseError(f"bmp block size must be in 1..4096, got {bsize}")
    impacts = sp.csr_matrix(impacts, dtype=np.float32)
    impacts.eliminate_zeros()
    impacts.sort_indices()
    if impacts.nnz:
        if impacts.data.min() < 0 or impacts.data.max() > MAX_IMPACT:
            raise MMSparseError(
                f"bmp stores 8-bit impacts (0..255); got {impacts.data.min():g}.."
                f"{impacts.data.max():g} (quantise with uint8 first; bmp would wrap them)"
            )
        if not np.array_equal(impacts.data, np.rint(impacts.data)):
            raise MMSparseError("bmp stores integer impacts; got fractional weights")
    n_docs, vocab = impacts.shape
    path = directory / BMP_FILE
    indexer = bmp.Indexer(str(path), bsize, False)
    indptr, indices, data = impacts.indptr, impacts.indices, impacts.data.astype(np.int64)
    names = [str(t) for t in range(vocab)]
    for i in range(n_docs):
        s, e = indptr[i], indptr[i + 1]
        indexer.add_document(
            str(i), {names[t]: int(w) for t, w in zip(indices[s:e].tolist(), data[s:e].tolist())}
        )
    # Pad to whole blocks, then one sentinel block (see the module doc).
    pad = (-n_docs) % bsize
    for j in range(pad):
        indexer.add_document(f"{_PAD_PREFIX}{j}", {})
    indexer.add_document(f"{_PAD_PREFIX}s", {t: w for t, w, _ in _sentinel_terms()})
    for j in range(bsize - 1):
        indexer.add_document(f"{_PAD_PREFIX}s{j}", {})
    try:
        indexer.finish()
    except BaseException as exc:  # PanicException is a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise MMSparseError(f"bmp could not write {path} ({type(exc).__name__}: {exc})") from exc
    csc = impacts.tocsc()
    max_impact = np.zeros(vocab, dtype=np.uint16)
    lengths = np.diff(csc.indptr)
    nz = lengths > 0
    max_impact[nz] = np.maximum.reduceat(csc.data, csc.indptr[:-1][nz]).astype(np.uint16)
    index_dtype = np.uint16 if vocab <= 65536 else np.int32
    save_stored(
        directory / BMP_META,
        impacts,
        indices_dtype=index_dtype,
        data_dtype=np.uint8,
        kth=_kth_table(csc),
        max_impact=max_impact,
        scale=np.array([scale], dtype=np.float64),
    )
    return {"file": BMP_FILE, "meta": BMP_META, "bsize": bsize, "scale": float(scale)}


def quantize_query(
    terms: np.ndarray, weights: np.ndarray, max_impact: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Bmp's integer query: ``(terms, q̂ in 1..32, factor)`` with ``q ≈ q̂ · factor``.

    Terms whose weight rounds to 0 or that no document has are dropped; the largest weight
    is lowered from 32 until ``Σ q̂_t · max_impact_t`` fits 65,535 (module doc).
    """
    keep = (weights > 0) & (max_impact[terms] > 0)
    terms, weights = terms[keep], weights[keep].astype(np.float64)
    if terms.size == 0:
        return terms, np.zeros(0, dtype=np.int64), 1.0
    top = float(weights.max())
    order = np.argsort(-weights, kind="stable")
    terms, weights = terms[order], weights[order]
    imp = max_impact[terms].astype(np.int64)
    q = MAX_QUERY_WEIGHT
    while True:
        qhat = np.rint(weights / top * q).astype(np.int64)
        bound = np.cumsum(qhat * imp)
        if bound[-1] <= SCORE_LIMIT or q == 1:
            break
        q = max(1, min(q - 1, int(q * SCORE_LIMIT / bound[-1])))
    fits = bound <= SCORE_LIMIT  # only at q == 1 with > 257 heavy terms
    keep = (qhat > 0) & fits
    return terms[keep], qhat[keep], top / q


@register_engine
class BmpEngine(Engine):
    """Exact block-max pruning at 8-bit impacts (see the module doc)."""

    name = "bmp"
    summary = (
        "exact at 8-bit impacts and integer queries; Block-Max Pruning (bmp), blocks of "
        "bsize images scored best bound first"
    )
    capabilities = frozenset({"exact", "explain", "incremental"})
    requires = (("bmp", "The bmp engine (bmp, Block-Max Pruning)"),)
    files = (BMP_FILE, BMP_META)
    max_k = BMP_MAX_K
    build_params = (Param("bsize", int, 32, "images per block", minimum=1, maximum=4096),)

    @classmethod
    def _build(cls, directory: Path, request: BuildRequest) -> dict[str, Any]:
        """Quantise the (served) float weights to 8-bit impacts and write a bmp index."""
        impacts, scale = quantize_docs(request.sparse, "uint8")
        return write_bmp(directory, impacts, scale, bsize=int(request.build["bsize"]))

    def _load(self) -> None:
        bmp = _bmp()
        self._path = self.directory / BMP_FILE
        meta_path = self.directory / BMP_META
        if not self._path.is_file() or not meta_path.is_file():
            raise IndexFormatError(f"{self.directory}: bmp index files not found ({BMP_FILE})")
        self.impacts, meta = load_stored(meta_path, "bmp", ("kth", "max_impact", "scale"))
        self.kth = meta["kth"].astype(np.int64)
        self.max_impact = meta["max_impact"].astype(np.int64)
        self.scale = float(meta["scale"][0])
        self._found(n_docs=self.impacts.shape[0], vocab_size=self.impacts.shape[1])
        try:
            self.searcher = bmp.Searcher(str(self._path))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise IndexFormatError(f"{self._path}: unreadable bmp index ({exc})") from exc
        self._sentinel = _sentinel_terms()
        self._names = [str(t) for t in range(self.vocab_size)]
        self.fallbacks = 0

    def _brute(self, terms: np.ndarray, qhat: np.ndarray, k: int) -> list[tuple[int, int]]:
        col = self.impacts[:, terms].astype(np.int64) @ qhat
        rows = np.flatnonzero(col > 0)
        order = np.lexsort((rows, -col[rows]))[:k]
        return [(int(rows[i]), int(col[rows[i]])) for i in order]

    def search_one(self, terms: np.ndarray, weights: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Top-``k`` ``(row, score)`` of one query (``terms`` sorted, weights > 0)."""
        terms, qhat, factor = quantize_query(terms, weights, self.max_impact)
        if terms.size == 0:
            return []
        kb = next(x for x in _KTH if x >= k)
        threshold = int((self.kth[_KTH.index(kb), terms] * qhat).max())
        query = {self._names[t]: float(w) * _UNIT for t, w in zip(terms.tolist(), qhat.tolist())}
        bound = threshold + 1
        for term, _, weight in self._sentinel:
            if bound & 1:
                query[term] = weight * _UNIT
            bound >>= 1
        query[_SCALE_TERM] = MAX_QUERY_WEIGHT * _UNIT
        try:
            names, scores = self.searcher.search(query, kb, 1.0, 1.0)
        except BaseException as exc:  # PanicException is a BaseException
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise MMSparseError(f"bmp search failed ({type(exc).__name__}: {exc})") from exc
        hits = [(int(n), int(s)) for n, s in zip(names, scores) if not n.startswith(_PAD_PREFIX)]
        if len(hits) < k and threshold > 0:
            # Documents tied with bmp's starting threshold are not returned (module doc).
            self.fallbacks += 1
            hits = self._brute(terms, qhat, k)
        unit = self.scale * factor
        return [(row, score * unit) for row, score in hits]

    def _search(self, query: Query) -> SearchHits:
        """Top-``k`` of every query, one at a time (bmp searches on one thread)."""
        q, k = query.sparse, query.k
        results = []
        for i in range(q.shape[0]):
            s, e = q.indptr[i], q.indptr[i + 1]
            results.append(self.search_one(q.indices[s:e].astype(np.int64), q.data[s:e], k))
        return pack_hits(results, k)

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored (dequantised) weights of ``rows`` at ``terms``."""
        return stored_weights(self.impacts, rows, terms, self.scale)

    def stored_vectors(self) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """The stored impacts, dequantised (no dense vectors)."""
        return dequantize(self.impacts, self.scale), None

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError
from mmsparse.index import kernels
from mmsparse.index.inverted import POSTINGS_NAME, InvertedIndex, write_postings
from mmsparse.index.quantize import quantize


def random_docs(rng, n, v, nnz_per_row, integer=False):
    rows, cols, vals = [], [], []
    # Zipf-like term popularity, as in learned sparse vectors.
    p = 1.0 / np.arange(1, v + 1) ** 0.8
    p /= p.sum()
    for i in range(n):
        c = rng.choice(v, size=nnz_per_row, replace=False, p=p)
        rows.append(np.full(c.size, i))
        cols.append(c)
        w = rng.integers(1, 6, c.size) if integer else rng.gamma(1.0, 0.5, c.size) + 1e-3
        vals.append(w)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, v),
        dtype=np.float32,
    )


def brute_force(docs: sp.csr_matrix, queries: sp.csr_matrix) -> np.ndarray:
    """float64 reference scores (B, n_docs)."""
    return (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()


def reference_topk(scores_row: np.ndarray, k: int) -> np.ndarray:
    rows = np.flatnonzero(scores_row > 0)
    order = np.lexsort((rows, -scores_row[rows]))
    return rows[order][:k]


def assert_ranking(rows, scores, ref_row, k, atol=1e-5):
    """Tie-aware check against float64 brute force (floating sums may differ in order)."""
    keep = rows >= 0
    rows, scores = rows[keep], scores[keep]
    ref = reference_topk(ref_row, k)
    assert rows.size == ref.size
    np.testing.assert_allclose(scores, ref_row[rows], rtol=1e-5, atol=atol)
    np.testing.assert_allclose(np.sort(scores)[::-1], ref_row[ref], rtol=1e-5, atol=atol)
    assert np.all(np.diff(scores) <= atol)
    if rows.size:
        outside = np.setdiff1d(np.flatnonzero(ref_row > 0), rows)
        assert np.all(ref_row[outside] <= scores[-1] + atol)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 600, 300, 25)
    queries = random_docs(rng, 40, 300, 6)
    path = tmp_path_factory.mktemp("inv") / POSTINGS_NAME
    write_postings(path, docs)
    return docs, queries, path


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_matches_brute_force_random(corpus, backend):
    if backend == "numba" and not kernels.numba_available():
        pytest.skip("numba not installed (pip install 'mmsparse[index]')")
    docs, queries, path = corpus
    index = InvertedIndex(path, backend=backend)
    ref = brute_force(docs, queries)
    for k in (1, 10, 1000):
        hits = index.search_batch(queries, k=k)
        for i in range(queries.shape[0]):
            assert_ranking(hits.rows[i], hits.scores[i], ref[i], k)


def test_backends_identical(corpus):
    if not kernels.numba_available():
        pytest.skip("numba not installed (pip install 'mmsparse[index]')")
    _, queries, path = corpus
    index = InvertedIndex(path, backend="numba")
    rare = sp.csr_matrix(
        (np.array([1.0, 0.5, 2.0, 1.0], np.float32), ([0, 0, 1, 2], [299, 298, 250, 280])),
        shape=(3, 300),
    )
    queries = sp.vstack([queries, rare], format="csr")
    # The numba kernel scans all scores when the postings are long (> n_docs / 4 in all) and
    # visits only the touched documents otherwise: both paths must occur here.
    lengths = np.diff(index.indptr)
    totals = np.array([lengths[queries[i].indices].sum() for i in range(queries.shape[0])])
    assert (totals * 4 > index.n_docs).any() and (totals * 4 <= index.n_docs).any()
    a = InvertedIndex(path, backend="numpy").search_batch(queries, k=25)
    b = index.search_batch(queries, k=25, threads=2)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    for i in range(queries.shape[0]):  # the single-query path (kept work arrays)
        rows, scores = index.search(queries[i], k=25)
        np.testing.assert_array_equal(rows, a.query(i)[0])
        np.testing.assert_array_equal(scores, a.query(i)[1])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_exact_ties_broken_by_lower_row(tmp_path, backend):
    if backend == "numba" and not kernels.numba_available():
        pytest.skip("numba not installed (pip install 'mmsparse[index]')")
    rng = np.random.default_rng(1)
    # Small integer weights: every score is exact in float32 and ties abound.
    docs = random_docs(rng, 400, 50, 6, integer=True)
    queries = random_docs(rng, 30, 50, 3, integer=True)
    write_postings(tmp_path / POSTINGS_NAME, docs)
    index = InvertedIndex(tmp_path / POSTINGS_NAME, backend=backend)
    ref = brute_force(docs, queries)
    hits = index.search_batch(queries, k=15)
    n_ties = 0
    for i in range(queries.shape[0]):
        want = reference_topk(ref[i], 15)
        got, scores = hits.query(i)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(scores, ref[i][want].astype(np.float32))
        n_ties += int(np.sum(np.diff(scores) == 0))
    assert n_ties > 10  # the tie rule was actually exercised


def test_single_query_and_fewer_matches(corpus):
    docs, _, path = corpus
    index = InvertedIndex(path)
    q = np.zeros(300, dtype=np.float32)
    q[299] = 1.0  # the rarest term: few documents
    rows, scores = index.search(q, k=500)
    assert rows.size == np.count_nonzero(docs[:, 299].toarray())
    np.testing.assert_allclose(scores, docs[rows, 299].toarray().ravel())
    empty_rows, _ = index.search(np.zeros(300, dtype=np.float32), k=5)
    assert empty_rows.size == 0


@pytest.mark.parametrize("mode", ["uint8", "uint16"])
def test_quantized_index_equals_brute_force_on_impacts(tmp_path, corpus, mode):
    docs, queries, _ = corpus
    write_postings(tmp_path / POSTINGS_NAME, docs, quantize_mode=mode)
    index = InvertedIndex(tmp_path / POSTINGS_NAME)
    qdocs, scale = quantize(docs, mode)
    assert index.scale == pytest.approx(scale)
    assert index.weights.dtype == np.dtype(mode)
    ref = brute_force(qdocs, queries) * scale
    hits = index.search_batch(queries, k=10)
    for i in range(queries.shape[0]):
        assert_ranking(hits.rows[i], hits.scores[i], ref[i], 10, atol=1e-4)
    # Dequantised weights stay within half a quantisation step of the originals.
    back = index.to_csr()
    diff = abs(back - docs)
    assert diff.max() <= scale / 2 + 1e-6


def test_doc_weights_and_roundtrip(corpus):
    docs, _, path = corpus
    index = InvertedIndex(path)
    assert abs(index.to_csr() - docs).max() == 0
    rows = np.array([0, 5, 599])
    terms = np.array([0, 3, 150, 299])
    np.testing.assert_array_equal(index.doc_weights(rows, terms), docs[rows][:, terms].toarray())


def test_memory_mapped(corpus):
    _, _, path = corpus
    index = InvertedIndex(path)
    assert isinstance(index.doc_ids, np.memmap) and isinstance(index.weights, np.memmap)


def test_bad_queries(corpus):
    _, _, path = corpus
    index = InvertedIndex(path)
    with pytest.raises(IndexFormatError, match="different vocabulary"):
        index.search_batch(sp.csr_matrix((1, 299), dtype=np.float32), k=5)
    with pytest.raises(ValueError, match="k must be"):
        index.search_batch(sp.csr_matrix((1, 300), dtype=np.float32), k=0)
    neg = sp.csr_matrix(np.array([[-1.0] + [0.0] * 299], dtype=np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        index.search_batch(neg, k=5)


def test_corrupt_and_foreign_files_refused(tmp_path, corpus):
    _, _, path = corpus
    data = bytearray(path.read_bytes())
    # A flipped bit in the payload.
    bad = bytearray(data)
    bad[-100] ^= 0x01
    (tmp_path / "flip.mmsi").write_bytes(bytes(bad))
    with pytest.raises(IndexFormatError, match="checksum"):
        InvertedIndex(tmp_path / "flip.mmsi")
    # A flipped bit in the header.
    bad = bytearray(data)
    bad[60] ^= 0x01
    (tmp_path / "head.mmsi").write_bytes(bytes(bad))
    with pytest.raises(IndexFormatError, match="header"):
        InvertedIndex(tmp_path / "head.mmsi")
    # Truncated.
    (tmp_path / "short.mmsi").write_bytes(bytes(data[:-64]))
    with pytest.raises(IndexFormatError, match="truncated"):
        InvertedIndex(tmp_path / "short.mmsi")
    # Foreign file and other version.
    (tmp_path / "foreign.mmsi").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(IndexFormatError, match="not an mmsparse inverted index"):
        InvertedIndex(tmp_path / "foreign.mmsi")
    other = bytearray(data)
    other[8:12] = (99).to_bytes(4, "little")
    (tmp_path / "v99.mmsi").write_bytes(bytes(other))
    with pytest.raises(IndexFormatError, match="version 99"):
        InvertedIndex(tmp_path / "v99.mmsi")
    with pytest.raises(IndexFormatError, match="not found"):
        InvertedIndex(tmp_path / "missing.mmsi")

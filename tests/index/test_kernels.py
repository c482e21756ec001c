"""The numba kernel's long-query path against the numpy backend and float64 brute force.

Long queries (more postings than a quarter of the documents) are accumulated block by block
of documents, with the longest posting lists read from dense columns, and the top-k pass
calls the heap only above a running threshold. The results must be bit-identical to the
numpy backend (same float32 sums in the same order, same tie rule) for any block size,
any set of dense columns and any weight dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.index import kernels
from mmsparse.index.inverted import POSTINGS_NAME, InvertedIndex, write_postings
from tests.index.test_inverted import brute_force, random_docs, reference_topk

needs_numba = pytest.mark.skipif(
    not kernels.numba_available(), reason="numba not installed (pip install 'mmsparse[index]')"
)


def csc_arrays(docs: sp.csr_matrix, dtype=np.float32):
    csc = sp.csc_matrix(docs)
    csc.sort_indices()
    return (
        csc.indptr.astype(np.int64),
        csc.indices.astype(np.int32),
        csc.data.astype(dtype),
    )


def query_arrays(queries: sp.csr_matrix):
    q = sp.csr_matrix(queries, dtype=np.float32)
    q.sort_indices()
    return q.indptr.astype(np.int64), q.indices.astype(np.int64), q.data.astype(np.float32)


@pytest.fixture(scope="module")
def mixed():
    """Documents where the most frequent terms are in most rows, and queries of every kind."""
    rng = np.random.default_rng(7)
    n, v = 500, 60
    docs = random_docs(rng, n, v, 12, integer=True)  # small integers: ties abound
    # 2 to 9 terms: runs of 1 to 4 consecutive dense terms (added in one pass) all occur
    long_q = sp.vstack([random_docs(rng, 2, v, n_terms) for n_terms in range(2, 10)])
    rare = sp.csr_matrix(
        (np.array([1.0, 2.0], np.float32), ([0, 1], [v - 1, v - 2])), shape=(3, v)
    )  # row 2 is empty
    queries = sp.vstack([long_q, rare, random_docs(rng, 6, v, 3, integer=True)], format="csr")
    return docs, queries


def test_mixed_corpus_has_both_paths_and_dense_terms(mixed):
    docs, queries = mixed
    lengths = np.bincount(docs.indices, minlength=docs.shape[1])
    totals = np.array([lengths[queries[i].indices].sum() for i in range(queries.shape[0])])
    n = docs.shape[0]
    assert (totals * 4 > n).sum() >= 10 and (totals * 4 <= n).sum() >= 2
    assert kernels.dense_terms(np.concatenate([[0], np.cumsum(lengths)]), n, 0.25).size >= 5


@needs_numba
@pytest.mark.parametrize(
    "dtype", [np.float32, np.uint8, "float32-real"]
)  # real: non-integer weights, where the order of float32 additions shows
@pytest.mark.parametrize("min_fraction", [0.0, 0.25, 2.0])
@pytest.mark.parametrize("block", [1, 7, 64, 499, 500, 100_000])
def test_blocked_path_bit_identical_to_numpy(mixed, dtype, min_fraction, block):
    docs, queries = mixed
    if dtype == "float32-real":
        docs = docs.copy()
        docs.data = docs.data * np.random.default_rng(2).gamma(2.0, 0.3, docs.nnz).astype(
            np.float32
        )
        dtype = np.float32
    indptr, doc_ids, weights = csc_arrays(docs, dtype)
    qi, qt, qw = query_arrays(queries)
    n = docs.shape[0]
    dense = kernels.dense_columns(indptr, doc_ids, weights, n, min_fraction)
    for k in (1, 10, 600):  # 600 > every query's matching documents
        want = kernels.search_csr("numpy", indptr, doc_ids, weights, n, qi, qt, qw, k)
        got = kernels.search_csr(
            "numba", indptr, doc_ids, weights, n, qi, qt, qw, k, 2, dense=dense, block=block
        )
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        buffers: dict[str, np.ndarray] = {}
        for i in range(queries.shape[0]):  # the single-query path (kept work arrays)
            s, e = qi[i], qi[i + 1]
            one = kernels.search_csr(
                "numba",
                indptr,
                doc_ids,
                weights,
                n,
                np.array([0, e - s]),
                qt[s:e],
                qw[s:e],
                k,
                1,
                buffers,
                dense=dense,
                block=block,
            )
            np.testing.assert_array_equal(one[0][0], want[0][i])
            np.testing.assert_array_equal(one[1][0], want[1][i])


@needs_numba
@pytest.mark.parametrize("block", [3, 64])
def test_blocked_path_exact_with_ties_against_brute_force(mixed, block):
    docs, _ = mixed
    rng = np.random.default_rng(11)
    queries = random_docs(rng, 25, docs.shape[1], 6, integer=True)
    indptr, doc_ids, weights = csc_arrays(docs)
    qi, qt, qw = query_arrays(queries)
    n = docs.shape[0]
    ref = brute_force(docs, queries)  # small integers: exact in float32 too
    dense = kernels.dense_columns(indptr, doc_ids, weights, n, 0.25)
    rows, scores = kernels.search_csr(
        "numba", indptr, doc_ids, weights, n, qi, qt, qw, 20, 1, dense=dense, block=block
    )
    n_ties = 0
    for i in range(queries.shape[0]):
        want = reference_topk(ref[i], 20)
        np.testing.assert_array_equal(rows[i][: want.size], want)
        np.testing.assert_array_equal(scores[i][: want.size], ref[i][want].astype(np.float32))
        n_ties += int(np.sum(np.diff(scores[i][: want.size]) == 0))
    assert n_ties > 20  # ties across block boundaries were exercised


def test_default_dense_fraction_is_twice_the_bytes_break_even():
    # a column (itemsize per document) at most twice postings of (4 + itemsize) bytes
    assert kernels.default_dense_fraction(np.float32) == 0.25
    assert kernels.default_dense_fraction(np.uint16) == pytest.approx(1 / 6)
    assert kernels.default_dense_fraction(np.uint8) == pytest.approx(1 / 10)


def test_dense_columns(mixed):
    docs, _ = mixed
    indptr, doc_ids, weights = csc_arrays(docs)
    n, v = docs.shape
    slot, cols = kernels.dense_columns(indptr, doc_ids, weights, n, 0.25)
    lengths = np.diff(indptr)
    terms = np.flatnonzero(lengths >= 0.25 * n)
    assert cols.shape == (terms.size, n) and cols.dtype == np.float32
    np.testing.assert_array_equal(np.flatnonzero(slot >= 0), terms)
    np.testing.assert_array_equal(cols, docs[:, terms].toarray().T)
    assert (slot[np.setdiff1d(np.arange(v), terms)] == -1).all()
    none_slot, none_cols = kernels.dense_columns(indptr, doc_ids, weights, n, 2.0)
    assert none_cols.shape[0] == 0 and (none_slot == -1).all()
    _, u8 = kernels.dense_columns(indptr, doc_ids, weights.astype(np.uint8), n, 0.25)
    assert u8.dtype == np.uint8
    auto_slot, _ = kernels.dense_columns(indptr, doc_ids, weights.astype(np.uint8), n)
    np.testing.assert_array_equal(np.flatnonzero(auto_slot >= 0), np.flatnonzero(lengths >= n / 10))
    empty = kernels.dense_columns(np.zeros(4, np.int64), np.zeros(0, np.int32), weights[:0], 0)
    assert empty[1].shape == (0, 0) and (empty[0] == -1).all()


@needs_numba
def test_index_prepares_dense_columns_once(tmp_path, mixed):
    docs, queries = mixed
    write_postings(tmp_path / POSTINGS_NAME, docs)
    index = InvertedIndex(tmp_path / POSTINGS_NAME, backend="numba")
    assert index.dense_bytes == 0
    hits = index.search_batch(queries, k=10)
    n_dense = kernels.dense_terms(index.indptr, index.n_docs, 0.25).size  # float32 default
    assert index.dense_bytes == n_dense * index.n_docs * 4 > 0
    cols = index._dense[1]
    index.search_batch(queries, k=10)
    assert index._dense[1] is cols  # built once
    plain = InvertedIndex(tmp_path / POSTINGS_NAME, backend="numba", dense_min_fraction=2.0)
    same = plain.search_batch(queries, k=10)
    assert plain.dense_bytes == 0
    np.testing.assert_array_equal(hits.rows, same.rows)
    np.testing.assert_array_equal(hits.scores, same.scores)
    numpy_index = InvertedIndex(tmp_path / POSTINGS_NAME, backend="numpy").prepare()
    assert numpy_index.dense_bytes == 0


@needs_numba
@pytest.mark.parametrize("block", [5, 64, 100_000])
def test_blocked_path_live_mask(mixed, block):
    docs, queries = mixed
    indptr, doc_ids, weights = csc_arrays(docs)
    qi, qt, qw = query_arrays(queries)
    n = docs.shape[0]
    live = np.random.default_rng(3).random(n) < 0.6
    dense = kernels.dense_columns(indptr, doc_ids, weights, n, 0.25)
    for k in (3, 600):
        want = kernels.search_csr("numpy", indptr, doc_ids, weights, n, qi, qt, qw, k, live=live)
        got = kernels.search_csr(
            "numba",
            indptr,
            doc_ids,
            weights,
            n,
            qi,
            qt,
            qw,
            k,
            2,
            live=live,
            dense=dense,
            block=block,
        )
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert live[got[0][got[0] >= 0]].all()
        buffers: dict[str, np.ndarray] = {}
        for i in range(queries.shape[0]):  # the single-query path
            s, e = qi[i], qi[i + 1]
            one = kernels.search_csr(
                "numba",
                indptr,
                doc_ids,
                weights,
                n,
                np.array([0, e - s]),
                qt[s:e],
                qw[s:e],
                k,
                1,
                buffers,
                live=live,
                dense=dense,
                block=block,
            )
            np.testing.assert_array_equal(one[0][0], want[0][i])


@needs_numba
def test_touched_path_ties_prefer_lower_row():
    # Short lists (touched path): row 5 is touched first (term 0), row 2 later (term 1) with
    # the same score; the tie rule wants row 2 even though the heap already holds row 5.
    n, v = 100, 4
    docs = sp.csr_matrix(
        (np.array([1.0, 1.0, 0.5], np.float32), ([5, 2, 9], [0, 1, 1])), shape=(n, v)
    )
    queries = sp.csr_matrix(np.array([[1.0, 1.0, 0.0, 0.0]], np.float32))
    indptr, doc_ids, weights = csc_arrays(docs)
    qi, qt, qw = query_arrays(queries)
    assert not (np.diff(indptr)[qt].sum() * 4 > n)  # the touched path
    for k, want in ((1, [2]), (2, [2, 5]), (5, [2, 5, 9])):
        rows, _ = kernels.search_csr("numba", indptr, doc_ids, weights, n, qi, qt, qw, k, 1)
        np.testing.assert_array_equal(rows[0][: len(want)], want)
        single = kernels.search_csr(
            "numba", indptr, doc_ids, weights, n, np.array([0, 2]), qt, qw, k, 1, {}
        )
        np.testing.assert_array_equal(single[0][0][: len(want)], want)

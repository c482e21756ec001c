"""Deleted rows (a ``live`` mask) left out of every search, exactly: the kernels of the
inverted index (numba and numpy), dense and hybrid search, against brute force over the
live rows only."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import QueryError
from mmsparse.index import kernels
from mmsparse.index.dense import search_dense
from mmsparse.index.inverted import InvertedIndex, write_postings
from tests.index.test_inverted import random_docs


def live_topk(scores: np.ndarray, live: np.ndarray, k: int, positive: bool = True):
    """Reference: the top-k live rows of one score row (ties: lower row first)."""
    rows = np.flatnonzero(live & (scores > 0) if positive else live)
    order = np.lexsort((rows, -scores[rows]))
    return rows[order][:k]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(7)
    docs = random_docs(rng, 500, 200, 20, integer=True)  # integer weights: many ties
    queries = random_docs(rng, 30, 200, 5)
    path = tmp_path_factory.mktemp("live") / "postings.mmsi"
    write_postings(path, docs)
    live = rng.random(500) > 0.3
    return docs, queries, path, live


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("k", [1, 10, 400])
def test_inverted_kernels_leave_dead_rows_out(corpus, backend, k):
    if backend == "numba" and not kernels.numba_available():
        pytest.skip("numba not installed")
    docs, queries, path, live = corpus
    index = InvertedIndex(path, backend=backend)
    ref = (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    batched = index.search_batch(queries, k, live=live)
    for i in range(queries.shape[0]):
        want = live_topk(ref[i], live, k)
        single = index.search_batch(queries[i], k, live=live)  # the one-query kernel
        for rows in (batched.query(i)[0], single.query(0)[0]):
            assert live[rows].all()
            np.testing.assert_array_equal(rows, want)
    everything = np.ones(500, dtype=bool)
    np.testing.assert_array_equal(
        index.search_batch(queries, k, live=everything).rows, index.search_batch(queries, k).rows
    )


def test_live_mask_must_be_one_bool_per_row(corpus):
    _, queries, path, _ = corpus
    index = InvertedIndex(path)
    with pytest.raises(QueryError, match="one entry per indexed row"):
        index.search_batch(queries, 5, live=np.ones(499, dtype=bool))
    with pytest.raises(QueryError, match="boolean"):
        index.search_batch(queries, 5, live=np.ones(500, dtype=np.int8))


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_dense_and_hybrid_leave_dead_rows_out(corpus, mode):
    docs, queries, path, live = corpus
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    q_dense = rng.standard_normal((queries.shape[0], 8)).astype(np.float32)
    index = InvertedIndex(path)
    ref = q_dense.astype(np.float64) @ vectors.T.astype(np.float64)
    if mode == "hybrid":
        ref = 0.3 * ref + 0.7 * (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    hits = search_dense(
        vectors,
        q_dense,
        12,
        mode=mode,
        index=index,
        sparse=sp.csr_matrix(queries),
        w1=0.3,
        w2=0.7,
        live=live,
    )
    for i in range(queries.shape[0]):
        rows, scores = hits.query(i)
        want = live_topk(ref[i], live, 12, positive=False)
        np.testing.assert_allclose(scores, ref[i][rows], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ref[i][rows], ref[i][want], rtol=1e-4, atol=1e-5)
        assert live[rows].all()
    none = search_dense(vectors, q_dense, 5, live=np.zeros(500, dtype=bool))
    assert (none.rows == -1).all()

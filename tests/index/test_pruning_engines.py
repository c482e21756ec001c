"""The ``bmp`` (exact block-max pruning) and ``kannolo`` (sparse HNSW) engines vs brute force."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import MMSparseError
from mmsparse.index.engines import get_engine
from mmsparse.index.quantize import quantize
from tests.helpers import flickr8k_vectors

needs_bmp = pytest.mark.skipif(importlib.util.find_spec("bmp") is None, reason="bmp missing")
needs_kannolo = pytest.mark.skipif(
    importlib.util.find_spec("kannolo") is None, reason="kannolo missing"
)


def built(name, directory, docs, params=None):
    """Build an engine's files through the registry and open them."""
    cls = get_engine(name)
    return cls.open(directory, cls.build(directory, docs, params=params))


def _random(n, v, density, seed):
    return sp.random(n, v, density=density, random_state=seed, format="csr", dtype=np.float32)


def _bmp_truth(engine, impacts, queries, k):
    """Brute-force integer scores of bmp's own query quantisation: the sorted top-k scores."""
    from mmsparse.index.engines.bmp import quantize_query

    out = []
    for i in range(queries.shape[0]):
        s, e = queries.indptr[i], queries.indptr[i + 1]
        terms, qhat, _ = quantize_query(
            queries.indices[s:e].astype(np.int64), queries.data[s:e], engine.max_impact
        )
        col = impacts[:, terms].toarray().astype(np.int64) @ qhat
        out.append(col)
    return out


def _check_bmp_exact(engine, docs, queries, k):
    impacts, _ = quantize(docs, "uint8")
    hits = engine.search_batch(queries, k)
    for i, col in enumerate(_bmp_truth(engine, impacts, queries, k)):
        rows, scores = hits.query(i)
        want = np.sort(col[col > 0])[::-1][:k]
        # Same top-k scores (documents tied at the k-th score may be any of them) ...
        np.testing.assert_array_equal(np.sort(col[rows])[::-1], want)
        assert len(set(rows.tolist())) == rows.size
        # ... best first, and the reported score is the dequantised integer score.
        assert np.all(np.diff(scores) <= 1e-6 * max(1.0, float(scores.max(initial=0))))


@needs_bmp
@pytest.mark.parametrize(
    ("n", "bsize"), [(1, 32), (7, 32), (31, 32), (32, 32), (33, 32), (400, 8), (3000, 32)]
)
def test_bmp_equals_brute_force_at_its_quantisation(tmp_path, n, bsize):
    docs = _random(n, 300, 0.05, seed=n)
    queries = _random(40, 300, 0.06, seed=n + 1)
    engine = built("bmp", tmp_path, docs, {"bsize": bsize})
    assert engine.n_docs == n
    for k in (1, 10, 25, 1000):
        _check_bmp_exact(engine, docs, queries, k)


@needs_bmp
def test_bmp_recall_against_float_scores_is_high(tmp_path):
    from mmsparse.bench.retrieval import exact_sparse_topk, recall_at_k

    docs = _random(5000, 400, 0.04, seed=5)
    queries = _random(100, 400, 0.05, seed=6)
    hits = built("bmp", tmp_path, docs).search_batch(queries, 10)
    assert recall_at_k(hits.rows, exact_sparse_topk(docs, queries, 10)) > 0.9


@needs_bmp
def test_bmp_bad_input_is_a_clear_error_never_a_panic(tmp_path):
    from mmsparse.index.engines.bmp import write_bmp

    docs = _random(50, 40, 0.2, seed=1)
    docs = sp.hstack([docs[:, :38], sp.csr_matrix((50, 2), dtype=np.float32)]).tocsr()
    unknown = sp.csr_matrix(([1.0, 2.0], ([0, 0], [38, 39])), shape=(1, 40), dtype=np.float32)
    engine = built("bmp", tmp_path, docs)
    assert engine.search_batch(unknown, 10).query(0)[0].size == 0
    assert engine.search_batch(sp.csr_matrix((1, 40), dtype=np.float32), 10).rows[0, 0] == -1
    big = engine.search_batch(_random(3, 40, 0.3, seed=2), 100)  # k > index size
    assert big.rows.shape == (3, 100) and (big.rows[:, 50:] == -1).all()
    with pytest.raises(MMSparseError, match="at most 1000"):
        engine.search_batch(unknown, 1001)
    with pytest.raises(MMSparseError, match="k must be"):
        engine.search_batch(unknown, 0)
    with pytest.raises(MMSparseError, match="8-bit impacts"):
        write_bmp(tmp_path, sp.csr_matrix(np.array([[256.0, 3.0]], np.float32)), 1.0)
    with pytest.raises(MMSparseError, match="integer impacts"):
        write_bmp(tmp_path, sp.csr_matrix(np.array([[2.5, 3.0]], np.float32)), 1.0)
    with pytest.raises(MMSparseError, match="unknown bmp parameter"):
        get_engine("bmp").build(tmp_path, docs, params={"block": 8})


@needs_bmp
def test_bmp_query_quantisation_never_overflows_16_bits():
    from mmsparse.index.engines.bmp import SCORE_LIMIT, quantize_query

    max_impact = np.full(1000, 255, dtype=np.int64)
    terms = np.arange(600, dtype=np.int64)
    weights = np.linspace(1.0, 0.5, 600).astype(np.float32)
    t, q, factor = quantize_query(terms, weights, max_impact)
    assert (q >= 1).all() and q.max() <= 32 and int((q * 255).sum()) <= SCORE_LIMIT
    assert t.size == SCORE_LIMIT // 255  # at q = 1: the heaviest 257 terms
    t, q, factor = quantize_query(terms[:5], weights[:5], max_impact)
    assert q.max() == 32 and factor == pytest.approx(1.0 / 32)


@needs_kannolo
def test_kannolo_against_brute_force(tmp_path):
    from mmsparse.bench.retrieval import exact_sparse_topk, recall_at_k

    docs = _random(3000, 300, 0.05, seed=3)
    queries = _random(60, 300, 0.05, seed=4)
    engine = built("kannolo", tmp_path, docs, {"m": 16, "ef_construction": 100})
    truth = exact_sparse_topk(docs, queries, 10)
    hits = engine.search_batch(queries, 10, ef_search=300)
    assert recall_at_k(hits.rows, truth) >= 0.95
    low = engine.search_batch(queries, 10, ef_search=10, threads=1)
    assert recall_at_k(low.rows, truth) <= recall_at_k(hits.rows, truth)
    ref = (queries @ docs.T).toarray()
    for i in range(queries.shape[0]):
        rows, scores = hits.query(i)
        np.testing.assert_allclose(scores, ref[i][rows], rtol=5e-3, atol=1e-3)
    # Batched and one-by-one search agree.
    one = engine.search_batch(queries, 10, ef_search=300, threads=1)
    assert recall_at_k(one.rows, hits.rows) > 0.98


@needs_kannolo
def test_kannolo_bad_input(tmp_path):
    docs = _random(30, 50, 0.1, seed=7)
    docs = sp.hstack([docs[:, :45], sp.csr_matrix((30, 5), dtype=np.float32)]).tocsr()
    engine = built("kannolo", tmp_path, docs)
    # Terms no image has (kannolo would abort the process on the ones beyond its dimension).
    unknown = sp.csr_matrix(([1.0, 1.0], ([0, 0], [47, 49])), shape=(1, 50), dtype=np.float32)
    assert engine.search_batch(unknown, 5).query(0)[0].size == 0
    assert engine.search_batch(unknown, 5, threads=1).query(0)[0].size == 0
    assert engine.search_batch(sp.csr_matrix((2, 50), dtype=np.float32), 5).rows.max() == -1
    big = engine.search_batch(docs[:2], 500)  # k > index size
    rows, scores = big.query(0)
    assert rows.size <= 30 and (scores > 0).all()
    kannolo = get_engine("kannolo")
    with pytest.raises(MMSparseError):
        kannolo.build(tmp_path, sp.csr_matrix((3, 50), dtype=np.float32))
    with pytest.raises(MMSparseError, match="unknown kannolo"):
        kannolo.build(tmp_path, docs, params={"M": 3})


@needs_bmp
@needs_kannolo
def test_pruning_engines_on_flickr8k_vectors(tmp_path):
    from mmsparse.bench.retrieval import exact_sparse_topk, recall_at_k

    docs, queries = flickr8k_vectors(100)
    _check_bmp_exact(built("bmp", tmp_path / "bmp", docs), docs, queries, 10)
    if importlib.util.find_spec("numba") is not None:
        from mmsparse.index.blockmax import BlockMaxIndex
        from mmsparse.index.inverted import InvertedIndex, write_postings

        write_postings(tmp_path / "p.mmsi", docs)
        want = InvertedIndex(tmp_path / "p.mmsi").search_batch(queries, 10, threads=1)
        got = BlockMaxIndex(docs, bsize=16).search_batch(queries, 10)
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_array_equal(got.scores, want.scores)
    hits = built("kannolo", tmp_path / "k", docs).search_batch(queries, 10, ef_search=200)
    assert recall_at_k(hits.rows, exact_sparse_topk(docs, queries, 10)) >= 0.95


@needs_bmp
@needs_kannolo
def test_index_build_and_search_with_bmp_and_kannolo(tiny_run, tmp_path, capsys):
    from mmsparse.cli.main import main
    from mmsparse.index.build import build_index
    from mmsparse.index.search import Searcher

    exact = tmp_path / "inverted"
    build_index(tiny_run, exact, split="val", progress=False)
    ref = Searcher(exact)
    for engine in ("bmp", "kannolo"):
        out = tmp_path / engine
        params = {"ef_search": 200} if engine == "kannolo" else {"bsize": 8}
        m = build_index(
            tiny_run, out, split="val", engine=engine, engine_params=params, progress=False
        )
        assert m.engine == engine and m.n_images == 40
        searcher = Searcher(out)
        found = 0
        for cid in ("80", "90", "100"):
            want = {h.row for h in ref.search(caption_id=cid, k=5).hits}
            res = searcher.search(caption_id=cid, k=5, explain=True)
            found += len(want & {h.row for h in res.hits})
            assert all(hit.terms for hit in res.hits)
        # Explanations read the engine's stored weights: the same (to 8 bits for bmp).
        rows, terms = np.arange(40), np.arange(m.vocab_size)
        want_w = ref.engine.doc_weights(rows, terms)
        got_w = searcher.engine.doc_weights(rows, terms)
        np.testing.assert_allclose(got_w, want_w, atol=want_w.max() / 255 * 0.51)
        assert found >= 13
        assert main(["search", str(out), "--caption-id", "80", "--k", "3", "--json"]) == 0
        assert '"hits"' in capsys.readouterr().out


@pytest.mark.parametrize(("n", "bsize"), [(1, 64), (63, 64), (2000, 16), (5000, 64)])
def test_own_blockmax_equals_the_inverted_engine(tmp_path, n, bsize):
    pytest.importorskip("numba")
    from mmsparse.index.blockmax import BlockMaxIndex
    from mmsparse.index.inverted import InvertedIndex, write_postings

    docs = _random(n, 300, 0.05, seed=n)
    # Integer-valued weights make ties common: the tie rule (lower row first) is checked too.
    ties = docs.copy()
    ties.data = np.ceil(ties.data * 4)
    queries = _random(50, 300, 0.06, seed=n + 2)
    for matrix in (docs, ties):
        write_postings(tmp_path / "p.mmsi", matrix)
        want = InvertedIndex(tmp_path / "p.mmsi").search_batch(queries, 10, threads=1)
        index = BlockMaxIndex(matrix, bsize=bsize)
        got = index.search_batch(queries, 10)
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert (index.last_read > 0).sum() >= 1 and index.last_blocks.max() <= index.n_blocks
    with pytest.raises(ValueError, match="k must be"):
        index.search_batch(queries, 0)

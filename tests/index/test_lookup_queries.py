"""Inference-free queries (model.query_encoder=lookup) in search, every engine and exports."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from mmsparse.errors import MMSparseError
from mmsparse.index.build import build_index
from mmsparse.index.encode import encode_vectors
from mmsparse.index.export import export_run
from mmsparse.index.search import Searcher
from mmsparse.runs import load_run, load_run_data
from tests.index.conftest import make_run

search_mod = importlib.import_module("mmsparse.index.search")


@pytest.fixture(scope="module")
def lookup_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("lookup"), lookup=True)


@pytest.fixture(scope="module")
def lookup_index(lookup_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("lidx") / "inverted"
    build_index(lookup_run, out, split="val", store_dense=True, progress=False)
    return out


def _no_encoder(extraction):
    raise AssertionError("an inference-free run must not load the text encoder")


def _brute_force(run_dir, query_terms):
    run = load_run(run_dir)
    store = load_run_data(run)
    s = store.split("val")
    _, img = encode_vectors(run.model, store.image_feats[s.image_rows], "image")
    q = run.model.encode_query_terms([query_terms]).numpy()
    return (q.astype(np.float64) @ img.T.toarray().astype(np.float64))[0], q[0]


def test_text_search_is_a_lookup_and_never_loads_the_text_encoder(
    lookup_run, lookup_index, monkeypatch
):
    monkeypatch.setattr(search_mod, "load_text_encoder", _no_encoder)
    searcher = Searcher(lookup_index)
    assert searcher.inference_free
    vocab = searcher.vocab
    words = [t for t in vocab.tokens if t.isalpha()][20:24]
    text = " ".join(words)
    res = searcher.search(text, k=5, explain=True)
    ref, q = _brute_force(lookup_run, vocab.encode(text))
    want_terms = {vocab.term(int(i)): float(q[i]) for i in np.flatnonzero(q)}
    assert dict(res.query_terms) == pytest.approx(want_terms)
    rows = np.array([h.row for h in res.hits])
    np.testing.assert_allclose([h.score for h in res.hits], ref[rows], rtol=1e-5)
    best = np.sort(ref)[::-1][: rows.size]
    np.testing.assert_allclose(ref[rows], best, rtol=1e-5)
    # no length cut: a lookup has no encoder limit
    long = " ".join([words[0]] * 400)
    assert searcher.search(long, k=2).query == long


def test_caption_search_uses_the_captions_own_terms(lookup_run, lookup_index, monkeypatch):
    monkeypatch.setattr(search_mod, "load_text_encoder", _no_encoder)
    searcher = Searcher(lookup_index)
    store = searcher.store()
    row = store.split("val").caption_rows[3]
    indptr, indices = store.caption_token_ids(store.vocabulary())
    res = searcher.search(caption_id=store.caption_ids[row], k=3)
    _, q = _brute_force(lookup_run, indices[indptr[row] : indptr[row + 1]])
    got = {t for t, _ in res.query_terms}
    assert got == {searcher.vocab.term(int(i)) for i in np.flatnonzero(q)}


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_dense_and_hybrid_are_refused_with_the_option_named(lookup_index, mode):
    with pytest.raises(MMSparseError, match="inference-free.*query_encoder=lookup.*mode=sparse"):
        Searcher(lookup_index).search("a dog", mode=mode)


ENGINE_PACKAGES = {
    "inverted": "numpy",
    "seismic": "seismic",
    "bmp": "bmp",
    "kannolo": "kannolo",
    "milvus": "milvus_lite",
}


@pytest.mark.parametrize("engine", list(ENGINE_PACKAGES))
def test_every_engine_serves_lookup_queries(lookup_run, tmp_path, engine):
    pytest.importorskip(ENGINE_PACKAGES[engine])
    out = tmp_path / engine
    build_index(lookup_run, out, engine=engine, progress=False)
    searcher = Searcher(out)
    vocab = searcher.vocab
    text = " ".join([t for t in vocab.tokens if t.isalpha()][20:24])
    res = searcher.search(text, k=3)
    ref, _ = _brute_force(lookup_run, vocab.encode(text))
    # bmp scores 8-bit impacts, the approximate engines may miss: the best is close
    assert res.hits and res.hits[0].score == pytest.approx(ref.max(), rel=0.05)


def test_opensearch_export_writes_the_idf_table_and_no_knn_query(lookup_run, tmp_path):
    info = export_run(lookup_run, tmp_path / "os", fmt="opensearch")
    assert info["query_encoder"] == "lookup"
    files = set(info["files"])
    assert {"idf.json", "example_neural_sparse_query.json"} <= files
    assert "example_knn_query.json" not in files
    table = json.loads((tmp_path / "os" / "idf.json").read_text())
    run = load_run(lookup_run)
    w = torch.relu(run.model.query_weight.detach()).numpy()
    want = {run.vocab.term(i): float(x) for i, x in enumerate(w) if x > 0}
    assert table == pytest.approx(want, abs=1e-6)
    assert all(v > 0 for v in table.values()) and len(table) < run.model.n_terms
    neural = json.loads((tmp_path / "os" / "example_neural_sparse_query.json").read_text())
    tokens = neural["query"]["neural_sparse"]["sparse"]["query_tokens"]
    assert tokens and all(table[t] == pytest.approx(v, abs=1e-6) for t, v in tokens.items())

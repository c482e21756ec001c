"""``mmsparse serve`` with a run whose queries are inference-free (no text encoder)."""

from __future__ import annotations

import importlib

import pytest

from mmsparse.index import build_index
from mmsparse.serve import create_app
from tests.index.conftest import make_run

TestClient = pytest.importorskip(
    "fastapi.testclient", reason="the serve extra (FastAPI) is not installed"
).TestClient
search_mod = importlib.import_module("mmsparse.index.search")


@pytest.fixture(scope="module")
def lookup_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("lookup-serve")
    run = make_run(root, lookup=True)
    build_index(run, root / "index", store_dense=True, progress=False)
    app = create_app(root / "index")  # no text encoder given, none in the run
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_text_search_works_without_a_text_encoder(lookup_client, monkeypatch):
    def no_encoder(extraction):
        raise AssertionError("the text encoder must not be loaded")

    monkeypatch.setattr(search_mod, "load_text_encoder", no_encoder)
    info = lookup_client.get("/api/info").json()
    assert info["query_encoder"] == "lookup" and info["modes"] == ["sparse"]
    assert info["text_search"] is True
    body = lookup_client.get("/api/search", params={"q": "dog cat", "k": 3}).json()
    assert len(body["hits"]) == 3 and body["mode"] == "sparse"
    assert {t["term"] for t in body["query_terms"]} <= {"dog", "cat"}
    assert body["hits"][0]["terms"]  # explained by the shared terms


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_dense_and_hybrid_are_a_400_naming_the_option(lookup_client, mode):
    resp = lookup_client.get("/api/search", params={"q": "dog", "mode": mode})
    assert resp.status_code == 400
    assert "model.query_encoder=lookup" in resp.json()["error"]


def test_batch_encoder_survives_a_failure_after_encoding():
    """A result that cannot be handed out fails its request; later requests still run
    (before, the encoder thread died and every later request hung)."""
    import numpy as np
    import scipy.sparse as sp

    from mmsparse.serve.workers import BatchEncoder

    calls = {"n": 0}

    def encode(texts):
        calls["n"] += 1
        if calls["n"] == 1:
            return None, object()  # a broken encoder output: not subscriptable
        return None, sp.csr_matrix(np.ones((len(texts), 3), dtype=np.float32))

    enc = BatchEncoder(encode, max_batch=8)
    try:
        with pytest.raises(TypeError):
            enc.submit("a").result(timeout=10)
        dense, row = enc.submit("b").result(timeout=10)
        assert dense is None and row.shape == (1, 3)
    finally:
        enc.close()

"""The HTTP API of ``mmsparse serve`` through FastAPI's test client: every endpoint, every
bad input of issue 10 (4xx JSON with a one-line message, never a 500)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index import Searcher
from mmsparse.serve import SearchService, ServeLimits, create_app
from mmsparse.serve.params import BadRequest, Overloaded, http_error
from mmsparse.serve.served import Served
from tests.serve.conftest import HashEncoder

TestClient = pytest.importorskip(
    "fastapi.testclient", reason="the serve extra (FastAPI) is not installed"
).TestClient


@pytest.fixture(scope="module")
def client(served_index):
    app = create_app(served_index, text_encoder=HashEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_error(resp, status, match):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    assert match in body["error"], body["error"]
    return body["error"]


def test_healthz_and_info(client, served_index):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/api/info").json()
    assert info["engine"] == "inverted" and info["images"] == 40 and info["split"] == "val"
    assert info["vocab_size"] == 122 and info["modes"] == ["sparse", "dense", "hybrid"]
    assert info["text_search"] is True and info["image_files"] is True
    assert info["run"].endswith("run") and info["options"]["quantize"] == "none"
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_search_explains_every_hit_and_contributions_sum_to_the_score(client, served_index):
    resp = client.get("/api/search", params={"q": "a dog runs on the beach", "k": 5})
    assert resp.status_code == 200
    data = resp.json()
    assert data["query"] == "a dog runs on the beach" and data["mode"] == "sparse"
    assert len(data["hits"]) == 5 and [h["rank"] for h in data["hits"]] == [1, 2, 3, 4, 5]
    assert data["query_terms"] and all(t["weight"] > 0 for t in data["query_terms"])
    scores = [h["score"] for h in data["hits"]]
    assert scores == sorted(scores, reverse=True)
    for hit in data["hits"]:
        assert hit["url"] == f"/images/{hit['filename']}"
        total = sum(t["contribution"] for t in hit["terms"])
        assert total == pytest.approx(hit["score"], rel=1e-5, abs=1e-6)
        assert hit["sparse_score"] == pytest.approx(hit["score"], rel=1e-5, abs=1e-6)
        for t in hit["terms"]:
            assert t["contribution"] == pytest.approx(t["query_weight"] * t["image_weight"])
    # The same ranking as the library's Searcher with the same query vector.
    searcher = Searcher(served_index, text_encoder=HashEncoder())
    ref = searcher.search("a dog runs on the beach", k=5)
    assert [h.image_id for h in ref.hits] == [h["image_id"] for h in data["hits"]]
    assert client.get("/api/search?q=dog&explain=false").json()["hits"][0].get("terms") is None


def test_image_terms_and_more_like_this(client):
    first = client.get("/api/search?q=a+cat&k=3").json()["hits"][0]
    terms = client.get(f"/api/images/{first['image_id']}/terms?k=7").json()
    assert terms["image_id"] == first["image_id"] and len(terms["terms"]) == 7
    weights = [t["weight"] for t in terms["terms"]]
    assert weights == sorted(weights, reverse=True) and weights[-1] > 0
    assert terms["n_terms"] >= 7
    like = client.get("/api/search", params={"like": first["image_id"], "k": 4}).json()
    assert like["like"] == first["image_id"] and like["query"] is None
    # The ranking is the brute-force product of the indexed vectors with the image's own.
    svc = client.app.state.service
    docs = svc.searcher.engine.index.to_csr()
    row = svc.row_of[first["image_id"]]
    scores = (docs @ docs[row].T).toarray().ravel()
    ranked = np.lexsort((np.arange(scores.size), -scores))
    expect = [r for r in ranked if r != row][:4]  # the source image itself is left out
    assert [h["image_id"] for h in like["hits"]] == [svc.searcher.image_ids[r] for r in expect]
    assert first["image_id"] not in [h["image_id"] for h in like["hits"]]
    assert like["hits"][0]["score"] == pytest.approx(scores[expect[0]], rel=1e-5)
    hit = like["hits"][0]
    assert sum(t["contribution"] for t in hit["terms"]) == pytest.approx(hit["score"], rel=1e-5)
    assert any("more like image" in n and "left out" in n for n in like["notes"])
    kept = client.get("/api/search", params={"like": first["image_id"], "k": 4, "include_self": 1})
    assert [h["image_id"] for h in kept.json()["hits"]] == [
        svc.searcher.image_ids[r] for r in ranked[:4]
    ]


def test_image_files_are_served_and_nothing_else(client):
    name = client.get("/api/search?q=a+cat&k=1").json()["hits"][0]["filename"]
    resp = client.get(f"/images/{name}")
    assert resp.status_code == 200 and resp.content[:2] == b"\xff\xd8"  # a JPEG
    assert resp.headers["content-type"] == "image/jpeg"
    for path in (
        "/images/..%2F..%2Fsecret.txt",
        "/images/..%2f..%2f..%2fetc%2fpasswd",
        "/images/%2e%2e/%2e%2e/secret.txt",
        "/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/images/%252e%252e%252fsecret.txt",
        "/images/%2Fetc%2Fpasswd",
        "/images/..%5C..%5Csecret.txt",
        "/images/synthetic_00000.jpg%00.txt",
        "/images/nope.jpg",
    ):
        resp = client.get(path)
        assert_error(resp, 404, "no indexed image file named")
        assert b"not for the web" not in resp.content and b"root:" not in resp.content


@pytest.mark.parametrize(
    ("query", "status", "match"),
    [
        ("", 400, "missing query"),
        ("q=", 400, "missing query"),
        ("q=%20%20%20", 400, "empty query"),
        ("q=dog&k=0", 400, "k must be a positive integer"),
        ("q=dog&k=-3", 400, "k must be a positive integer"),
        ("q=dog&k=abc", 400, "k must be a positive integer"),
        ("q=dog&k=1.5", 400, "k must be a positive integer"),
        ("q=dog&k=101", 400, "k must be at most 100"),
        ("q=dog&mode=fancy", 400, "unknown mode 'fancy'"),
        ("q=dog&explain=maybe", 400, "explain must be true or false"),
        ("q=%FF%FE", 400, "not valid UTF-8"),
        ("q=caf%E9", 400, "not valid UTF-8"),
        ("q=dog&like=synthetic", 400, "either q or like"),
        ("like=no-such-image", 404, "unknown image id 'no-such-image'"),
        ("q=a%00b", 400, "NUL"),
    ],
)
def test_bad_search_requests_are_one_line_4xx(client, query, status, match):
    assert_error(client.get(f"/api/search?{query}"), status, match)


def test_dense_and_hybrid_on_a_sparse_only_index_are_400(sparse_only_index):
    app = create_app(sparse_only_index, text_encoder=HashEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/api/info").json()["modes"] == ["sparse"]
        for mode in ("dense", "hybrid"):
            assert_error(c.get(f"/api/search?q=dog&mode={mode}"), 400, "--engine inverted --dense")
            image_id = c.app.state.service.searcher.image_ids[0]
            assert_error(c.get(f"/api/search?like={image_id}&mode={mode}"), 400, "needs dense")
        assert c.get("/api/search?q=dog&mode=sparse").status_code == 200


def _brute_force(svc, q_dense, q_sparse, mode):
    """Scores of every indexed image for one query, computed from the stored vectors."""
    engine = svc.searcher.engine
    dense = np.asarray(engine.dense) @ np.asarray(q_dense, np.float32).ravel()
    sparse = (engine.index.to_csr() @ sp.csr_matrix(q_sparse).T).toarray().ravel()
    m = svc.manifest
    return {"dense": dense, "sparse": sparse, "hybrid": m.w1 * dense + m.w2 * sparse}[mode]


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_dense_and_hybrid_rank_exactly_by_the_stored_vectors(client, mode):
    svc = client.app.state.service
    q = "a dog runs on the beach"
    data = client.get("/api/search", params={"q": q, "k": 8, "mode": mode}).json()
    assert data["mode"] == mode and len(data["hits"]) == 8
    q_dense, q_sparse = svc.searcher.encode_text([q])
    scores = _brute_force(svc, q_dense, q_sparse, mode)
    expect = np.lexsort((np.arange(scores.size), -scores))[:8]
    assert [h["image_id"] for h in data["hits"]] == [svc.searcher.image_ids[r] for r in expect]
    got = [h["score"] for h in data["hits"]]
    assert got == pytest.approx(scores[expect].tolist(), rel=1e-4, abs=1e-5)
    # The explanation still shows the sparse part of the score.
    for hit in data["hits"]:
        assert hit["sparse_score"] == pytest.approx(
            sum(t["contribution"] for t in hit["terms"]), rel=1e-5, abs=1e-6
        )
    # The ranking differs from the sparse one (the mode is not ignored).
    sparse_ids = [h["image_id"] for h in client.get("/api/search?q=a+dog&k=8").json()["hits"]]
    mode_ids = [
        h["image_id"] for h in client.get(f"/api/search?q=a+dog&k=8&mode={mode}").json()["hits"]
    ]
    assert sparse_ids != mode_ids


def test_more_like_this_in_hybrid_mode_uses_the_images_own_vectors(client):
    svc = client.app.state.service
    image_id = svc.searcher.image_ids[7]
    params = {"like": image_id, "k": 5, "mode": "hybrid", "include_self": "true"}
    data = client.get("/api/search", params=params).json()
    row = svc.row_of[image_id]
    terms, weights = svc.doc_vector(row)
    q_sparse = sp.csr_matrix((weights, terms, [0, terms.size]), shape=(1, svc.manifest.vocab_size))
    scores = _brute_force(svc, svc.searcher.engine.dense[row], q_sparse, "hybrid")
    expect = np.lexsort((np.arange(scores.size), -scores))[:5]
    assert [h["image_id"] for h in data["hits"]] == [svc.searcher.image_ids[r] for r in expect]
    assert data["hits"][0]["image_id"] == image_id  # an image is most like itself
    # by default the source image is left out and the others keep their order
    others = client.get("/api/search", params={**params, "include_self": "false"}).json()
    assert [h["image_id"] for h in others["hits"]] == [
        svc.searcher.image_ids[r] for r in np.lexsort((np.arange(scores.size), -scores))[1:6]
    ]


def test_other_bad_requests(client):
    assert_error(client.get("/api/images/no-such-image/terms"), 404, "unknown image id")
    ok_id = client.get("/api/search?q=dog&k=1").json()["hits"][0]["image_id"]
    assert_error(client.get(f"/api/images/{ok_id}/terms?k=0"), 400, "k must be a positive")
    assert_error(client.get(f"/api/images/{ok_id}/terms?k=999"), 400, "k must be at most 200")
    assert_error(client.get("/api/nothing-here"), 404, "not found: /api/nothing-here")
    assert_error(client.put("/api/search?q=dog"), 405, "Method Not Allowed")


def test_long_query_is_cut_with_a_note(client):
    long = " ".join(["dog"] * 600)  # 2,399 characters
    data = client.get("/api/search", params={"q": long, "k": 3}).json()
    assert len(data["query"]) <= 1000 and "dog dog" in data["query"]
    assert any("cut to its first" in n and "characters" in n for n in data["notes"])
    pieces = " ".join(["dog"] * 200)  # under the character cap, over 126 word pieces
    data = client.get("/api/search", params={"q": pieces, "k": 3}).json()
    assert len(data["query"].split()) == 126
    assert any("word pieces" in n for n in data["notes"])


def test_k_above_the_index_size_is_lowered_with_a_note(client):
    data = client.get("/api/search?q=dog&k=60").json()
    assert len(data["hits"]) == 40 and any("larger than the index" in n for n in data["notes"])


def empty_vectors(searcher, texts):
    """Queries that encode to an empty sparse vector (no known term)."""
    v = searcher.manifest.vocab_size
    return np.zeros((len(texts), 16), np.float32), sp.csr_matrix((len(texts), v), dtype=np.float32)


def test_query_with_no_known_term_is_an_empty_result_with_a_note(served_index, monkeypatch):
    monkeypatch.setattr(Searcher, "encode_text", empty_vectors)
    svc = SearchService(served_index, text_encoder=HashEncoder())
    with TestClient(create_app(service=svc)) as c:
        resp = c.get("/api/search?q=zzzz")
    assert resp.status_code == 200
    data = resp.json()
    assert data["hits"] == [] and data["query_terms"] == []
    assert any("no indexed image shares a term" in n for n in data["notes"])


def test_text_search_without_an_encoder_is_a_clear_400(served_index):
    app = create_app(served_index)  # the synthetic run records no extraction backend
    with TestClient(app) as c:
        assert c.get("/api/info").json()["text_search"] is False
        assert_error(c.get("/api/search?q=dog"), 400, "text search is not available")
        image_id = c.app.state.service.searcher.image_ids[0]
        assert c.get(f"/api/images/{image_id}/terms").status_code == 200
        assert c.get(f"/api/search?like={image_id}").status_code == 200  # no text needed


def test_missing_or_corrupt_index_fails_at_start_like_search(tmp_path, served_index):
    with pytest.raises(IndexFormatError, match="index directory not found"):
        create_app(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not an mmsparse index"):
        create_app(tmp_path / "empty")


class SlowEncoder(HashEncoder):
    """Blocks until released, so that requests pile up."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode(self, texts):
        if texts != ["a photo"]:  # the warm-up query passes
            self.entered.set()
            assert self.release.wait(20)
        return super().encode(texts)


@contextlib.asynccontextmanager
async def piled_up(svc: SearchService, paths: list[str]):
    """An HTTP client of ``svc``'s application, with ``paths`` sent at once and all of them
    in flight (held by a :class:`SlowEncoder`); yields the client and the pending tasks."""
    import httpx

    transport = httpx.ASGITransport(app=create_app(service=svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        tasks = [asyncio.create_task(c.get(path)) for path in paths]
        while svc.pending < len(paths):
            await asyncio.sleep(0.01)
        yield c, tasks


@pytest.mark.parametrize("encoder", ["batch", "threads"])
def test_requests_over_the_limit_get_503_not_a_hang(served_index, encoder):
    slow = SlowEncoder()
    svc = SearchService(
        served_index,
        text_encoder=slow,
        encoder=encoder,
        limits=ServeLimits(max_pending=2, threads=2),
    )

    async def scenario():
        async with piled_up(svc, [f"/api/search?q=dog+{i}" for i in range(2)]) as (c, first):
            over = await c.get("/api/search?q=one+too+many")
            health = (await c.get("/healthz")).json()  # never blocked by the encoder
            slow.release.set()
            done = await asyncio.gather(*first)
            after = await c.get("/api/search?q=dog")
            return over, health, done, after

    over, health, done, after = asyncio.run(scenario())
    assert_error(over, 503, "the server is busy")
    assert over.headers["retry-after"] == "1"
    assert health["in_flight"] == 2 and health["refused"] == 1
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    svc.close()


def test_batch_encoder_encodes_concurrent_queries_together(served_index):
    enc = SlowEncoder()
    svc = SearchService(served_index, text_encoder=enc, encoder="batch")

    async def scenario():
        async with piled_up(svc, [f"/api/search?q=query+{i}&k=3" for i in range(6)]) as (_, tasks):
            enc.release.set()
            return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in results)
    # Queries that arrive while the encoder is busy wait and are encoded as one batch.
    sizes = [len(c) for c in enc.calls[1:]]
    assert sum(sizes) == 6 and len(sizes) <= 2 and max(sizes) >= 3, sizes
    # Each answer belongs to its own query.
    for i, r in enumerate(results):
        assert r.json()["query"] == f"query {i}"
    svc.close()


def broken_search(*args, **kwargs):
    """An engine that fails with an unexpected exception (a bug)."""
    raise RuntimeError("boom\nwith a second line")


def test_a_bug_is_a_one_line_500_and_library_errors_are_400(served_index, monkeypatch):
    monkeypatch.setattr(Served, "search_vectors", broken_search)
    svc = SearchService(served_index, text_encoder=HashEncoder())
    with TestClient(create_app(service=svc), raise_server_exceptions=False) as c:
        assert_error(c.get("/api/search?q=dog"), 500, "internal error (RuntimeError: boom with")
    status, body, headers = http_error(MMSparseError("bad\nrun"))
    assert (status, body, headers) == (400, {"error": "bad run", "status": 400}, {})
    assert http_error(Overloaded("busy"))[0::2] == (503, {"Retry-After": "1"})
    assert http_error(BadRequest("nope", 404))[1] == {"error": "nope", "status": 404}


def test_image_vectors_of_other_engines_come_from_their_stored_weights(served_index):
    """Engines without a vector accessor of their own (bmp, kannolo) answer image terms and
    "more like this" through ``doc_weights`` over the vocabulary (the base class's
    ``doc_vector``): the same vector as the inverted engine's own accessor."""
    from mmsparse.index.engines import Engine

    svc = SearchService(served_index, text_encoder=HashEncoder())
    engine = svc.searcher.engine
    assert type(engine).doc_vector is not Engine.doc_vector
    for r in range(5):
        want = svc.doc_vector(r)
        terms, weights = Engine.doc_vector(engine, r)
        np.testing.assert_array_equal(terms, want[0])
        np.testing.assert_allclose(weights, want[1], rtol=1e-6)
    svc.close()


def test_bundle_option_reaches_the_searcher(served_index, tmp_path):
    # serve --bundle: the service's searcher loads caption data with the bundle given
    app = create_app(served_index, text_encoder=HashEncoder(), bundle=tmp_path / "elsewhere")
    assert app.state.service.searcher.bundle == tmp_path / "elsewhere"

"""Issue 18 parts 3-6 through the API: search by uploaded image, edited queries (checked
against brute force), hybrid weights, paging, score parts, readiness, OpenAPI, gzip."""

from __future__ import annotations

import gzip
import threading
import time
import urllib.request

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.serve import SearchService, ServeLimits, create_app
from mmsparse.serve.queries import QueryInputError, apply_edits, parse_terms, terms_spec
from mmsparse.serve.uploads import decode_upload, sniff_image_type
from tests.serve.conftest import ColourImageEncoder, HashEncoder, image_bytes, start_server
from tests.serve.test_app import assert_error

TestClient = pytest.importorskip(
    "fastapi.testclient", reason="the serve extra (FastAPI) is not installed"
).TestClient

Q = "a dog runs on the beach"


@pytest.fixture(scope="module")
def client(served_index):
    app = create_app(served_index, text_encoder=HashEncoder(), image_encoder=ColourImageEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        c.app.state.service.ready.wait(30)
        yield c


def brute(svc, sparse, dense, mode, weights=None, live=None):
    """Exact scores of every image (float64) and the ranking (ties: lower row first)."""
    docs = svc.searcher.engine.index.to_csr().astype(np.float64)
    s_s = (docs @ sp.csr_matrix(sparse).astype(np.float64).T).toarray().ravel()
    if mode == "sparse":
        scores = s_s
    else:
        s_d = (
            np.asarray(svc.searcher.engine.dense, dtype=np.float64)
            @ np.asarray(dense, dtype=np.float64).ravel()
        )
        w1, w2 = weights or (svc.manifest.w1, svc.manifest.w2)
        scores = s_d if mode == "dense" else w1 * s_d + w2 * s_s
    rows = np.arange(scores.size)
    if live is not None:
        rows = rows[live]
    if mode == "sparse":
        rows = rows[s_s[rows] > 0]
    order = rows[np.lexsort((rows, -scores[rows]))]
    return scores, order


def ids(svc, rows):
    return [svc.searcher.image_ids[r] for r in rows]


def hit_ids(data):
    return [h["image_id"] for h in data["hits"]]


# -- edited queries ---------------------------------------------------------------------


def test_parse_terms_and_its_errors(served_index):
    vocab = SearchService(served_index, text_encoder=HashEncoder()).searcher.vocab
    a, b, c = (vocab.term(i) for i in (10, 11, 12))
    edits = parse_terms(f"{a}:2, {b}:0,+{c},-{vocab.term(13)},#14:0.5", vocab)
    assert [(e.term, e.factor, e.require, e.exclude) for e in edits] == [
        (a, 2.0, False, False),
        (b, 0.0, False, False),
        (c, None, True, False),
        (vocab.term(13), None, False, True),
        (vocab.term(14), 0.5, False, False),
    ]
    assert parse_terms(terms_spec(edits), vocab) == edits  # the canonical form round-trips
    for spec, match in [
        ("nosuchterm:2", "not a term of this run's vocabulary"),
        (f"{a}:lots", "must be a number"),
        (f"{a}:-1", "between 0 and 1000"),
        (f"{a}:nan", "between 0 and 1000"),
        (f"+{a},-{a}", "both required"),
        (",".join([a] * 200), "at most 128"),
    ]:
        with pytest.raises(QueryInputError, match=match):
            parse_terms(spec, vocab)
    q = sp.csr_matrix(np.array([[0, 1.0, 2.0, 0, 0]], dtype=np.float32))
    out, notes = apply_edits(q, parse_terms("#1:3,#2:0,#3:2", vocab))
    assert out.toarray().tolist() == [[0, 3.0, 0, 0, 0]] and "not one of the query's" in notes[0]


@pytest.mark.parametrize("mode", ["sparse", "hybrid", "dense"])
def test_edited_query_is_the_brute_force_ranking(client, mode):
    svc = client.app.state.service
    vocab = svc.searcher.vocab
    dense, sparse = svc.searcher.encode_text([Q])
    order = np.argsort(-sparse.data)
    heavy, second = (int(sparse.indices[j]) for j in order[:2])
    docs = svc.searcher.engine.index.to_csr()
    # a term that some but not all images hold, to require
    held = np.asarray((docs[:, sparse.indices] != 0).sum(0)).ravel()
    req = int(sparse.indices[np.flatnonzero((held > 2) & (held < 30))[0]])
    spec = f"{vocab.term(heavy)}:0,{vocab.term(second)}:3,+{vocab.term(req)}"
    data = client.get("/api/search", params={"q": Q, "k": 40, "mode": mode, "terms": spec}).json()
    edited = sparse.toarray().astype(np.float64)
    edited[0, heavy] = 0
    edited[0, second] *= 3
    live = np.asarray(docs[:, req].toarray()).ravel() != 0
    scores, rows = brute(svc, edited, dense, mode, live=live)
    assert hit_ids(data) == ids(svc, rows[:40])
    assert [h["score"] for h in data["hits"]] == pytest.approx(
        scores[rows[:40]].tolist(), rel=1e-4, abs=1e-5
    )
    assert data["total"] == rows.size
    assert data["terms"] == spec and any("filtered" in n for n in data["notes"])
    for hit in data["hits"]:  # every hit holds the required term
        assert docs[svc.row_of[hit["image_id"]], req] != 0
    # the dropped term is listed with weight 0 (the page can restore it); the boosted x3
    qt = {t["term"]: t for t in data["query_terms"]}
    assert qt[vocab.term(heavy)]["weight"] == 0 and qt[vocab.term(heavy)]["original_weight"] > 0
    t2 = qt[vocab.term(second)]
    assert t2["weight"] == pytest.approx(3 * t2["original_weight"], rel=1e-5)
    if mode == "dense":
        assert any("not made of words" in n for n in data["notes"])
    # excluding it gives the complement
    ex = client.get(
        "/api/search", params={"q": Q, "k": 40, "mode": mode, "terms": f"-{vocab.term(req)}"}
    ).json()
    _, rows_ex = brute(svc, sparse.toarray(), dense, mode, live=~live)
    assert hit_ids(ex) == ids(svc, rows_ex[:40])


def test_bad_edits_and_weights_are_400(client):
    assert_error(client.get("/api/search", params={"q": Q, "terms": "zzzq:2"}), 400, "vocabulary")
    assert_error(client.get("/api/search", params={"q": Q, "w1": "-1"}), 400, "w1")
    assert_error(client.get("/api/search", params={"q": Q, "w1": "nan"}), 400, "w1")
    assert_error(
        client.get("/api/search", params={"q": Q, "mode": "hybrid", "w1": 0, "w2": 0}),
        400,
        "both be 0",
    )
    assert_error(client.get("/api/search", params={"q": Q, "offset": -1}), 400, "offset")
    assert_error(
        client.get("/api/search", params={"q": Q, "offset": 990, "k": 20}), 400, "offset + k"
    )


def test_hybrid_weights_and_score_parts(client):
    svc = client.app.state.service
    dense, sparse = svc.searcher.encode_text([Q])
    for weights in [None, (2.0, 0.25), (0.0, 1.0)]:
        params = {"q": Q, "k": 10, "mode": "hybrid"}
        if weights:
            params.update(w1=weights[0], w2=weights[1])
        data = client.get("/api/search", params=params).json()
        w1, w2 = weights or (svc.manifest.w1, svc.manifest.w2)
        assert (data["score"]["w1"], data["score"]["w2"]) == pytest.approx((w1, w2))
        _, rows = brute(svc, sparse.toarray(), dense, "hybrid", weights=(w1, w2))
        assert hit_ids(data) == ids(svc, rows[:10])
        for hit in data["hits"]:
            parts = hit["parts"]
            assert parts["dense"] + parts["sparse"] == pytest.approx(hit["score"], rel=1e-4)
            assert parts["dense"] == pytest.approx(w1 * hit["dense_score"], rel=1e-5, abs=1e-6)
            assert parts["sparse"] == pytest.approx(w2 * hit["sparse_score"], rel=1e-5, abs=1e-6)
            mag = abs(parts["dense"]) + abs(parts["sparse"])
            assert hit["explained"] == pytest.approx(abs(parts["sparse"]) / mag, rel=1e-5)
            assert 0 <= hit["explained"] <= 1
    sparse_hit = client.get("/api/search", params={"q": Q, "k": 3}).json()["hits"][0]
    assert sparse_hit["parts"] == {"sparse": pytest.approx(sparse_hit["score"], rel=1e-5)}
    assert sparse_hit["explained"] == 1
    dense_hit = client.get("/api/search", params={"q": Q, "k": 3, "mode": "dense"}).json()
    dense_hit = dense_hit["hits"][0]
    assert dense_hit["explained"] == 0
    assert dense_hit["parts"]["dense"] == pytest.approx(dense_hit["score"], rel=1e-5)


def test_paging_total_and_every_query_term(client):
    svc = client.app.state.service
    _, sparse = svc.searcher.encode_text([Q])
    whole = client.get("/api/search", params={"q": Q, "k": 30}).json()
    pages = [
        client.get("/api/search", params={"q": Q, "k": 10, "offset": o}).json() for o in (0, 10, 20)
    ]
    assert [i for p in pages for i in hit_ids(p)] == hit_ids(whole)
    assert [h["rank"] for h in pages[1]["hits"]] == list(range(11, 21))
    _, rows = brute(svc, sparse.toarray(), None, "sparse")
    assert whole["total"] == rows.size and pages[0]["more"] is (rows.size > 10)
    assert whole["n_query_terms"] == sparse.nnz == len(whole["query_terms"])
    assert sparse.nnz > 20  # more than the 20 listed before
    weights = [t["weight"] for t in whole["query_terms"]]
    assert weights == sorted(weights, reverse=True)
    hit = whole["hits"][0]
    row = svc.row_of[hit["image_id"]]
    lacks = {
        svc.searcher.vocab.term(int(t))
        for t in sparse.indices
        if svc.searcher.engine.index.doc_weights(np.array([row]), np.array([t]))[0, 0] == 0
    }
    assert hit["n_missing"] == len(lacks)
    assert {t["term"] for t in hit["missing_terms"]} <= lacks


# -- search by image --------------------------------------------------------------------


def test_search_by_uploaded_image(client):
    svc = client.app.state.service
    png = image_bytes((200, 40, 40))
    resp = client.post(
        "/api/search/image?k=8&mode=hybrid", content=png, headers={"Content-Type": "image/png"}
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    up = data["upload"]
    assert up["kind"] == "png" and (up["width"], up["height"]) == (48, 40)
    assert len(data["hits"]) == 8 and data["image"] == up["id"] and data["confidence"] is None
    # the query is the run's heads on the encoder's features, pruned as the index's images
    import io

    from PIL import Image

    feats = ColourImageEncoder().encode_images([Image.open(io.BytesIO(png))])
    from mmsparse.index.encode import encode_vectors

    opts = svc.manifest.options
    dense, sparse = encode_vectors(
        svc.searcher.run.model, feats, "image", topk=opts.image_topk, threshold=opts.threshold
    )
    _, rows = brute(svc, sparse.toarray(), dense, "hybrid")
    assert hit_ids(data) == ids(svc, rows[:8])
    assert all(h["terms"] for h in data["hits"][:3])  # image to image: shared terms shown
    # the same image again by its id, in another mode and with an edit
    again = client.get("/api/search", params={"image": up["id"], "k": 8, "mode": "sparse"})
    _, rows_s = brute(svc, sparse.toarray(), None, "sparse")
    assert hit_ids(again.json()) == ids(svc, rows_s[:8])
    thumb = client.get(up["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    assert_error(client.get("/api/search?image=0123456789abcdef"), 404, "upload it again")


def test_bad_uploads_are_4xx_json(served_index):
    limits = ServeLimits(max_upload_mb=1, max_upload_pixels=40_000)
    app = create_app(
        served_index,
        text_encoder=HashEncoder(),
        image_encoder=ColourImageEncoder(),
        limits=limits,
        warm_up=False,
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        post = lambda body, kind="image/jpeg": c.post(  # noqa: E731
            "/api/search/image", content=body, headers={"Content-Type": kind}
        )
        assert_error(post(b""), 400, "empty")
        assert_error(post(b"GIF8" + b"\0" * 2_000_000), 413, "limit is 1 MB")
        assert_error(post(b"%PDF-1.4 not an image"), 415, "not a JPEG, PNG, WebP, GIF or BMP")
        assert_error(post(b"\xff\xd8\xff\xe0" + b"garbage" * 50), 400, "cannot be decoded")
        assert_error(post(image_bytes(size=(300, 200))), 413, "megapixels")
        assert_error(post(image_bytes(), "multipart/form-data; boundary=x"), 415, "not a form")
        for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
            assert post(image_bytes(fmt=fmt)).status_code == 200, fmt
    # a run without a backbone image encoder (the synthetic run): 409, and info says so
    app = create_app(served_index, text_encoder=HashEncoder(), warm_up=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        info = c.get("/api/info").json()
        assert (
            info["image_search"] is False
            and "cannot encode raw images" in (info["image_search_error"])
        )
        assert_error(c.post("/api/search/image", content=image_bytes()), 409, "not available")


def test_sniff_and_decode_limits():
    assert sniff_image_type(image_bytes(fmt="WEBP")[:16]) == "webp"
    assert sniff_image_type(b"RIFF\0\0\0\0WAVE") is None
    with pytest.raises(QueryInputError) as err:
        decode_upload(image_bytes(size=(100, 100)), max_bytes=10**6, max_pixels=9_999)
    assert err.value.status == 413


# -- the service around the search ------------------------------------------------------


def test_readyz_turns_ready_only_after_the_warm_up(served_index):
    release = threading.Event()
    svc = SearchService(
        served_index, text_encoder=HashEncoder(), warm_up_hook=lambda: release.wait(30)
    )
    app = create_app(service=svc)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["status"] == "ok"  # alive at once
        resp = c.get("/readyz")
        assert resp.status_code == 503 and resp.json()["ready"] is False
        assert c.get("/healthz").json()["ready"] is False
        release.set()
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        body = c.get("/readyz").json()
        assert body["ready"] is True and body["warm_up_error"] is None
        assert c.head("/readyz").status_code == 200


def test_info_names_the_run_not_its_path(client, served_index):
    info = client.get("/api/info").json()
    assert info["run"] == "run" and "/" not in info["run"] and "paths" not in info
    assert str(served_index.parent) not in str(info)
    paths = client.get("/api/info?paths=1").json()["paths"]
    assert paths["run_dir"] == str((served_index.parent / "run").resolve())
    assert paths["index_dir"] == str(served_index.resolve())


def test_openapi_types_and_error_responses(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/search"]["get"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}

    def types(schema):
        return {s.get("type") for s in schema.get("anyOf", [schema])} - {"null"}

    assert types(params["k"]) == {"integer"} and types(params["offset"]) == {"integer"}
    k_schema = next(s for s in params["k"]["anyOf"] if s.get("type") == "integer")
    assert (k_schema["minimum"], k_schema["maximum"]) == (1, 100)
    assert types(params["explain"]) == {"boolean"} and types(params["w1"]) == {"number"}
    mode = next(s for s in params["mode"]["anyOf"] if s.get("enum"))
    assert mode["enum"] == ["sparse", "dense", "hybrid"]
    for path in spec["paths"].values():
        for operation in path.values():
            assert "422" not in operation["responses"]
    assert set(op["responses"]) == {"200", "400", "404", "503"}
    upload = spec["paths"]["/api/search/image"]["post"]
    assert {"409", "413", "415"} <= set(upload["responses"])
    assert "image/jpeg" in upload["requestBody"]["content"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_head_etag_and_gzip(server):
    req = urllib.request.Request(server + "/healthz", method="HEAD")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200 and resp.read() == b""
    url = server + "/api/search?q=a+dog+runs+on+the+beach&k=40"
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = resp.read()
    body = gzip.decompress(raw)
    assert len(raw) < len(body) / 3 and b'"hits"' in body
    with urllib.request.urlopen(url, timeout=30) as resp:  # no Accept-Encoding: plain
        assert resp.headers.get("Content-Encoding") is None
    with urllib.request.urlopen(server + "/api/images?k=1", timeout=30) as resp:
        import json

        name = json.loads(resp.read())["images"][0]["url"]
    with urllib.request.urlopen(server + name, timeout=30) as resp:
        etag = resp.headers["ETag"]
        assert resp.headers.get("Content-Encoding") is None  # JPEGs are not re-compressed
    req = urllib.request.Request(server + name, headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 304
    with urllib.request.urlopen(server + "/favicon.ico", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("image/svg+xml")


def test_missing_image_files_warn_at_start(served_index, tmp_path, caplog):
    empty = tmp_path / "no-images"
    empty.mkdir()
    with caplog.at_level("WARNING"):
        svc = SearchService(
            served_index, text_encoder=HashEncoder(), images_dir=empty, warm_up=False
        )
    assert svc.image_check == {
        "checked": 40,
        "missing": 40,
        "examples": svc.searcher.filenames[:3],
        "all_missing": True,
    }
    assert "40 of 40 indexed image files checked are missing" in caplog.text
    app = create_app(service=svc, warm_up=False)
    url, stop = start_server(app)
    try:
        import json

        with urllib.request.urlopen(url + "/api/search?q=dog&k=3", timeout=30) as resp:
            hits = json.loads(resp.read())["hits"]
        assert hits and all(h["url"] is None for h in hits)  # no grey tiles
    finally:
        stop()

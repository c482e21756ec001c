"""Honest answers in the API and on the page: a nonsense query says "no good match" with
the verdict and shows no grid (issue 18, part 4a); real queries keep their hits."""

from __future__ import annotations

import shutil

import pytest

from mmsparse.index.confidence import calibrate_index
from mmsparse.serve import create_app
from tests.serve.conftest import HashEncoder

TestClient = pytest.importorskip(
    "fastapi.testclient", reason="the serve extra (FastAPI) is not installed"
).TestClient

NONSENSE = ["qwxz zzkv", "!!!", "🐶🐶🐶", "日本語", "the of a", "."]


@pytest.fixture(scope="module")
def client(served_index, tmp_path_factory):
    """The served index, calibrated with the encoder it is served with (every class)."""
    index = tmp_path_factory.mktemp("honest") / "index"
    shutil.copytree(served_index, index)
    calibrate_index(index, text_encoder=HashEncoder())
    app = create_app(index, text_encoder=HashEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("q", NONSENSE)
@pytest.mark.parametrize("mode", ["sparse", "hybrid"])
def test_nonsense_answers_no_match_and_no_hits(client, q, mode):
    resp = client.get("/api/search", params={"q": q, "k": 10, "mode": mode})
    assert resp.status_code == 200
    data = resp.json()
    conf = data["confidence"]
    assert conf["verdict"] == "no_match" and conf["reasons"]
    assert conf["known_terms"] == [] or all(t in ("the", "of", "a") for t in conf["known_terms"])
    assert data["hits"] == [] and conf["percentile"] is None
    note = next(n for n in data["notes"] if n.startswith("no good match: "))
    assert "force=1 shows the closest" in note
    assert data["query_terms"]  # still explained: what the encoder made of it


def test_force_returns_the_closest_images_with_the_verdict(client):
    data = client.get("/api/search", params={"q": "qwxz zzkv", "k": 7, "force": "1"}).json()
    assert data["confidence"]["verdict"] == "no_match" and len(data["hits"]) == 7
    assert data["confidence"]["unknown_words"] == ["qwxz", "zzkv"]
    assert any(n.startswith("no good match: ") for n in data["notes"])
    resp = client.get("/api/search", params={"q": "dog", "force": "maybe"})
    assert resp.status_code == 400 and "force must be true or false" in resp.json()["error"]


@pytest.mark.parametrize("q", ["dog", "a dog runs on the beach", "red car", "a cat"])
def test_real_queries_keep_their_hits(client, q):
    data = client.get("/api/search", params={"q": q, "k": 5}).json()
    conf = data["confidence"]
    assert conf["verdict"] in ("confident", "low_confidence") and len(data["hits"]) == 5
    assert conf["known_terms"] and conf["calibrated"] is True
    assert conf["score"] == pytest.approx(data["hits"][0]["score"], rel=1e-4)
    assert 0.0 <= conf["percentile"] <= 100.0
    if conf["verdict"] == "confident":
        assert not any(n.startswith(("no good match", "low confidence")) for n in data["notes"])


def test_more_like_this_has_no_verdict(client):
    first = client.get("/api/search?q=a+cat&k=1").json()["hits"][0]["image_id"]
    data = client.get("/api/search", params={"like": first, "k": 3}).json()
    assert data["confidence"] is None and len(data["hits"]) == 3


def test_page_says_no_good_match_instead_of_a_grid(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server + "/?q=qwxz+zzkv")
        page.wait_for_selector("#nomatch:not([hidden]):has-text('No good match')")
        assert page.locator("#grid .card").count() == 0
        page.goto(server + "/?q=a+dog+runs+on+the+beach")
        page.wait_for_selector("#grid .card")
        assert page.locator("#grid .card").count() > 0
        browser.close()

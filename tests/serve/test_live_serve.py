"""A running server and a changing index: new generations are picked up without a restart
and without a failed request; files rewritten in place never crash it."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from mmsparse.bench.local_server import free_port
from mmsparse.bench.photos import Load
from mmsparse.index.generations import IndexLock, collect_garbage, read_current
from mmsparse.index.live import add_vectors, optimize_index, remove_images
from mmsparse.index.manifest import IndexManifest, read_docs
from mmsparse.serve import SearchService
from tests.serve.conftest import HashEncoder

uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")


@pytest.fixture
def index(served_index, tmp_path):
    """A private copy of the served index (40 images, dense vectors, image files)."""
    out = tmp_path / "index"
    shutil.copytree(served_index, out)
    return out


def encode(svc: SearchService, texts):
    return svc.searcher.encode_text(list(texts))


def add_found_by(svc: SearchService, index: Path, texts, prefix="added/", **kw):
    """Add one image per text whose vectors are the text's own, strongly: its own text
    finds it first (as a photo is found by its caption)."""
    dense, sparse = encode(svc, texts)
    ids = [f"{prefix}{i}.jpg" for i in range(len(texts))]
    return add_vectors(index, sparse * 4.0, dense, ids, **kw), ids


def test_the_service_switches_generations_between_requests(index):
    svc = SearchService(index, text_encoder=HashEncoder(), reload_interval=0)
    try:
        assert svc.generation == 0 and svc.info()["generation"] == 0
        with svc.generations.hold() as held:  # a request in flight on generation 0
            _, ids = add_found_by(svc, index, ["zebra unicorn parade"], gc_grace_s=0)
            assert svc.check_generation() is True
            assert svc.generation == 1 and held.number == 0
            # the request in flight keeps its generation (not closed under it)
            hits = held.searcher.search_vectors(*reversed(encode(svc, ["zebra"])), k=3)[0]
            assert all(not h.image_id.startswith("added/") for h in hits.hits)
        info = svc.info()
        assert (info["generation"], info["images"], info["segments"]) == (1, 41, 2)
        found = asyncio_run(svc.search("zebra unicorn parade", k=3, force=True))
        assert found["hits"][0]["image_id"] == ids[0] and found["generation"] == 1
        removed = read_docs(index, 40)[0][5]
        remove_images(index, [removed], gc_grace_s=0)
        assert svc.check_generation() is True and svc.health()["generation"] == 2
        with pytest.raises(Exception, match="unknown image id"):
            asyncio_run(svc.search(like=removed))
        assert svc.check_generation() is False  # nothing new
        assert svc.health()["reloads"] == 2 and svc.health()["reload_errors"] == 0
    finally:
        svc.close()


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


def test_a_generation_that_fails_to_open_is_logged_once_and_the_old_kept(index, caplog):
    svc = SearchService(index, text_encoder=HashEncoder(), reload_interval=0)
    try:
        add_found_by(svc, index, ["red kite"], gc_grace_s=0)
        segment = index / read_current(index).segments[-1].path
        (segment / "postings.mmsi").write_bytes(b"broken")  # a damaged new segment
        with caplog.at_level(logging.WARNING, logger="mmsparse.serve.generations"):
            assert svc.check_generation() is False
            assert svc.check_generation() is False  # the same files: not tried again
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0].getMessage()
        assert "new generation" in errors[0].getMessage()
        assert "still serving generation 0" in errors[0].getMessage()
        assert svc.generation == 0 and svc.health()["reload_errors"] == 1
        assert asyncio_run(svc.search("red kite", k=2))["generation"] == 0
    finally:
        svc.close()


def test_files_rewritten_in_place_are_not_read_again_until_they_hold_still(index, caplog):
    svc = SearchService(index, text_encoder=HashEncoder(), reload_interval=0)
    try:
        before = asyncio_run(svc.search("a dog on the beach", k=5))
        postings = index / "postings.mmsi"
        data = postings.read_bytes()
        with open(postings, "r+b") as fh:  # the same inode, cut short (SIGBUS with a map)
            fh.truncate(4096)
        with caplog.at_level(logging.INFO, logger="mmsparse.serve.generations"):
            assert svc.check_generation() is False  # changed: wait for it to hold still
            again = asyncio_run(svc.search("a dog on the beach", k=5))
            assert again["hits"] == before["hits"]  # answered from the copy in memory
            assert svc.check_generation() is False  # held still: opened, refused, logged
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert len(lines) == 1, lines  # one line: what changed, why refused, what is served
        assert (
            "could not open the index (files changed on disk without a new generation" in (lines[0])
        )
        assert "still serving generation 0 from memory" in lines[0]
        with open(postings, "r+b") as fh:  # put back in place: opened, served
            fh.write(data)
        assert svc.check_generation() is False  # changed again: waits one look
        assert svc.check_generation() is True
        assert asyncio_run(svc.search("a dog on the beach", k=5))["hits"] == before["hits"]
    finally:
        svc.close()


# -- a real server under load -------------------------------------------------------------


def _wait_for(predicate, timeout=30.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_server_answers_every_request_while_the_index_changes(index):
    """uvicorn on a port, 4 client threads searching all along while images are added,
    removed and the index optimized: no failed request; afterwards the added images are
    found by their own text and the removed ones are gone."""
    from mmsparse.serve import create_app

    encoder = HashEncoder()
    svc = SearchService(index, text_encoder=encoder, reload_interval=0.05)
    app = create_app(service=svc)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert _wait_for(lambda: server.started)
    texts = ["zebra unicorn parade", "violet harbour crane", "copper kettle storm"]
    queries = ["a dog runs on the beach", "two children play", *texts]
    victims = read_docs(index, 40)[0][:4]

    def get(path):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    try:
        with Load(port, 4, queries, k=5) as load:
            assert _wait_for(lambda: load.answers > 20)
            _, ids = add_found_by(svc, index, texts, gc_grace_s=0)
            assert _wait_for(lambda: svc.generation == 1)
            n = load.answers
            assert _wait_for(lambda: load.answers > n + 20)
            remove_images(index, victims, gc_grace_s=0)
            assert _wait_for(lambda: svc.generation == 2)
            optimize_index(index, gc_grace_s=0, calibrate=False)
            assert _wait_for(lambda: svc.generation == 3)
            n = load.answers
            assert _wait_for(lambda: load.answers > n + 20)
        assert load.failures == [] and load.answers > 60
        assert {0, 1, 3} <= load.generations
        for text, image_id in zip(texts, ids):
            query = urllib.parse.urlencode({"q": text, "k": 3, "force": 1})
            status, body = get("/api/search?" + query)
            assert status == 200 and body["hits"][0]["image_id"] == image_id
        for image_id in victims:
            status, body = get(f"/api/search?like={urllib.parse.quote(image_id)}")
            assert status == 404
        status, info = get("/api/info")
        assert (info["generation"], info["images"], info["segments"]) == (3, 39, 1)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        svc.close()


# -- mmsparse serve as users run it --------------------------------------------------------


def test_serve_survives_its_index_rewritten_in_place(index, tmp_path):
    """Measured before the change: ``mmsparse serve`` died of SIGBUS (exit status 135, no
    log line) at the first search after postings.mmsi was truncated in place. Now it keeps
    answering from its copy in memory, logs the change, and stops normally."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "mmsparse", "serve", str(index), "--port", str(port)]
    cmd += ["--reload-interval", "0.1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:

        def like(image_id):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/api/search?like={urllib.parse.quote(image_id)}&k=5")
            resp = conn.getresponse()
            out = resp.status, json.loads(resp.read())
            conn.close()
            return out

        def up():
            try:
                return like(first)[0] == 200
            except OSError:
                return proc.poll() is not None

        first = read_docs(index, 40)[0][0]
        assert _wait_for(up, 120) and proc.poll() is None, log_path.read_text()
        status, before = like(first)
        postings = index / "postings.mmsi"
        with open(postings, "r+b") as fh:
            fh.truncate(4096)
        for _ in range(20):
            status, after = like(first)
            assert status == 200 and after["hits"] == before["hits"]
            time.sleep(0.05)
        assert proc.poll() is None
        assert _wait_for(lambda: "could not open the index" in log_path.read_text(), 20)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = log_path.read_text()
    assert proc.returncode == 0, text
    mine = [line for line in text.splitlines() if "could not open the index" in line]
    assert len(mine) == 1 and "changed on disk without a new generation" in mine[0], text
    assert "still serving generation 0 from memory" in mine[0]
    assert "Fatal Python error" not in text


def test_garbage_collection_never_takes_the_files_of_a_served_generation(index):
    """A server on generation 0 while writers moved on and collected everything they
    could (grace 0): it keeps answering (its files are read into memory)."""
    svc = SearchService(index, text_encoder=HashEncoder(), reload_interval=0)
    try:
        before = asyncio_run(svc.search("a dog", k=5))
        m = IndexManifest.load(index)
        add_found_by(svc, index, ["x y z"], gc_grace_s=0)
        optimize_index(index, gc_grace_s=0, calibrate=False)
        with IndexLock(index, "test"):
            collect_garbage(index, grace_s=0)
        assert not (index / "postings.mmsi").exists()  # generation 0's files are gone
        assert asyncio_run(svc.search("a dog", k=5))["hits"] == before["hits"]
        assert svc.check_generation() is True
        assert svc.info()["images"] == m.n_images + 1
    finally:
        svc.close()


def test_the_page_shows_photos_added_while_it_is_open(index, tmp_path):
    """A browser on the search page; photos are added (files in another folder, served from
    there), the same search in the same page then shows them, their images load, and the
    header's count follows."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium)")
    from PIL import Image

    from mmsparse.serve import create_app

    svc = SearchService(index, text_encoder=HashEncoder(), reload_interval=0.05)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service=svc), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert _wait_for(lambda: server.started)
    folder = tmp_path / "camera"
    folder.mkdir()
    text = "a dog runs on the beach"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"q": text}))
            page.wait_for_selector("#status:has-text('images')")
            assert page.inner_text("#info").startswith("40 ")
            dense, sparse = encode(svc, [text])
            Image.new("RGB", (24, 24), (200, 30, 30)).save(folder / "IMG_1.jpg", "JPEG")
            add_vectors(
                index,
                sparse * 4.0,
                dense,
                ["camera/IMG_1.jpg"],
                image_roots={"camera/": str(folder)},
                gc_grace_s=0,
            )
            assert _wait_for(lambda: svc.generation == 1)
            page.click("button[type=submit]")
            page.wait_for_selector("#grid .card[data-image-id='camera/IMG_1.jpg']")
            first = page.locator("#grid .card").nth(0)
            assert first.get_attribute("data-image-id") == "camera/IMG_1.jpg"
            page.wait_for_function(
                "[...document.querySelectorAll('#grid img')].every(i => i.complete && "
                "i.naturalWidth > 0)"
            )
            page.wait_for_selector("#info:has-text('41 ')")
            assert errors == []
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        svc.close()


def test_filters_browsing_and_totals_count_live_images_only(index):
    """Removed images are in no filter, page of /api/images or total; added ones are,
    across segments (a required term's rows from every segment)."""
    svc = SearchService(index, text_encoder=HashEncoder(), reload_interval=0)
    try:
        query = "a dog runs on the beach"
        before = asyncio_run(svc.search(query, k=5, force=True))
        top_term = before["query_terms"][0]["term"]
        _, ids = add_found_by(svc, index, [query, "two children play"], gc_grace_s=0)
        removed = [h["image_id"] for h in before["hits"][:3]]
        remove_images(index, removed, gc_grace_s=0)
        assert svc.check_generation() is True
        listed = svc.browse(k=100)
        names = [i["image_id"] for i in listed["images"]]
        assert listed["total"] == 40 + 2 - 3 == len(names)
        assert not set(removed) & set(names) and set(ids) <= set(names)
        out = asyncio_run(svc.search(query, k=50, force=True, terms=f"+{top_term}"))
        hits = [h["image_id"] for h in out["hits"]]
        assert ids[0] == hits[0] and not set(removed) & set(hits)
        view = svc.searcher.view
        holding = {
            view.image_ids[r]
            for r in svc.searcher.engine.term_rows(svc.searcher.vocab.id(top_term))
            if view.is_live_row(r)
        }
        assert set(hits) == holding and out["total"] == len(holding)
        assert f"filtered: {len(holding)} of 39 images" in " ".join(out["notes"])
        everything = asyncio_run(svc.search(query, k=100, force=True, mode="dense"))
        assert everything["total"] == 39 and len(everything["hits"]) == 39
    finally:
        svc.close()

"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against a
server the test starts on 127.0.0.1; skips, saying why, where no browser is installed."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.parse
import urllib.request

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def card_ids(page) -> list[str]:
    """Image ids of the result grid, in rank order."""
    return page.locator("#grid .card").evaluate_all("els => els.map(e => e.dataset.imageId)")


def api_ids(server: str, q: str | None, mode: str, like: str | None = None) -> list[str]:
    """Image ids of the same search through the JSON API."""
    params = {"like": like} if like else {"q": q}
    url = f"{server}/api/search?" + urllib.parse.urlencode({**params, "mode": mode, "k": 20})
    with urllib.request.urlopen(url, timeout=30) as resp:
        return [h["image_id"] for h in json.loads(resp.read())["hits"]]


def test_raw_traversal_paths_never_leave_the_images_folder(server):
    port = int(server.rsplit(":", 1)[1])
    for raw in (
        b"/images/../../secret.txt",
        b"/images/../../../../etc/passwd",
        b"/api/search?q=%ff",
    ):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split()[1] in (b"400", b"404"), reply[:200]
        assert b"root:" not in body and b"not for the web" not in body and b'"error"' in body


def test_page_search_explain_and_more_like_this(server):
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("#info:has-text('images')")
        page.fill("#q", "a dog runs on the beach")
        page.keyboard.press("Enter")
        page.wait_for_selector("#grid .card")
        assert "q=a+dog+runs+on+the+beach" in page.url
        cards = page.locator("#grid .card")
        assert cards.count() == 20
        # every image loaded
        page.wait_for_function(
            "[...document.querySelectorAll('#grid img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        first = cards.nth(0)
        score = float(first.get_attribute("data-score"))
        contributions = [
            float(x)
            for x in first.locator(".hit-terms li.chip").evaluate_all(
                "els => els.map(e => e.dataset.contribution)"
            )
        ]
        assert contributions and sum(contributions) == pytest.approx(score, rel=1e-4)
        assert page.locator("#query-chips li").count() > 0
        # the mode switch: the index holds dense vectors, so every mode is offered
        assert page.locator("input[value=sparse]").is_checked()
        sparse_ids = card_ids(page)
        for mode in ("hybrid", "dense"):
            assert page.locator(f"input[value={mode}]").is_enabled()
            page.check(f"input[value={mode}]")
            page.wait_for_url(f"**mode={mode}**")
            page.wait_for_selector(f"#status:has-text('{mode} score')")
            assert cards.count() == 20
            hit = cards.nth(0)
            # chips still explain the sparse part of the hit's score
            sparse_part = float(hit.get_attribute("data-sparse-score"))
            chips = hit.locator(".hit-terms li.chip").evaluate_all(
                "els => els.map(e => Number(e.dataset.contribution))"
            )
            assert sum(chips) == pytest.approx(sparse_part, rel=1e-4, abs=1e-6)
            ids = card_ids(page)
            assert ids == api_ids(server, "a dog runs on the beach", mode)
        assert ids != sparse_ids  # the dense ranking is another one
        # an error is shown as a message, not a blank page
        page.goto(server + "/?q=dog&k=999")
        page.wait_for_selector("#error:not([hidden])")
        assert "k must be at most 100" in page.inner_text("#error")
        # the shared URL reproduces the result; open the first image, follow "more like this"
        page.goto(server + "/?q=a+dog+runs+on+the+beach&k=20")
        page.wait_for_selector("#grid .card")
        image_id = page.locator("#grid .card").nth(0).get_attribute("data-image-id")
        page.locator("#grid .card .open").nth(0).focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#detail[open] #detail-terms li.chip")
        page.click("#more-like")
        page.wait_for_url(f"**like={image_id}**")
        page.wait_for_selector(f"#status:has-text('images like {image_id}')")
        # the image itself comes first: its own vector is the query
        assert card_ids(page)[0] == image_id
        like_ids = api_ids(server, None, "sparse", like=image_id)
        assert card_ids(page) == like_ids
        page.set_viewport_size({"width": 380, "height": 800})  # narrow screen: no overflow
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert errors == []
        browser.close()

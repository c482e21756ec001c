"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against a
server the test starts on 127.0.0.1; skips, saying why, where no browser is installed."""

from __future__ import annotations

import io
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
        page.wait_for_selector(f"#status:has-text('by likeness to image {image_id},')")
        # the source image is shown as the query, and left out of the results
        page.wait_for_selector("#source:not([hidden]) #source-img:not([hidden])")
        assert image_id not in card_ids(page)
        like_ids = api_ids(server, None, "sparse", like=image_id)
        assert card_ids(page) == like_ids
        page.set_viewport_size({"width": 380, "height": 800})  # narrow screen: no overflow
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert errors == []
        browser.close()


# -- issue 18 parts 3-6 in the browser ---------------------------------------------------

CONTRAST_JS = """() => {
  const parse = (c) => {
    const p = c.match(/rgba?\\(([^)]+)\\)/)[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const blend = (top, bottom) =>
    [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const background = (node) => {
    const layers = [];
    for (let e = node; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let base = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) base = blend(layers[i], base);
    return base;
  };
  const lum = (c) => {
    const f = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const ratio = (a, b) => {
    const x = lum(a), y = lum(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
  };
  const out = [];
  for (const chip of document.querySelectorAll(".chip")) {
    const box = chip.getBoundingClientRect();
    if (!box.width || !box.height || getComputedStyle(chip).visibility === "hidden") continue;
    const back = background(chip);
    for (const t of [chip, ...chip.querySelectorAll("b, small, span")]) {
      const own = [...t.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own) continue;
      let opacity = 1;
      for (let e = t; e && e !== chip.parentElement; e = e.parentElement) {
        opacity *= Number(getComputedStyle(e).opacity);
      }
      const fg = parse(getComputedStyle(t).color);
      const seen = blend([fg[0], fg[1], fg[2], fg[3] * opacity], back);
      out.push({ text: t.textContent.trim(), ratio: ratio(seen, back) });
    }
  }
  return out;
}"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    ctx.close()


def wait_ids(page, ids: list[str]) -> None:
    """Wait until the grid shows exactly these image ids, in this order."""
    page.wait_for_function(
        "want => [...document.querySelectorAll('#grid .card')]"
        ".map(c => c.dataset.imageId).join() === want",
        arg=",".join(ids),
    )


def api(server: str, **params) -> dict:
    url = f"{server}/api/search?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def url_params(page) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))


def test_page_search_by_uploaded_image(server, page):
    from tests.serve.conftest import image_bytes

    png = image_bytes((30, 160, 90))
    page.goto(server + "/")
    page.wait_for_selector("#upload-label:not([hidden])")
    page.set_input_files(
        "#upload", files=[{"name": "mine.png", "mimeType": "image/png", "buffer": png}]
    )
    page.wait_for_url("**image=**")
    page.wait_for_selector("#grid .card")
    upload_id = url_params(page)["image"]
    req = urllib.request.Request(
        f"{server}/api/search/image?k=20&mode=sparse",
        data=png,
        headers={"Content-Type": "image/png"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read())
    assert data["upload"]["id"] == upload_id
    assert card_ids(page) == [h["image_id"] for h in data["hits"]]
    assert page.locator("#source-img").is_visible()
    assert "your PNG image (48 × 40)" in page.inner_text("#source-text")
    # a reload searches the kept upload again (its thumbnail comes from the server)
    page.reload()
    page.wait_for_selector("#grid .card")
    assert card_ids(page) == [h["image_id"] for h in data["hits"]]
    assert "/api/uploads/" in page.get_attribute("#source-img", "src")
    # and another mode of the same image
    page.check("input[value=dense]")
    page.wait_for_url("**mode=dense**")
    page.wait_for_selector("#status:has-text('dense score')")
    dense = api(server, image=upload_id, mode="dense", k=20)
    assert card_ids(page) == [h["image_id"] for h in dense["hits"]]
    assert page.errors == []


def test_page_chip_edits_drop_boost_require(server, page):
    q = "a dog runs on the beach"
    page.goto(server + "/?" + urllib.parse.urlencode({"q": q, "k": 20}))
    page.wait_for_selector("#grid .card")
    chips = page.locator("#query-chips button.chip")
    first, second, third = (chips.nth(i).get_attribute("data-term") for i in range(3))
    chips.nth(0).click()
    page.click("#term-menu [data-action=drop]")
    page.wait_for_url("**terms=**")
    page.wait_for_selector("#edits:not([hidden])")
    assert url_params(page)["terms"] == f"{first}:0"
    page.wait_for_function("document.querySelector('#query-chips .dropped') !== null")
    assert card_ids(page) == [
        h["image_id"] for h in api(server, q=q, k=20, terms=f"{first}:0")["hits"]
    ]
    # boost the second, require the third: both in the URL, the results those of the API
    page.locator(f"#query-chips button[data-term='{second}']").click()
    page.click("#term-menu [data-action=boost]")
    page.wait_for_url(f"**{second}%3A2**")
    page.wait_for_selector("#grid .card")
    page.locator(f"#query-chips button[data-term='{third}']").click()
    page.click("#term-menu [data-action=require]")
    page.wait_for_url("**%2B**")
    spec = f"{first}:0,{second}:2,+{third}"
    assert url_params(page)["terms"] == spec
    page.wait_for_function("document.querySelector('#query-chips .required') !== null")
    want = api(server, q=q, k=20, terms=spec)
    wait_ids(page, [h["image_id"] for h in want["hits"]])
    for card in page.locator("#grid .card").all():  # every image holds the required term
        terms = card.locator(".hit-terms li.chip").evaluate_all(
            "els => els.map(e => e.dataset.term)"
        )
        assert third in terms
    # the shared URL reproduces the edited query; "undo all edits" goes back
    page.goto(page.url)
    page.wait_for_selector("#query-chips .required")
    assert card_ids(page) == [h["image_id"] for h in want["hits"]]
    page.click("#edits-reset")
    page.wait_for_function("!location.search.includes('terms=')")
    page.wait_for_selector("#edits[hidden]", state="attached")
    assert page.errors == []


def test_page_hybrid_slider_and_score_parts(server, page):
    q = "a dog runs on the beach"
    with urllib.request.urlopen(server + "/api/info", timeout=30) as resp:
        info = json.loads(resp.read())
    page.goto(server + "/?" + urllib.parse.urlencode({"q": q, "k": 10, "mode": "hybrid"}))
    page.wait_for_selector("#grid .card")
    assert page.locator("#weights").is_visible()
    assert page.input_value("#slider") == "50"  # the run's own weights
    text = page.inner_text("#weights-value")
    assert f"{info['w1']:.3f} · dense + {info['w2']:.3f} · sparse" in text
    first = page.locator("#grid .card").nth(0)
    assert "words explain" in first.inner_text() and "= dense" in first.inner_text()
    w1, w2 = info["w1"], info["w2"]
    for card in page.locator("#grid .card").all():
        d = float(card.get_attribute("data-dense-score"))
        s = float(card.get_attribute("data-sparse-score"))
        score = float(card.get_attribute("data-score"))
        assert w1 * d + w2 * s == pytest.approx(score, rel=1e-4, abs=1e-5)
        share = float(card.get_attribute("data-explained"))
        assert share == pytest.approx(abs(w2 * s) / (abs(w1 * d) + abs(w2 * s)), rel=1e-4)
    # move the slider towards the words: the URL holds the weights, the ranking is the API's
    page.eval_on_selector("#slider", "s => { s.value = 20; s.dispatchEvent(new Event('change')); }")
    page.wait_for_url("**w1=**")
    params = url_params(page)
    assert float(params["w1"]) == pytest.approx(0.4 * w1, rel=1e-3)
    assert float(params["w2"]) == pytest.approx(1.6 * w2, rel=1e-3)
    want = api(server, q=q, k=10, mode="hybrid", w1=params["w1"], w2=params["w2"])
    wait_ids(page, [h["image_id"] for h in want["hits"]])
    assert page.locator("#weights-reset").is_visible()
    # the other modes say what their score is made of
    page.check("input[value=sparse]")
    page.wait_for_selector("#status:has-text('sparse score')")
    assert "all from the words" in page.locator("#grid .card").nth(0).inner_text()
    assert not page.locator("#weights").is_visible()
    page.check("input[value=dense]")
    page.wait_for_selector("#status:has-text('dense score')")
    card = page.locator("#grid .card").nth(0)
    assert "not from words" in card.inner_text()
    assert card.locator(".hit-terms li.chip.off").count() > 0
    assert "not made of words" in page.inner_text("#terms-help")
    assert page.errors == []


def test_page_no_match_with_show_anyway_and_paging(server, page):
    page.goto(server + "/?q=%21%21%21")
    page.wait_for_selector("#nomatch:not([hidden])")
    assert page.locator("#grid .card").count() == 0
    assert "no word" in page.inner_text("#nomatch-reason")
    page.click("#show-anyway")
    page.wait_for_url("**force=1**")
    page.wait_for_selector("#grid .card")
    assert page.locator("#nomatch").is_hidden()
    assert "no good match" in page.inner_text("#status")
    # paging: 5 at a time, "load more" appends the next ones, in the API's order
    q = "a dog runs on the beach"
    page.goto(server + "/?" + urllib.parse.urlencode({"q": q, "k": 5}))
    page.wait_for_selector("#more:not([hidden])")
    assert page.locator("#grid .card").count() == 5
    page.click("#more")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 10")
    assert card_ids(page) == [h["image_id"] for h in api(server, q=q, k=10)["hits"]]
    ranks = page.locator("#grid .card").evaluate_all("els => els.map(e => Number(e.dataset.rank))")
    assert ranks == list(range(1, 11))
    assert "showing 10 of" in page.inner_text("#count")
    assert page.errors == []


@pytest.mark.parametrize("width", [1200, 390])
def test_page_chip_contrast_is_wcag_aa(server, page, width):
    page.set_viewport_size({"width": width, "height": 900})
    for mode in ("sparse", "hybrid", "dense"):
        page.goto(
            server
            + "/?"
            + urllib.parse.urlencode({"q": "a dog runs on the beach", "k": 20, "mode": mode})
        )
        page.wait_for_selector("#grid .card .chip")
        page.locator("#query-chips button.chip").nth(0).click()  # a menu and an edited chip too
        page.click("#term-menu [data-action=require]")
        page.wait_for_selector("#query-chips .required")
        page.wait_for_selector("#grid .card .chip")
        found = page.evaluate(CONTRAST_JS)
        assert len(found) > 40
        low = [f for f in found if f["ratio"] < 4.5]
        assert low == [], low[:5]


def test_page_focus_ring_is_visible(server, page):
    from PIL import Image

    page.goto(server + "/?q=dog&k=20")
    page.wait_for_selector("#grid .card img")
    page.locator("#grid .card .open").nth(0).focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # focus by keyboard: :focus-visible
    assert page.evaluate("document.activeElement.matches('#grid .card .open')")

    def ring_sides() -> list[bool]:
        box = page.locator("#grid .card .open").nth(0).bounding_box()
        pad = 8
        clip = {
            "x": box["x"] - pad,
            "y": box["y"] - pad,
            "width": box["width"] + 2 * pad,
            "height": box["height"] + 2 * pad,
        }
        shot = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
        w, h = shot.size
        at = pad - 4  # inside the 3 px ring drawn 2 px outside the element
        points = [(w // 2, at), (w // 2, h - 1 - at), (at, h // 2), (w - 1 - at, h // 2)]
        ring = (143, 63, 0)
        return [sum(abs(a - b) for a, b in zip(shot.getpixel(pt), ring)) < 60 for pt in points]

    assert ring_sides() == [True, True, True, True]
    # the test can fail: the old card style (overflow: hidden) clips the ring
    page.add_style_tag(content=".card { overflow: hidden; }")
    assert ring_sides() != [True, True, True, True]


def test_page_api_docs_render_offline(server, browser):
    ctx = browser.new_context()
    outside: list[str] = []

    def only_local(route):
        host = urllib.parse.urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    ctx.route("**/*", only_local)
    page = ctx.new_page()
    page.goto(server + "/")
    page.click("text=API reference")
    page.wait_for_url("**/docs")
    page.wait_for_selector("#api .op")
    text = page.inner_text("#api")
    for path in ("/api/search", "/api/search/image", "/readyz", "/api/images/{image_id}/terms"):
        assert path in text
    assert "integer, ≥ 1, ≤ 100" in text and "415" in text
    assert outside == []
    ctx.close()


def test_page_warns_of_missing_image_files_and_of_warming_up(served_index, tmp_path, browser):
    import threading

    from mmsparse.serve import SearchService, create_app
    from tests.serve.conftest import HashEncoder, start_server

    empty = tmp_path / "images"
    empty.mkdir()
    release = threading.Event()
    svc = SearchService(
        served_index,
        text_encoder=HashEncoder(),
        images_dir=empty,
        warm_up_hook=lambda: release.wait(30),
    )
    url, stop = start_server(create_app(service=svc))
    try:
        page = browser.new_page()
        page.goto(url + "/?q=dog&k=5")
        page.wait_for_selector("#ready:not([hidden])")  # warming up
        page.wait_for_selector("#grid .card")
        warning = page.inner_text("#warnings")
        assert "40 of 40 image files checked are missing" in warning and "--images" in warning
        assert page.locator("#grid img").count() == 0  # names, not grey tiles
        assert page.locator("#grid .noimg").count() == 5
        release.set()
        page.wait_for_selector("#ready", state="hidden")
        page.close()
    finally:
        release.set()
        stop()


def test_page_without_text_search_keeps_its_warning_and_offers_browsing(served_index, browser):
    from mmsparse.serve import create_app
    from tests.serve.conftest import start_server

    url, stop = start_server(create_app(served_index))  # the synthetic run: no text encoder
    try:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#grid .card")  # the collection to browse
        warning = page.inner_text("#warnings")
        assert "Text search is not available" in warning and "More like this" in warning
        assert "--caption-id" not in warning  # no CLI flag the page does not offer
        assert page.locator("#q").is_disabled()
        assert page.locator("#upload-label").is_hidden()  # no image encoder either
        page.locator("#grid .card .open").nth(0).click()
        page.click("#more-like")
        page.wait_for_url("**like=**")
        page.wait_for_selector("#status:has-text('by likeness to image')")
        assert "Text search is not available" in page.inner_text("#warnings")  # not wiped
        page.close()
    finally:
        stop()

r"""Screenshot of the ``mmsparse serve`` page for docs/serving.md (headless Chromium).

Starts ``mmsparse serve INDEX`` on a free 127.0.0.1 port, opens the page with a query in a
headless Chromium driven by Playwright, waits until every result image has loaded, and saves
a PNG (reduced to a 256-colour palette when it would be over ``--max-kb``)::

    python docs/img/serve_screenshot.py runs/flickr8k-readable/index-val \
        --query "a dog runs on the beach" --out docs/img/serve_flickr8k.png
"""

from __future__ import annotations

import argparse
import http.client
import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def main() -> int:
    """Take the screenshot; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--query", default="a dog runs on the beach")
    ap.add_argument("--mode", default="sparse")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=980)
    ap.add_argument("--out", default="docs/img/serve_flickr8k.png")
    ap.add_argument("--max-kb", type=int, default=300)
    args = ap.parse_args()

    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium installed (apt-get install -y chromium)")
    port = _free_port()
    cmd = [sys.executable, "-m", "mmsparse", "serve", args.index, "--port", str(port)]
    proc = subprocess.Popen(cmd)
    try:
        _wait(port, proc)
        query = urllib.parse.urlencode({"q": args.query, "mode": args.mode, "k": args.k})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"http://127.0.0.1:{port}/?{query}")
            page.wait_for_selector("#grid .card")
            page.wait_for_function(
                "[...document.querySelectorAll('#grid img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            png = page.screenshot(full_page=False)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(png) > args.max_kb * 1024:
        img = Image.open(io.BytesIO(png)).convert("RGB")
        img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=True)
        png = buf.getvalue()
    out.write_bytes(png)
    print(f"{out}: {len(png) / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fixtures of the serve tests: a tiny index with image files and a deterministic encoder."""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from mmsparse.bench.local_server import free_port
from mmsparse.index import build_index
from mmsparse.index.manifest import read_docs
from tests.index.conftest import SPEC, make_run


class HashEncoder:
    """Stands in for the run's text encoder: features seeded by a CRC of the text."""

    def __init__(self, d: int = 16) -> None:
        self.d = d
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.d), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.d)
        return out


class ColourImageEncoder:
    """Stands in for the run's backbone image encoder: features seeded by an image's mean
    colour (so an image and its re-encoded copy get the same features)."""

    def __init__(self, d: int = SPEC.d_img) -> None:
        self.d = d
        self.calls = 0

    def encode_images(self, images):
        self.calls += 1
        out = np.zeros((len(images), self.d), dtype=np.float32)
        for i, im in enumerate(images):
            mean = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
            seed = zlib.crc32(np.round(mean / 8).astype(np.int64).tobytes())
            out[i] = np.random.default_rng(seed).standard_normal(self.d)
        return out


def image_bytes(colour=(200, 40, 40), size=(48, 40), fmt="PNG") -> bytes:
    """An encoded image file of one colour."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def start_server(app):
    """Run ``app`` with uvicorn in a thread; returns ``(base URL, stop())``."""
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)

    def stop():
        srv.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


def write_images(index_dir: Path, images_dir: Path) -> None:
    """A small real JPEG for every indexed file name (a colour per row)."""
    from PIL import Image

    images_dir.mkdir(parents=True, exist_ok=True)
    _, names = read_docs(index_dir, _n(index_dir))
    for row, name in enumerate(names):
        colour = ((row * 37) % 256, (row * 91) % 256, (row * 53) % 256)
        Image.new("RGB", (32, 32), colour).save(images_dir / name, "JPEG")


def _n(index_dir: Path) -> int:
    from mmsparse.index.manifest import IndexManifest

    return IndexManifest.load(index_dir).n_images


@pytest.fixture(scope="session")
def served_index(tmp_path_factory) -> Path:
    """A tiny inverted index of 40 synthetic images with their dense vectors (so every
    mode is served), whose data folder has images/."""
    root = tmp_path_factory.mktemp("serve")
    run = make_run(root)
    out = root / "index"
    build_index(run, out, store_dense=True, progress=False)
    write_images(out, root / "data" / "images")
    (root / "secret.txt").write_text("not for the web")
    return out


@pytest.fixture(scope="session")
def sparse_only_index(served_index) -> Path:
    """The same images and run, indexed without dense vectors (sparse search only)."""
    out = served_index.parent / "index-sparse"
    build_index(served_index.parent / "run", out, progress=False)
    return out


@pytest.fixture(scope="module")
def server(served_index):
    """A uvicorn server of the served index on a free 127.0.0.1 port (in a thread), with
    stand-in text and image encoders."""
    pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    from mmsparse.serve import create_app

    app = create_app(served_index, text_encoder=HashEncoder(), image_encoder=ColourImageEncoder())
    url, stop = start_server(app)
    yield url
    stop()

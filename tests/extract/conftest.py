from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from tests.helpers import EXTRACT_MODULES, make_tiny_blip, make_tiny_clip

REPO = Path(__file__).resolve().parents[2]


def _have_extract() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in EXTRACT_MODULES)


@pytest.fixture(scope="session")
def need_extract() -> None:
    """Skip unless the 'extract' extra is installed."""
    if not _have_extract():
        pytest.skip("the 'extract' extra is not installed (pip install 'mmsparse[extract]')")


@pytest.fixture(scope="session")
def flickr8k(need_extract) -> Path:
    """The shared Flickr8k features (env MMSPARSE_FLICKR8K overrides ../shared/flickr8k)."""
    env = os.environ.get("MMSPARSE_FLICKR8K")
    root = Path(env) if env else REPO / ".." / "shared" / "flickr8k"
    if not (root / "dataset_meta.json").is_file() or not (root / "images").is_dir():
        pytest.skip(
            f"shared Flickr8k data not found at {root} (set MMSPARSE_FLICKR8K to its directory)"
        )
    return root.resolve()


@pytest.fixture(scope="session")
def minilm_bundle(need_extract, tmp_path_factory):
    """The effnet-minilm bundle, built once per test session."""
    from mmsparse.extract import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "effnet-minilm"
    return build_bundle("effnet-minilm", out)


@pytest.fixture(scope="session")
def minilm_encoder(minilm_bundle):
    """The MiniLM text encoder rebuilt from the bundle's extraction description."""
    from mmsparse.extract import load_text_encoder

    return load_text_encoder(minilm_bundle.extraction)


@pytest.fixture(scope="session")
def tiny_hf(need_extract, tmp_path_factory) -> dict[str, Path]:
    """Tiny random BLIP and CLIP weight directories (save_pretrained format)."""
    root = tmp_path_factory.mktemp("tiny")
    return {"blip": make_tiny_blip(root / "blip"), "clip": make_tiny_clip(root / "clip")}

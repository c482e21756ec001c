"""Fixtures of the index tests: a tiny run directory made without training (seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.data import SyntheticSpec, make_synthetic, write_release
from mmsparse.io_utils import atomic_write_text
from mmsparse.model.model import SparseDenseModel

SPEC = SyntheticSpec(
    n_train=60,
    n_val=40,
    n_test=3,
    captions_per_image=2,
    d_img=24,
    d_txt=16,
    d_latent=12,
    d_word=16,
    seed=3,
)


def make_run(
    root: Path, *, seed: int = 0, w1: float = 0.4, w2: float = 0.6, lookup: bool = False
) -> Path:
    """A run directory (config + best checkpoint) over synthetic data, without training.

    ``lookup``: a run with inference-free queries (``model.query_encoder=lookup``) whose
    per-term weights are drawn from ``seed`` (some of them negative: those terms weigh 0).
    """
    store = make_synthetic(SPEC)
    data = root / "data"
    write_release(store, data, "synth")
    store.bundle.save(data / "bundle")
    cfg = apply_overrides(
        RunConfig(name="tiny"),
        [
            f"data.path={data}",
            "data.backbone=synth",
            f"data.bundle={data / 'bundle'}",
            "model.dense_dim=16",
            f"objective.w1={w1}",
            f"objective.w2={w2}",
            f"model.query_encoder={'lookup' if lookup else 'head'}",
        ],
    )
    model = SparseDenseModel(
        d_img=SPEC.d_img,
        d_txt=SPEC.d_txt,
        dense_dim=16,
        d_word=SPEC.d_word,
        vocab_size=store.bundle.vocab_size,
        query_encoder="lookup" if lookup else "head",
    )
    model.init_weights(seed, word_embeddings=store.bundle.word_embeddings)
    if model.query_weight is not None:
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            model.query_weight.copy_(torch.from_numpy(rng.uniform(-0.5, 3.0, model.n_terms)))
    run = root / "run"
    model.save_pretrained(
        run / "best",
        vocab_tokens=store.bundle.vocab.tokens,
        extra={"backbone": {"name": "synth", "extraction": None}},
    )
    atomic_write_text(run / "config.json", cfg.to_json())
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)  # noqa: NPY002 - keeps any legacy numpy RNG use deterministic


@pytest.fixture(scope="session")
def photo_run(tmp_path_factory) -> Path:
    """A run (no training) whose backbone is a tiny CLIP: it can encode raw images."""
    import importlib.util

    from tests.helpers import EXTRACT_MODULES, make_backbone_run, make_tiny_clip

    if not all(importlib.util.find_spec(m) is not None for m in EXTRACT_MODULES):
        pytest.skip("the 'extract' extra is not installed (pip install 'mmsparse[extract]')")
    from mmsparse.extract import build_bundle

    root = tmp_path_factory.mktemp("photo-run")
    build_bundle("clip", root / "bundle", model=make_tiny_clip(root / "clip"))
    return make_backbone_run(root, root / "bundle")

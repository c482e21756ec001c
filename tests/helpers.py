"""Shared constants and helpers of the test suite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mmsparse.data import SyntheticSpec

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = Path(os.environ.get("MMSPARSE_FLICKR8K", REPO.parent / "shared" / "flickr8k"))

TINY = SyntheticSpec(
    n_train=160,
    n_val=40,
    n_test=40,
    captions_per_image=3,
    d_img=24,
    d_txt=16,
    d_latent=12,
    d_word=16,
    seed=3,
)

TINY_OVERRIDES = [
    "model.dense_dim=16",
    "train.batch_size=32",
    "train.lr=3e-3",
    "train.epochs=3",
    "train.progress=false",
    "train.plot=false",
    "train.patience=0",
    "objective.q_reg=1e-3",
    "objective.d_reg=1e-3",
]


def flickr8k_or_skip() -> Path:
    """The shared Flickr8k directory, or skip the test with the reason."""
    if not (FLICKR8K / "dataset_meta.json").is_file():
        pytest.skip(f"Flickr8k features not found at {FLICKR8K} (set MMSPARSE_FLICKR8K)")
    return FLICKR8K


def write_bench_config(path: Path, objective: dict[str, Any], **sections: Any) -> Path:
    """Write a one-epoch config of the benchmark tests (tiny release) to ``path``.

    ``objective`` is its objective block; ``sections`` replace whole blocks (``model``,
    ``eval``, ...).
    """
    cfg = {
        "model": {"dense_dim": 16},
        "data": {"train_splits": ["train"]},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "lr": 3e-3,
            "patience": 0,
            "progress": False,
            "plot": False,
        },
        "objective": objective,
        **sections,
    }
    path.write_text(json.dumps(cfg))
    return path

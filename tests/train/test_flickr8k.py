"""Smoke test on the real Flickr8k features: a short dense fit learns to retrieve."""

from __future__ import annotations

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.train import train
from tests.helpers import flickr8k_or_skip


def test_stage0_dense_fit_on_flickr8k(tmp_path):
    root = flickr8k_or_skip()
    cfg = apply_overrides(
        RunConfig(name="f8k"),
        [
            f"data.path={root}",
            "data.image_file=img_embs_before_proj_effnet.parquet",
            "data.text_file=text_embs_before_proj_minilm.parquet",
            'data.train_splits=["train"]',
            "objective.method=dense",
            "model.vocab_size=8",
            "model.d_word=8",
            "train.epochs=1",
            "train.lr=1e-3",
            "train.warmup_frac=0.1",
            "train.progress=false",
            "train.plot=false",
        ],
    )
    res = train(cfg, tmp_path / "run")
    dense = res.val["t2i"]["dense"]
    assert res.val["n_images"] == 1000 and res.val["n_captions"] == 5000
    # chance is 1% at R@10; one epoch of a contrastive fit gets far beyond it
    assert dense["R@10"] > 20.0, dense
    assert res.val["i2t"]["dense"]["R@10"] > 20.0

"""effnet-minilm reproduces the shared Flickr8k val features (a subset, for speed)."""

from __future__ import annotations

import json

import numpy as np

from mmsparse.data.formats import read_feature_file

N_VAL = 24
TOLERANCE = 1e-4  # max over rows of ||ours - shared|| / ||shared||


def _max_rel_error(ours, shared):
    index = {k: i for i, k in enumerate(shared.ids)}
    ref = shared.emb[[index[k] for k in ours.ids]].astype(np.float64)
    err = np.linalg.norm(ours.emb.astype(np.float64) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return float(err.max())


def test_effnet_minilm_reproduces_shared_val_features(flickr8k, tmp_path):
    from mmsparse.extract import extract_features

    meta = json.loads((flickr8k / "dataset_meta.json").read_text(encoding="utf-8"))
    val = [im for im in meta["images"] if im["split"] == "val"][:N_VAL]
    images = tmp_path / "images"
    images.mkdir()
    for im in val:
        (images / im["filename"]).symlink_to(flickr8k / "images" / im["filename"])
    caps = tmp_path / "captions.json"
    caps.write_text(json.dumps({"dataset": "flickr8k", "images": val}), encoding="utf-8")

    rep = extract_features("effnet-minilm", images, caps, tmp_path / "out", progress=False)
    assert (rep.n_images, rep.n_captions) == (N_VAL, sum(len(im["sentences"]) for im in val))

    ours_img = read_feature_file(tmp_path / "out" / "img_embs_before_proj_effnet.parquet")
    ours_txt = read_feature_file(tmp_path / "out" / "text_embs_before_proj_minilm.parquet")
    shared_img = read_feature_file(flickr8k / "img_embs_before_proj_effnet.parquet")
    shared_txt = read_feature_file(flickr8k / "text_embs_before_proj_minilm.parquet")
    assert ours_img.ids == [str(im["imgid"]) for im in val]
    assert _max_rel_error(ours_img, shared_img) <= TOLERANCE
    assert _max_rel_error(ours_txt, shared_txt) <= TOLERANCE

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.config import DataConfig
from mmsparse.data import load_feature_store, write_feature_parquet
from mmsparse.data.formats import read_feature_file
from mmsparse.errors import DataError
from tests.helpers import flickr8k_or_skip


def test_round_trip(tiny_release, tiny_store):
    store = load_feature_store(
        DataConfig(path=str(tiny_release), bundle=str(tiny_release / "bundle"))
    )
    np.testing.assert_array_equal(store.image_feats, tiny_store.image_feats)
    np.testing.assert_array_equal(store.caption_feats, tiny_store.caption_feats)
    np.testing.assert_array_equal(store.caption_image, tiny_store.caption_image)
    assert store.caption_texts == tiny_store.caption_texts
    assert store.bundle.vocab.tokens == tiny_store.bundle.vocab.tokens
    val = store.split("val")
    assert val.n_images == 40 and val.n_captions == 120
    # every caption's image position points at its own image
    assert np.array_equal(
        store.caption_image[val.caption_rows], val.image_rows[val.caption_to_image]
    )


def test_rows_are_aligned_to_metadata_order(tiny_release, tiny_store):
    path = tiny_release / "img_embs_before_proj_synth.parquet"
    ff = read_feature_file(path)
    order = np.random.default_rng(1).permutation(len(ff.ids))
    write_feature_parquet(path, [ff.ids[i] for i in order], ff.emb[order])
    store = load_feature_store(tiny_release)
    np.testing.assert_array_equal(store.image_feats, tiny_store.image_feats)


def test_restval_counts_as_train(tiny_release):
    meta = json.loads((tiny_release / "dataset_meta.json").read_text())
    for img in meta["images"][:10]:
        img["split"] = "restval"
    (tiny_release / "dataset_meta.json").write_text(json.dumps(meta))
    store = load_feature_store(tiny_release)
    union = store.split(("train", "restval"))
    assert union.n_images == 160
    assert store.split(("train", "nothing"), allow_missing=True).n_images == 150


def test_empty_split(tiny_release):
    store = load_feature_store(tiny_release)
    with pytest.raises(DataError, match="empty split 'restval'"):
        store.split("restval")


def test_metadata_id_without_feature(tiny_release):
    path = tiny_release / "text_embs_before_proj_synth.parquet"
    ff = read_feature_file(path)
    write_feature_parquet(path, ff.ids[:7] + ff.ids[8:], np.delete(ff.emb, 7, axis=0))
    with pytest.raises(DataError, match=r"caption id 7 is in dataset_meta.json but has no feature"):
        load_feature_store(tiny_release)


def test_feature_id_not_in_metadata(tiny_release):
    path = tiny_release / "img_embs_before_proj_synth.parquet"
    ff = read_feature_file(path)
    write_feature_parquet(path, [*ff.ids, "9999"], np.vstack([ff.emb, ff.emb[:1]]))
    with pytest.raises(DataError, match=r"image id 9999 \(row 240\) has a feature but is not in"):
        load_feature_store(tiny_release)


def test_duplicate_ids_in_metadata(tiny_release):
    meta = json.loads((tiny_release / "dataset_meta.json").read_text())
    meta["images"][5]["imgid"] = meta["images"][4]["imgid"]
    (tiny_release / "dataset_meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="duplicate image id 4"):
        load_feature_store(tiny_release)
    meta["images"][5]["imgid"] = 5
    meta["images"][5]["sentences"][0]["sentid"] = 0
    (tiny_release / "dataset_meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="duplicate caption id 0"):
        load_feature_store(tiny_release)


def test_unreadable_metadata(tiny_release):
    (tiny_release / "dataset_meta.json").write_text('{"images": [')
    with pytest.raises(DataError, match="dataset_meta.json: unreadable metadata"):
        load_feature_store(tiny_release)


def test_missing_directory_and_bundle(tmp_path, tiny_release):
    with pytest.raises(DataError, match="dataset directory not found"):
        load_feature_store(tmp_path / "nope")
    with pytest.raises(DataError, match="bundle directory not found"):
        load_feature_store(DataConfig(path=str(tiny_release), bundle=str(tmp_path / "nob")))
    with pytest.raises(DataError, match="data.path is not set"):
        load_feature_store(DataConfig())


def test_several_backbones_need_a_choice(tiny_release):
    (tiny_release / "img_embs_before_proj_other.parquet").write_bytes(
        (tiny_release / "img_embs_before_proj_synth.parquet").read_bytes()
    )
    with pytest.raises(DataError, match="several feature files"):
        load_feature_store(tiny_release)
    assert load_feature_store(DataConfig(path=str(tiny_release), backbone="synth")).d_img == 24


def test_flickr8k_shared_features():
    root = flickr8k_or_skip()
    store = load_feature_store(
        DataConfig(
            path=str(root),
            image_file="img_embs_before_proj_effnet.parquet",
            text_file="text_embs_before_proj_minilm.parquet",
        )
    )
    assert (store.d_img, store.d_txt) == (1280, 384)
    train, val = store.split("train"), store.split("val")
    assert (train.n_images, train.n_captions) == (6000, 30000)
    assert (val.n_images, val.n_captions) == (1000, 5000)
    assert np.isfinite(store.image_feats).all()


@pytest.mark.parametrize(
    ("image", "sentence", "match"),
    [
        ({"sentences": None}, None, r"image 3: 'sentences' must be a list, got None"),
        ({"sentences": 5}, None, r"image 3: 'sentences' must be a list, got 5"),
        ({"split": ["val"]}, None, r"image 3: 'split' must be a string, got \['val'\]"),
        ({"imgid": [3]}, None, r"image entry 3: 'imgid' must be a string or an integer"),
        ({"filename": 7}, None, r"image 3: 'filename' must be a string, got 7"),
        (None, {"sentid": {"a": 1}}, r"'sentid' must be a string or an integer, got \{'a': 1\}"),
        (None, {"tokens": 5}, r"caption 9 of image 3: 'tokens' must be a list of strings"),
        (None, {"raw": ["a"]}, r"image 3: 'raw' must be a string, got \['a'\]"),
    ],
)
def test_metadata_fields_of_the_wrong_type_are_named(tiny_release, image, sentence, match):
    """Found by tests/test_fuzz.py: these were TypeErrors or ids like "[3]"."""
    path = tiny_release / "dataset_meta.json"
    meta = json.loads(path.read_text())
    meta["images"][3]["sentences"][0].update(sentence or {})
    meta["images"][3].update(image or {})
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=match):
        load_feature_store(tiny_release)

"""encode_folder / list_image_folder: listing rules, extract's code path, resume, reuse."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mmsparse.errors import DataError, MMSparseError


def _photo(path, seed, size=(30, 40)):
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def test_listing_rules(tmp_path):
    pytest.importorskip("PIL")
    from mmsparse.extract.folder import (
        NOT_IMAGE,
        SYMLINK,
        SYMLINK_BROKEN,
        SYMLINK_LOOP,
        list_image_folder,
    )

    root = tmp_path / "photos"
    outside = tmp_path / "elsewhere"
    _photo(outside / "far.jpg", 0)
    for name in ("b.jpg", "a.PNG", "2023/beach/c.jpeg", "2023/d.webp", "z/e.gif"):
        _photo(root / name, 1)
    (root / "notes.txt").write_text("not a photo")
    (root / "2023" / "beach" / "c.jpeg.xmp").write_text("<x/>")
    (root / ".DS_Store").write_bytes(b"\0")
    _photo(root / ".thumbnails" / "t.jpg", 2)
    (root / "loop").symlink_to(root / "loop")
    (root / "2023" / "up").symlink_to(root)  # a folder link back up: would loop
    (root / "link.jpg").symlink_to(root / "b.jpg")
    (root / "far").symlink_to(outside)
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    _photo(root / "index" / "inner.jpg", 3)  # an index written inside the folder

    listing = list_image_folder(root, exclude=[root / "index"])
    assert listing.files == ["2023/beach/c.jpeg", "2023/d.webp", "a.PNG", "b.jpg", "z/e.gif"]
    assert dict(listing.skipped) == {
        "2023/beach/c.jpeg.xmp": NOT_IMAGE,
        "2023/up": SYMLINK,
        "far": SYMLINK,
        "gone.jpg": SYMLINK_BROKEN,
        "link.jpg": SYMLINK,
        "loop": SYMLINK_LOOP,
        "notes.txt": NOT_IMAGE,
    }
    assert listing.hidden == 2
    assert [s[0] for s in listing.stamps] == [(root / f).stat().st_size for f in listing.files]
    with pytest.raises(DataError, match="images folder not found"):
        list_image_folder(tmp_path / "nope")


def test_same_features_as_extract_and_bad_files_skipped(tiny_hf, tmp_path):
    """The folder features are extract's, row for row; a corrupt image is reported."""
    from mmsparse.data.formats import read_feature_file
    from mmsparse.extract import encode_folder, extract_features, get_backend

    root = tmp_path / "photos"
    names = ["a.png", "sub/b.png", "sub/deeper/c.png", "d.png"]
    for i, name in enumerate(names):
        _photo(root / name, i, size=(30 + 3 * i, 40))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "readme.txt").write_text("hi")
    engine = get_backend("clip")(model=str(tiny_hf["clip"]))
    got = encode_folder(engine, root, tmp_path / "cache", batch_size=2, progress=False)
    assert got.ids == ["a.png", "d.png", "sub/b.png", "sub/deeper/c.png"]
    assert got.n_files == 5 and got.encoded_batches == 3 and got.resumed_batches == 0
    assert [name for name, _ in got.skipped] == ["broken.jpg", "readme.txt"]
    assert got.skipped[0][1].startswith("unreadable image (")
    assert set(got.seconds) == {"list", "decode", "backbone", "images"}

    caps = tmp_path / "caps.tsv"
    caps.write_text("".join(f"{n}\ta photo\n" for n in got.ids), encoding="utf-8")
    extract_features(
        "clip", root, caps, tmp_path / "ext", model=tiny_hf["clip"], batch_size_images=2,
        split_files={"train": _list(tmp_path / "all.txt", got.ids)}, progress=False,
    )  # fmt: skip
    ext = read_feature_file(tmp_path / "ext" / "img_embs_before_proj_clip.parquet")
    np.testing.assert_array_equal(got.features, ext.emb)


def _list(path, names):
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


def test_exif_rotated_like_extract(tiny_hf, tmp_path):
    """A sideways-stored JPEG is encoded upright, as extract encodes it."""
    from PIL import Image

    from mmsparse.data.formats import read_feature_file
    from mmsparse.extract import encode_folder, extract_features, get_backend

    root = tmp_path / "photos"
    root.mkdir()
    arr = np.random.default_rng(5).integers(0, 256, (24, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.fromarray(arr).save(root / "phone.jpg", exif=exif.tobytes(), quality=95)
    engine = get_backend("clip")(model=str(tiny_hf["clip"]))
    got = encode_folder(engine, root, tmp_path / "cache", progress=False)

    with Image.open(root / "phone.jpg") as raw:
        stored = raw.convert("RGB")
    upright = engine.encode_pixels(engine.preprocess(stored.transpose(Image.ROTATE_270))[None])
    sideways = engine.encode_pixels(engine.preprocess(stored)[None])
    np.testing.assert_array_equal(got.features, upright)
    assert np.abs(got.features - sideways).max() > 1e-3

    caps = tmp_path / "caps.tsv"
    caps.write_text("phone.jpg\ta photo\n", encoding="utf-8")
    extract_features("clip", root, caps, tmp_path / "ext", model=tiny_hf["clip"], progress=False)
    ext = read_feature_file(tmp_path / "ext" / "img_embs_before_proj_clip.parquet")
    np.testing.assert_array_equal(got.features, ext.emb)


class Killed(Exception):
    pass


def test_resume_after_kill_then_reuse(tiny_hf, tmp_path, monkeypatch):
    from mmsparse.extract import encode_folder, get_backend
    from mmsparse.extract.backends import Clip

    root = tmp_path / "photos"
    for i in range(7):
        _photo(root / f"p{i}.png", i, size=(20 + i, 30))
    engine = get_backend("clip")(model=str(tiny_hf["clip"]))
    calls = []
    real = Clip.encode_pixels
    monkeypatch.setattr(
        Clip, "encode_pixels", lambda self, x: calls.append(len(x)) or real(self, x)
    )

    def kill_after_two(done, total):
        if done == 4:
            raise Killed

    cache = tmp_path / "cache"
    with pytest.raises(Killed):
        encode_folder(engine, root, cache, batch_size=2, progress=False, callback=kill_after_two)
    assert calls == [2, 2] and len(list(cache.glob("img-*.safetensors"))) == 2

    calls.clear()
    resumed = encode_folder(engine, root, cache, batch_size=2, progress=False)
    assert calls == [2, 1]  # only the rest: 3 of 7 images
    assert (resumed.resumed_batches, resumed.encoded_batches) == (2, 2)
    fresh = encode_folder(engine, root, tmp_path / "fresh", batch_size=2, progress=False)
    assert resumed.ids == fresh.ids
    np.testing.assert_array_equal(resumed.features, fresh.features)

    # building again: nothing to encode; a new photo at the end: only its batch
    calls.clear()
    again = encode_folder(engine, root, cache, batch_size=2, progress=False)
    assert calls == [] and again.resumed_batches == 4
    _photo(root / "p9.png", 9)
    os.utime(root / "p6.png")  # touched: its batch is encoded again
    later = encode_folder(engine, root, cache, batch_size=2, progress=False)
    assert calls == [2] and later.ids[-1] == "p9.png"
    assert len(list(cache.glob("img-*.safetensors"))) == 4  # the stale shard was dropped
    np.testing.assert_array_equal(later.features[:7], fresh.features)


def test_cache_dir_that_is_not_ours_is_refused(tiny_hf, tmp_path):
    from mmsparse.extract import encode_folder, get_backend

    root = tmp_path / "photos"
    _photo(root / "a.png", 0)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mine.txt").write_text("keep me")
    engine = get_backend("clip")(model=str(tiny_hf["clip"]))
    with pytest.raises(MMSparseError, match="not an mmsparse image feature cache"):
        encode_folder(engine, root, cache, progress=False)
    assert [p.name for p in cache.iterdir()] == ["mine.txt"]

    meta = tmp_path / "c2" / "cache.json"  # ours, but of another backbone: discarded
    meta.parent.mkdir()
    meta.write_text(json.dumps({"format": "mmsparse-image-cache", "version": 1, "extraction": {}}))
    (meta.parent / "img-0.safetensors").write_bytes(b"stale")
    got = encode_folder(engine, root, meta.parent, progress=False)
    assert got.resumed_batches == 0 and got.ids == ["a.png"]
    assert not (meta.parent / "img-0.safetensors").exists()


def test_empty_or_unreadable_folder(tiny_hf, tmp_path):
    from mmsparse.extract import encode_folder, get_backend

    engine = get_backend("clip")(model=str(tiny_hf["clip"]))
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no image file found"):
        encode_folder(engine, root, tmp_path / "cache", progress=False)
    (root / "b.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 image files could be read"):
        encode_folder(engine, root, tmp_path / "cache", progress=False)

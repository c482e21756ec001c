"""index build RUN --images DIR: a folder of photos indexed with the run's own backbone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmsparse.cli.main import main
from mmsparse.errors import MMSparseError
from mmsparse.index import Searcher, build_folder_index, build_index
from mmsparse.index.manifest import FEATURES_DIR, FEATURES_MARKER, IndexManifest, read_docs
from tests.helpers import EXTRACT_MODULES, flickr8k_or_skip, make_backbone_run

PHOTOS = ["a.png", "b.png", "sub/c.png", "sub/deeper/d.png", "z.png"]


def _photos(root, names=PHOTOS):
    from PIL import Image

    for i, name in enumerate(names):
        arr = np.random.default_rng(i).integers(0, 256, (28 + 2 * i, 36, 3), dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / name)
    return root


def _messy(root):
    """The photos plus a corrupt image, a text file and a symlink loop."""
    _photos(root)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "notes.txt").write_text("shopping list", encoding="utf-8")
    (root / "loop").symlink_to(root / "loop")
    (root / "sub" / "back").symlink_to(root)  # a folder link up the tree
    return root


def test_cli_build_from_a_messy_folder(photo_run, tmp_path, capsys):
    root = _messy(tmp_path / "photos")
    out = tmp_path / "index"
    argv = ["index", "build", str(photo_run), "--images", str(root), "--out", str(out)]
    argv += ["--batch-size", "2"]
    assert main([*argv, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_images"] == 5 and rep["images_dir"] == str(root.resolve())
    assert rep["split"] == "" and rep["data_dir"] == ""
    assert {name: why.split(" (")[0] for name, why in rep["skipped"]} == {
        "corrupt.jpg": "unreadable image",
        "loop": "symbolic link loop",
        "notes.txt": "not an image file",
        "sub/back": "symbolic link",
    }
    folder = rep["folder"]
    assert folder["n_files"] == 6 and folder["skipped"] == 4 and folder["backend"] == "clip"
    assert set(folder["seconds"]) == {
        "list", "load", "decode", "backbone", "images", "heads", "index", "calibrate", "total"
    }  # fmt: skip
    assert folder["encoded_batches"] == 3 and folder["resumed_batches"] == 0

    manifest = IndexManifest.load(out)
    assert manifest.folder == folder and manifest.options.image_topk == 8
    ids, names = read_docs(out, manifest.n_images)
    assert ids == names == PHOTOS  # POSIX paths relative to the folder, sorted
    report = json.loads((out / "folder.json").read_text(encoding="utf-8"))
    assert [name for name, _ in report["skipped"]] == [
        "corrupt.jpg",
        "loop",
        "notes.txt",
        "sub/back",
    ]
    assert manifest.stats["engine_bytes"] == (out / "postings.mmsi").stat().st_size

    # built again: every batch comes from the kept features; the text summary for people
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "inverted index of 5 images" in text and "backbone" in text and "heads" in text
    assert "skipped 4 file(s)" in text and "notes.txt: not an image file" in text
    assert IndexManifest.load(out).folder["encoded_batches"] == 0

    searcher = Searcher(out)
    hits = searcher.search("a dog runs", k=3).hits
    assert len(hits) == 3 and all(h.filename in PHOTOS and h.image_id == h.filename for h in hits)
    searcher.close()


def test_serve_shows_the_folder_files(photo_run, tmp_path):
    from mmsparse.serve import BadRequest, SearchService

    root = _messy(tmp_path / "photos")
    out = tmp_path / "index"
    build_folder_index(photo_run, root, out, progress=False)
    service = SearchService(out, warm_up=False)
    try:
        assert service.images_dir == root.resolve()
        assert service.image_path("sub/deeper/d.png") == root.resolve() / "sub/deeper/d.png"
        with pytest.raises(BadRequest):
            service.image_path("notes.txt")  # in the folder, not in the index
        assert service.info()["images_dir"] == root.name  # a name; paths only when asked
        assert service.info(paths=True)["paths"]["images_dir"] == str(root.resolve())
    finally:
        service.close()


class Killed(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(photo_run, tmp_path):
    root = _photos(tmp_path / "photos")
    out = tmp_path / "index"

    def kill_after_one_batch(done, total):
        raise Killed

    with pytest.raises(Killed):
        build_folder_index(
            photo_run, root, out, batch_size=2, progress=False, callback=kill_after_one_batch
        )
    assert not (out / "index.json").exists()
    assert len(list((out / FEATURES_DIR).glob("img-*.safetensors"))) == 1

    resumed = build_folder_index(photo_run, root, out, batch_size=2, progress=False)
    assert (
        resumed.manifest.folder["resumed_batches"],
        resumed.manifest.folder["encoded_batches"],
    ) == (1, 2)
    fresh = tmp_path / "fresh"
    build_folder_index(photo_run, root, fresh, batch_size=2, progress=False)
    for name in ("postings.mmsi", "docs.json"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()


def test_cli_kill_says_how_to_continue(photo_run, tmp_path, monkeypatch, capsys):
    from mmsparse.extract.backends import Clip

    root = _photos(tmp_path / "photos")
    out = tmp_path / "index"
    real, calls = Clip.encode_pixels, []

    def ctrl_c_on_second_batch(self, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(Clip, "encode_pixels", ctrl_c_on_second_batch)
    argv = ["index", "build", str(photo_run), "--images", str(root), "--out", str(out)]
    assert main([*argv, "--batch-size", "2", "--json"]) == 130
    assert "run the same command again" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(
        Clip, "encode_pixels", lambda self, x: calls.append(len(x)) or real(self, x)
    )
    assert main([*argv, "--batch-size", "2", "--json"]) == 0
    assert calls == [2, 1]  # the first batch was kept
    assert json.loads(capsys.readouterr().out)["n_images"] == 5


def test_features_only_run_is_a_one_line_error(tiny_run, tmp_path, capsys):
    pytest.importorskip("PIL")
    root = _photos(tmp_path / "photos")
    out = tmp_path / "index"
    with pytest.raises(MMSparseError, match="cannot encode raw images"):
        build_folder_index(tiny_run, root, out, progress=False)
    rc = main(["index", "build", str(tiny_run), "--images", str(root), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("mmsparse: error: ") and "synth" in err and "--split" in err
    assert not out.exists()


def test_non_index_out_is_refused_untouched(photo_run, tmp_path):
    root = _photos(tmp_path / "photos")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious", encoding="utf-8")
    with pytest.raises(MMSparseError, match="is not empty .* holds no mmsparse index"):
        build_folder_index(photo_run, root, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]

    other = tmp_path / "other"  # a 'features' folder that is not a feature cache
    (other / FEATURES_DIR).mkdir(parents=True)
    (other / FEATURES_DIR / "table.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(MMSparseError, match="holds no mmsparse index"):
        build_folder_index(photo_run, root, other, progress=False)
    assert [p.name for p in (other / FEATURES_DIR).iterdir()] == ["table.csv"]


def test_images_with_split_options_refused(photo_run, tmp_path, capsys):
    root = _photos(tmp_path / "photos")
    argv = ["index", "build", str(photo_run), "--images", str(root), "--out", str(tmp_path / "i")]
    for extra in (["--split", "val"], ["--data", str(tmp_path)]):
        assert main([*argv, *extra]) == 2
        assert "applies to an index of a split" in capsys.readouterr().err


def test_feature_cache_marker_is_the_extract_one():
    from mmsparse.extract.folder import CACHE_META

    assert FEATURES_MARKER == CACHE_META


def test_flickr8k_folder_equals_split_index(tmp_path):
    """Six val JPEGs of Flickr8k: folder features are the shared ones; same retrieval."""
    import importlib.util

    flickr8k = flickr8k_or_skip()
    if not all(importlib.util.find_spec(m) is not None for m in EXTRACT_MODULES):
        pytest.skip("the 'extract' extra is not installed (pip install 'mmsparse[extract]')")
    from mmsparse.data.formats import read_feature_file, write_feature_parquet
    from mmsparse.extract import build_bundle, encode_folder, load_image_backend

    meta = json.loads((flickr8k / "dataset_meta.json").read_text(encoding="utf-8"))
    val = [im for im in meta["images"] if im["split"] == "val"][:6]
    photos = tmp_path / "photos"
    photos.mkdir()
    for im in val:
        shutil.copy(flickr8k / "images" / im["filename"], photos / im["filename"])
    # the same six images as a feature release (shared features), for index build --split
    data = tmp_path / "data"
    data.mkdir()
    shared_img = read_feature_file(flickr8k / "img_embs_before_proj_effnet.parquet")
    shared_txt = read_feature_file(flickr8k / "text_embs_before_proj_minilm.parquet")
    img_row = {k: i for i, k in enumerate(shared_img.ids)}
    txt_row = {k: i for i, k in enumerate(shared_txt.ids)}
    sent_ids = [str(s["sentid"]) for im in val for s in im["sentences"]]
    write_feature_parquet(
        data / "img_embs_before_proj_effnet.parquet",
        [str(im["imgid"]) for im in val],
        shared_img.emb[[img_row[str(im["imgid"])] for im in val]],
    )
    write_feature_parquet(
        data / "text_embs_before_proj_minilm.parquet",
        sent_ids,
        shared_txt.emb[[txt_row[s] for s in sent_ids]],
    )
    (data / "dataset_meta.json").write_text(json.dumps({"images": val}), encoding="utf-8")
    bundle = build_bundle("effnet-minilm", tmp_path / "bundle")
    run = make_backbone_run(tmp_path, tmp_path / "bundle")

    folder = build_folder_index(run, photos, tmp_path / "by-folder", progress=False)
    split = build_index(run, tmp_path / "by-split", split="val", data=data, progress=False)
    assert folder.skipped == [] and folder.manifest.n_images == split.n_images == 6

    feats = encode_folder(
        load_image_backend(bundle.extraction),
        photos,
        tmp_path / "by-folder" / FEATURES_DIR,
        progress=False,
    )
    assert feats.encoded_batches == 0  # all from the index's feature cache
    by_name = {im["filename"]: img_row[str(im["imgid"])] for im in val}
    ref = shared_img.emb[[by_name[f] for f in feats.ids]]
    assert float(np.abs(feats.features - ref).max()) <= 1e-5

    a, b = Searcher(tmp_path / "by-folder"), Searcher(tmp_path / "by-split", data=data)
    try:
        dense, sparse = b.encode_captions(sent_ids)
        for x, y in zip(a.search_vectors(sparse, dense, k=6), b.search_vectors(sparse, dense, k=6)):
            assert [h.filename for h in x.hits] == [h.filename for h in y.hits]
            np.testing.assert_allclose(
                [h.score for h in x.hits], [h.score for h in y.hits], rtol=1e-4, atol=1e-6
            )
    finally:
        a.close()
        b.close()


def test_index_inside_the_photo_folder_is_not_indexed(photo_run, tmp_path):
    root = _photos(tmp_path / "photos")
    out = root / "my-index"
    first = build_folder_index(photo_run, root, out, progress=False)
    again = build_folder_index(photo_run, root, out, progress=False)  # out now holds files
    assert first.manifest.n_images == again.manifest.n_images == len(PHOTOS)
    assert again.skipped == [] and again.manifest.folder["encoded_batches"] == 0


def test_bad_build_options_refused_before_encoding(photo_run, tmp_path):
    root = _photos(tmp_path / "photos")
    out = tmp_path / "index"
    for kwargs in ({"engine": "seismic", "store_dense": True}, {"engine_params": {"bogus": 1}}):
        with pytest.raises(MMSparseError):
            build_folder_index(photo_run, root, out, progress=False, **kwargs)
        assert not out.exists()  # nothing was encoded

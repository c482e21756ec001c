"""``mmsparse index add --images``, ``remove``, ``optimize``, ``info``: photos added to and
removed from a folder index, as a user does it (a tiny CLIP run encodes real image files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.cli.main import main
from mmsparse.errors import MMSparseError
from mmsparse.index import build_folder_index
from mmsparse.index.folder import add_images
from mmsparse.index.generations import read_current
from mmsparse.index.manifest import ADDED_FEATURES_DIR
from mmsparse.index.segments import open_view
from tests.index.test_folder import _photos


def _more(root, names, seed=100):
    from PIL import Image

    for i, name in enumerate(names):
        arr = np.random.default_rng(seed + i).integers(0, 256, (30, 30, 3), dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / name)
    return root


@pytest.fixture
def folder_index(photo_run, tmp_path):
    root = _photos(tmp_path / "photos")
    out = tmp_path / "index"
    build_folder_index(photo_run, root, out, progress=False, calibrate=False)
    return root, out


def _ids(index):
    view = open_view(index)
    try:
        return sorted(view.row_of)
    finally:
        view.close()


def test_ids_of_added_photos_inside_and_outside_the_folder(folder_index, tmp_path):
    root, index = folder_index
    _more(root, ["2024/trip/e.png", "2024/trip/f.png"])
    rep = add_images(index, root / "2024", progress=False, gc_grace_s=0)
    assert (rep.added, rep.generation) == (2, 1)
    assert {"2024/trip/e.png", "2024/trip/f.png"} <= set(_ids(index))  # paths in the folder
    # the whole folder again: only what is new is encoded (the rest is known)
    _more(root, ["g.png"], seed=7)
    rep = add_images(index, root, progress=False, gc_grace_s=0)
    assert (rep.added, rep.skipped, rep.files["known"], rep.files["encoded"]) == (1, 7, 7, 1)
    rep = add_images(index, root, progress=False, gc_grace_s=0)
    assert (rep.added, rep.skipped, rep.generation) == (0, 8, 2)  # nothing new: no generation

    elsewhere = _more(tmp_path / "camera", ["IMG_1.png", "IMG_2.png"])
    rep = add_images(index, elsewhere, progress=False, gc_grace_s=0)
    assert {"camera/IMG_1.png", "camera/IMG_2.png"} <= set(_ids(index))
    assert read_current(index).image_roots == {"camera/": str(elsewhere.resolve())}
    assert (index / ADDED_FEATURES_DIR).is_dir()

    from mmsparse.serve import BadRequest, SearchService

    svc = SearchService(index, warm_up=False, reload_interval=0)
    try:
        assert svc.image_path("camera/IMG_2.png") == elsewhere.resolve() / "IMG_2.png"
        assert svc.image_path("2024/trip/e.png") == root.resolve() / "2024/trip/e.png"
        with pytest.raises(BadRequest):
            svc.image_path("camera/../photos/a.png")
    finally:
        svc.close()

    with pytest.raises(MMSparseError, match="has a '2024' of its own"):
        add_images(index, _more(tmp_path / "x" / "2024", ["h.png"]), progress=False)
    with pytest.raises(MMSparseError, match="already names the photos of"):
        add_images(index, _more(tmp_path / "y", ["i.png"]), name="camera", progress=False)
    with pytest.raises(MMSparseError, match="--name applies to a folder outside"):
        add_images(index, root / "2024", name="trip", progress=False)
    with pytest.raises(MMSparseError, match="2 of the 2 photos of .* are in the index already"):
        add_images(index, elsewhere, existing="error", progress=False)
    rep = add_images(index, elsewhere, existing="replace", progress=False, gc_grace_s=0)
    assert (rep.added, rep.replaced) == (2, 2) and rep.n_images == 5 + 2 + 1 + 2


def test_cli_add_remove_optimize_info(folder_index, tmp_path, capsys):
    root, index = folder_index
    camera = _more(tmp_path / "camera", ["IMG_1.png", "IMG_2.png", "IMG_3.png"])
    assert main(["index", "add", str(index), "--images", str(camera), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["added"] == 3 and rep["generation"] == 1 and rep["files"]["id_prefix"] == "camera/"

    assert main(["index", "info", str(index), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["live"] and info["n_images"] == 8 and len(info["segments"]) == 2

    # by file and by folder; a path that is no indexed image is refused, all listed
    assert main(["index", "remove", str(index), "--files", str(root / "nope.png"), "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of the 2 paths given are no image of the index" in err[0]
    assert main(["index", "remove", str(index), "--files", str(camera / "IMG_1.png")]) == 0
    assert main(["index", "remove", str(index), "--files", str(root / "sub")]) == 0
    out = capsys.readouterr().out
    assert "removed 1" in out and "removed 2" in out
    assert "camera/IMG_1.png" not in _ids(index) and "sub/c.png" not in _ids(index)

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# gone\nb.png\nnot-there.png\n\n", encoding="utf-8")
    assert main(["index", "remove", str(index), "--ids", str(ids_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mmsparse: error: 1 of the 2 ids to remove are not in the index {index}: "
        "'not-there.png'; nothing was removed"
    )

    assert main(["index", "optimize", str(index), "--no-calibrate"]) == 0
    assert "merged 2 segments" in capsys.readouterr().out
    assert main(["index", "info", str(index)]) == 0
    text = capsys.readouterr().out
    assert "5 images, 1 segment(s), 0 deleted row(s)" in text and "camera/* are files of" in text
    assert sorted(_ids(index)) == sorted(
        ["a.png", "b.png", "z.png", "camera/IMG_2.png", "camera/IMG_3.png"]
    )


def test_cli_refuses_milvus_in_one_line(photo_run, tmp_path, capsys):
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed")
    root = _photos(tmp_path / "photos")
    index = tmp_path / "index"
    build_folder_index(photo_run, root, index, engine="milvus", progress=False, calibrate=False)
    capsys.readouterr()
    assert main(["index", "add", str(index), "--images", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the milvus engine cannot add images" in err[0]

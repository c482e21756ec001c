"""``mmsparse bench photos`` end to end on tiny data: a tiny CLIP run, ten generated photos
with captions, two clients, an add of three photos under load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.bench.machine import MACHINE_KEYS
from mmsparse.bench.photos import bench_photos, photo_captions, report_table
from mmsparse.errors import MMSparseError
from tests.index.conftest import photo_run  # noqa: F401 - the tiny CLIP run fixture

pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    words = ["dog", "cat", "beach", "red", "ball", "two"]
    images = []
    for i in range(10):
        name = f"p{i:02d}.jpg"
        arr = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / name)
        caps = [f"a {words[i % 6]} on the {words[(i + j) % 6]}" for j in range(2)]
        images.append(
            {
                "imgid": i,
                "filename": name,
                "split": "val",
                "sentences": [
                    {"sentid": 2 * i + j, "raw": c, "tokens": c.split()} for j, c in enumerate(caps)
                ],
            }
        )
    meta = tmp_path / "dataset_meta.json"
    meta.write_text(json.dumps({"dataset": "tiny", "images": images}), encoding="utf-8")
    return root, meta


@pytest.mark.slow
def test_bench_photos_on_tiny_data(photo_run, photos, tmp_path):  # noqa: F811
    images, captions = photos
    out = tmp_path / "photos.json"
    report = bench_photos(
        photo_run,
        images=images,
        captions=captions,
        n_base=7,
        n_add=3,
        clients=2,
        k=5,
        phase_s=1.0,
        batch_size=4,
        work=tmp_path / "work",
        out=out,
        progress=False,
    )
    assert json.loads(out.read_text()) == report
    assert report["failed_requests"] == 0 and report["requests"] > 0
    assert tuple(report["machine"]) == MACHINE_KEYS
    assert set(report["phase_load_average"]) == {"start", "before", "during", "after"}
    phases = report["phases"]
    assert phases["before"]["generations"] == [0] and phases["after"]["generations"] == [1]
    assert all(phases[p]["requests"] > 0 and phases[p]["failed"] == 0 for p in phases)
    assert report["add"]["generation"] == 1 and report["add"]["wall_s"] > 0
    found = report["found_by_own_captions"]
    assert found["added"]["captions"] == 6 and found["indexed_first"]["photos"] == 3
    assert report["server"]["health"]["generation"] == 1
    assert report["server"]["health"]["images"] == 10
    # the photos added are files of the folder, under added/
    assert sorted(p.name for p in (tmp_path / "work" / "photos" / "added").iterdir()) == sorted(
        n for n in photo_captions(images, captions) if n not in _base(tmp_path)
    )
    assert "failed requests: 0 of" in report_table(report)


def _base(tmp_path):
    return {p.name for p in (tmp_path / "work" / "photos").glob("*.jpg")}


def test_bench_photos_checks_its_arguments(photos, tmp_path):
    images, captions = photos
    with pytest.raises(MMSparseError, match="fewer than --n-base 9"):
        bench_photos("run", images=images, captions=captions, n_base=9, n_add=2, out=None)
    with pytest.raises(MMSparseError, match="--clients must be at least 1"):
        bench_photos("run", images=images, captions=captions, clients=0, out=None)

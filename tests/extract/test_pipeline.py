"""extract_features end to end on the tiny CLIP checkpoint: formats, bad input, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.cli.main import main
from mmsparse.data import load_feature_store
from mmsparse.data.bundle import BackboneBundle
from mmsparse.data.formats import read_feature_file
from mmsparse.errors import DataError

N_IMAGES = 7


@pytest.fixture()
def dataset(tmp_path, need_extract):
    """Seven small images (varied sizes and modes) and a Karpathy caption file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images = []
    for i in range(N_IMAGES):
        arr = rng.integers(0, 256, (30 + 2 * i, 40, 3), dtype=np.uint8)
        name = f"im{i}.png"
        Image.fromarray(arr).save(img_dir / name)
        images.append(
            {
                "imgid": 100 + i,
                "filename": name,
                "split": "val" if i < 2 else "train",
                "sentences": [
                    {"sentid": 1000 + 10 * i + j, "raw": f"a dog runs {'on the beach ' * j}."}
                    for j in range(1 + i % 3)
                ],
            }
        )
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"dataset": "tiny", "images": images}), encoding="utf-8")
    return img_dir, caps, images


def _reference(model_dir, img_dir, images):
    """Features computed directly with the backend, image by image."""
    from PIL import Image

    from mmsparse.extract import get_backend

    be = get_backend("clip")(model=str(model_dir))
    img = np.concatenate(
        [
            be.encode_pixels(
                be.preprocess(Image.open(img_dir / e["filename"]).convert("RGB"))[None]
            )
            for e in images
        ]
    )
    txt = be.encode_texts([s["raw"] for e in images for s in e["sentences"]])
    return img, txt


def test_extract_release_format(tiny_hf, dataset, tmp_path):
    from mmsparse.extract import extract_features

    img_dir, caps, images = dataset
    out = tmp_path / "out"
    rep = extract_features(
        "clip",
        img_dir,
        caps,
        out,
        model=tiny_hf["clip"],
        batch_size_images=3,
        batch_size_text=4,
        progress=False,
    )
    n_caps = sum(len(e["sentences"]) for e in images)
    assert (rep.n_images, rep.n_captions) == (N_IMAGES, n_caps)
    assert rep.skipped_images == [] and rep.resumed_batches == 0
    assert rep.splits == {"val": 2, "train": 5}
    assert not (out / ".extract-work").exists()
    assert json.loads((out / "extract_report.json").read_text())["n_images"] == N_IMAGES

    img = read_feature_file(out / "img_embs_before_proj_clip.parquet")
    txt = read_feature_file(out / "text_embs_before_proj_clip.parquet")
    assert img.ids == [str(e["imgid"]) for e in images]
    assert txt.ids == [str(s["sentid"]) for e in images for s in e["sentences"]]
    ref_img, ref_txt = _reference(tiny_hf["clip"], img_dir, images)
    np.testing.assert_allclose(img.emb, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt.emb, ref_txt, atol=1e-5)

    meta = json.loads((out / "dataset_meta.json").read_text())
    assert meta["dataset"] == "tiny"
    assert meta["images"][0]["sentences"][0]["tokens"] == ["a", "dog", "runs"]
    store = load_feature_store(str(out))
    assert store.d_img == 32 and store.d_txt == 32
    assert store.split("val").n_images == 2
    bundle = BackboneBundle.load(out / "bundle")
    bundle.check_dims(store.d_img, store.d_txt)
    assert bundle.extraction["backend"] == "clip"


def test_bad_images_are_converted_or_skipped(tiny_hf, dataset, tmp_path):
    from PIL import Image

    from mmsparse.extract import extract_features

    img_dir, caps, images = dataset
    rgb = np.asarray(Image.open(img_dir / "im1.png"))
    Image.fromarray(rgb).convert("L").save(img_dir / "im1.png")
    Image.fromarray(rgb).convert("CMYK").save(img_dir / "im2.jpg")
    (img_dir / "im2.png").unlink()
    images[2]["filename"] = "im2.jpg"
    (img_dir / "im3.png").write_bytes(b"\x89PNG broken")
    (img_dir / "im5.png").write_bytes((img_dir / "im4.png").read_bytes()[:60])
    caps.write_text(json.dumps({"dataset": "tiny", "images": images}), encoding="utf-8")
    out = tmp_path / "out"
    rep = extract_features(
        "clip", img_dir, caps, out, model=tiny_hf["clip"], batch_size_images=2, progress=False
    )
    assert [f for f, _ in rep.skipped_images] == ["im3.png", "im5.png"]
    assert rep.skipped_captions == len(images[3]["sentences"]) + len(images[5]["sentences"])
    assert rep.converted == {"CMYK": 1, "L": 1}
    assert rep.n_images == N_IMAGES - 2
    store = load_feature_store(str(out))
    assert "103" not in store.image_ids and "105" not in store.image_ids
    assert len(store.caption_ids) == rep.n_captions


def test_mismatch_is_one_error_and_nothing_written(tiny_hf, dataset, tmp_path):
    from mmsparse.extract import extract_features

    img_dir, caps, _ = dataset
    (img_dir / "im0.png").unlink()
    (img_dir / "stray.jpg").write_bytes(b"x")
    out = tmp_path / "out"
    with pytest.raises(DataError) as exc:
        extract_features("clip", img_dir, caps, out, model=tiny_hf["clip"], progress=False)
    assert "im0.png" in str(exc.value) and "stray.jpg" in str(exc.value)
    assert not out.exists()


def test_resume_after_kill(tiny_hf, dataset, tmp_path, monkeypatch):
    from mmsparse.extract import extract_features
    from mmsparse.extract.backends import Clip

    img_dir, caps, _ = dataset
    out = tmp_path / "out"
    calls = {"img": 0, "kill_at": 3}
    real_pixels = Clip.encode_pixels

    def pixels(self, x):
        calls["img"] += 1
        if calls["img"] == calls["kill_at"]:
            raise KeyboardInterrupt  # killed during the third image batch
        return real_pixels(self, x)

    monkeypatch.setattr(Clip, "encode_pixels", pixels)
    kwargs = dict(model=tiny_hf["clip"], batch_size_images=2, batch_size_text=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract_features("clip", img_dir, caps, out, **kwargs)
    assert len(list((out / ".extract-work").glob("img-*.safetensors"))) == 2
    assert not (out / "img_embs_before_proj_clip.parquet").exists()

    calls.update(img=0, kill_at=-1)
    rep = extract_features("clip", img_dir, caps, out, **kwargs)
    assert calls["img"] == 2  # 4 batches of 2 images, 2 were done before the kill
    assert rep.resumed_batches == 2
    resumed = read_feature_file(out / "img_embs_before_proj_clip.parquet")

    fresh = tmp_path / "fresh"
    extract_features("clip", img_dir, caps, fresh, **kwargs)
    np.testing.assert_array_equal(
        resumed.emb, read_feature_file(fresh / "img_embs_before_proj_clip.parquet").emb
    )


def test_changed_plan_discards_shards(tiny_hf, dataset, tmp_path):
    from mmsparse.extract import extract_features
    from mmsparse.extract.pipeline import WORK_DIR

    img_dir, caps, _ = dataset
    out = tmp_path / "out"
    stale = out / WORK_DIR
    stale.mkdir(parents=True)
    (stale / "plan.json").write_text('{"version": 1, "inputs_sha256": "other"}')
    (stale / "img-000000.safetensors").write_bytes(b"garbage")  # would break a resume
    rep = extract_features(
        "clip", img_dir, caps, out, model=tiny_hf["clip"], batch_size_images=4, progress=False
    )
    assert rep.resumed_batches == 0 and rep.n_images == N_IMAGES


def test_cli_extract_json(tiny_hf, dataset, tmp_path, capsys):
    img_dir, caps, _ = dataset
    (tmp_path / "val.txt").write_text("im0.png\nim1.png\n", encoding="utf-8")
    extract = [
        "extract",
        *("--backend", "clip", "--model", str(tiny_hf["clip"])),
        *("--images", str(img_dir), "--captions", str(caps)),
    ]
    rc = main(
        [
            *extract,
            *("--out", str(tmp_path / "o"), "--split-of", f"val={tmp_path / 'val.txt'}"),
            *("--no-progress", "--json"),
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 2 and report["unlisted_images"] == N_IMAGES - 2
    assert report["splits"] == {"val": 2}
    assert main(["extract", "--backend", "clip", "--out", str(tmp_path / "x")]) == 2
    assert "needs --images" in capsys.readouterr().err
    rc = main([*extract, "--out", str(tmp_path / "y"), "--split-of", "val"])
    assert rc == 2 and "NAME=FILE" in capsys.readouterr().err

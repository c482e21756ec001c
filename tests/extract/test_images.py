from __future__ import annotations

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from mmsparse.extract.images import open_rgb  # noqa: E402


def test_rgb_untouched(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    PIL.fromarray(arr).save(tmp_path / "x.png")
    got = open_rgb(tmp_path / "x.png")
    assert got.error is None and got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got.image), arr)


def test_grayscale_rgba_cmyk_palette_16bit(tmp_path):
    rng = np.random.default_rng(1)
    g = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    PIL.fromarray(g, mode="L").save(tmp_path / "g.png")
    got = open_rgb(tmp_path / "g.png")
    assert got.mode == "L"
    np.testing.assert_array_equal(np.asarray(got.image), np.stack([g, g, g], axis=-1))

    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    PIL.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    got = open_rgb(tmp_path / "a.png")
    assert got.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(got.image), rgba[..., :3])  # alpha dropped

    PIL.fromarray(rgba[..., :3]).convert("CMYK").save(tmp_path / "c.jpg")
    got = open_rgb(tmp_path / "c.jpg")
    assert got.mode == "CMYK" and got.image.mode == "RGB" and got.image.size == (5, 6)

    PIL.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.gif")
    got = open_rgb(tmp_path / "p.gif")
    assert got.mode == "P" and got.image.mode == "RGB"

    g16 = np.array([[0, 65535], [257 * 10, 257 * 200]], dtype=np.uint16)
    PIL.fromarray(g16).save(tmp_path / "w.png")
    got = open_rgb(tmp_path / "w.png")
    assert got.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(got.image)[..., 0], [[0, 255], [10, 200]])


def test_unreadable_files_are_reported(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    got = open_rgb(tmp_path / "junk.jpg")
    assert got.image is None and "UnidentifiedImageError" in got.error
    arr = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    PIL.fromarray(arr).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    got = open_rgb(tmp_path / "cut.jpg")
    assert got.image is None and "truncated" in got.error
    got = open_rgb(tmp_path / "nope.jpg")
    assert got.image is None and "FileNotFoundError" in got.error


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [(3, "ROTATE_180"), (6, "ROTATE_270"), (8, "ROTATE_90"), (2, "FLIP_LEFT_RIGHT")],
)
def test_exif_orientation_is_applied(tmp_path, orientation, transpose):
    arr = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)  # landscape
    exif = PIL.Exif()
    exif[0x0112] = orientation
    PIL.fromarray(arr).save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    with PIL.open(tmp_path / "o.jpg") as raw:  # the stored (sideways) pixels
        assert raw.getexif()[0x0112] == orientation
        upright = np.asarray(raw.convert("RGB").transpose(getattr(PIL.Transpose, transpose)))
    got = open_rgb(tmp_path / "o.jpg")
    assert got.error is None
    np.testing.assert_array_equal(np.asarray(got.image), upright)
    if orientation in (6, 8):
        assert got.image.size == (24, 40)  # portrait once rotated


def test_no_or_damaged_orientation_leaves_pixels(tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    exif = PIL.Exif()
    exif[0x0112] = 1
    PIL.fromarray(arr).save(tmp_path / "one.png", exif=exif.tobytes())
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "one.png").image), arr)
    exif[0x0112] = 42  # not an orientation: left as stored
    PIL.fromarray(arr).save(tmp_path / "odd.png", exif=exif.tobytes())
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "odd.png").image), arr)

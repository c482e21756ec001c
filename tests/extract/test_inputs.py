from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.errors import DataError
from mmsparse.extract.inputs import check_images, read_captions, simple_tokens


def _touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")


def test_token_txt(tmp_path):
    f = tmp_path / "Flickr8k.token.txt"
    f.write_text(
        "b.jpg#0\tA dog runs .\nb.jpg#1\tThe dog, running!\na.jpg#0\tTwo cats\n\nb.jpg#2\tdog\n",
        encoding="utf-8",
    )
    cs = read_captions(f)
    assert cs.format == "flickr8k-token"
    assert [(e.imgid, e.filename, e.split) for e in cs.images] == [
        (0, "b.jpg", "train"),
        (1, "a.jpg", "train"),
    ]
    assert [s["sentid"] for e in cs.images for s in e.sentences] == [0, 1, 2, 3]
    assert cs.images[0].sentences[1] == {
        "sentid": 1,
        "raw": "The dog, running!",
        "tokens": ["the", "dog", "running"],
    }
    assert cs.n_captions == 4


def test_tsv_with_header_and_errors(tmp_path):
    f = tmp_path / "caps.tsv"
    f.write_text("filename\tcaption\nx.png\ta red ball\ny.png\tsky\n", encoding="utf-8")
    cs = read_captions(f)
    assert cs.format == "tsv" and [e.filename for e in cs.images] == ["x.png", "y.png"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("x.png\ta red ball\ny.png\tsky\textra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.tsv:2: expected two tab-separated columns"):
        read_captions(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("x.png\t  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.tsv:1: empty caption for x\.png"):
        read_captions(empty)
    tok = tmp_path / "t.txt"
    tok.write_text("a.jpg#0\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.txt:2: expected '<filename>#<n><TAB><caption>'"):
        read_captions(tok)


def test_karpathy_splits_and_filter(tmp_path):
    meta = {
        "dataset": "mini",
        "images": [
            {
                "imgid": 7,
                "filename": "a.jpg",
                "split": "val",
                "sentences": [{"sentid": 70, "raw": "A dog.", "tokens": ["a", "dog"]}],
            },
            {
                "imgid": 8,
                "filename": "b.jpg",
                "split": "train",
                "sentences": [{"sentid": 80, "raw": "A cat"}],
            },
        ],
    }
    f = tmp_path / "meta.json"
    f.write_text(json.dumps(meta), encoding="utf-8")
    cs = read_captions(f)
    assert cs.format == "karpathy" and cs.dataset == "mini"
    assert cs.images[1].sentences[0]["tokens"] == ["a", "cat"]
    only = read_captions(f, splits=["val"])
    assert [e.imgid for e in only.images] == [7]
    with pytest.raises(DataError, match="no image has split 'test'"):
        read_captions(f, splits=["test"])


def test_split_lists(tmp_path):
    f = tmp_path / "token.txt"
    f.write_text("a.jpg#0\tx\nb.jpg#0\ty\nc.jpg#0\tz\nbad.jpg.1#0\tw\n", encoding="utf-8")
    (tmp_path / "train.txt").write_text("a.jpg\nb.jpg\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("c.jpg\n", encoding="utf-8")
    cs = read_captions(f, {"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"})
    assert [(e.filename, e.split) for e in cs.images] == [
        ("a.jpg", "train"),
        ("b.jpg", "train"),
        ("c.jpg", "val"),
    ]
    assert cs.unlisted == 1 and cs.listed_uncaptioned == []
    (tmp_path / "test.txt").write_text("d.jpg\n", encoding="utf-8")
    cs = read_captions(f, {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"})
    assert cs.listed_uncaptioned == ["d.jpg"]
    _touch_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    with pytest.raises(DataError, match=r"1 image\(s\) named by the split lists have no caption"):
        check_images(cs, tmp_path / "img", strict_folder=False)
    (tmp_path / "dup.txt").write_text("a.jpg\n", encoding="utf-8")
    with pytest.raises(DataError, match="also in the 'train' list"):
        read_captions(f, {"train": tmp_path / "train.txt", "val": tmp_path / "dup.txt"})


def test_one_error_lists_missing_and_uncaptioned(tmp_path):
    f = tmp_path / "caps.tsv"
    f.write_text("a.jpg\tx\nmissing1.jpg\ty\nmissing2.jpg\tz\n", encoding="utf-8")
    _touch_images(tmp_path / "img", ["a.jpg", "extra.png", "notes.txt"])
    cs = read_captions(f)
    with pytest.raises(DataError) as exc:
        check_images(cs, tmp_path / "img", strict_folder=True)
    msg = str(exc.value)
    assert "2 captioned image(s) not found" in msg and "missing1.jpg, missing2.jpg" in msg
    assert "1 image(s) in" in msg and "extra.png" in msg and "notes.txt" not in msg
    # Without the folder check only the missing ones count.
    with pytest.raises(DataError, match="2 captioned image"):
        check_images(cs, tmp_path / "img", strict_folder=False)


def test_long_lists_are_truncated(tmp_path):
    f = tmp_path / "caps.tsv"
    f.write_text("".join(f"m{i:02d}.jpg\tx\n" for i in range(25)), encoding="utf-8")
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=r"m19\.jpg \(and 5 more\)"):
        check_images(read_captions(f), tmp_path / "img", strict_folder=True)


def test_simple_tokens():
    assert simple_tokens("A man's 2 dogs, running!") == ["a", "man", "s", "2", "dogs", "running"]
    assert np.array_equal(simple_tokens(""), [])

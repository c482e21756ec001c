from __future__ import annotations

import numpy as np
import pytest

from mmsparse.data import BackboneBundle, Vocabulary
from mmsparse.errors import DataError

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "a",
    "dog",
    "run",
    "##s",
    "##ning",
    "beach",
    ".",
    "cafe",
    "[unused0]",
]


def test_basic_tokenize_lowercases_strips_accents_and_splits_punctuation():
    assert Vocabulary.basic_tokenize("A Dog, at the Café!") == [
        "a",
        "dog",
        ",",
        "at",
        "the",
        "cafe",
        "!",
    ]


def test_wordpiece_greedy_longest_match():
    v = Vocabulary(VOCAB)
    assert v.encode("Dog runs") == [5, 6, 7]
    assert v.encode("running dogs") == [6, 8, 5, 7]
    assert v.encode("zzz dog") == [5]  # [UNK] is special: not a term
    assert v.encode(["a", "dog"]) == [4, 5]


def test_special_tokens_are_not_terms():
    v = Vocabulary(VOCAB)
    assert set(v.special_ids.tolist()) == {0, 1, 2, 3, 12}
    indptr, indices = v.token_matrix(["a dog runs", ["beach", "."], "zzz"])
    assert indptr.tolist() == [0, 4, 6, 6]
    assert indices.tolist() == [4, 5, 6, 7, 9, 10]


def test_special_tokens_of_other_backbones():
    v = Vocabulary(
        ["<s>", "</s>", "<pad>", "<|endoftext|>", "<|startoftext|>", "dog", "[unused80]"]
    )
    assert set(v.special_ids.tolist()) == {0, 1, 2, 3, 4, 6}


def test_fallback_names_terms_by_index():
    v = Vocabulary.fallback(5)
    assert v.term(3) == "#3" and not v.named and v.encode("a dog") == []


def test_bundle_round_trip_and_checks(tmp_path):
    emb = np.random.default_rng(0).standard_normal((len(VOCAB), 4)).astype(np.float32)
    proj = {
        "text_proj.weight": np.ones((3, 5), np.float32),
        "text_proj.bias": np.zeros(3, np.float32),
        "vision_proj.weight": np.ones((3, 6), np.float32),
        "vision_proj.bias": np.zeros(3, np.float32),
    }
    b = BackboneBundle(
        name="t",
        vocab=Vocabulary(VOCAB),
        word_embeddings=emb,
        projections=proj,
        extraction={"backend": "x"},
    )
    b.save(tmp_path / "b")
    c = BackboneBundle.load(tmp_path / "b")
    assert c.vocab.tokens == VOCAB and c.extraction == {"backend": "x"} and c.d_word == 4
    np.testing.assert_array_equal(c.word_embeddings, emb)
    c.check_dims(d_img=6, d_txt=5)
    with pytest.raises(DataError, match="vision_proj.weight expects features of size 6"):
        c.check_dims(d_img=7, d_txt=5)
    c.extraction = {"backend": "x", "d_img": 6, "d_txt": 5}
    c.check_dims(d_img=6, d_txt=5)
    with pytest.raises(DataError, match=r"bundle.json: .*\(x\) makes caption features of size 5"):
        c.check_dims(d_img=6, d_txt=4)
    (tmp_path / "b" / "vocab.txt").write_text("\n".join(VOCAB[:-1]) + "\n")
    with pytest.raises(DataError, match="vocab.txt: checksum mismatch"):
        BackboneBundle.load(tmp_path / "b")
    (tmp_path / "b" / "checksums.json").unlink()  # a bundle from before checksums
    with pytest.raises(DataError, match="word_embeddings has 13 rows but vocab.txt has 12"):
        BackboneBundle.load(tmp_path / "b")

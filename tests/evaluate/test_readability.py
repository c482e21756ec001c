"""The readability measure, by hand on a tiny vocabulary, and end to end in evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.data.vocab import Vocabulary
from mmsparse.evaluate.readability import readability

#           0      1      2       3        4       5      6      7        8
TOKENS = ["[PAD]", "a", "dog", "beach", "runs", "the", ",", "##s", "grass"]
VOCAB = Vocabulary(TOKENS)


def _csr(rows):
    indptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    return indptr, np.array([i for r in rows for i in r], dtype=np.int64)


def test_by_hand():
    # image 0 has captions 0 and 1; image 1 has caption 2
    caps = [[1, 2, 3], [2, 4, 5, 6], [8, 5]]  # "a dog beach", "dog runs the ,", "grass the"
    c2i = np.array([0, 0, 1])
    img = torch.zeros(2, 9)
    img[0, [2, 1, 8, 3]] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # dog, a, grass, beach
    img[1, [8, 7]] = torch.tensor([2.0, 1.0])  # grass, ##s
    txt = torch.zeros(3, 9)
    txt[0, [2, 4]] = 1.0  # dog (in caption 1), runs (in caption 1)
    txt[1, [3, 5]] = 1.0  # beach (in caption 0), the (function word)
    txt[2, [8]] = 1.0  # grass: no other caption of image 1
    out = readability(img, txt, c2i, *_csr(caps), VOCAB, k=3)
    # image 0 top-3: dog (yes), a (function word), grass (not its caption) -> 1 of 3
    # image 1 top-3: grass (yes), ##s (piece), empty slot -> 1 of 3
    assert out["image_terms_in_captions"] == pytest.approx(100 * 2 / 6)
    assert out["image_content_terms"] == pytest.approx(100 * 3 / 6)
    # captions: 2 of 3 slots, 1 of 3, 0 of 3
    assert out["caption_terms_in_other_captions"] == pytest.approx(100 * 3 / 9)
    assert out["caption_content_terms"] == pytest.approx(100 * 4 / 9)
    assert out["k"] == 3


def test_unnamed_vocabulary_counts_nothing_and_bad_shapes_are_refused():
    caps = [[1, 2], [3]]
    out = readability(
        torch.ones(1, 9), torch.ones(2, 9), np.array([0, 0]), *_csr(caps), Vocabulary.fallback(9)
    )
    assert out["image_terms_in_captions"] == 0.0
    with pytest.raises(ValueError, match="2 caption vectors but 3 caption_to_image"):
        readability(torch.ones(1, 9), torch.ones(2, 9), np.array([0, 0, 0]), *_csr(caps), VOCAB)
    with pytest.raises(ValueError, match="k must be >= 1"):
        readability(torch.ones(1, 9), torch.ones(2, 9), np.array([0, 0]), *_csr(caps), VOCAB, k=0)

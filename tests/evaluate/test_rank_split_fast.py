"""rank_split computes each score chunk once; the results equal the plain two-pass algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.evaluate import EncodedSplit, rank_split
from mmsparse.evaluate.retrieval import shared_terms


def _encoded(n_img=17, max_caps=4, D=5, V=30, seed=0, dead_cols=(3, 7, 8)):
    """Quantised vectors (many exact ties); some vocabulary columns are zero on one side."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_caps + 1, size=n_img)
    c2i = np.repeat(np.arange(n_img), counts)
    rng.shuffle(c2i)
    n_cap = c2i.size

    def q(x):
        return np.round(x * 2) / 2

    img_s = q(np.maximum(rng.standard_normal((n_img, V)) - 0.5, 0))
    txt_s = q(np.maximum(rng.standard_normal((n_cap, V)) - 0.5, 0))
    img_s[:, list(dead_cols[:2])] = 0  # never in an image
    txt_s[:, list(dead_cols[2:])] = 0  # never in a caption
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return EncodedSplit(
        image_dense=t(q(rng.standard_normal((n_img, D)))),
        image_sparse=t(img_s),
        text_dense=t(q(rng.standard_normal((n_cap, D)))),
        text_sparse=t(txt_s),
        caption_to_image=torch.tensor(c2i),
        image_ids=[str(i) for i in range(n_img)],
        caption_ids=[str(i) for i in range(n_cap)],
    )


def _two_pass_reference(enc, st, w1, w2):
    """The plain algorithm: full float64 matrix, i2t rank = min over all relevant captions."""
    td, id_ = enc.text_dense.double(), enc.image_dense.double()
    ts, is_ = enc.text_sparse.double(), enc.image_sparse.double()
    S = {"dense": td @ id_.T, "sparse": ts @ is_.T}
    S["hybrid"] = w1 * S["dense"] + w2 * S["sparse"]
    S = S[st]
    c2i = enc.caption_to_image
    n_cap, n_img = S.shape
    cols = torch.arange(n_img)
    gs = S[torch.arange(n_cap), c2i]
    t2i = 1 + (S > gs[:, None]).sum(1) + ((S == gs[:, None]) & (cols[None] < c2i[:, None])).sum(1)
    rows = torch.arange(n_cap)
    i2t = []
    for i in range(n_img):
        ranks = [
            1 + int((S[:, i] > S[g, i]).sum()) + int(((S[:, i] == S[g, i]) & (rows < g)).sum())
            for g in torch.nonzero(c2i == i).flatten().tolist()
        ]
        i2t.append(min(ranks) if ranks else n_cap + 1)
    return t2i, torch.tensor(i2t)


@pytest.mark.parametrize("cache_bytes", [0, None])
@pytest.mark.parametrize("batch_size", [5, 1000])
def test_ranks_equal_the_plain_algorithm(cache_bytes, batch_size):
    enc = _encoded(seed=1)
    S = enc.text_sparse @ enc.image_sparse.T
    gold = S[torch.arange(S.shape[0]), enc.caption_to_image][:, None]
    assert int((S == gold).sum()) > 2 * S.shape[0]  # many ties with the relevant image
    ranks, _ = rank_split(enc, w1=0.5, w2=1.5, batch_size=batch_size, cache_bytes=cache_bytes)
    for st in ("dense", "sparse", "hybrid"):
        t2i, i2t = _two_pass_reference(enc, st, 0.5, 1.5)
        torch.testing.assert_close(ranks["t2i"][st], t2i, msg=st)
        torch.testing.assert_close(ranks["i2t"][st], i2t, msg=st)


def test_image_without_captions_ranks_last():
    enc = _encoded(seed=2)
    keep = enc.caption_to_image != 0  # image 0 loses its captions
    enc = EncodedSplit(
        enc.image_dense,
        enc.image_sparse,
        enc.text_dense[keep],
        enc.text_sparse[keep],
        enc.caption_to_image[keep],
        enc.image_ids,
        [c for c, k in zip(enc.caption_ids, keep.tolist()) if k],
    )
    ranks, _ = rank_split(enc, w1=1.0, w2=1.0)
    assert int(ranks["i2t"]["sparse"][0]) == int(keep.sum()) + 1


def test_cached_and_recomputed_passes_agree_with_trec_lists():
    enc = _encoded(n_img=40, seed=3)
    a = rank_split(enc, w1=0.3, w2=0.7, batch_size=7, trec_depth=9, cache_bytes=0)
    b = rank_split(enc, w1=0.3, w2=0.7, batch_size=7, trec_depth=9, cache_bytes=1 << 30)
    for d in ("t2i", "i2t"):
        for st in ("dense", "sparse", "hybrid"):
            assert torch.equal(a[0][d][st], b[0][d][st])
            assert torch.equal(a[1][d][st][0], b[1][d][st][0])
            assert torch.equal(a[1][d][st][1], b[1][d][st][1])


def test_shared_terms_drop_only_one_sided_columns():
    enc = _encoded(V=30, dead_cols=(3, 7, 8))
    ts, is_ = shared_terms(enc.text_sparse, enc.image_sparse)
    active = (enc.text_sparse != 0).any(0) & (enc.image_sparse != 0).any(0)
    assert not active[[3, 7, 8]].any()
    assert ts.shape[1] == is_.shape[1] == int(active.sum()) < 30
    torch.testing.assert_close(ts @ is_.T, enc.text_sparse @ enc.image_sparse.T)
    # Nearly all columns shared: nothing is copied.
    full = torch.ones(3, 10)
    assert shared_terms(full, full)[0] is full

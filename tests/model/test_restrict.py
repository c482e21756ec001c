"""Restricted output vocabulary and the learned sparse scale of the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.errors import CheckpointError
from mmsparse.model import SparseDenseModel

KEPT = np.array([0, 2, 3, 7])


def _model(**kw):
    m = SparseDenseModel(d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=9, **kw)
    m.init_weights(0)
    return m


def test_restricted_head_equals_the_full_head_on_the_kept_terms():
    full, small = _model().double(), _model().double()
    small.restrict_vocabulary(KEPT)
    assert small.n_terms == 4 and small.sparse_head.V.weight.shape == (4, 3)
    h_txt, h_img = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    # the LayerNorm is before V, so dropping rows of V leaves the kept outputs unchanged
    want = full.encode_text(h_txt).sparse.detach().numpy()[:, KEPT]
    got = small.encode_text(h_txt).sparse.detach()
    assert got.shape == (3, 9)  # full vocabulary ids at the public boundary
    np.testing.assert_allclose(got.numpy()[:, KEPT], want, rtol=1e-12)
    dropped = np.setdiff1d(np.arange(9), KEPT)
    assert (got.numpy()[:, dropped] == 0).all()
    out = small(h_img, h_txt)
    assert out.txt_sparse.shape == (3, 4)  # training view: compact columns
    np.testing.assert_allclose(out.txt_sparse.detach().numpy(), want, rtol=1e-12)


def test_restricted_checkpoint_round_trip_and_mismatches(tmp_path):
    small = _model()
    small.restrict_vocabulary(KEPT)
    small.save_pretrained(tmp_path / "small")
    back = SparseDenseModel.from_pretrained(tmp_path / "small")
    assert back.term_ids.tolist() == KEPT.tolist()
    h = torch.randn(2, 5)
    torch.testing.assert_close(back.encode_text(h).sparse, small.encode_text(h).sparse)

    full = _model()
    with pytest.raises(CheckpointError, match="restricted vocabulary but this model has the full"):
        full.load_tensors(back.state_dict(), where="small/model.safetensors")
    with pytest.raises(CheckpointError, match="full vocabulary but this model has a restricted"):
        back.load_tensors(full.state_dict(), where="full/model.safetensors")
    other = _model()
    other.restrict_vocabulary([0, 2, 3, 8])
    with pytest.raises(CheckpointError, match=r"restricted vocabulary \(4 terms\) differs"):
        other.load_tensors(back.state_dict(), where="x")


@pytest.mark.parametrize(
    ("ids", "msg"),
    [([], "at least one term"), ([0, 9], r"must lie in \[0, 9\)"), ([3, 1], "sorted and unique")],
)
def test_bad_term_ids(ids, msg):
    with pytest.raises(CheckpointError, match=msg):
        _model().restrict_vocabulary(ids)


def test_restricting_twice_is_refused():
    m = _model()
    m.restrict_vocabulary(KEPT)
    with pytest.raises(CheckpointError, match="already restricted"):
        m.restrict_vocabulary(KEPT)


def test_sparse_scale_is_saved_and_clamped(tmp_path):
    m = _model(sparse_scale=True)
    assert float(m.sparse_scale().detach()) == pytest.approx(1.0)
    with torch.no_grad():
        m.log_sparse_scale.fill_(50.0)
    m.clamp_temperature()
    assert float(m.sparse_scale().detach()) == pytest.approx(100.0)
    m.save_pretrained(tmp_path / "m")
    back = SparseDenseModel.from_pretrained(tmp_path / "m")
    assert float(back.sparse_scale().detach()) == pytest.approx(100.0)
    assert _model().sparse_scale() == 1.0


def test_stop_gradient_keeps_sparse_losses_out_of_the_dense_heads():
    m = _model()
    h_img, h_txt = torch.randn(3, 6), torch.randn(3, 5)
    out = m(h_img, h_txt, sparse_stop_grad=True)
    (out.img_sparse.sum() + out.txt_sparse.sum()).backward()
    assert m.vision_proj.weight.grad is None or float(m.vision_proj.weight.grad.abs().sum()) == 0
    assert float(m.sparse_head.U.weight.grad.abs().sum()) > 0
    m.zero_grad()
    out = m(h_img, h_txt)
    (out.img_sparse.sum() + out.txt_sparse.sum()).backward()
    assert float(m.vision_proj.weight.grad.abs().sum()) > 0

"""The sparse head reading the backbone features (``model.sparse_input=features``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.errors import CheckpointError
from mmsparse.model import SparseDenseModel


def _model(sparse_input="features"):
    m = SparseDenseModel(
        d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=9, sparse_input=sparse_input
    )
    m.init_weights(0)
    return m.double()


def _reference(h, U, c, gamma, beta, V):
    """float64 ``log(1 + relu(V · LayerNorm(U h + c)))`` in numpy."""
    u = h @ U.T + c
    u = (u - u.mean(1, keepdims=True)) / np.sqrt(u.var(1, keepdims=True) + 1e-5)
    return np.log1p(np.maximum((u * gamma + beta) @ V.T, 0.0))


def test_each_modality_reads_its_own_features_through_its_own_map():
    m = _model()
    head = m.sparse_head
    with torch.no_grad():  # a non-trivial LayerNorm
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.3, 0.3)
    p = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    h_img, h_txt = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    for side, h, encode in (("img", h_img, m.encode_image), ("txt", h_txt, m.encode_text)):
        want = _reference(
            h.numpy(),
            p[f"sparse_head.U_{side}.weight"],
            p[f"sparse_head.U_{side}.bias"],
            p["sparse_head.norm.weight"],
            p["sparse_head.norm.bias"],
            p["sparse_head.V.weight"],
        )
        np.testing.assert_allclose(encode(h).sparse.detach().numpy(), want, rtol=1e-10)
    out = m(h_img, h_txt)  # the training view agrees with the encoders
    torch.testing.assert_close(out.img_sparse, m.encode_image(h_img).sparse)
    torch.testing.assert_close(out.txt_sparse, m.encode_text(h_txt).sparse)


def test_sparse_losses_never_reach_the_dense_heads():
    m = _model()
    out = m(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64))
    (out.img_sparse.sum() + out.txt_sparse.sum()).backward()
    assert all(p.grad is None for p in m.dense_parameters())
    assert m.sparse_head.U_img.weight.grad.abs().sum() > 0
    assert m.sparse_head.U_txt.weight.grad.abs().sum() > 0


def test_round_trip_and_a_clear_error_against_the_other_kind(tmp_path):
    m = _model().float()
    m.save_pretrained(tmp_path / "f")
    back = SparseDenseModel.from_pretrained(tmp_path / "f")
    assert back.sparse_input == "features"
    h = torch.randn(2, 6)
    torch.testing.assert_close(back.encode_image(h).sparse, m.encode_image(h).sparse)
    with pytest.raises(CheckpointError, match=r"missing \['sparse_head.U.bias'"):
        _model("dense").float().load_tensors(back.state_dict(), where="f/model.safetensors")


def test_unknown_sparse_input_is_named():
    with pytest.raises(ValueError, match="sparse_input must be one of dense, features"):
        _model("pixels")

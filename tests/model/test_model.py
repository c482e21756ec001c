from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.errors import CheckpointError
from mmsparse.model import SparseDenseModel


def _model(**kw):
    m = SparseDenseModel(d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=9, **kw)
    m.init_weights(0)
    return m


def test_forward_matches_the_formula_in_float64():
    m = _model().double()
    h = torch.randn(4, 5, dtype=torch.float64)
    out = m.encode_text(h)
    W, b = m.text_proj.weight.detach().numpy(), m.text_proj.bias.detach().numpy()
    e = h.numpy() @ W.T + b
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    U, c = m.sparse_head.U.weight.detach().numpy(), m.sparse_head.U.bias.detach().numpy()
    x = e @ U.T + c
    x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    z = np.log1p(np.maximum(x @ m.sparse_head.V.weight.detach().numpy().T, 0))
    np.testing.assert_allclose(out.dense.detach().numpy(), e, rtol=1e-10)
    np.testing.assert_allclose(out.sparse.detach().numpy(), z, rtol=1e-9, atol=1e-12)
    assert (out.sparse >= 0).all()


def test_forward_names_and_shapes():
    m = _model()
    out = m(torch.randn(3, 6), torch.randn(3, 5))
    assert out.img_dense.shape == (3, 4) and out.txt_sparse.shape == (3, 9)
    torch.testing.assert_close(out.img_dense.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match=r"image features must have shape \(B, 6\)"):
        m.encode_image(torch.randn(3, 5))
    dense_only = m(torch.randn(3, 6), torch.randn(3, 5), with_sparse=False)
    assert dense_only.img_sparse.shape == (3, 0)


def test_init_from_backbone_weights():
    emb = np.arange(27, dtype=np.float32).reshape(9, 3)
    proj = {
        "text_proj.weight": np.ones((4, 5), np.float32),
        "text_proj.bias": np.ones(4, np.float32),
    }
    m = SparseDenseModel(d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=9)
    m.init_weights(1, projections=proj, word_embeddings=emb)
    np.testing.assert_array_equal(m.sparse_head.V.weight.detach().numpy(), emb)
    np.testing.assert_array_equal(m.text_proj.weight.detach().numpy(), proj["text_proj.weight"])
    with pytest.raises(CheckpointError, match="word embeddings have shape"):
        m.init_weights(1, word_embeddings=emb[:5])
    a, b = _model(), _model()
    torch.testing.assert_close(a.vision_proj.weight, b.vision_proj.weight)  # seeded


def test_temperature_clamp():
    m = _model(tau_init=0.07)
    with torch.no_grad():
        m.tau.fill_(5.0)
    m.clamp_temperature()
    assert float(m.tau) == 0.5
    with torch.no_grad():
        m.tau.fill_(-1.0)
    m.clamp_temperature()
    assert float(m.tau) == pytest.approx(0.001)


def test_save_and_load_pretrained(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "ck", vocab_tokens=[f"w{i}" for i in range(9)])
    n = SparseDenseModel.from_pretrained(tmp_path / "ck")
    for (k, a), (_, b) in zip(m.state_dict().items(), n.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    assert (tmp_path / "ck" / "vocab.txt").read_text().split() == [f"w{i}" for i in range(9)]
    with pytest.raises(
        CheckpointError, match="4 vocabulary terms for a model of vocabulary size 9"
    ):
        m.save_pretrained(tmp_path / "x", vocab_tokens=["a"] * 4)


def test_broken_checkpoints_are_refused(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
        SparseDenseModel.from_pretrained(tmp_path / "ck")
    # Without the checksum record (a checkpoint written before it existed), the loader's
    # own checks still catch what they did.
    (tmp_path / "ck" / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match="unreadable or truncated safetensors"):
        SparseDenseModel.from_pretrained(tmp_path / "ck")
    other = SparseDenseModel(d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=12)
    other.save_pretrained(tmp_path / "v12")
    (tmp_path / "v12" / "checksums.json").unlink()
    (tmp_path / "v12" / "model.json").write_text((tmp_path / "ck" / "model.json").read_text())
    with pytest.raises(CheckpointError, match="vocabulary size differs"):
        SparseDenseModel.from_pretrained(tmp_path / "v12")
    (tmp_path / "ck" / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not an mmsparse model config"):
        SparseDenseModel.from_pretrained(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not found"):
        SparseDenseModel.from_pretrained(tmp_path / "nothing")


SPECIAL_VOCAB = ["[PAD]", "[CLS]", "[SEP]", "dog", "beach", "run", "[unused80]", "<s>", "sea"]


def _favour_specials(m: SparseDenseModel, ids: list[int]) -> None:
    """Make the given terms the strongest outputs of every input."""
    with torch.no_grad():
        m.sparse_head.norm.weight.fill_(1.0)
        m.sparse_head.norm.bias.fill_(1.0)
        m.sparse_head.V.weight[ids] = 5.0


def test_blocked_terms_never_activate_in_training_or_encoding():
    m = _model()
    _favour_specials(m, [0, 1, 6])
    assert (m.encode_text(torch.randn(4, 5)).sparse[:, [0, 1, 6]] > 0).all()
    m.block_terms([0, 1, 6])
    z = m.encode_text(torch.randn(4, 5)).sparse
    assert (z[:, [0, 1, 6]] == 0).all() and (z[:, [3, 4]] > 0).any()
    assert (m.encode_image(torch.randn(4, 6)).sparse[:, [0, 1, 6]] == 0).all()
    out = m(torch.randn(4, 6), torch.randn(4, 5))
    out.txt_sparse.sum().backward()
    assert (m.sparse_head.V.weight.grad[[0, 1, 6]] == 0).all()
    assert "sparse_head.blocked" not in m.state_dict()  # not saved: set from the vocabulary


def test_blocked_terms_follow_a_restricted_vocabulary():
    m = _model()
    m.block_terms([0, 1, 6])
    m.restrict_vocabulary(np.array([1, 3, 4, 6, 8]))
    assert m.sparse_head.blocked.tolist() == [True, False, False, True, False]
    _favour_specials(m, [0, 3])
    z = m.encode_text(torch.randn(3, 5)).sparse
    assert z.shape[1] == 9 and (z[:, [0, 1, 6]] == 0).all()


def test_loaded_checkpoint_masks_its_vocabularys_special_tokens(tmp_path):
    m = _model()
    _favour_specials(m, [0, 1, 2, 6, 7])
    m.save_pretrained(tmp_path / "ck", vocab_tokens=SPECIAL_VOCAB)
    n = SparseDenseModel.from_pretrained(tmp_path / "ck")
    z = n.encode_text(torch.randn(8, 5)).sparse
    assert (z[:, [0, 1, 2, 6, 7]] == 0).all() and (z[:, [3, 4, 5, 8]] > 0).any()

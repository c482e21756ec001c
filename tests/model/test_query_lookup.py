"""Inference-free queries in the model: the lookup, restriction, persistence, IDF start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError
from mmsparse.losses.inference_free import idf
from mmsparse.model import SparseDenseModel
from mmsparse.runs import build_model, caption_doc_freq
from tests.helpers import TINY_OVERRIDES

KEPT = np.array([0, 2, 3, 7])


def _model(**kw):
    m = SparseDenseModel(d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=9, **kw)
    m.init_weights(0)
    return m


def test_encode_query_terms_is_the_set_of_terms_times_relu_w():
    m = _model(query_encoder="lookup")
    with torch.no_grad():
        m.query_weight.copy_(torch.tensor([1.0, 2.0, -1.0, 3.0, 0.5, 0.0, 4.0, 2.5, 1.5]))
    q = m.encode_query_terms([[1, 3, 3, 2], [], [8, 99, -1]]).numpy()
    want = np.zeros((3, 9))
    want[0, [1, 3]] = [2.0, 3.0]  # term 2 weighs relu(-1) = 0; a repeat counts once
    want[2, 8] = 1.5  # ids outside the vocabulary are dropped
    np.testing.assert_array_equal(q, want)
    with pytest.raises(ValueError, match="query_encoder=head"):
        _model().encode_query_terms([[1]])


def test_restricted_lookup_keeps_the_kept_terms_weights_and_blocks_specials():
    m = _model(query_encoder="lookup")
    with torch.no_grad():
        m.query_weight.copy_(torch.arange(9, dtype=torch.float32) + 1)
    m.restrict_vocabulary(KEPT)
    assert m.query_weight.shape == (4,)
    np.testing.assert_array_equal(m.query_weight.detach().numpy(), KEPT + 1)
    m.block_terms([3])
    q = m.encode_query_terms([[0, 1, 3, 7]]).numpy()[0]
    want = np.zeros(9)
    want[[0, 7]] = [1.0, 8.0]  # 1 is not a kept term, 3 is a special token
    np.testing.assert_array_equal(q, want)


def test_lookup_weights_round_trip_through_a_checkpoint(tmp_path):
    m = _model(query_encoder="lookup")
    m.restrict_vocabulary(KEPT)
    with torch.no_grad():
        m.query_weight.copy_(torch.tensor([0.5, 1.5, 2.5, 3.5]))
    m.save_pretrained(tmp_path / "m")
    back = SparseDenseModel.from_pretrained(tmp_path / "m")
    assert back.inference_free and back.config_dict()["query_encoder"] == "lookup"
    torch.testing.assert_close(back.query_weight, m.query_weight)
    plain = SparseDenseModel.from_pretrained(_save(_model(), tmp_path / "p"))
    assert not plain.inference_free and plain.config_dict()["query_encoder"] == "head"


def _save(model, path):
    model.save_pretrained(path)
    return path


def test_build_model_starts_the_lookup_at_the_training_captions_idf(tiny_store):
    cfg = apply_overrides(
        RunConfig(),
        [*TINY_OVERRIDES, "model.query_encoder=lookup", "model.vocab_restrict=train-captions"],
    )
    model = build_model(cfg, tiny_store)
    vocab = tiny_store.vocabulary()
    rows = tiny_store.split(cfg.data.train_splits, allow_missing=True).caption_rows
    want = idf(caption_doc_freq(tiny_store, vocab, rows), len(rows))[model.term_ids.numpy()]
    np.testing.assert_allclose(model.query_weight.detach().numpy(), want, rtol=1e-6)
    # by hand for one term: BM25 idf of the captions that hold it
    indptr, indices = tiny_store.caption_token_ids(vocab)
    t = int(model.term_ids[0])
    df = sum(t in indices[indptr[r] : indptr[r + 1]] for r in rows)
    assert float(model.query_weight.detach()[0]) == pytest.approx(
        np.log1p((len(rows) - df + 0.5) / (df + 0.5)), rel=1e-6
    )
    binary = build_model(apply_overrides(cfg, ["model.query_weights=binary"]), tiny_store)
    assert torch.equal(binary.query_weight, torch.ones_like(binary.query_weight))


def test_lookup_options_are_validated():
    with pytest.raises(ConfigError, match="expansion_control"):
        apply_overrides(
            RunConfig(), ["model.query_encoder=lookup", "objective.expansion_control=true"]
        )
    with pytest.raises(ConfigError, match="needs a sparse method"):
        apply_overrides(RunConfig(), ["model.query_encoder=lookup", "objective.method=dense"])
    with pytest.raises(ConfigError, match="'model.query_encoder' must be one of"):
        apply_overrides(RunConfig(), ["model.query_encoder=bm25"])
    with pytest.raises(ConfigError, match="train.query_lr_scale"):
        apply_overrides(RunConfig(), ["train.query_lr_scale=-1"])

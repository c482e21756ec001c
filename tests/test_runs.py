from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError
from mmsparse.runs import build_model


def _own_token_share(model, store, k=5, n=100):
    val = store.split("val")
    vocab = store.vocabulary()
    out = model.encode_text(store.caption_feats[val.caption_rows[:n]]).sparse.detach().numpy()
    share = []
    for i in range(n):
        own = set(vocab.encode(store.caption_texts[val.caption_rows[i]]))
        share.append(len(own & set(np.argsort(-out[i])[:k].tolist())) / k)
    return float(np.mean(share))


def test_token_lstsq_init_starts_on_the_captions_own_words(tiny_store):
    base = apply_overrides(RunConfig(), ["model.dense_dim=16"])
    random = build_model(base, tiny_store)
    aligned = build_model(apply_overrides(base, ["model.sparse_init=token-lstsq"]), tiny_store)
    assert _own_token_share(aligned, tiny_store) > _own_token_share(random, tiny_store) + 0.1
    # only U and c change
    for name in ("text_proj.weight", "vision_proj.weight", "sparse_head.V.weight"):
        np.testing.assert_array_equal(
            aligned.get_parameter(name).detach().numpy(),
            random.get_parameter(name).detach().numpy(),
        )


def test_token_lstsq_init_needs_a_vocabulary(tiny_store):
    store = dataclasses.replace(tiny_store, bundle=None)
    cfg = apply_overrides(
        RunConfig(),
        [
            "model.dense_dim=16",
            "model.vocab_size=50",
            "model.d_word=8",
            "model.sparse_init=token-lstsq",
        ],
    )
    with pytest.raises(ConfigError, match="needs a bundle with a vocabulary"):
        build_model(cfg, store)


def test_hybrid_weights_published_and_integrated():
    import torch

    from mmsparse.config import RunConfig, apply_overrides
    from mmsparse.model import SparseDenseModel
    from mmsparse.runs import hybrid_weights

    model = SparseDenseModel(
        d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=9, sparse_scale=True
    )
    with torch.no_grad():
        model.tau.fill_(0.05)
        model.log_sparse_scale.fill_(float(torch.log(torch.tensor(2.0))))
    cfg = apply_overrides(RunConfig(), ["objective.w1=0.1", "objective.w2=0.2"])
    assert hybrid_weights(cfg, model) == (0.1, 0.2)  # METHOD.md: no temperature at evaluation
    w1, w2 = hybrid_weights(apply_overrides(cfg, ["eval.hybrid=integrated"]), model)
    assert abs(w1 - 0.1 / 0.05) < 1e-5 and abs(w2 - 0.2 * 2.0) < 1e-5

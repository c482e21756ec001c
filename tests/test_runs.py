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

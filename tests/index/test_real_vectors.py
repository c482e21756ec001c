"""The inverted engine on vectors computed from the real Flickr8k features (skipped if absent)."""

from __future__ import annotations

import numpy as np

from mmsparse.data import load_feature_store
from mmsparse.index.encode import encode_vectors
from mmsparse.index.inverted import POSTINGS_NAME, InvertedIndex, write_postings
from mmsparse.model.model import SparseDenseModel
from tests.index.conftest import flickr8k_or_skip


def test_inverted_equals_brute_force_on_flickr8k_vectors(tmp_path):
    root = flickr8k_or_skip()
    store = load_feature_store(root)
    val = store.split("val")
    model = SparseDenseModel(
        d_img=store.d_img, d_txt=store.d_txt, dense_dim=64, d_word=32, vocab_size=5000
    )
    model.init_weights(0)
    _, docs = encode_vectors(model, store.image_feats[val.image_rows], "image", topk=120)
    _, queries = encode_vectors(model, store.caption_feats[val.caption_rows[:300]], "text", topk=25)
    write_postings(tmp_path / POSTINGS_NAME, docs)
    hits = InvertedIndex(tmp_path / POSTINGS_NAME).search_batch(queries, k=10)
    ref = (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    for i in range(queries.shape[0]):
        rows, scores = hits.query(i)
        want = np.lexsort((np.arange(ref.shape[1]), -ref[i]))[:10]
        np.testing.assert_allclose(scores, ref[i][rows], rtol=1e-5)
        np.testing.assert_allclose(ref[i][rows], ref[i][want], rtol=1e-5)

"""The inverted engine on vectors computed from the real Flickr8k features (skipped if absent)."""

from __future__ import annotations

import numpy as np

from mmsparse.index.inverted import POSTINGS_NAME, InvertedIndex, write_postings
from tests.helpers import flickr8k_vectors


def test_inverted_equals_brute_force_on_flickr8k_vectors(tmp_path):
    docs, queries = flickr8k_vectors(300)
    write_postings(tmp_path / POSTINGS_NAME, docs)
    hits = InvertedIndex(tmp_path / POSTINGS_NAME).search_batch(queries, k=10)
    ref = (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    for i in range(queries.shape[0]):
        rows, scores = hits.query(i)
        want = np.lexsort((np.arange(ref.shape[1]), -ref[i]))[:10]
        np.testing.assert_allclose(scores, ref[i][rows], rtol=1e-5)
        np.testing.assert_allclose(ref[i][rows], ref[i][want], rtol=1e-5)

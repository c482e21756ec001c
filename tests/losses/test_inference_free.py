"""Inference-free query vectors and IDF against float64 references."""

from __future__ import annotations

import numpy as np
import torch

from mmsparse.losses.inference_free import idf, lookup_queries


def test_idf_matches_float64_reference():
    df = np.array([0, 1, 10, 99, 100])
    n = 100
    want = [math_log1p((n - d + 0.5) / (d + 0.5)) for d in df]
    np.testing.assert_allclose(idf(df, n), want, rtol=1e-12)
    assert np.all(idf(df, n) > 0) and np.all(np.diff(idf(df, n)) < 0)


def math_log1p(x: float) -> float:
    import math

    return math.log(1.0 + x)


def test_lookup_queries_weigh_each_own_term_by_relu_w():
    rng = np.random.default_rng(0)
    M = (rng.uniform(size=(5, 11)) < 0.4).astype(np.float64)
    w = rng.standard_normal(11)
    want = np.array([[M[b, v] * max(w[v], 0.0) for v in range(11)] for b in range(5)])
    got = lookup_queries(torch.tensor(M), torch.tensor(w))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_lookup_scores_are_idf_weighted_matches_and_the_weights_learn():
    # score(image, caption) = sum over the caption's terms of relu(w_v) z_v
    Z = torch.tensor([[0.5, 0.0, 2.0, 1.0]])
    M = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    w = torch.tensor([2.0, 3.0, 5.0, -1.0], requires_grad=True)
    score = (lookup_queries(M, w) @ Z.T).sum()
    # term 1 is absent from the image, term 3 weighs relu(-1) = 0
    assert float(score.detach()) == 2.0 * 0.5
    score.backward()
    np.testing.assert_allclose(w.grad.numpy(), [0.5, 0.0, 0.0, 0.0])

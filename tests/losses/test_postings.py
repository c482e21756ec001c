"""DF-FLOPS, the caption gate and the annealed cap against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmsparse.losses import flops_reg, sparsity_penalty
from mmsparse.losses.postings import (
    annealed_topk,
    batch_doc_freq,
    caption_gate,
    df_flops,
    df_weight,
    weighted_flops,
)


def _Z(seed: int, shape=(12, 9)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.log1p(np.maximum(rng.standard_normal(shape), 0))  # about half the entries 0


def _a(x: float, alpha: float, beta: float) -> float:
    """DF-FLOPS's activation, written out in float64."""
    if x == 0:
        return 0.0
    return 1.0 / (1.0 + (x ** (math.log(2) / math.log(alpha)) - 1.0) ** beta)


def test_weighted_flops_matches_float64_reference():
    Z = _Z(1)
    w = np.random.default_rng(2).uniform(0, 2, Z.shape[1])
    want = sum(w[v] * np.mean(Z[:, v]) ** 2 for v in range(Z.shape[1]))
    got = weighted_flops(torch.tensor(Z), torch.tensor(w))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # unit weights: SPLADE's FLOPS
    np.testing.assert_allclose(
        float(weighted_flops(torch.tensor(Z), torch.ones(Z.shape[1]))),
        float(flops_reg(torch.tensor(Z))),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="at least 2 rows"):
        weighted_flops(torch.ones(1, 3), torch.ones(3))


@pytest.mark.parametrize(("alpha", "beta"), [(0.1, 2.0), (0.3, 1.0), (0.05, 4.0)])
def test_df_weight_matches_float64_reference(alpha, beta):
    xs = np.sort(np.array([0.0, 1e-3, 0.02, alpha, 0.2, 0.5, 0.9, 1.0]))
    got = df_weight(torch.tensor(xs), alpha, beta).numpy()
    want = np.array([_a(x, alpha, beta) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # the published shape: 0 for an unused term, 1/2 at alpha, 1 for a term in every vector
    assert got[0] == 0 and got[-1] == pytest.approx(1.0)
    assert float(df_weight(torch.tensor([alpha]), alpha, beta)) == pytest.approx(0.5)
    assert np.all(np.diff(got) >= 0)
    with pytest.raises(ValueError, match="0 < alpha < 1"):
        df_weight(torch.tensor([0.5]), 1.5, 2.0)


def test_df_flops_matches_float64_reference():
    Z = _Z(3)
    alpha, beta = 0.3, 2.0
    df = (Z > 0).mean(axis=0)
    want = sum(_a(df[v], alpha, beta) * np.mean(Z[:, v]) ** 2 for v in range(Z.shape[1]))
    got = df_flops(torch.tensor(Z), alpha, beta)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(
        float(sparsity_penalty(torch.tensor(Z), "df-flops", alpha, beta)), want, rtol=1e-5
    )
    np.testing.assert_allclose(batch_doc_freq(torch.tensor(Z)).numpy(), df, rtol=1e-7)


def test_df_flops_spares_rare_terms_and_takes_no_gradient_through_the_weights():
    # same FLOPS: a term at 1 in every row vs a term at B in one row
    B = 16
    common = torch.zeros(B, 2)
    common[:, 0] = 1.0
    rare = torch.zeros(B, 2)
    rare[0, 1] = float(B)
    assert float(flops_reg(common)) == pytest.approx(float(flops_reg(rare)))
    assert float(df_flops(rare, 0.1, 2.0)) < float(df_flops(common, 0.1, 2.0))
    Z = torch.tensor(_Z(4), requires_grad=True)
    df_flops(Z, 0.1, 2.0).backward()
    w = df_weight(batch_doc_freq(Z), 0.1, 2.0)
    # d/dz_bv of w_v (mean_b |z_bv|)^2 = 2 w_v mean_v sign(z_bv) / B (|z|' = 0 at 0)
    want = 2 * w * Z.detach().mean(dim=0) / Z.shape[0] * (Z.detach() > 0)
    np.testing.assert_allclose(Z.grad.numpy(), want.numpy(), rtol=1e-5)


def test_caption_gate_matches_float64_reference():
    Z = _Z(5)
    G = (np.random.default_rng(6).uniform(size=Z.shape) < 0.3).astype(np.float64)
    want = np.mean([sum((1 - G[b, v]) * Z[b, v] for v in range(Z.shape[1])) for b in range(len(Z))])
    got = caption_gate(torch.tensor(Z), torch.tensor(G))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # an image whose every activation is a term of its captions costs nothing
    assert float(caption_gate(torch.tensor(Z), torch.tensor((Z > 0).astype(float)))) == 0.0


def test_annealed_topk_falls_linearly_to_the_serving_cap():
    ks = [annealed_topk(32, s, 100, 4.0, 0.5, 6000) for s in (0, 25, 50, 99)]
    assert ks == [128, 80, 32, 32]
    assert annealed_topk(32, 0, 100, 1.0, 0.5, 6000) == 32  # factor 1: fixed
    assert annealed_topk(None, 0, 100, 4.0, 0.5, 6000) is None  # no cap
    assert annealed_topk(32, 0, 100, 4.0, 0.5, 100) == 100  # never beyond the head

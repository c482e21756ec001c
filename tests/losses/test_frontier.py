"""The frontier options of the objective against float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.losses import d2s_objective, flops_reg, joint_objective, sparsity_penalty
from mmsparse.losses.lexical import lexical_grounding
from mmsparse.sparse import prune
from tests.losses.test_joint import _H, _batch, _softmax_rows, reference


def _t(*arrays):
    return [torch.tensor(a) for a in arrays]


def test_flops_reg_matches_float64_reference():
    rng = np.random.default_rng(1)
    Z = np.log1p(np.maximum(rng.standard_normal((9, 13)), 0))
    want = sum(np.mean(Z[:, v]) ** 2 for v in range(Z.shape[1]))  # sum_v (mean_b z_bv)^2
    got = flops_reg(torch.tensor(Z))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    np.testing.assert_allclose(float(sparsity_penalty(torch.tensor(Z), "flops")), want, rtol=1e-6)
    l1_want = np.mean(Z.sum(axis=1))
    np.testing.assert_allclose(float(sparsity_penalty(torch.tensor(Z), "l1")), l1_want, rtol=1e-6)


def test_flops_penalises_shared_terms_more_than_l1():
    # same total weight: one term shared by every row vs each row its own term
    shared = torch.zeros(4, 4)
    shared[:, 0] = 1.0
    own = torch.eye(4)
    assert float(sparsity_penalty(shared, "l1")) == float(sparsity_penalty(own, "l1"))
    assert float(flops_reg(shared)) == pytest.approx(4 * float(flops_reg(own)))


def test_flops_reg_refuses_a_batch_of_one_and_unknown_kinds():
    with pytest.raises(ValueError, match="at least 2 rows"):
        flops_reg(torch.ones(1, 5))
    with pytest.raises(ValueError, match="objective.reg must be one of l1, flops"):
        sparsity_penalty(torch.ones(2, 5), "l2")


@pytest.mark.parametrize("mode", ["official", "joint", "detached"])
@pytest.mark.parametrize("s", [0.3, 1.0, 7.5])
def test_joint_objective_with_sparse_scale_matches_float64_reference(mode, s):
    E_img, E_txt, Z_img, Z_txt = _batch(seed=4)
    # S_s = s Z_img Z_txt^T: the reference with Z_img scaled by s
    want = reference(E_img, E_txt, s * Z_img, Z_txt, 0.05, 0.4, 0.2, 0.7, 0.3, mode)
    got = joint_objective(
        *_t(E_img, E_txt, Z_img, Z_txt),
        tau=0.05,
        w1=0.4,
        w2=0.2,
        lam1=0.7,
        lam2=0.3,
        distill_teacher=mode,
        sparse_scale=torch.tensor(s, dtype=torch.float64),
    )
    for k, v in want.items():
        np.testing.assert_allclose(float(got[k]), v, rtol=1e-5, err_msg=k)


def test_d2s_with_sparse_scale_matches_float64_reference():
    E_img, E_txt, Z_img, Z_txt = _batch(seed=5)
    s, tau = 3.0, 0.07
    S_d = E_img @ E_txt.T / tau
    S_s = s * Z_img @ Z_txt.T
    want = (_H(_softmax_rows(S_d), S_s) + _H(_softmax_rows(S_d.T), S_s.T)) / 2
    got = d2s_objective(*_t(E_img, E_txt, Z_img, Z_txt), tau=tau, sparse_scale=s)
    np.testing.assert_allclose(float(got["loss"]), want, rtol=1e-6)


def test_learned_scale_gets_a_gradient():
    E_img, E_txt, Z_img, Z_txt = _t(*_batch(seed=6))
    log_s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    out = joint_objective(
        E_img,
        E_txt,
        Z_img,
        Z_txt,
        tau=0.05,
        w1=1,
        w2=0.2,
        lam1=0.7,
        lam2=0.7,
        sparse_scale=log_s.exp(),
    )
    out["loss"].backward()
    assert log_s.grad is not None and float(log_s.grad.abs()) > 0


def test_lexical_grounding_matches_float64_reference():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 8)) * 3
    M = (rng.random((5, 8)) < 0.3).astype(np.float64)
    M[2] = 0  # a row without a target is skipped
    M[0, 0] = 1
    logp = X - X.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    rows = [b for b in range(5) if M[b].sum() > 0]
    want = np.mean([-(M[b] / M[b].sum() * logp[b]).sum() for b in rows])
    got = lexical_grounding(torch.tensor(X), torch.tensor(M))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    assert float(lexical_grounding(torch.tensor(X), torch.zeros(5, 8))) == 0.0


def test_lexical_grounding_gives_inactive_targets_a_gradient():
    X = torch.full((1, 4), -2.0, requires_grad=True)  # every term inactive (relu would be 0)
    lexical_grounding(X, torch.tensor([[0.0, 1.0, 0.0, 0.0]])).backward()
    assert float(X.grad[0, 1]) < 0  # descent raises the target's logit


def test_training_cap_keeps_the_k_largest_and_their_gradient():
    rng = np.random.default_rng(3)
    Z = torch.tensor(np.abs(rng.standard_normal((3, 10))), requires_grad=True)
    capped = prune(Z, 4)
    ref = Z.detach().numpy().copy()
    for row in ref:
        row[np.argsort(-row)[4:]] = 0.0
    np.testing.assert_array_equal(capped.detach().numpy(), ref)
    capped.sum().backward()
    np.testing.assert_array_equal(Z.grad.numpy(), (ref > 0).astype(np.float64))


@pytest.mark.parametrize("beta", [0.0, 0.25, 3.0])
def test_contrastive_weight_matches_float64_reference(beta):
    E_img, E_txt, Z_img, Z_txt = _batch(seed=6)
    ref = reference(E_img, E_txt, Z_img, Z_txt, 0.05, 1.0, 0.2, 0.7, 0.7, "detached")
    want = (beta * ref["contrastive"] + ref["distill"]) / 2  # loss = (beta L + L') / 2
    kw = dict(tau=0.05, w1=1.0, w2=0.2, lam1=0.7, lam2=0.7, distill_teacher="detached")
    got = joint_objective(*_t(E_img, E_txt, Z_img, Z_txt), **kw, contrastive_weight=beta)
    np.testing.assert_allclose(float(got["loss"]), want, rtol=1e-6)
    np.testing.assert_allclose(float(got["contrastive"]), ref["contrastive"], rtol=1e-6)
    np.testing.assert_allclose(float(got["distill"]), ref["distill"], rtol=1e-6)

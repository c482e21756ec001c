"""The objectives against an independent float64 numpy reference written from METHOD.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.losses import d2s_objective, dense_objective, joint_objective


def _log_softmax_rows(S):
    m = S.max(axis=1, keepdims=True)
    return S - m - np.log(np.exp(S - m).sum(axis=1, keepdims=True))


def _softmax_rows(S):
    return np.exp(_log_softmax_rows(S))


def _ce_diag(S):
    # mean over rows of -log softmax(S)_ii
    return float(np.mean([-_log_softmax_rows(S)[i, i] for i in range(S.shape[0])]))


def _nce(S):
    return (_ce_diag(S) + _ce_diag(S.T)) / 2


def _H(P, S):
    return float(np.mean(-(P * _log_softmax_rows(S)).sum(axis=1)))


def reference(E_img, E_txt, Z_img, Z_txt, tau, w1, w2, lam1, lam2, mode):
    S_d = E_img @ E_txt.T / tau
    S_s = Z_img @ Z_txt.T
    S_i = w1 * S_d + w2 * S_s
    L = (lam1 * _nce(S_d) + lam2 * _nce(S_s) + _nce(S_i)) / 2
    P_i2t = _softmax_rows(S_i)
    P_t2i = P_i2t if mode == "official" else _softmax_rows(S_i.T)

    def kd(S):
        return (_H(P_i2t, S) + _H(P_t2i, S.T)) / 2

    Lp = (lam1 * kd(S_d) + lam2 * kd(S_s)) / 2
    return {"loss": (L + Lp) / 2, "contrastive": L, "distill": Lp}


def _batch(B=7, D=5, V=11, seed=0):
    rng = np.random.default_rng(seed)
    E_img = rng.standard_normal((B, D))
    E_img /= np.linalg.norm(E_img, axis=1, keepdims=True)
    E_txt = rng.standard_normal((B, D))
    E_txt /= np.linalg.norm(E_txt, axis=1, keepdims=True)
    Z_img = np.log1p(np.maximum(rng.standard_normal((B, V)), 0))
    Z_txt = np.log1p(np.maximum(rng.standard_normal((B, V)), 0))
    return E_img, E_txt, Z_img, Z_txt


@pytest.mark.parametrize("mode", ["official", "joint", "detached"])
@pytest.mark.parametrize("seed", [0, 1])
def test_joint_objective_matches_float64_reference(mode, seed):
    arrays = _batch(seed=seed)
    kw = dict(tau=0.07, w1=0.1, w2=0.2, lam1=0.7, lam2=0.3)
    ref = reference(*arrays, **kw, mode=mode)
    t = [torch.tensor(a, dtype=torch.float32) for a in arrays]
    out = joint_objective(*t, **kw, distill_teacher=mode)
    for key in ("loss", "contrastive", "distill"):
        assert float(out[key]) == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key


def test_official_differs_from_joint_only_in_the_transpose():
    arrays = [torch.tensor(a, dtype=torch.float32) for a in _batch(seed=3)]
    kw = dict(tau=0.1, w1=0.3, w2=0.5, lam1=0.5, lam2=0.5)
    off = joint_objective(*arrays, **kw, distill_teacher="official")
    joi = joint_objective(*arrays, **kw, distill_teacher="joint")
    det = joint_objective(*arrays, **kw, distill_teacher="detached")
    assert float(off["contrastive"]) == pytest.approx(float(joi["contrastive"]))
    assert float(joi["distill"]) == pytest.approx(float(det["distill"]))  # same value, other grads
    assert abs(float(off["distill"]) - float(joi["distill"])) > 1e-4


def _grads(mode):
    arrays = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in _batch(seed=4)]
    out = joint_objective(
        *arrays, tau=0.1, w1=0.3, w2=0.5, lam1=0.5, lam2=0.5, distill_teacher=mode
    )
    out["distill"].backward()
    return [a.grad.clone() for a in arrays]


def test_detached_teacher_gets_no_distillation_gradient_through_the_teacher():
    # With a detached teacher, d(distill)/d(inputs) only flows through the students, so it
    # equals the gradient computed with the teacher replaced by a constant copy.
    arrays = [torch.tensor(a, dtype=torch.float32) for a in _batch(seed=4)]
    from mmsparse.losses.joint import H, scores

    E_img, E_txt, Z_img, Z_txt = (a.clone().requires_grad_(True) for a in arrays)
    S_d = scores(E_img, E_txt) / 0.1
    S_s = scores(Z_img, Z_txt)
    S_i = (0.3 * S_d + 0.5 * S_s).detach()
    P, Q = torch.softmax(S_i, 1), torch.softmax(S_i.T, 1)
    manual = (0.5 * (H(P, S_d) + H(Q, S_d.T)) / 2 + 0.5 * (H(P, S_s) + H(Q, S_s.T)) / 2) / 2
    manual.backward()
    det = _grads("detached")
    for g, a in zip(det, (E_img, E_txt, Z_img, Z_txt)):
        torch.testing.assert_close(g, a.grad, rtol=1e-5, atol=1e-6)
    joint = _grads("joint")
    assert any((g1 - g2).abs().max() > 1e-6 for g1, g2 in zip(det, joint))


def test_no_distill_ablation_is_half_the_contrastive_part():
    arrays = [torch.tensor(a, dtype=torch.float32) for a in _batch(seed=5)]
    out = joint_objective(*arrays, tau=0.07, w1=0.1, w2=0.2, lam1=0.7, lam2=0.7, distill=False)
    ref = reference(*_batch(seed=5), tau=0.07, w1=0.1, w2=0.2, lam1=0.7, lam2=0.7, mode="joint")
    assert float(out["distill"]) == 0.0
    assert float(out["loss"]) == pytest.approx(ref["contrastive"] / 2, rel=1e-5)


def test_d2s_and_dense_objectives():
    E_img, E_txt, Z_img, Z_txt = _batch(seed=6)
    tau = 0.05
    S_d = E_img @ E_txt.T / tau
    S_s = Z_img @ Z_txt.T
    ref = (_H(_softmax_rows(S_d), S_s) + _H(_softmax_rows(S_d.T), S_s.T)) / 2
    t = [
        torch.tensor(a, dtype=torch.float32, requires_grad=True)
        for a in (E_img, E_txt, Z_img, Z_txt)
    ]
    out = d2s_objective(*t, tau=tau)
    assert float(out["loss"].detach()) == pytest.approx(ref, rel=1e-5)
    out["loss"].backward()
    assert t[0].grad is None or float(t[0].grad.abs().max()) == 0.0  # frozen teacher
    dense = dense_objective(t[0], t[1], tau=tau)
    assert float(dense["loss"].detach()) == pytest.approx(_nce(S_d), rel=1e-5)


def test_hand_computed_two_by_two():
    # S = [[2, 0], [0, 2]]: CE of each row = log(1 + e^-2); nce equals it.
    E = torch.eye(2)
    out = dense_objective(E, E, tau=0.5)
    assert float(out["loss"]) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)


def test_bad_teacher_mode():
    arrays = [torch.tensor(a, dtype=torch.float32) for a in _batch()]
    with pytest.raises(ValueError, match="distill_teacher"):
        joint_objective(*arrays, tau=0.1, w1=1, w2=1, lam1=1, lam2=1, distill_teacher="x")

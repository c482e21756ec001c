from __future__ import annotations

import pytest
import torch

from mmsparse.losses import QuadraticWarmup, SparsityRegularizer, flops_reg, l1


def test_quadratic_warmup_by_hand():
    eta = QuadraticWarmup(eta_max=2.0, T=10)
    assert [eta(s) for s in (0, 5, 10, 20)] == [0.0, 0.5, 2.0, 2.0]
    assert QuadraticWarmup(3.0, 0)(0) == 3.0


def test_l1_and_flops_by_hand():
    Z = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    assert float(l1(Z)) == pytest.approx(3.0)  # (3 + 3) / 2
    assert float(flops_reg(Z)) == pytest.approx(0.5**2 + 1.5**2 + 1.0**2)


def test_regularizer_schedule_and_state():
    reg = SparsityRegularizer(q_reg=1e-2, d_reg=4e-2, total_steps=100, warmup_frac=0.2)
    Zt = torch.ones(2, 5)
    Zi = torch.ones(2, 5) * 2
    assert float(reg(Zt, Zi)["reg"]) == 0.0
    for _ in range(10):
        reg.step_once()
    # step 10 of T=20: eta = eta_max / 4
    terms = reg(Zt, Zi)
    assert float(terms["reg"]) == pytest.approx((1e-2 / 4 * 5 + 4e-2 / 4 * 10) / 2)
    assert float(terms["l1_txt"]) == 5.0 and float(terms["l1_img"]) == 10.0
    other = SparsityRegularizer(0, 0, 1)
    other.load_state_dict(reg.state_dict())
    assert other.step == 10 and other.eta_t(20) == pytest.approx(1e-2)

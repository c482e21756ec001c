"""The issue-20 options in the objective table against float64 references: per-side
regulariser kinds with DF-FLOPS, the caption gate, the annealed cap, lookup captions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mmsparse.config import ObjectiveConfig
from mmsparse.errors import ConfigError
from mmsparse.losses import Objective, term_names
from tests.losses.test_joint import _batch, reference
from tests.losses.test_objective import _l1, _lex, _out


def _cfg(**kw):
    return dataclasses.replace(ObjectiveConfig(), **kw)


def _df_flops(Z, alpha, beta):
    df = (Z > 0).mean(axis=0)
    a = np.where(
        df > 0,
        1 / (1 + (np.maximum(df, 1e-300) ** (math.log(2) / math.log(alpha)) - 1) ** beta),
        0,
    )
    return float((a * np.abs(Z).mean(axis=0) ** 2).sum())


def _csr(rows):
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    return indptr, np.array([c for r in rows for c in r], dtype=np.int64)


def test_gate_and_per_side_df_flops_match_float64_reference():
    E_img, E_txt, Z_img, Z_txt = _batch(seed=21)
    B, V = Z_img.shape
    rng = np.random.default_rng(22)
    gate_rows = [sorted(rng.choice(V, size=3, replace=False).tolist()) for _ in range(B)]
    G = np.zeros((B, V))
    for b, r in enumerate(gate_rows):
        G[b, r] = 1
    tau, eta_t, eta_i, gw, alpha, beta = 0.07, 0.3, 0.05, 0.02, 0.3, 1.5
    cfg = _cfg(
        w1=0.2,
        w2=0.3,
        lam1=0.8,
        lam2=0.4,
        reg_text="l1",
        reg_image="df-flops",
        df_alpha=alpha,
        df_beta=beta,
        gate_weight=gw,
    )
    assert term_names(cfg)[-1] == "gate"
    obj = Objective(cfg, n_terms=V, total_steps=10, image_terms=lambda: _csr(gate_rows))
    inputs = obj.step_inputs(torch.arange(B), 3)._replace(eta=torch.tensor([eta_t, eta_i]))
    torch.testing.assert_close(inputs.gate, torch.tensor(G, dtype=torch.float32))
    got = obj(_out((E_img, E_txt, Z_img, Z_txt), tau), inputs)
    ref = reference(E_img, E_txt, Z_img, Z_txt, tau, 0.2, 0.3, 0.8, 0.4, "detached")
    loss = (ref["contrastive"] + ref["distill"]) / 2
    reg = (eta_t * _l1(Z_txt) + eta_i * _df_flops(Z_img, alpha, beta)) / 2
    gate = float(np.mean(((1 - G) * Z_img).sum(axis=1)))
    want = {"loss": loss, "reg": reg, "gate": gate, "total": loss + reg + gw * gate}
    for k, v in want.items():
        np.testing.assert_allclose(float(got[k]), v, rtol=2e-5, atol=1e-7, err_msg=k)


def test_lookup_captions_keep_only_the_image_half_of_lexical_grounding():
    E_img, E_txt, Z_img, Z_txt = _batch(seed=23)
    rng = np.random.default_rng(24)
    X_img = rng.standard_normal(Z_img.shape)
    M = (rng.random(Z_img.shape) < 0.4).astype(np.float64)
    obj = Objective(
        _cfg(lexical_weight=0.5),
        n_terms=Z_img.shape[1],
        total_steps=10,
        caption_terms=lambda content_only: _csr([[0, 1]] * Z_img.shape[0]),
        query_lookup=True,
    )
    inputs = obj.step_inputs(torch.arange(Z_img.shape[0]), 0)
    assert inputs.query_mask is not None and inputs.query_mask[:, :2].eq(1).all()
    inputs = inputs._replace(lexical_target=torch.tensor(M, dtype=torch.float32))
    out = _out((E_img, E_txt, Z_img, Z_txt), 0.07, (X_img, X_img))
    out = dataclasses.replace(out, txt_logits=None)  # what the model returns for lookups
    got = obj(out, inputs)
    np.testing.assert_allclose(float(got["lexical"]), _lex(X_img, M) / 2, rtol=2e-5)


def test_annealed_caps_reach_the_serving_caps():
    obj = Objective(
        _cfg(train_text_topk=2, train_image_topk=3, topk_anneal_factor=3.0, topk_anneal_frac=0.5),
        n_terms=8,
        total_steps=20,
    )
    assert obj.train_topk(0) == (6, 8) and obj.train_topk(10) == (2, 3)
    assert Objective(_cfg(train_image_topk=3), n_terms=8, total_steps=20).train_topk(0) is None
    # the step's inputs carry the caps the objective prunes with
    obj = Objective(_cfg(train_image_topk=2, topk_anneal_factor=2.0), n_terms=8, total_steps=4)
    assert obj.step_inputs(torch.arange(3), 0).topk == (None, 4)


def test_gate_needs_a_named_vocabulary():
    with pytest.raises(ConfigError, match="gate_weight > 0 needs a named vocabulary"):
        Objective(_cfg(gate_weight=0.1), n_terms=4, total_steps=5)

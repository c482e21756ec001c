"""The objective training runs (losses/objective.py) against float64 references.

These test the code the trainer calls: the method table, the regulariser with its step
weights, expansion control's global-batch draw and lexical grounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmsparse.config import METHODS as CONFIG_METHODS
from mmsparse.config import ObjectiveConfig
from mmsparse.errors import ConfigError
from mmsparse.losses import METHODS, ExpansionControl, Objective, padded_token_ids, term_names
from mmsparse.model.model import ModelOutput, SparseDenseModel
from tests.helpers import WHAT_TRAINS
from tests.losses.test_joint import _H, _batch, _nce, _softmax_rows, reference

# The names and order metrics.jsonl has always had (old runs and resume rely on them).
JOINT = (
    "loss",
    "contrastive",
    "distill",
    "nce_dense",
    "nce_sparse",
    "nce_integrated",
    "kd_dense",
    "kd_sparse",
    "reg",
    "l1_txt",
    "l1_img",
    "total",
)
LOGGED = {
    "joint": JOINT,
    "no_distill": JOINT,
    "frozen_dense": JOINT,
    "d2s": ("loss", "distill", "reg", "l1_txt", "l1_img", "total"),
    "dense": ("loss", "contrastive", "total"),
}


def _cfg(method="joint", **kw):
    return dataclasses.replace(ObjectiveConfig(), method=method, **kw)


def test_every_config_method_has_one_row():
    assert set(METHODS) == set(CONFIG_METHODS)


@pytest.mark.parametrize("method", sorted(LOGGED))
def test_logged_term_names_and_order_are_unchanged(method):
    assert term_names(_cfg(method)) == LOGGED[method]
    both = _cfg(method, lexical_weight=0.5, sparse_scale="learned")
    extra = () if method == "dense" else ("lexical", "sparse_scale")
    assert term_names(both) == LOGGED[method] + extra
    assert term_names(_cfg(method, sparse_scale="learned")) == LOGGED[method] + extra[1:]


@pytest.mark.parametrize("method,dense,sparse,tau", WHAT_TRAINS)
def test_the_table_says_what_trains(method, dense, sparse, tau):
    m = SparseDenseModel(d_img=4, d_txt=3, dense_dim=2, d_word=2, vocab_size=5, sparse_scale=True)
    params = METHODS[method].set_trainable(m)
    assert all(p.requires_grad == dense for p in m.dense_parameters())
    assert all(p.requires_grad == sparse for p in m.sparse_head.parameters())
    assert m.tau.requires_grad == tau and m.log_sparse_scale.requires_grad
    assert {id(p) for p in params} == {id(p) for p in m.parameters() if p.requires_grad}


def _l1(Z):
    return float(np.mean(np.abs(Z).sum(axis=1)))


def _flops(Z):
    return float((np.abs(Z).mean(axis=0) ** 2).sum())


def _lex(X, M):
    logp = X - X.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    rows = [b for b in range(X.shape[0]) if M[b].sum() > 0]
    if not rows:
        return 0.0
    return float(np.mean([-(M[b] / M[b].sum() * logp[b]).sum() for b in rows]))


def _out(arrays, tau, logits=None):
    t = [torch.tensor(a, dtype=torch.float32) for a in arrays]
    x = [None, None] if logits is None else [torch.tensor(a, dtype=torch.float32) for a in logits]
    return ModelOutput(*t, torch.tensor(tau), *x)


@pytest.mark.parametrize("reg", ["l1", "flops"])
@pytest.mark.parametrize("method", ["joint", "no_distill", "frozen_dense", "d2s", "dense"])
def test_total_matches_float64_reference(method, reg):
    E_img, E_txt, Z_img, Z_txt = _batch(seed=11)
    rng = np.random.default_rng(12)
    X_img, X_txt = rng.standard_normal(Z_img.shape) * 2, rng.standard_normal(Z_txt.shape) * 2
    M = (rng.random(Z_img.shape) < 0.3).astype(np.float64)
    M[1] = 0  # a caption without content words
    tau, s, eta_t, eta_i, lex_w = 0.07, 1.7, 0.3, 0.05, 0.4
    cfg = _cfg(
        method,
        w1=0.2,
        w2=0.3,
        lam1=0.8,
        lam2=0.4,
        reg=reg,
        lexical_weight=lex_w,
        sparse_scale="learned",
        contrastive_weight=0.6,
    )
    obj = Objective(
        cfg,
        n_terms=Z_img.shape[1],
        total_steps=10,
        caption_terms=lambda content_only: (
            np.zeros(Z_img.shape[0] + 1, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        ),
    )
    inputs = obj.step_inputs(torch.arange(Z_img.shape[0]), 3)
    inputs = inputs._replace(
        eta=torch.tensor([eta_t, eta_i]), lexical_target=torch.tensor(M, dtype=torch.float32)
    )
    out = _out((E_img, E_txt, Z_img, Z_txt), tau, (X_img, X_txt))
    got = obj(out, inputs, sparse_scale=torch.tensor(s))
    assert set(got) == set(obj.term_names)

    if method == "dense":
        want = {"loss": _nce(E_img @ E_txt.T / tau)}
        want["total"] = want["loss"]
    else:
        if method == "d2s":
            S_d = E_img @ E_txt.T / tau
            S_s = s * Z_img @ Z_txt.T
            loss = (_H(_softmax_rows(S_d), S_s) + _H(_softmax_rows(S_d.T), S_s.T)) / 2
            want = {"loss": loss}
        else:
            ref = reference(E_img, E_txt, s * Z_img, Z_txt, tau, 0.2, 0.3, 0.8, 0.4, "detached")
            distill = 0.0 if method == "no_distill" else ref["distill"]
            want = {"contrastive": ref["contrastive"], "distill": distill}
            want["loss"] = (0.6 * ref["contrastive"] + distill) / 2
        penalty = _l1 if reg == "l1" else _flops
        want["reg"] = (eta_t * penalty(Z_txt) + eta_i * penalty(Z_img)) / 2
        want["l1_txt"], want["l1_img"] = _l1(Z_txt), _l1(Z_img)
        want["lexical"] = (_lex(X_img, M) + _lex(X_txt, M)) / 2
        want["total"] = want["loss"] + want["reg"] + lex_w * want["lexical"]
        want["sparse_scale"] = s
    for k, v in want.items():
        np.testing.assert_allclose(float(got[k]), v, rtol=2e-5, atol=1e-7, err_msg=k)
    stacked = obj.stack(got)
    assert stacked.shape == (len(obj.term_names),) and stacked.dtype == torch.float32


def test_step_weights_follow_the_quadratic_warmup():
    obj = Objective(_cfg(q_reg=2.0, d_reg=0.5, reg_warmup_frac=0.5), n_terms=4, total_steps=20)
    # T = 10 steps: eta(s) = eta_max min(1, s / T)^2
    for step, f in ((0, 0.0), (5, 0.25), (10, 1.0), (40, 1.0)):
        torch.testing.assert_close(obj.eta(step), torch.tensor([2.0 * f, 0.5 * f]))
    buffer = obj.eta(3)
    assert obj.eta(7) is buffer  # one buffer, refilled (CUDA graphs keep its address)


def test_expansion_draw_of_each_rank_is_its_slice_of_the_global_draw():
    ids = padded_token_ids(np.arange(9), np.array([0, 1, 2, 3, 0, 1, 2, 3]), pad=4)
    ids = torch.cat([ids, torch.full((1, 1), 4)])  # caption 8: no term of the vocabulary
    ec = ExpansionControl(ids, vocab_size=4, total_steps=100, p0=0.9)
    rows = torch.tensor([8, 0, 3, 5, 1, 2, 6, 7])
    full = ec.draw(rows, 0, torch.Generator().manual_seed(1))
    for lo, hi in ((0, 4), (4, 8)):
        part = ec.draw(rows, 0, torch.Generator().manual_seed(1), slice(lo, hi))
        assert torch.equal(part[0], full[0][lo:hi]) and torch.equal(part[1], full[1][lo:hi])
    masked, keep = full
    assert not masked[0]  # a caption without terms is never masked to nothing
    assert masked[1:].any()
    Z = torch.ones(8, 4)
    out = ExpansionControl.apply(Z, full)
    torch.testing.assert_close(out, torch.where(masked, keep, Z))
    assert ec.draw(rows, 200) is None  # probability 0: nothing drawn


def test_options_that_need_a_named_vocabulary_or_a_wide_head():
    with pytest.raises(ConfigError, match="expansion_control needs a named vocabulary"):
        Objective(_cfg(expansion_control=True), n_terms=4, total_steps=5)
    with pytest.raises(ConfigError, match="lexical_weight > 0 needs a named vocabulary"):
        Objective(_cfg(lexical_weight=0.1), n_terms=4, total_steps=5)
    with pytest.raises(ConfigError, match="train_text_topk=9 exceeds the sparse head's 4"):
        Objective(_cfg(train_text_topk=9), n_terms=4, total_steps=5)
    # the dense fit uses neither: no vocabulary needed
    obj = Objective(
        _cfg("dense", expansion_control=True, lexical_weight=0.1), n_terms=4, total_steps=5
    )
    assert obj.expansion is None and obj.lexical_ids is None and not obj.with_logits

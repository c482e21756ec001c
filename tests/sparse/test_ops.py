from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmsparse.sparse import SparsityStats, contributions, flops, from_csr, prune, to_csr, top_terms


def test_prune_topk_and_threshold():
    Z = torch.tensor([[0.1, 0.5, 0.3, 0.0], [0.9, 0.2, 0.4, 0.05]])
    want = torch.tensor([[0.0, 0.5, 0.3, 0.0], [0.9, 0.0, 0.4, 0.0]])
    torch.testing.assert_close(prune(Z, topk=2), want)
    torch.testing.assert_close(prune(Z, threshold=0.2), want)
    assert prune(Z) is Z


def test_flops_and_nnz_by_hand():
    q = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0]])  # p_q = [1, .5, 0]
    d = torch.tensor([[1.0, 0, 1.0], [0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])  # p_d = [.5, .25, .5]
    qs, ds = SparsityStats(3), SparsityStats(3)
    qs.update(q[:1])
    qs.update(q[1:])
    ds.update(d)
    assert flops(qs, ds) == pytest.approx(1 * 0.5 + 0.5 * 0.25)
    assert qs.mean_nnz == 1.5 and ds.mean_nnz == 1.25


def test_csr_round_trip():
    Z = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]])
    m = to_csr(Z)
    assert sp.isspmatrix_csr(m) and m.nnz == 2
    torch.testing.assert_close(from_csr(m), Z)


def test_top_terms_and_contributions():
    vocab = ["dog", "beach", "cat", "run"]
    q = np.array([0.5, 1.0, 0.0, 0.5])
    d = np.array([2.0, 0.5, 3.0, 1.0])
    assert top_terms(d, vocab, 2) == [("cat", 3.0), ("dog", 2.0)]
    # ties in weight: lower term id first
    assert top_terms(q, vocab, 3) == [("beach", 1.0), ("dog", 0.5), ("run", 0.5)]
    contrib = contributions(q, d, vocab)
    assert contrib == [("dog", 0.5, 2.0, 1.0), ("beach", 1.0, 0.5, 0.5), ("run", 0.5, 1.0, 0.5)]
    assert sum(c[3] for c in contrib) == pytest.approx(float(q @ d))
    assert top_terms(sp.csr_matrix(d), vocab, 1) == [("cat", 3.0)]

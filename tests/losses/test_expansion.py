from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.losses import ExpansionControl, padded_token_ids, token_mask


def test_padded_ids_and_mask():
    indptr = np.array([0, 2, 2, 5])
    indices = np.array([1, 3, 0, 2, 4])
    ids = padded_token_ids(indptr, indices, pad=6)
    assert ids.tolist() == [[1, 3, 6], [6, 6, 6], [0, 2, 4]]
    mask = token_mask(ids, 6)
    assert mask.tolist() == [[0, 1, 0, 1, 0, 0], [0] * 6, [1, 0, 1, 0, 1, 0]]


def test_masking_probability_and_effect():
    ids = padded_token_ids(np.array([0, 1, 2]), np.array([2, 0]), pad=4)
    ec = ExpansionControl(ids, vocab_size=4, total_steps=100, p0=1.0, decay_frac=0.5)
    assert ec.probability(0) == 1.0 and ec.probability(25) == pytest.approx(0.5)
    assert ec.probability(60) == 0.0
    Z = torch.ones(2, 4)
    rows = torch.tensor([0, 1])
    masked = ec(Z, rows, step=0)
    assert masked.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert torch.equal(ec(Z, rows, step=80), Z)
    # at p = 0.5, about half the captions are masked
    ids = padded_token_ids(np.arange(2001), np.zeros(2000, dtype=np.int64), pad=4)
    ec = ExpansionControl(ids, 4, total_steps=100, p0=0.5)
    out = ec(torch.ones(2000, 4), torch.arange(2000), 0, torch.Generator().manual_seed(0))
    frac = float((out[:, 1:].sum(1) == 0).float().mean())
    assert 0.45 < frac < 0.55

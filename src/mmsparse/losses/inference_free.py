"""Inference-free text queries: a caption's sparse vector is a lookup, not an encoder.

With ``model.query_encoder=lookup`` (an extension, after the doc-only models of OpenSearch
and V-SPLADE) only the image side is encoded by the network. A caption ``b`` is the set
``T_b`` of its own word pieces, and its sparse vector is one weight per term, looked up::

    q_bv = M_bv · relu(w_v)          M_bv = 1 if v in T_b else 0

``w`` (one weight per term of the sparse head) starts at the IDF of the training captions
(``model.query_weights=idf``) or at 1 (``binary``), and is learned at
``train.query_lr_scale`` times the learning rate (``0`` keeps it fixed). The sparse score
of an image and a caption is then ``sum_{v in T_b} relu(w_v) · z_v``: image terms that the
caption names, weighted by how informative they are. With IDF weights this is the
IDF-aware matching of "Towards Competitive Search Relevance for Inference-Free Learned
Sparse Retrievers" (Geng et al., 2024): the retrieval gradient on an image weight ``z_v`` is
scaled by ``w_v``, so a FLOPS or l1 penalty of the same weight suppresses low-IDF terms
first.
"""

from __future__ import annotations

import numpy as np
import torch


def idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """BM25's inverse document frequency ``log(1 + (N - df + 0.5) / (df + 0.5))``.

    Args:
        doc_freq: ``(V,)`` number of captions each term occurs in.
        n_docs: Number of captions ``N``.

    Returns:
        ``(V,)`` float64 weights, all positive (Lucene's and OpenSearch's form; a term in
        every caption still weighs ``log(1 + 0.5 / (N + 0.5)) > 0``).
    """
    df = np.asarray(doc_freq, dtype=np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def lookup_queries(token_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``q_bv = M_bv · relu(w_v)``: the sparse vectors of captions from their own terms.

    Args:
        token_mask: ``(B, V)`` 0/1 mask of every caption's own terms ``M``.
        weights: ``(V,)`` per-term query weights ``w`` (negative ones count as 0).

    Returns:
        ``(B, V)`` non-negative float32 query vectors.
    """
    return token_mask.float() * torch.relu(weights.float()).unsqueeze(0)

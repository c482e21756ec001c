"""Fewer postings at the same accuracy: DF-FLOPS, the caption gate, the annealed top-k cap.

Three extensions aimed at FLOPs (the postings an inverted index reads), each an option:

``objective.reg_image=df-flops`` / ``reg_text=df-flops`` (DF-FLOPS, Porco et al., 2025,
arXiv 2505.15070)::

    df_flops(Z) = sum_v a(df_v) · (mean_b z_bv)^2
    a(x) = 1 / (1 + (x^(log_alpha 2) - 1)^beta)       (0 at x = 0, 1/2 at x = alpha, 1 at x = 1)

where ``df_v`` is the share of the batch's vectors in which term ``v`` is active (the
batch's estimate of the term's document frequency, no gradient). FLOPS penalises every
shared term alike; DF-FLOPS spares the rare terms and presses on those whose posting
lists are long.

``objective.gate_weight`` (caption-gated image supervision, after V-SPLADE's
caption-gated token supervision, arXiv 2605.30917)::

    gate(Z, G) = mean_b sum_v (1 - G_bv) · z_bv

with ``G`` the 0/1 mask of the word pieces of all of an image's training captions (five on
Flickr8k): the captions decide which terms an image may activate; any other activation
is penalised like l1 (at training time only; an image needs no caption at indexing).

``objective.topk_anneal_factor`` (the train-as-you-serve cap annealed down, after CSRv2):
the cap of the training forward pass starts at ``factor · k`` terms and falls linearly to
the serving cap ``k`` over ``objective.topk_anneal_frac`` of the steps.
"""

from __future__ import annotations

import math

import torch


def weighted_flops(Z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_v w_v · (mean_b |z_bv|)^2``: FLOPS with one weight per term.

    Args:
        Z: ``(B, V)`` sparse vectors (``B >= 2``).
        weights: ``(V,)`` non-negative term weights (1 everywhere: SPLADE's FLOPS).

    Raises:
        ValueError: For a batch of one row (not a FLOPS estimate, see ``flops_reg``).
    """
    if Z.shape[0] < 2:
        raise ValueError("a FLOPS regulariser needs a batch of at least 2 rows")
    return (weights.float() * Z.float().abs().mean(dim=0) ** 2).sum()


def batch_doc_freq(Z: torch.Tensor) -> torch.Tensor:
    """``(V,)`` share of the rows of ``Z`` in which each term is active (no gradient)."""
    return (Z.detach() > 0).float().mean(dim=0)


def df_weight(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """DF-FLOPS's activation ``a(x) = 1 / (1 + (x^(log_alpha 2) - 1)^beta)``.

    ``x`` is a document-frequency share in ``[0, 1]``; ``a`` rises from 0 (a term in no
    vector) through 1/2 at ``x = alpha`` to 1 (a term in every vector), more steeply the
    larger ``beta``.

    Raises:
        ValueError: Unless ``0 < alpha < 1`` and ``beta > 0``.
    """
    if not 0.0 < alpha < 1.0 or beta <= 0.0:
        raise ValueError(f"df_weight needs 0 < alpha < 1 and beta > 0, got {alpha}, {beta}")
    exponent = math.log(2.0) / math.log(alpha)  # < 0: x^exponent >= 1 on (0, 1]
    x = x.float().clamp(0.0, 1.0)
    inner = (x.clamp_min(1e-30) ** exponent - 1.0).clamp_min(0.0)
    out = 1.0 / (1.0 + inner**beta)
    return torch.where(x > 0, out, torch.zeros_like(out))


def df_flops(Z: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """DF-FLOPS of ``Z``: :func:`weighted_flops` with ``a(df)`` of the batch's term shares."""
    return weighted_flops(Z, df_weight(batch_doc_freq(Z), alpha, beta))


def caption_gate(Z: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_v (1 - G_bv) · |z_bv|``: the activation outside each row's allowed terms.

    Args:
        Z: ``(B, V)`` image sparse vectors.
        gate: ``(B, V)`` 0/1 mask of the terms each image may activate (its captions'
            word pieces).
    """
    return ((1.0 - gate.float()) * Z.float().abs()).sum(dim=1).mean()


def annealed_topk(
    k: int | None, step: int, total_steps: int, factor: float, frac: float, n_terms: int
) -> int | None:
    """The training cap at ``step``: ``factor · k`` falling linearly to ``k``.

    Args:
        k: The final (serving) cap; ``None``: no cap (returned as is).
        step: Optimisation step (0-based).
        total_steps: All steps of the run.
        factor: Start cap as a multiple of ``k`` (``1``: no annealing).
        frac: Share of the steps over which the cap reaches ``k``.
        n_terms: Terms of the sparse head (the cap never exceeds it).
    """
    if k is None or factor <= 1.0:
        return k
    horizon = max(1.0, frac * total_steps)
    t = min(1.0, step / horizon)
    start = min(float(n_terms), factor * k)
    return max(k, min(n_terms, round(start + (k - start) * t)))

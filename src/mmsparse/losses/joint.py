"""The joint sparse-dense objective with self-knowledge distillation (METHOD.md).

Per batch of ``B`` matched pairs (row ``i`` of the image tensors matches row ``i`` of the
caption tensors)::

    S_d = E_img E_txt^T / tau        S_s = Z_img Z_txt^T        S_i = w1 S_d + w2 S_s
    nce(S) = (CE(S, diag) + CE(S^T, diag)) / 2
    L  = (lam1 nce(S_d) + lam2 nce(S_s) + nce(S_i)) / 2
    kd(S) = (H(P_i2t, S) + H(P_t2i, S^T)) / 2,   P_i2t = softmax(S_i), P_t2i = softmax(S_i^T)
    L' = (lam1 kd(S_d) + lam2 kd(S_s)) / 2
    loss = (beta L + L') / 2                (beta = 1: the paper; objective.contrastive_weight)

All scores are computed in float32 even under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmsparse.config import DISTILL_TEACHERS


def scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner products ``a b^T`` in float32: ``(B_a, D) x (B_b, D) -> (B_a, B_b)``.

    Autocast is switched off here: under it, the matmul would cast back to fp16/bf16.
    """
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float().T


def nce(S: torch.Tensor) -> torch.Tensor:
    """``(CE(S, diag) + CE(S^T, diag)) / 2``: symmetric in-batch contrastive loss."""
    target = torch.arange(S.shape[0], device=S.device)
    return (F.cross_entropy(S, target) + F.cross_entropy(S.T, target)) / 2


def H(P: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Row-mean cross-entropy ``-sum_j P_j log softmax(S)_j`` of teacher ``P`` and logits ``S``."""
    return -(P * F.log_softmax(S, dim=1)).sum(dim=1).mean()


def kd(S: torch.Tensor, P_i2t: torch.Tensor, P_t2i: torch.Tensor) -> torch.Tensor:
    """``(H(P_i2t, S) + H(P_t2i, S^T)) / 2``: distillation of student scores ``S``."""
    return (H(P_i2t, S) + H(P_t2i, S.T)) / 2


def teacher_distributions(
    S_i: torch.Tensor, distill_teacher: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher distributions ``(P_i2t, P_t2i)`` from the integrated score ``S_i``.

    Args:
        S_i: ``(B, B)`` integrated scores (images in rows).
        distill_teacher: ``detached`` (no gradient into the teacher, correct transpose),
            ``joint`` (gradient flows into the teacher, correct transpose) or
            ``official`` (gradient flows, and ``P_t2i`` reuses the row softmax ``P_i2t``,
            as in the published implementation).

    Returns:
        ``(P_i2t, P_t2i)``, each ``(B, B)`` with rows summing to one.
    """
    if distill_teacher not in DISTILL_TEACHERS:
        raise ValueError(
            f"distill_teacher must be one of {', '.join(DISTILL_TEACHERS)}, got {distill_teacher!r}"
        )
    teacher = S_i.detach() if distill_teacher == "detached" else S_i
    P_i2t = F.softmax(teacher, dim=1)
    P_t2i = P_i2t if distill_teacher == "official" else F.softmax(teacher.T, dim=1)
    return P_i2t, P_t2i


def joint_objective(
    img_dense: torch.Tensor,
    txt_dense: torch.Tensor,
    img_sparse: torch.Tensor,
    txt_sparse: torch.Tensor,
    *,
    tau: torch.Tensor | float,
    w1: float,
    w2: float,
    lam1: float,
    lam2: float,
    distill_teacher: str = "detached",
    distill: bool = True,
    sparse_scale: torch.Tensor | float = 1.0,
    contrastive_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The paper's objective without the sparsity term.

    Args:
        img_dense: ``(B, D)`` normalised image dense vectors ``E_img``.
        txt_dense: ``(B, D)`` normalised caption dense vectors ``E_txt``.
        img_sparse: ``(B, V)`` image sparse vectors ``Z_img``.
        txt_sparse: ``(B, V)`` caption sparse vectors ``Z_txt``.
        tau: Temperature of the dense scores.
        w1: Weight of ``S_d`` in ``S_i``.
        w2: Weight of ``S_s`` in ``S_i``.
        lam1: Weight of the dense terms.
        lam2: Weight of the sparse terms.
        distill_teacher: ``official``, ``joint`` or ``detached`` (see
            :func:`teacher_distributions`).
        distill: ``False`` drops ``L'`` (the no-distillation ablation: ``loss = L / 2``).
        sparse_scale: ``s`` in ``S_s = s · Z_img Z_txt^T`` (``objective.sparse_scale``, an
            extension; ``1`` is the paper).
        contrastive_weight: ``beta`` in ``loss = (beta L + L') / 2``: the weight of the
            hard-label contrastive part against the distillation part
            (``objective.contrastive_weight``, an extension; ``1`` is the paper).

    Returns:
        Named terms: ``loss`` = (beta L + L')/2, ``contrastive`` = L, ``distill`` = L', and the
        parts ``nce_dense``, ``nce_sparse``, ``nce_integrated``, ``kd_dense``, ``kd_sparse``.
    """
    S_d = scores(img_dense, txt_dense) / tau
    S_s = sparse_scale * scores(img_sparse, txt_sparse)
    S_i = w1 * S_d + w2 * S_s

    nce_dense, nce_sparse, nce_integrated = nce(S_d), nce(S_s), nce(S_i)
    L = (lam1 * nce_dense + lam2 * nce_sparse + nce_integrated) / 2

    if distill:
        P_i2t, P_t2i = teacher_distributions(S_i, distill_teacher)
        kd_dense, kd_sparse = kd(S_d, P_i2t, P_t2i), kd(S_s, P_i2t, P_t2i)
        L_prime = (lam1 * kd_dense + lam2 * kd_sparse) / 2
    else:
        kd_dense = kd_sparse = L_prime = torch.zeros((), device=S_d.device)

    return {
        "loss": (contrastive_weight * L + L_prime) / 2,
        "contrastive": L,
        "distill": L_prime,
        "nce_dense": nce_dense,
        "nce_sparse": nce_sparse,
        "nce_integrated": nce_integrated,
        "kd_dense": kd_dense,
        "kd_sparse": kd_sparse,
    }


def d2s_objective(
    img_dense: torch.Tensor,
    txt_dense: torch.Tensor,
    img_sparse: torch.Tensor,
    txt_sparse: torch.Tensor,
    *,
    tau: torch.Tensor | float,
    sparse_scale: torch.Tensor | float = 1.0,
) -> dict[str, torch.Tensor]:
    """D2S (Nguyen et al., ECIR 2024): sparse scores distilled from a frozen dense teacher.

    The teacher is ``softmax(S_d)`` with ``S_d = E_img E_txt^T / tau`` of the frozen dense
    heads, in both directions; no gradient reaches the teacher. ``sparse_scale`` is ``s``
    in ``S_s = s · Z_img Z_txt^T`` (``1``: as published).

    Returns:
        ``loss`` (= ``distill``) and ``distill``.
    """
    S_d = (scores(img_dense, txt_dense) / tau).detach()
    S_s = sparse_scale * scores(img_sparse, txt_sparse)
    P_i2t, P_t2i = F.softmax(S_d, dim=1), F.softmax(S_d.T, dim=1)
    loss = kd(S_s, P_i2t, P_t2i)
    return {"loss": loss, "distill": loss}


def dense_objective(
    img_dense: torch.Tensor, txt_dense: torch.Tensor, *, tau: torch.Tensor | float
) -> dict[str, torch.Tensor]:
    """Plain contrastive fit of the dense heads: ``nce(S_d)`` (stage 0, dense baseline)."""
    loss = nce(scores(img_dense, txt_dense) / tau)
    return {"loss": loss, "contrastive": loss}

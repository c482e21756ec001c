"""Sparsity regulariser: l1 (or FLOPS) of the sparse vectors with quadratic warm-up.

``R = (eta_t(step) · l1(Z_txt) + eta_i(step) · l1(Z_img)) / 2`` with
``eta(step) = eta_max · min(1, step / T)^2`` and ``l1(Z)`` the batch mean of row sums.
With ``objective.reg=flops`` the same weights and schedule apply to SPLADE's
``flops_reg(Z) = sum_v (mean_b |Z_bv|)^2`` instead of ``l1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def l1(Z: torch.Tensor) -> torch.Tensor:
    """Batch mean of the row sums of ``|Z|``: ``(B, V) -> ()``."""
    return Z.float().abs().sum(dim=1).mean()


def flops_reg(Z: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser of SPLADE: ``sum_v (mean_b |Z_bv|)^2``: ``(B, V) -> ()``.

    The square of a term's mean weight over the batch is a smooth surrogate of the share of
    vectors that use it, so the penalty falls on the terms many vectors share (the
    postings an inverted index reads), not on every weight alike.

    Raises:
        ValueError: For a batch of one row (the mean is then the row itself: the penalty
            would be a squared l2 norm, not a FLOPS estimate).
    """
    if Z.shape[0] < 2:
        raise ValueError("flops_reg needs a batch of at least 2 rows (objective.reg=flops)")
    return (Z.float().abs().mean(dim=0) ** 2).sum()


REGULARIZERS = {"l1": l1, "flops": flops_reg}
REG_KINDS = ("l1", "flops", "df-flops")


def sparsity_penalty(
    Z: torch.Tensor, kind: str = "l1", df_alpha: float = 0.1, df_beta: float = 2.0
) -> torch.Tensor:
    """The sparsity penalty ``objective.reg`` names of ``Z``.

    ``l1``, ``flops`` or ``df-flops`` (:func:`mmsparse.losses.postings.df_flops` with
    ``df_alpha`` and ``df_beta``).
    """
    if kind == "df-flops":
        from mmsparse.losses.postings import df_flops

        return df_flops(Z, df_alpha, df_beta)
    try:
        return REGULARIZERS[kind](Z)
    except KeyError:
        raise ValueError(
            f"objective.reg must be one of {', '.join(REG_KINDS)}; got {kind!r}"
        ) from None


def sparsity_terms(
    Z_txt: torch.Tensor,
    Z_img: torch.Tensor,
    eta_t: torch.Tensor | float,
    eta_i: torch.Tensor | float,
    kind: str = "l1",
    kind_img: str | None = None,
    df_alpha: float = 0.1,
    df_beta: float = 2.0,
) -> dict[str, torch.Tensor]:
    """``R = (eta_t · reg_t(Z_txt) + eta_i · reg_i(Z_img)) / 2`` with its logged parts.

    Args:
        Z_txt: ``(B, V)`` caption (query) sparse vectors.
        Z_img: ``(B, V)`` image (document) sparse vectors.
        eta_t: Weight of the captions' penalty at this step (a float or a 0-d tensor: the
            trainer reads it from a device table).
        eta_i: Weight of the images' penalty.
        kind: ``reg_t`` of the captions: ``l1``, ``flops`` or ``df-flops``
            (``objective.reg_text``, else ``objective.reg``).
        kind_img: ``reg_i`` of the images (``objective.reg_image``); ``None``: ``kind``.
        df_alpha: DF-FLOPS's ``alpha`` (``objective.df_alpha``).
        df_beta: DF-FLOPS's ``beta`` (``objective.df_beta``).

    Returns:
        ``reg`` = R, and ``l1_txt``, ``l1_img`` (logged whatever the kinds are).
    """
    kind_img = kind if kind_img is None else kind_img
    l1_txt, l1_img = l1(Z_txt), l1(Z_img)
    p_txt = l1_txt if kind == "l1" else sparsity_penalty(Z_txt, kind, df_alpha, df_beta)
    p_img = l1_img if kind_img == "l1" else sparsity_penalty(Z_img, kind_img, df_alpha, df_beta)
    return {"reg": (eta_t * p_txt + eta_i * p_img) / 2, "l1_txt": l1_txt, "l1_img": l1_img}


@dataclass
class QuadraticWarmup:
    """``eta(step) = eta_max · min(1, step / T)^2``.

    Attributes:
        eta_max: Final weight.
        T: Warm-up length in steps (``0``: ``eta_max`` from the start).
    """

    eta_max: float
    T: int

    def __call__(self, step: int) -> float:
        """The weight at optimisation step ``step`` (0-based)."""
        if self.T <= 0:
            return self.eta_max
        return self.eta_max * min(1.0, step / self.T) ** 2


class SparsityRegularizer:
    """The regulariser with its quadratic schedule; the trainer steps it, checkpoints save it.

    Args:
        q_reg: Maximum weight ``eta_t`` of caption (query) vectors.
        d_reg: Maximum weight ``eta_i`` of image (document) vectors.
        total_steps: All training steps of the run.
        warmup_frac: ``T`` as a fraction of ``total_steps`` (0.2 in the published configs).
        kind: The captions' penalty: ``l1`` (the paper), ``flops`` or ``df-flops``
            (``objective.reg_text``, else ``objective.reg``).
        kind_img: The images' penalty (``objective.reg_image``); ``None``: ``kind``.
        df_alpha: DF-FLOPS's ``alpha``.
        df_beta: DF-FLOPS's ``beta``.

    Example:
        >>> reg = SparsityRegularizer(q_reg=1.0, d_reg=2.0, total_steps=10, warmup_frac=0.2)
        >>> reg.eta_t(reg.step), reg.step_once(), reg.eta_t(reg.step)
        (0.0, None, 0.25)
    """

    def __init__(
        self,
        q_reg: float,
        d_reg: float,
        total_steps: int,
        warmup_frac: float = 0.2,
        kind: str = "l1",
        kind_img: str | None = None,
        df_alpha: float = 0.1,
        df_beta: float = 2.0,
    ) -> None:
        kind_img = kind if kind_img is None else kind_img
        for k in (kind, kind_img):
            if k not in REG_KINDS:
                raise ValueError(f"objective.reg must be one of {', '.join(REG_KINDS)}; got {k!r}")
        T = round(warmup_frac * total_steps)
        self.eta_t = QuadraticWarmup(q_reg, T)
        self.eta_i = QuadraticWarmup(d_reg, T)
        self.kind = kind
        self.kind_img = kind_img
        self.df = (df_alpha, df_beta)
        self.total_steps = total_steps
        self.step = 0

    def __call__(self, Z_txt: torch.Tensor, Z_img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named terms of the regulariser at the current step (:func:`sparsity_terms`).

        Returns:
            ``reg`` = R, ``l1_txt``, ``l1_img`` (tensors).
        """
        return sparsity_terms(
            Z_txt,
            Z_img,
            self.eta_t(self.step),
            self.eta_i(self.step),
            self.kind,
            self.kind_img,
            *self.df,
        )

    def weight_table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(max(1, total_steps), 2)`` float32 ``(eta_t, eta_i)`` of every step, on ``device``.

        The training step indexes it on the device instead of passing host floats (no
        host-device copy per step, and a fixed buffer for CUDA graphs).
        """
        rows = [(self.eta_t(s), self.eta_i(s)) for s in range(max(1, self.total_steps))]
        return torch.tensor(rows, dtype=torch.float32, device=device)

    def step_once(self) -> None:
        """Advance the schedule by one optimisation step."""
        self.step += 1

    def state_dict(self) -> dict[str, int | float]:
        """Schedule state for checkpoints."""
        return {
            "step": self.step,
            "T": self.eta_t.T,
            "q_reg": self.eta_t.eta_max,
            "d_reg": self.eta_i.eta_max,
        }

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        """Restore the schedule from :meth:`state_dict`."""
        self.step = int(state["step"])
        self.eta_t.T = self.eta_i.T = int(state["T"])
        self.eta_t.eta_max = float(state["q_reg"])
        self.eta_i.eta_max = float(state["d_reg"])

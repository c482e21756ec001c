"""Probabilistic expansion control (from D2S).

During training, with a probability that decays linearly over training, a caption's sparse
vector is masked to the vocabulary ids of its own tokens (no expansion terms). The caption
token ids live on the device as a padded ``(n_captions, max_len)`` matrix, so masking a
batch is one gather and one scatter.
"""

from __future__ import annotations

import numpy as np
import torch


def padded_token_ids(indptr: np.ndarray, indices: np.ndarray, pad: int) -> torch.Tensor:
    """CSR token ids to a ``(rows, max_len)`` int64 tensor padded with ``pad``."""
    lengths = np.diff(indptr)
    width = max(int(lengths.max(initial=0)), 1)
    out = np.full((lengths.size, width), pad, dtype=np.int64)
    cols = np.arange(indices.size) - np.repeat(indptr[:-1], lengths)
    out[np.repeat(np.arange(lengths.size), lengths), cols] = indices
    return torch.from_numpy(out)


def token_mask(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(B, L)`` padded ids (pad = ``vocab_size``) to a ``(B, vocab_size)`` 0/1 mask."""
    mask = torch.zeros(token_ids.shape[0], vocab_size + 1, device=token_ids.device)
    mask.scatter_(1, token_ids, 1.0)
    return mask[:, :vocab_size]


class ExpansionControl:
    """Masks caption sparse vectors to their own tokens with a decaying probability.

    Args:
        token_ids: ``(n_captions, max_len)`` padded vocabulary ids of every caption
            (pad = ``vocab_size``), on the training device.
        vocab_size: Number of sparse dimensions.
        total_steps: All training steps.
        p0: Masking probability at step 0.
        decay_frac: Fraction of training over which the probability reaches 0.
    """

    def __init__(
        self,
        token_ids: torch.Tensor,
        vocab_size: int,
        total_steps: int,
        p0: float = 1.0,
        decay_frac: float = 1.0,
    ) -> None:
        self.token_ids = token_ids
        self.vocab_size = vocab_size
        self.horizon = max(1.0, decay_frac * total_steps)
        self.p0 = p0

    def probability(self, step: int) -> float:
        """Masking probability at optimisation step ``step``."""
        return self.p0 * max(0.0, 1.0 - step / self.horizon)

    def draw(
        self,
        caption_rows: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
        local: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Which captions of a batch are masked at ``step``, and to which terms.

        The uniform draws cover every row of ``caption_rows`` (the global batch, as one
        process would draw them); the decision is returned for the rows ``local`` only
        (this process's slice under data parallelism), so N processes mask exactly what one
        would. A caption with no term of the vocabulary is never masked (it would be left
        with nothing).

        Args:
            caption_rows: ``(B,)`` caption rows of the batch, on the device of the draws.
            step: Optimisation step (sets the probability).
            generator: Generator of the draws (on the same device).
            local: The rows to decide for.

        Returns:
            ``(masked (b, 1) bool, keep (b, V) float 0/1)``, or ``None`` when the
            probability is 0 (nothing is drawn then).
        """
        p = self.probability(step)
        if p <= 0.0:
            return None
        u = torch.rand(caption_rows.shape[0], device=caption_rows.device, generator=generator)
        ids = self.token_ids[caption_rows[local]]  # (b, L)
        has_terms = (ids < self.vocab_size).any(dim=1, keepdim=True)  # (b, 1)
        masked = (u[local] < p).unsqueeze(1) & has_terms
        return masked, token_mask(ids, self.vocab_size)

    @staticmethod
    def apply(txt_sparse: torch.Tensor, draw: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mask caption vectors ``(b, V)`` as :meth:`draw` decided."""
        masked, keep = draw
        return torch.where(masked, txt_sparse * keep.to(txt_sparse.dtype), txt_sparse)

    def __call__(
        self,
        txt_sparse: torch.Tensor,
        caption_rows: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mask a batch ``(B, V)`` of caption vectors, given their caption rows ``(B,)``."""
        draw = self.draw(caption_rows.to(txt_sparse.device), step, generator)
        return txt_sparse if draw is None else self.apply(txt_sparse, draw)

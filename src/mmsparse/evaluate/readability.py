"""Do the heaviest terms of a sparse vector read as the words of what it describes?

For every image of a split, the share of its ``k`` heaviest terms (default 10) that are
*content words* (:func:`mmsparse.data.terms.is_content_term`: whole words, letters only, not
a function word) occurring in the image's own captions. Function words, punctuation and
sub-word pieces never count, even when a caption contains them: they waste a slot of the
explanation. The same for every caption against its image's *other* captions (does the
caption's vector name the picture's words, not only its own?).

The denominator is ``k``: a vector with fewer than ``k`` non-zero terms has empty slots,
which count as misses (``k`` readable terms is what an explanation shows). Vectors are
taken as evaluated (after the evaluation's top-k pruning).
"""

from __future__ import annotations

import numpy as np
import torch

from mmsparse.data.terms import content_mask
from mmsparse.data.vocab import Vocabulary


def _topk_ids(sparse: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, k)`` term ids of the ``k`` heaviest terms, and ``(n, k)`` whether each is > 0."""
    k = min(k, sparse.shape[1])
    vals, ids = torch.topk(sparse.float(), k, dim=1)
    return ids.cpu().numpy(), (vals > 0).cpu().numpy()


def readability(
    image_sparse: torch.Tensor,
    text_sparse: torch.Tensor,
    caption_to_image: np.ndarray | torch.Tensor,
    caption_indptr: np.ndarray,
    caption_indices: np.ndarray,
    vocab: Vocabulary,
    k: int = 10,
) -> dict[str, float | int]:
    """The readability measure of a split's sparse vectors (see the module docstring).

    Args:
        image_sparse: ``(n_img, V)`` image vectors, full-vocabulary ids.
        text_sparse: ``(n_cap, V)`` caption vectors, full-vocabulary ids.
        caption_to_image: ``(n_cap,)`` image position of every caption.
        caption_indptr: ``(n_cap + 1,)`` CSR row pointers of every caption's token ids, in
            the same caption order.
        caption_indices: CSR vocabulary ids of the captions' tokens.
        vocab: The vocabulary (named: an index-named fallback has no content words).
        k: Heaviest terms examined per vector.

    Returns:
        ``image_terms_in_captions`` and ``caption_terms_in_other_captions`` (percent of the
        ``k`` slots holding a content word of the image's (other) captions), the same
        restricted to content words regardless of the captions (``image_content_terms``,
        ``caption_content_terms``) and ``k``.
    """
    if k < 1:
        raise ValueError(f"readability: k must be >= 1, got {k}")
    c2i = np.asarray(
        caption_to_image.cpu() if isinstance(caption_to_image, torch.Tensor) else caption_to_image
    ).astype(np.int64)
    n_img, n_cap = int(image_sparse.shape[0]), int(text_sparse.shape[0])
    if c2i.shape[0] != n_cap or caption_indptr.shape[0] != n_cap + 1:
        raise ValueError(
            f"readability: {n_cap} caption vectors but {c2i.shape[0]} caption_to_image "
            f"entries and {caption_indptr.shape[0] - 1} token rows"
        )
    content = content_mask(vocab)
    # per caption: its content-word ids; per image: counts of each id over its captions
    cap_words: list[np.ndarray] = []
    for c in range(n_cap):
        ids = caption_indices[caption_indptr[c] : caption_indptr[c + 1]]
        cap_words.append(np.unique(ids[content[ids]]))
    img_counts: list[dict[int, int]] = [{} for _ in range(n_img)]
    for c, words in enumerate(cap_words):
        counts = img_counts[c2i[c]]
        for w in words.tolist():
            counts[w] = counts.get(w, 0) + 1

    img_ids, img_on = _topk_ids(image_sparse, k)
    txt_ids, txt_on = _topk_ids(text_sparse, k)
    img_hits = img_content = 0
    for i in range(n_img):
        counts = img_counts[i]
        for t, on in zip(img_ids[i].tolist(), img_on[i].tolist()):
            if on and content[t]:
                img_content += 1
                img_hits += t in counts
    cap_hits = cap_content = 0
    for c in range(n_cap):
        counts = img_counts[c2i[c]]
        own = set(cap_words[c].tolist())
        for t, on in zip(txt_ids[c].tolist(), txt_on[c].tolist()):
            if on and content[t]:
                cap_content += 1
                # occurs in another caption of the same image
                cap_hits += counts.get(t, 0) - (t in own) > 0
    return {
        "image_terms_in_captions": 100.0 * img_hits / max(1, n_img * k),
        "caption_terms_in_other_captions": 100.0 * cap_hits / max(1, n_cap * k),
        "image_content_terms": 100.0 * img_content / max(1, n_img * k),
        "caption_content_terms": 100.0 * cap_content / max(1, n_cap * k),
        "k": k,
    }

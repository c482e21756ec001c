"""Which vocabulary terms are words a person reads: stop list, content terms, restriction.

Two uses:

- ``model.vocab_restrict`` keeps only the sparse dimensions whose terms occur in the
  training captions (``train-captions``), optionally minus function words, punctuation and
  sub-word pieces (``train-captions-content``);
- the readability measure of :mod:`mmsparse.evaluate.readability` counts the heaviest
  terms of a vector that are *content words* of the captions it should describe.

A content term is a whole word (no ``##`` prefix), made of letters only, at least two
letters long, and not in :data:`STOP_WORDS`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import ConfigError

# English function words (articles, pronouns, prepositions, conjunctions, auxiliaries,
# determiners and quantifiers, common adverbs): they carry no content of a picture.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above across after again against all almost along also although am among an
    and another any anyone anything are around as at away back be became because been
    before behind being below beneath beside besides between beyond both but by can cannot
    could did do does doing done down during each either else etc even ever every few for
    from further had has have having he her here hers herself him himself his how however i
    if in inside into is it its itself just least less let like many may me might more most
    much must my myself near neither next no nor not now of off on once one onto only or
    other others our ours ourselves out outside over own per quite rather same several shall
    she should since so some something such than that the their theirs them themselves then
    there these they this those though through throughout thru till to together too toward
    towards under underneath until up upon us very via was we well were what whatever when
    where whether which while who whom whose why will with within without would yet you your
    yours yourself yourselves s t d ll m re ve
    """.split()
)

_WORD = re.compile(r"^[a-z]{2,}$")

RESTRICT_MODES: tuple[str, ...] = ("none", "train-captions", "train-captions-content")


def is_content_term(token: str) -> bool:
    """Whether a vocabulary term is a content word (see the module docstring)."""
    return bool(_WORD.match(token)) and token not in STOP_WORDS


def content_mask(vocab: Vocabulary) -> np.ndarray:
    """``(len(vocab),)`` bool: which terms are content words (all ``False`` if unnamed)."""
    if not vocab.named:
        return np.zeros(len(vocab), dtype=bool)
    return np.fromiter((is_content_term(t) for t in vocab.tokens), dtype=bool, count=len(vocab))


def restricted_term_ids(
    vocab: Vocabulary,
    caption_indptr: np.ndarray,
    caption_indices: np.ndarray,
    rows: Sequence[int] | np.ndarray,
    mode: str,
) -> np.ndarray:
    """Vocabulary ids kept by ``model.vocab_restrict=mode``, sorted ascending.

    Args:
        vocab: The full vocabulary (must be named).
        caption_indptr: CSR row pointers of every caption's token ids
            (:meth:`FeatureStore.caption_token_ids`).
        caption_indices: CSR token ids.
        rows: The training caption rows whose words are kept.
        mode: ``train-captions`` (every word piece of the training captions) or
            ``train-captions-content`` (only content words, see :func:`is_content_term`).

    Returns:
        ``(n_terms,)`` int64 array of full-vocabulary ids.

    Raises:
        ConfigError: On an unknown mode, an unnamed vocabulary, or if nothing is kept.
    """
    if mode not in RESTRICT_MODES or mode == "none":
        raise ConfigError(
            f"model.vocab_restrict must be one of {', '.join(RESTRICT_MODES)}, got {mode!r}"
        )
    if not vocab.named:
        raise ConfigError(
            "model.vocab_restrict needs a named vocabulary (a backbone bundle with vocab.txt)"
        )
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = caption_indptr[rows], caption_indptr[rows + 1]
    lengths = ends - starts
    flat = np.repeat(starts, lengths) + (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    ids = np.unique(caption_indices[flat])
    special = set(vocab.special_ids.tolist())
    ids = np.array([i for i in ids.tolist() if i not in special], dtype=np.int64)
    if mode == "train-captions-content":
        ids = ids[content_mask(vocab)[ids]] if ids.size else ids
    if ids.size == 0:
        raise ConfigError(
            f"model.vocab_restrict={mode} keeps no term: the training captions have no "
            "word of the vocabulary"
        )
    return ids

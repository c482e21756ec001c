"""Honest answers: does a query have a good match, or is it nonsense for this run?

A search always returns its ``k`` highest scores, even for ``"!!!"`` or random letters, and
those scores overlap the scores of real queries. This module gives every text query a
*verdict* with its reasons and a calibrated number:

- ``no_match``: the query has no word at all (only symbols, digits, emoji), or none of its
  words is a *known content word* (a word of the run's training captions, a single term of
  the run's vocabulary, not a function word like "the"). A search API shows no grid then.
- ``low_confidence``: most of its words are unknown (more than :data:`MAX_UNKNOWN_SHARE`),
  or its top score is below the :data:`LOW_PERCENTILE`-th percentile of the top scores of
  *real* queries of the same kind (same number of known content words: 1, 2, or 3 and
  more) and the same search mode.
- ``confident``: otherwise.

The calibrated number is that percentile: the share (in %) of real queries of the same kind
whose top score is lower than this query's. The real queries are built from the run's
validation captions, searched against the index itself, through the run's text encoder:

- class ``3+``: every validation caption with at least three known content words, from
  their stored caption features (which equal the run's text encoder's output on the
  caption text: tests/extract/test_flickr8k_repro.py; docs/honest_answers.md);
- class ``1``: every distinct known content word of the validation captions, alone
  ("dog", "beach");
- class ``2``: adjacent pairs of known content words of the validation captions
  ("black dog"), at most :data:`MAX_PAIRS` of them, drawn with a fixed seed.

Short queries score lower than whole captions, so they are compared with short real queries
(without the classes 1 and 2, "dog" would look like nonsense). Classes 1 and 2 need the
run's text encoder; a run without one gets class ``3+`` only and short queries are judged
by their words alone.

The calibration is computed once, when the index is built (``mmsparse index build``; about
10 s for Flickr8k, most of it loading the text encoder) and stored in the index directory
as strict JSON (:data:`CALIBRATION_NAME`): quantile tables of the top scores per mode and
class, and the ids of the known words. It is a function of the run, the index and the data,
so rebuilding gives the same file. An index without it (built before, or with
``--no-calibrate``) still gets verdicts from the words of the query, with a note.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import MMSparseError
from mmsparse.index.verdict import (
    CALIBRATION_FORMAT,
    CALIBRATION_NAME,
    CALIBRATION_VERSION,
    CLASSES,
    LEVELS,
    LOW_PERCENTILE,
    MAX_PAIRS,
    MAX_UNKNOWN_SHARE,
    VERDICTS,
    Calibration,
    QueryWords,
    Verdict,
    assess,
    caption_word_ids,
    index_identity,
    load_calibration,
    query_words,
    vocabulary_word_ids,
)

log = logging.getLogger(__name__)

__all__ = [  # the verdict's names (mmsparse.index.verdict) are documented here too
    "CALIBRATION_FORMAT",
    "CALIBRATION_NAME",
    "CALIBRATION_VERSION",
    "CLASSES",
    "LEVELS",
    "LOW_PERCENTILE",
    "MAX_PAIRS",
    "MAX_UNKNOWN_SHARE",
    "VERDICTS",
    "Calibration",
    "QueryWords",
    "ReferenceQueries",
    "Verdict",
    "assess",
    "calibrate",
    "calibrate_index",
    "caption_word_ids",
    "index_identity",
    "load_calibration",
    "query_words",
    "reference_queries",
    "top_scores",
    "vocabulary_word_ids",
]


# -- computing the calibration ----------------------------------------------------------------


@dataclass
class ReferenceQueries:
    """The real queries of a calibration, per class.

    Attributes:
        caption_ids: Class ``3+``: caption ids (encoded from their stored features).
        texts: Classes ``1`` and ``2``: query texts (encoded by the text encoder).
    """

    caption_ids: list[str]
    texts: dict[str, list[str]]


def reference_queries(
    caption_ids: Sequence[str],
    caption_texts: Sequence[str],
    vocab: Vocabulary,
    known_ids: Iterable[int],
    *,
    max_pairs: int = MAX_PAIRS,
    seed: int = 0,
) -> ReferenceQueries:
    """Real queries of each class made from captions (see the module docstring).

    Args:
        caption_ids: Ids of the captions.
        caption_texts: Their texts.
        vocab: The run's vocabulary.
        known_ids: Known word ids.
        max_pairs: At most this many pairs (class ``2``), drawn with ``seed``.
        seed: Seed of that draw.

    Returns:
        The :class:`ReferenceQueries`.
    """
    known = set(int(i) for i in known_ids)
    long_ids: list[str] = []
    singles: set[str] = set()
    pairs: set[str] = set()
    for cid, text in zip(caption_ids, caption_texts):
        qw = query_words(text, vocab, known)
        if len(qw.content) >= 3:
            long_ids.append(str(cid))
        content = set(qw.content)
        singles.update(content)
        pairs.update(
            f"{a} {b}" for a, b in zip(qw.words, qw.words[1:]) if a in content and b in content
        )
    pair_list = sorted(pairs)
    if len(pair_list) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(pair_list), max_pairs, replace=False)
        pair_list = [pair_list[i] for i in sorted(pick.tolist())]
    return ReferenceQueries(long_ids, {"1": sorted(singles), "2": pair_list})


def top_scores(
    engine: Any, sparse: Any, dense: np.ndarray | None, mode: str, batch: int = 1024
) -> np.ndarray:
    """Top-1 score of every query row with an engine (``-inf`` where nothing is found)."""
    import scipy.sparse as sp

    sparse = sp.csr_matrix(sparse, dtype=np.float32)
    out = np.full(sparse.shape[0], -np.inf)
    for s in range(0, sparse.shape[0], batch):
        d = None if dense is None else dense[s : s + batch]
        hits = engine.search_batch(sparse[s : s + batch], 1, dense=d, mode=mode)
        for i in range(min(batch, sparse.shape[0] - s)):
            _, scores = hits.query(i)
            if len(scores):
                out[s + i] = float(scores[0])
    return out


def _quantiles(scores: np.ndarray) -> list[float]:
    """The scores' percentiles at :data:`LEVELS` (a calibration's quantiles of a class)."""
    return [float(v) for v in np.percentile(np.asarray(scores, dtype=np.float64), LEVELS)]


def calibrate(
    searcher: Any,
    *,
    caption_rows: Sequence[int] | np.ndarray | None = None,
    max_pairs: int = MAX_PAIRS,
    seed: int = 0,
    progress: bool = False,
) -> Calibration:
    """Compute the calibration of an opened index (see the module docstring).

    Args:
        searcher: A :class:`~mmsparse.index.Searcher` with its run (its text encoder, or an
            injected one, makes the short queries; without one, class ``3+`` only).
        caption_rows: Rows of the store's captions to use (default: every caption of the
            run's validation split).
        max_pairs: Class ``2`` queries at most.
        seed: Seed of the class ``2`` draw.
        progress: Show a progress bar.

    Returns:
        The :class:`Calibration` (not saved).

    Raises:
        MMSparseError: If the data lacks the validation split or its captions.
    """
    run = searcher.require_run()
    store = searcher.store()
    cfg = run.config
    val_split = cfg.data.val_split
    if caption_rows is None:
        caption_rows = store.split(val_split).caption_rows
    rows = np.asarray(caption_rows, dtype=np.int64)
    train = store.split(cfg.data.train_splits, allow_missing=True)
    term_ids = None if run.model.term_ids is None else run.model.term_ids.cpu().numpy()
    known_ids = caption_word_ids(
        searcher.vocab, (store.caption_texts[r] for r in train.caption_rows), term_ids
    )
    refs = reference_queries(
        [store.caption_ids[r] for r in rows],
        [store.caption_texts[r] for r in rows],
        searcher.vocab,
        known_ids,
        max_pairs=max_pairs,
        seed=seed,
    )
    vectors: dict[str, tuple[np.ndarray, Any]] = {}
    if refs.caption_ids:
        dense, sparse = searcher.encode_captions(refs.caption_ids)
        vectors["3+"] = (dense, sparse)
    encoder = ""
    texts = refs.texts["1"] + refs.texts["2"]
    if texts and searcher.vocab.named:
        try:
            dense, sparse = _encode_in_batches(searcher, texts, progress)
        except MMSparseError as exc:
            log.warning("confidence calibration without short queries: %s", exc)
        else:
            n1 = len(refs.texts["1"])
            if n1:
                vectors["1"] = (None if dense is None else dense[:n1], sparse[:n1])
            if len(texts) > n1:
                vectors["2"] = (None if dense is None else dense[n1:], sparse[n1:])
            inference_free = getattr(searcher, "inference_free", False)
            encoder = "lookup" if inference_free else type(searcher.text_encoder).__name__
    modes = list(searcher.modes)  # sparse, and dense and hybrid where the index holds dense
    quantiles: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    counts: dict[str, dict[str, int]] = {m: {} for m in modes}
    for mode in modes:
        for cls, (dense, sparse) in vectors.items():
            scores = top_scores(searcher.engine, sparse, None if mode == "sparse" else dense, mode)
            scores = scores[np.isfinite(scores)]
            if scores.size:
                quantiles[mode][cls] = _quantiles(scores)
                counts[mode][cls] = int(scores.size)
    sources = {
        "1": f"distinct known content words of the {val_split} captions",
        "2": f"adjacent pairs of known content words of the {val_split} captions "
        f"(at most {max_pairs}, seed {seed})",
        "3+": f"{val_split} captions with three or more known content words (stored features)",
    }
    return Calibration(
        index_sha256=index_identity(searcher.index_dir, searcher.manifest),
        calibration_split=str(val_split),
        train_splits=[str(s) for s in cfg.data.train_splits],
        known_word_ids=known_ids,
        quantiles=quantiles,
        counts=counts,
        sources={c: s for c, s in sources.items() if c in vectors},
        encoder=encoder,
    )


def _encode_in_batches(
    searcher: Any, texts: list[str], progress: bool
) -> tuple[np.ndarray | None, Any]:
    """Query vectors of ``texts``, 256 at a time (dense ``None``: inference-free queries)."""
    import scipy.sparse as sp

    starts = range(0, len(texts), 256)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="calibration queries", unit="batch", leave=False)
    dense_parts, sparse_parts = [], []
    for s in starts:
        d, q = searcher.encode_text(texts[s : s + 256])
        dense_parts.append(d)
        sparse_parts.append(q)
    dense = None if any(d is None for d in dense_parts) else np.concatenate(dense_parts)
    return dense, sp.vstack(sparse_parts, format="csr")


def calibrate_index(
    index_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    data: str | Path | None = None,
    bundle: str | Path | None = None,
    text_encoder: Any = None,
    progress: bool = False,
) -> Path:
    """Compute an index's calibration and save it in the index directory.

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        run_dir: The run (default: the index's).
        data: Feature directory (default: the index's).
        bundle: Backbone bundle directory (default: the run's).
        text_encoder: Use this instead of the run's text encoder (``encode(list[str])``).
        progress: Show a progress bar.

    Returns:
        The path of the written :data:`CALIBRATION_NAME`.
    """
    from mmsparse.index.search import Searcher

    searcher = Searcher(
        index_dir, run_dir=run_dir, data=data, bundle=bundle, text_encoder=text_encoder
    )
    try:
        return calibrate(searcher, progress=progress).save(index_dir)
    finally:
        searcher.close()

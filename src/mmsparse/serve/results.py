"""The JSON of a search answer: hits, what each score is made of, and the query's terms.

Every hit says what its score is made of (``parts``) and what share of it the listed terms
explain (``explained``):

- ``sparse``: the score is the sparse score ``S_s = q · d``, the sum of the shared terms'
  contributions: ``parts = {"sparse": S_s}``, ``explained = 1``;
- ``dense``: the score is the dense score ``S_d`` (no words): ``parts = {"dense": S_d}``,
  ``explained = 0`` (the shared terms are listed, but they are not part of the score);
- ``hybrid``: ``score = w1 · S_d + w2 · S_s``: ``parts = {"dense": w1 · S_d, "sparse":
  w2 · S_s}``, and ``explained = |w2 · S_s| / (|w1 · S_d| + |w2 · S_s|)``, the share of
  the score's magnitude that the words carry (a dense part can be negative, so a share of
  the total itself could exceed 1).

The query's terms are all listed (``n_query_terms`` counts them), each with its weight as
searched and as encoded (``original_weight``; an edited query differs), whether it is a
word piece of the query text itself (``in_query``; the others are the model's expansions),
a word piece (``##...``), and a known word of the run's training captions (``known``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.index.search import Searcher, SearchResult

MISSING_LISTED = 12  # query terms an image lacks, listed per hit (all are counted)


def finite(x: float | None) -> float | None:
    """``x`` as a float, ``0.0`` for NaN or infinity (strict JSON); ``None`` stays."""
    if x is None:
        return None
    return float(x) if math.isfinite(x) else 0.0


def assess(searcher: Searcher, text: str, result: SearchResult, words_only: bool = False) -> Any:
    """The verdict on a text query.

    ``words_only`` skips the calibrated score test: an edited query, or other hybrid
    weights, scores unlike the calibration's real queries.
    """
    if not words_only:
        return searcher.assess(text, result)
    from mmsparse.index.verdict import assess as assess_words

    top = result.hits[0].score if result.hits else None
    return assess_words(text, top, result.mode, searcher.vocab, None, searcher.known_ids())


def breakdown(
    mode: str, score: float, sparse: float | None, dense: float | None, weights: Any
) -> tuple[dict[str, float], float | None]:
    """``(parts, explained)`` of one hit (see the module docstring)."""
    s = 0.0 if sparse is None else float(sparse)
    if mode == "sparse":
        return {"sparse": s}, 1.0 if s else 0.0
    d = 0.0 if dense is None else float(dense)
    if mode == "dense":
        return {"dense": d}, 0.0
    w1, w2 = weights
    parts = {"dense": w1 * d, "sparse": w2 * s}
    mag = abs(parts["dense"]) + abs(parts["sparse"])
    return parts, (abs(parts["sparse"]) / mag) if mag > 0 else 0.0


def query_terms_json(
    searcher: Searcher, searched: sp.csr_matrix, original: sp.csr_matrix, text: str | None
) -> list[dict[str, Any]]:
    """Every term of the query as encoded, heaviest first, with its searched weight."""
    vocab = searcher.vocab
    orig = sp.csr_matrix(original)
    now = dict(zip(sp.csr_matrix(searched).indices.tolist(), searched.data.tolist()))
    typed: set[int] = set()
    if text and vocab is not None and getattr(vocab, "named", False):
        typed = set(vocab.encode(text))
    known = searcher.known_ids() if vocab is not None else set()
    order = np.lexsort((orig.indices, -orig.data))
    out = []
    for j in order.tolist():
        t = int(orig.indices[j])
        name = vocab.term(t) if vocab is not None else f"#{t}"
        out.append(
            {
                "term": name,
                "weight": finite(float(now.get(t, 0.0))),
                "original_weight": finite(float(orig.data[j])),
                "in_query": t in typed,
                "word_piece": name.startswith("##"),
                "known": t in known,
            }
        )
    return out


def result_json(
    searcher: Searcher,
    result: SearchResult,
    explain: bool,
    *,
    searched: sp.csr_matrix,
    original: sp.csr_matrix,
    text: str | None,
    image_url: Callable[[str], str | None],
) -> dict[str, Any]:
    """The JSON-ready answer of one search (hits already cut to the page asked for).

    ``image_url(filename)`` is a hit's image URL (``None``: none to show).
    """
    mode = result.mode
    hits = []
    for hit in result.hits:
        item: dict[str, Any] = {
            "rank": hit.rank,
            "image_id": hit.image_id,
            "filename": hit.filename,
            "url": image_url(hit.filename),
            "score": finite(hit.score),
        }
        if explain:
            terms = [
                {
                    "term": t,
                    "query_weight": finite(qw),
                    "image_weight": finite(dw),
                    "contribution": finite(c),
                }
                for t, qw, dw, c in hit.terms or []
            ]
            parts, explained = breakdown(
                mode, hit.score, hit.sparse_score, hit.dense_score, result.weights
            )
            item["terms"] = terms
            item["shared_terms"] = hit.shared_terms
            item["sparse_score"] = finite(float(sum(t["contribution"] for t in terms)))
            item["dense_score"] = finite(hit.dense_score)
            item["parts"] = {key: finite(v) for key, v in parts.items()}
            item["explained"] = finite(explained)
            item["missing_terms"] = [
                {"term": t, "query_weight": finite(w)}
                for t, w in (hit.missing_terms or [])[:MISSING_LISTED]
            ]
            item["n_missing"] = hit.n_missing
        hits.append(item)
    m = searcher.manifest
    weights = result.weights
    formula = {
        "sparse": "sparse score S_s = q · d (the sum of the shared terms' contributions)",
        "dense": "dense score S_d = q_dense · d_dense (not made of words)",
        "hybrid": "w1 · S_d + w2 · S_s",
    }[mode]
    return {
        "k": result.k,
        "mode": mode,
        "engine": result.engine,
        "score": {
            "formula": formula,
            "w1": None if weights is None else finite(weights[0]),
            "w2": None if weights is None else finite(weights[1]),
            "default_w1": finite(m.w1),
            "default_w2": finite(m.w2),
        },
        "query_terms": query_terms_json(searcher, searched, original, text),
        "n_query_terms": int(sp.csr_matrix(original).nnz),
        "hits": hits,
        "notes": list(result.notes),
    }


def edit_notes(edits: list[Any], mode: str, live: np.ndarray | None, served: Any) -> list[str]:
    """The notes of an edited query: how many images its filter admits, and dense mode.

    Args:
        edits: The query's :class:`~mmsparse.serve.queries.TermEdit` list.
        mode: The search mode.
        live: The filter mask the search ran with.
        served: The :class:`~mmsparse.serve.served.Served` generation searched.
    """
    notes = []
    if any(e.require or e.exclude for e in edits):
        notes.append(
            f"filtered: {served.count_live(live)} of {served.manifest.n_images} images hold "
            "every required term and no excluded one"
        )
    if mode == "dense" and any(e.factor is not None for e in edits):
        notes.append(
            "the dense score is not made of words: term weights do not change it (the "
            "required and excluded terms still filter)"
        )
    return notes


def add_verdict(out: dict[str, Any], verdict: Any, *, edited: bool, force: bool) -> None:
    """Put a text query's verdict in the answer ``out`` (``None``: not a text query).

    A ``no_match`` verdict empties the hits unless ``force``; a flagged verdict, and an
    edited query's verdict, get a note.
    """
    if verdict is not None and edited and verdict.verdict != "no_match":
        out["notes"].append(
            "edited query: the confidence verdict judges its words only (its scores "
            "are not comparable with the calibration's real queries)"
        )
    out["confidence"] = None if verdict is None else verdict.to_dict()
    if verdict is not None and verdict.flagged:
        hide = verdict.verdict == "no_match" and not force and out["hits"]
        out["notes"].append(
            verdict.note() + ("; no image shown (force=1 shows the closest)" if hide else "")
        )
        if hide:
            out["hits"] = []
            out["more"] = False


def like_note(image_id: str, mode: str, include_self: bool) -> str:
    """The note of a search by an indexed image (what of it is the query)."""
    what = {
        "sparse": "its indexed sparse vector",
        "dense": "its indexed dense vector",
        "hybrid": "its indexed dense and sparse vectors",
    }[mode]
    return f"more like image {image_id}: {what} is the query" + (
        "" if include_self else " (the image itself is left out; include_self=1 keeps it)"
    )


def image_terms_json(
    served: Any, row: int, terms: np.ndarray, weights: np.ndarray, k: int, url: str | None
) -> dict[str, Any]:
    """``/api/images/{id}/terms``: an image's ``k`` heaviest indexed terms.

    Args:
        served: The :class:`~mmsparse.serve.served.Served` generation of the image.
        row: The image's row.
        terms: Its term ids, as stored.
        weights: Their weights.
        k: Terms listed.
        url: The image's URL.
    """
    order = np.lexsort((terms, -weights))
    searcher = served.searcher
    vocab = searcher.vocab
    return {
        "image_id": searcher.image_ids[row],
        "filename": searcher.filenames[row],
        "url": url,
        "n_terms": int(terms.size),
        "generation": served.number,
        "terms": [
            {"term": vocab.term(int(terms[j])), "weight": finite(float(weights[j]))}
            for j in order[:k]
        ],
    }

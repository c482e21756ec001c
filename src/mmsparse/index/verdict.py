"""The verdict on a text query: its words, the stored calibration, and :func:`assess`.

The method (``confident``, ``low_confidence``, ``no_match``; the calibrated percentile) is
described in :mod:`mmsparse.index.confidence`, which computes the calibration by searching
the index through a :class:`~mmsparse.index.Searcher` and re-exports every name here. This
part is what the Searcher itself uses, kept apart so that the two do not import each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.data.terms import is_content_term
from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import IndexFormatError, MMSparseError

log = logging.getLogger(__name__)

CALIBRATION_NAME = "confidence.json"
CALIBRATION_FORMAT = "mmsparse-confidence"
CALIBRATION_VERSION = 1
VERDICTS = ("confident", "low_confidence", "no_match")
CLASSES = ("1", "2", "3+")
LOW_PERCENTILE = 2.0
MAX_UNKNOWN_SHARE = 0.5
MAX_PAIRS = 1000
LEVELS = tuple(i / 2 for i in range(201))  # 0, 0.5, ..., 100 (% of real queries)


# -- the words of a query ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueryWords:
    """The typed words of a query, split into known and unknown ones.

    Attributes:
        words: The query's words (lower-cased, accents stripped; tokens with a letter of
            any script; punctuation, digits and emoji are not words).
        known: Distinct known words (single terms of the run's vocabulary that occur in its
            training captions), in query order.
        unknown: Distinct unknown words, in query order.
        content: Distinct known *content* words (not function words), in query order.
        unknown_share: Share of the words (with repeats) that are unknown (0 with no word).
    """

    words: list[str]
    known: list[str]
    unknown: list[str]
    content: list[str]
    unknown_share: float

    @property
    def query_class(self) -> str:
        """``1``, ``2`` or ``3+``: the number of distinct known content words (0 counts as 1)."""
        n = len(self.content)
        return "3+" if n >= 3 else str(max(n, 1))


def _is_word(token: str) -> bool:
    return any(ch.isalpha() for ch in token)


def query_words(text: str, vocab: Vocabulary, known_ids: Iterable[int] | set[int]) -> QueryWords:
    """Split a query's words into known and unknown ones.

    Args:
        text: The query text.
        vocab: The run's vocabulary (an unnamed one knows no word).
        known_ids: Vocabulary ids of the known words (:func:`caption_word_ids`).

    Returns:
        The :class:`QueryWords`.
    """
    known_set = known_ids if isinstance(known_ids, set) else set(int(i) for i in known_ids)
    words = [t for t in Vocabulary.basic_tokenize(text) if _is_word(t)]
    known: list[str] = []
    unknown: list[str] = []
    content: list[str] = []
    n_unknown = 0
    for word in words:
        ids = vocab.wordpiece(word) if vocab.named else []
        if len(ids) == 1 and ids[0] in known_set:
            if word not in known:
                known.append(word)
            if is_content_term(word) and word not in content:
                content.append(word)
        else:
            n_unknown += 1
            if word not in unknown:
                unknown.append(word)
    share = n_unknown / len(words) if words else 0.0
    return QueryWords(words, known, unknown, content, float(share))


def caption_word_ids(
    vocab: Vocabulary, texts: Iterable[str], term_ids: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Vocabulary ids of the words of ``texts`` that are single vocabulary terms.

    Args:
        vocab: The run's vocabulary.
        texts: Caption texts (the run's training captions).
        term_ids: The sparse head's terms (a restricted vocabulary); ``None``: all terms.

    Returns:
        Sorted unique int64 ids (special tokens and ``[UNK]`` excluded).
    """
    if not vocab.named:
        return np.zeros(0, dtype=np.int64)
    seen: set[str] = set()
    for text in texts:
        seen.update(t for t in Vocabulary.basic_tokenize(text) if _is_word(t))
    special = set(vocab.special_ids.tolist())
    ids = set()
    for word in seen:
        pieces = vocab.wordpiece(word)
        if len(pieces) == 1 and pieces[0] is not None and pieces[0] not in special:
            ids.add(int(pieces[0]))
    out = np.array(sorted(ids), dtype=np.int64)
    if term_ids is not None:
        out = out[np.isin(out, np.asarray(term_ids, dtype=np.int64))]
    return out


def vocabulary_word_ids(
    vocab: Vocabulary, term_ids: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Ids of the whole-word terms of the vocabulary (no ``##`` piece, no special token).

    The known words of an index without calibration (see :func:`assess`).
    """
    if not vocab.named:
        return np.zeros(0, dtype=np.int64)
    ids = np.arange(len(vocab)) if term_ids is None else np.asarray(term_ids, dtype=np.int64)
    special = set(vocab.special_ids.tolist())
    keep = [int(i) for i in ids if not vocab.tokens[i].startswith("##") and int(i) not in special]
    return np.array(keep, dtype=np.int64)


# -- the calibration ----------------------------------------------------------------------


def index_identity(index_dir: str | Path, manifest: Any) -> str:
    """sha256 of what makes an index's scores: run checkpoint, vocabulary, images, options.

    A calibration records it; one of another index (or a rebuilt one with other options)
    is not used. For an index as built, the images are part of it (its ``docs.json``);
    for a live index (:mod:`mmsparse.index.generations`) they are not: its calibration
    belongs to the collection (:func:`collection_identity`) and stays valid while images
    are added and removed (``mmsparse index optimize`` computes it again).
    """
    from mmsparse.index.generations import is_live

    if is_live(index_dir):
        return collection_identity(manifest)
    digest = hashlib.sha256(_identity_json(manifest).encode("utf-8"))
    docs = Path(index_dir) / "docs.json"
    if docs.is_file():
        digest.update(docs.read_bytes())
    return digest.hexdigest()


def collection_identity(manifest: Any) -> str:
    """sha256 of a live index's engine, run, vocabulary and options, not of its images."""
    ident = json.loads(_identity_json(manifest))
    del ident["n_images"]
    ident["options"].pop("scale", None)  # each segment has its own
    ident["live"] = True
    return hashlib.sha256(
        json.dumps(ident, sort_keys=True, allow_nan=False).encode("utf-8")
    ).hexdigest()


def _identity_json(manifest: Any) -> str:
    m = manifest
    ident = {
        "engine": m.engine,
        "checkpoint_sha256": m.checkpoint_sha256,
        "vocab_sha256": m.vocab_sha256,
        "split": m.split,
        "n_images": m.n_images,
        "dense_dim": m.dense_dim,
        "options": asdict(m.options),
        "w1": m.w1,
        "w2": m.w2,
    }
    return json.dumps(ident, sort_keys=True, allow_nan=False)


@dataclass
class Calibration:
    """Top scores of real queries against one index, per search mode and query class.

    Attributes:
        index_sha256: :func:`index_identity` of the index it was computed on.
        calibration_split: The split whose captions made the real queries (the run's val).
        train_splits: The splits whose captions define the known words.
        low_percentile: Verdict threshold: a top score below this percentile of the real
            queries' top scores is ``low_confidence``.
        max_unknown_share: More unknown words than this share is ``low_confidence``.
        known_word_ids: Sorted vocabulary ids of the known words.
        quantiles: ``{mode: {class: [top score at each of LEVELS]}}``.
        counts: ``{mode: {class: number of real queries}}``.
        sources: ``{class: how its real queries were made}``.
        encoder: Which text encoder made the short queries (``""``: none, no class 1/2).
    """

    index_sha256: str
    calibration_split: str
    train_splits: list[str]
    known_word_ids: np.ndarray
    quantiles: dict[str, dict[str, list[float]]]
    counts: dict[str, dict[str, int]]
    sources: dict[str, str] = field(default_factory=dict)
    encoder: str = ""
    low_percentile: float = LOW_PERCENTILE
    max_unknown_share: float = MAX_UNKNOWN_SHARE

    def __post_init__(self) -> None:
        self.known_word_ids = np.asarray(self.known_word_ids, dtype=np.int64)
        self._known_set = set(self.known_word_ids.tolist())

    @property
    def known_set(self) -> set[int]:
        """The known word ids as a set."""
        return self._known_set

    def threshold(self, mode: str, query_class: str) -> float | None:
        """Top score at :attr:`low_percentile` for a mode and class (``None`` if not known)."""
        q = self.quantiles.get(mode, {}).get(query_class)
        if not q:
            return None
        return float(np.interp(self.low_percentile, LEVELS, q))

    def percentile(self, mode: str, query_class: str, score: float) -> float | None:
        """Share (%) of the real queries of a class whose top score is below ``score``."""
        q = self.quantiles.get(mode, {}).get(query_class)
        if not q:
            return None
        qs = np.asarray(q, dtype=np.float64)
        if score <= qs[0]:
            return 0.0
        if score >= qs[-1]:
            return 100.0
        i = int(np.searchsorted(qs, score, side="right"))  # qs[i-1] <= score < qs[i]
        lo, hi = qs[i - 1], qs[i]
        frac = 0.0 if hi <= lo else (score - lo) / (hi - lo)
        return float(LEVELS[i - 1] + frac * (LEVELS[i] - LEVELS[i - 1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (strict JSON: every float finite)."""
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "index_sha256": self.index_sha256,
            "calibration_split": self.calibration_split,
            "train_splits": list(self.train_splits),
            "low_percentile": float(self.low_percentile),
            "max_unknown_share": float(self.max_unknown_share),
            "encoder": self.encoder,
            "sources": dict(self.sources),
            "levels": list(LEVELS),
            "counts": {m: dict(c) for m, c in self.counts.items()},
            "quantiles": {
                m: {c: [_round(v) for v in q] for c, q in per.items()}
                for m, per in self.quantiles.items()
            },
            "known_word_ids": self.known_word_ids.tolist(),
        }

    def save(self, index_dir: str | Path) -> Path:
        """Write :data:`CALIBRATION_NAME` into the index directory (atomically, strict JSON).

        Raises:
            MMSparseError: If a value is not finite (nothing is written then).
        """
        from mmsparse.io_utils import atomic_write_text

        path = Path(index_dir) / CALIBRATION_NAME
        try:  # one key per line, its value on that line (lists stay compact)
            items = [
                f" {json.dumps(k, allow_nan=False)}: "
                f"{json.dumps(v, allow_nan=False, separators=(',', ':'))}"
                for k, v in self.to_dict().items()
            ]
            text = "{\n" + ",\n".join(items) + "\n}"
        except ValueError as exc:
            raise MMSparseError(f"{path}: calibration has a value that is not finite") from exc
        atomic_write_text(path, text + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = CALIBRATION_NAME) -> Calibration:
        """Read :meth:`to_dict`'s output.

        Raises:
            IndexFormatError: On another format or version, a missing key, or bad values.
        """
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise IndexFormatError(f"{where}: not an mmsparse confidence calibration")
        if data.get("version") != CALIBRATION_VERSION:
            raise IndexFormatError(
                f"{where}: calibration version {data.get('version')!r}, this mmsparse reads "
                f"{CALIBRATION_VERSION}; rebuild the index with 'mmsparse index build'"
            )
        try:
            if list(data["levels"]) != list(LEVELS):
                raise IndexFormatError(f"{where}: unexpected quantile levels")
            quantiles = {
                str(m): {str(c): [float(v) for v in q] for c, q in per.items()}
                for m, per in data["quantiles"].items()
            }
            for m, per in quantiles.items():
                for c, q in per.items():
                    if c not in CLASSES or len(q) != len(LEVELS):
                        raise IndexFormatError(f"{where}: bad quantile table {m}/{c}")
                    if not all(math.isfinite(v) for v in q) or np.any(np.diff(q) < 0):
                        raise IndexFormatError(f"{where}: quantiles of {m}/{c} not increasing")
            return cls(
                index_sha256=str(data["index_sha256"]),
                calibration_split=str(data["calibration_split"]),
                train_splits=[str(s) for s in data["train_splits"]],
                known_word_ids=np.asarray(data["known_word_ids"], dtype=np.int64),
                quantiles=quantiles,
                counts={
                    str(m): {str(c): int(n) for c, n in per.items()}
                    for m, per in data["counts"].items()
                },
                sources={str(k): str(v) for k, v in data.get("sources", {}).items()},
                encoder=str(data.get("encoder", "")),
                low_percentile=float(data["low_percentile"]),
                max_unknown_share=float(data["max_unknown_share"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IndexFormatError(f"{where}: malformed calibration ({exc!r})") from exc

    @classmethod
    def load(cls, index_dir: str | Path) -> Calibration:
        """Read :data:`CALIBRATION_NAME` of an index directory.

        Raises:
            IndexFormatError: If it is missing or malformed.
        """
        path = Path(index_dir) / CALIBRATION_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise IndexFormatError(f"{path}: no confidence calibration") from exc
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path}: unreadable calibration ({exc})") from exc
        return cls.from_dict(data, str(path))


def _round(x: float) -> float:
    return float(f"{float(x):.7g}")


# -- the verdict -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How much to trust the answer to one query.

    Attributes:
        verdict: ``confident``, ``low_confidence`` or ``no_match``.
        reasons: Why (one line each; empty when confident).
        percentile: Share (%) of real queries of the same class and mode whose top score is
            lower (``None`` without a calibration for this class and mode, without a hit, or
            for a query without a known content word: no real query is like it).
        score: The query's top score (``None`` without a hit).
        threshold: The top score below which the verdict is ``low_confidence``.
        query_class: ``1``, ``2`` or ``3+`` known content words.
        known_terms: The query's known words (terms of the run's vocabulary).
        unknown_words: Its unknown words.
        unknown_share: Share of its words that are unknown.
        calibrated: Whether the index's calibration was used (otherwise: words only).
    """

    verdict: str
    reasons: list[str]
    percentile: float | None
    score: float | None
    threshold: float | None
    query_class: str
    known_terms: list[str]
    unknown_words: list[str]
    unknown_share: float
    calibrated: bool

    @property
    def flagged(self) -> bool:
        """Not ``confident``."""
        return self.verdict != "confident"

    def note(self) -> str:
        """The one-line note shown with a flagged result (``""`` when confident)."""
        if not self.flagged:
            return ""
        head = "no good match" if self.verdict == "no_match" else "low confidence"
        return f"{head}: {'; '.join(self.reasons)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (finite floats; ``None`` for absent numbers)."""
        out = asdict(self)
        for key in ("percentile", "score", "threshold", "unknown_share"):
            v = out[key]
            if v is not None:
                out[key] = round(float(v), 4) if math.isfinite(v) else None
        return out


def _listing(words: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(w) for w in words[:limit])
    return shown + (f" and {len(words) - limit} more" if len(words) > limit else "")


def assess(
    text: str,
    top_score: float | None,
    mode: str,
    vocab: Vocabulary,
    calibration: Calibration | None = None,
    known_ids: Iterable[int] | None = None,
) -> Verdict:
    """The verdict on one text query from its words and its top score.

    Args:
        text: The query text (as encoded).
        top_score: Score of its first hit in ``mode`` (``None``: no hit).
        mode: ``sparse``, ``dense`` or ``hybrid``.
        vocab: The run's vocabulary.
        calibration: The index's :class:`Calibration` (``None``: words only).
        known_ids: Known word ids when there is no calibration (default: every whole-word
            term of ``vocab``).

    Returns:
        The :class:`Verdict`.
    """
    if calibration is not None:
        known: Iterable[int] | set[int] = calibration.known_set
    elif known_ids is not None:
        known = known_ids
    else:
        known = vocabulary_word_ids(vocab)
    qw = query_words(text, vocab, known)
    cls = qw.query_class if vocab.named else "3+"
    reasons: list[str] = []
    verdict = "confident"
    threshold = percentile = None
    if calibration is not None and top_score is not None:
        threshold = calibration.threshold(mode, cls)
        percentile = calibration.percentile(mode, cls, float(top_score))
    if not vocab.named:
        pass  # index-named terms: no words to judge, only the score
    elif not qw.words:
        verdict = "no_match"
        reasons.append("the query has no word (only symbols, digits or emoji)")
    elif not qw.content:
        verdict = "no_match"
        if qw.known and not qw.unknown:
            reasons.append(f"the query has only function words ({_listing(qw.known)})")
        else:
            reasons.append(
                "no word of the query is a known word of this run's vocabulary "
                f"(unknown: {_listing(qw.unknown)})"
            )
    if verdict == "no_match":  # no known content word: no class of real queries to compare with
        threshold = percentile = None
    if verdict == "confident" and top_score is None:
        verdict = "no_match"
        reasons.append("no indexed image shares a term with the query")
    if verdict == "confident":
        max_share = calibration.max_unknown_share if calibration else MAX_UNKNOWN_SHARE
        if qw.unknown_share > max_share:
            verdict = "low_confidence"
            reasons.append(
                f"{len(qw.unknown)} of the query's words are not in this run's vocabulary "
                f"({_listing(qw.unknown)})"
            )
        if threshold is not None and top_score is not None and top_score < threshold:
            verdict = "low_confidence"
            low = calibration.low_percentile if calibration else LOW_PERCENTILE
            reasons.append(
                f"top score {top_score:.4g} is below the {_ordinal(low)} percentile "
                f"({threshold:.4g}) of real queries with {_class_words(cls)} ({mode} search)"
            )
    return Verdict(
        verdict=verdict,
        reasons=reasons,
        percentile=percentile,
        score=None if top_score is None else float(top_score),
        threshold=threshold,
        query_class=cls,
        known_terms=list(qw.known),
        unknown_words=list(qw.unknown),
        unknown_share=qw.unknown_share,
        calibrated=calibration is not None,
    )


def _ordinal(x: float) -> str:
    text = f"{x:g}"
    if not text.isdigit():
        return text + "th"
    n = int(text)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _class_words(cls: str) -> str:
    return {"1": "one known word", "2": "two known words"}.get(cls, "three or more known words")


def load_calibration(index_dir: str | Path, manifest: Any) -> tuple[Calibration | None, str]:
    """An index's calibration if it belongs to the index, else ``None`` and a note why.

    Returns:
        ``(calibration or None, note)``: the note is ``""`` when the calibration is used.
    """
    path = Path(index_dir) / CALIBRATION_NAME
    hint = "rebuild the index with 'mmsparse index build' to calibrate them"
    if not path.is_file():
        return (
            None,
            f"this index has no {CALIBRATION_NAME}: verdicts use the query's words only; {hint}",
        )
    try:
        cal = Calibration.load(index_dir)
    except IndexFormatError as exc:
        return None, f"{exc}; verdicts use the query's words only; {hint}"
    if cal.index_sha256 != index_identity(index_dir, manifest):
        return None, f"{path} belongs to another build of this index; {hint}"
    return cal, ""

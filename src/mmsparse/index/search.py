"""Searching an index with text, a caption id or query vectors (``mmsparse search``).

The module is :mod:`mmsparse.index.search` (``mmsparse.index.search.Searcher`` works);
calling it like a function, ``mmsparse.index.search(...)``, still runs
:func:`search_index` with a :class:`DeprecationWarning` (it was a function of that name).

A :class:`Searcher` opens an index directory and the run it was built from, checks that they
still belong together (same checkpoint, same vocabulary: otherwise
:class:`~mmsparse.errors.IndexFormatError`), encodes queries the way the run does (its text
pruning options), and returns ranked images with their ids, file names and scores.

Documented behaviour on unusual input:

- an empty query (``""`` or only spaces) is an error, and so is one that is not valid UTF-8
  (lone surrogates, as undecodable bytes of a command line arrive);
- a query longer than the text encoder's limit (:data:`MAX_QUERY_PIECES` word pieces) is cut
  at a word boundary and a note says so;
- a query whose sparse vector shares no term with the index returns no image, with a note;
- ``k <= 0`` is an error; ``k`` larger than the index is lowered to the index size, with a note;
- a query vector of another vocabulary size is refused (:class:`IndexFormatError`);
- an index built with pruning options other than the run's evaluation options is served
  as built (its options win) and a note names the difference;
- a run with inference-free queries (``model.query_encoder=lookup``) encodes a text as
  its own word pieces with the run's per-term weights: only its vocabulary is read, the
  text encoder is never loaded, queries are not cut, and there is no dense query side
  (``dense`` and ``hybrid`` modes are an error naming the option).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import DataError, IndexFormatError, MMSparseError, QueryError
from mmsparse.index.hits import check_k
from mmsparse.index.manifest import run_fingerprint, vocab_sha256
from mmsparse.index.segments import IndexView, open_view
from mmsparse.index.verdict import Verdict, assess, load_calibration

log = logging.getLogger(__name__)

MAX_QUERY_PIECES = 126  # 128 tokens of the MiniLM/BERT encoders minus [CLS] and [SEP]


@dataclass
class Hit:
    """One ranked image.

    Attributes:
        rank: 1-based rank.
        row: Row of the image in the index.
        image_id: Image id.
        filename: Image file name ('' if unknown).
        score: Score of the search mode (sparse ``q · d``, dense, or hybrid).
        terms: With ``explain``: ``(term, query weight, image weight, product)`` of the
            shared terms, largest product first (at most ``explain_terms`` of them).
        shared_terms: With ``explain``: how many terms the query and image share (the
            listed ones are the top of these).
        sparse_score: With ``explain``: the sparse score ``S_s = q · d`` (the sum of every
            shared term's product), in every mode.
        dense_score: With ``explain`` in ``dense``/``hybrid`` mode: the dense score
            ``S_d`` (a hybrid hit's score is ``w1 · S_d + w2 · S_s``).
        missing_terms: With ``explain``: ``(term, query weight)`` of the query's terms
            the image lacks, heaviest first (at most ``explain_terms``).
        n_missing: With ``explain``: how many query terms the image lacks.
    """

    rank: int
    row: int
    image_id: str
    filename: str
    score: float
    terms: list[tuple[str, float, float, float]] | None = None
    shared_terms: int | None = None
    sparse_score: float | None = None
    dense_score: float | None = None
    missing_terms: list[tuple[str, float]] | None = None
    n_missing: int | None = None


@dataclass
class SearchResult:
    """Ranked images of one query, with the notes on how the query was handled.

    Attributes:
        query: The query text (after any cut), or ``None``.
        caption_id: The caption id used as query, or ``None``.
        k: Results asked for (after any lowering).
        mode: ``sparse``, ``dense`` or ``hybrid``.
        engine: Engine of the index.
        hits: Ranked images.
        query_terms: The query's heaviest sparse terms ``(term, weight)``.
        n_query_terms: How many terms the query's sparse vector has (``query_terms`` lists
            the first 20 unless asked for more).
        weights: ``(w1, w2)`` of a ``hybrid`` search (``None`` in the other modes).
        notes: What was adjusted (cut query, lowered k, no shared term, option mismatch).
        seconds: Search time (engine only, without encoding).
        confidence: Text and caption queries: the
            :class:`~mmsparse.index.verdict.Verdict` (``confident``, ``low_confidence``
            or ``no_match``, with reasons, known and unknown words, calibrated percentile).
    """

    query: str | None
    caption_id: str | None
    k: int
    mode: str
    engine: str
    hits: list[Hit] = field(default_factory=list)
    query_terms: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    confidence: Any = None
    n_query_terms: int = 0
    weights: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def cap_query(text: str, vocab: Any, max_pieces: int = MAX_QUERY_PIECES) -> tuple[str, bool]:
    """Cut ``text`` at a word boundary so that it has at most ``max_pieces`` word pieces.

    Returns:
        ``(text, was_cut)``. The fallback vocabulary (no word pieces) cuts at
        ``max_pieces`` words.
    """
    words = text.split()
    count = 0
    for i, word in enumerate(words):
        pieces = len(vocab.encode(word)) if getattr(vocab, "named", False) else 1
        count += max(pieces, 1)
        if count > max_pieces:
            return " ".join(words[:i]), True
    return text, False


def load_text_encoder(extraction: dict[str, Any] | None) -> Any:
    """The text encoder of a run's extraction backend (``mmsparse.extract``).

    Raises:
        MMSparseError: If the run records no extraction backend or mmsparse.extract is not
            available; the message suggests ``--caption-id``.
    """
    if not extraction:
        raise MMSparseError(
            "this run records no feature-extraction backend, so raw text cannot be "
            "encoded; search by caption with --caption-id ID instead"
        )
    try:
        from mmsparse.extract import load_text_encoder as _load
    except ImportError as exc:
        raise MMSparseError(
            "raw-text search needs mmsparse.extract (the run's text encoder), which this "
            "installation lacks; search by caption with --caption-id ID instead"
        ) from exc
    return _load(extraction, device="cpu")


class Searcher:
    """An opened index with the run it was built from.

    The index is opened at its current generation (:mod:`mmsparse.index.generations`; an
    index as built is generation 0): its segments are searched as one index
    (:class:`~mmsparse.index.segments.SegmentedEngine`), deleted images left out. Rows are
    the generation's global rows. :meth:`with_view` gives a searcher of another generation
    sharing this one's run and text encoder (``mmsparse serve`` switching generations).

    Args:
        index_dir: Directory written by :func:`mmsparse.index.build_index`.
        run_dir: The run to encode queries with (default: the one in the manifest).
        data: Feature directory for ``caption_id`` queries (default: the index's).
        verify: Verify the index checksums on open.
        load_run: Load the run (needed for text and caption queries; not for vectors).
        bundle: Backbone bundle directory for ``caption_id`` queries (default: the run's).
        text_encoder: An object with ``encode(list[str]) -> (N, d_txt)`` features to use
            instead of the run's extraction backend (servers, tests, custom encoders).
        in_memory: Read the index files into memory instead of memory-mapping them (a
            server: immune to files changed in place).
        view: An already opened :class:`~mmsparse.index.segments.IndexView` of the index
            (then ``verify`` and ``in_memory`` are not used).

    Attributes:
        index_dir: The index directory.
        view: The opened generation (:class:`~mmsparse.index.segments.IndexView`).
        generation: Its number.
        manifest: The index's :class:`~mmsparse.index.IndexManifest`, ``n_images`` being
            the live images of the generation.
        engine: The :class:`~mmsparse.index.segments.SegmentedEngine` over the
            generation's segments (the search surface of an
            :class:`~mmsparse.index.engines.Engine`).
        image_ids: Image id of every row (deleted rows included).
        filenames: Image file name of every row.
        run: The loaded run (``None`` with ``load_run=False``).
        vocab: The run's vocabulary (``None`` without the run).
        notes: Notes every result carries (options that differ from the run's).
        data: The feature directory given (``None``: the index's, see :attr:`data_dir`).
        bundle: The bundle directory given (``None``: the run's).

    Raises:
        IndexFormatError: If the index is corrupt, or no longer matches the run.
    """

    def __init__(
        self,
        index_dir: str | Path,
        run_dir: str | Path | None = None,
        data: str | Path | None = None,
        verify: bool = True,
        load_run: bool = True,
        bundle: str | Path | None = None,
        text_encoder: Any = None,
        in_memory: bool = False,
        view: IndexView | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        self._set_view(view or open_view(self.index_dir, verify=verify, in_memory=in_memory))
        self.notes: list[str] = []
        self.run: Any = None
        self.data = data
        self.bundle = bundle
        self._store: Any = None
        self._text_encoder: Any = text_encoder
        self.vocab: Any = None
        self.calibration: Any = None
        self._known: set[int] | None = None  # known words without a calibration
        self._run_notes: list[str] = []
        if load_run:
            self._open_run(run_dir or self.manifest.run_dir)
            self._run_notes = list(self.notes)
            self._load_calibration()

    def _set_view(self, view: IndexView) -> None:
        self.view = view
        self.generation = view.number
        self.manifest = view.manifest
        self.image_ids, self.filenames = view.image_ids, view.filenames
        self.engine = view.engine

    def _load_calibration(self) -> None:
        self.calibration, note = load_calibration(self.index_dir, self.manifest)
        self.notes = list(self._run_notes) + ([note] if note else [])

    def with_view(self, view: IndexView) -> Searcher:
        """A searcher of another generation of the same index.

        It shares this one's run, text encoder and data; the calibration is read again.

        Raises:
            IndexFormatError: If ``view`` is of an index built from another run or
                vocabulary.
        """
        if (view.manifest.checkpoint_sha256, view.manifest.vocab_sha256) != (
            self.manifest.checkpoint_sha256,
            self.manifest.vocab_sha256,
        ):
            raise IndexFormatError(
                f"{view.index_dir}: generation {view.number} was built from another run or "
                "vocabulary than the one served"
            )
        other = copy.copy(self)
        other._set_view(view)
        if self.run is not None:
            other._load_calibration()
        return other

    def _open_run(self, run_dir: str | Path) -> None:
        from mmsparse.runs import load_run

        m = self.manifest
        if not Path(run_dir).is_dir():
            raise IndexFormatError(
                f"{self.index_dir}: the run it was built from, {run_dir}, is not there; give "
                "the run's directory with --run RUN_DIR"
            )
        run = load_run(run_dir)
        if vocab_sha256(run.vocab.tokens) != m.vocab_sha256 or len(run.vocab) != m.vocab_size:
            raise IndexFormatError(
                f"{self.index_dir}: the index was built with another vocabulary "
                f"({m.vocab_size} terms) than the run {run_dir} ({len(run.vocab)} terms)"
            )
        fingerprint = run_fingerprint(run_dir)
        if fingerprint != m.checkpoint_sha256:
            raise IndexFormatError(
                f"{self.index_dir}: the index was built from checkpoint "
                f"{m.checkpoint_sha256[:12]} but {run_dir} now holds {fingerprint[:12]}; "
                "rebuild the index with 'mmsparse index build'"
            )
        ev = run.config.serving
        if (ev.image_topk, float(ev.threshold)) != (
            m.options.image_topk,
            float(m.options.threshold),
        ):
            self.notes.append(
                f"index built with image_topk={m.options.image_topk}, "
                f"threshold={m.options.threshold}; the run evaluates with "
                f"image_topk={ev.image_topk}, threshold={ev.threshold} (the index's options "
                "are used)"
            )
        self.run = run
        self.vocab = run.vocab

    # -- query encoding -------------------------------------------------------------------

    def require_run(self) -> Any:
        """The run this searcher was opened with.

        Raises:
            MMSparseError: If it was opened without it (``load_run=False``).
        """
        if self.run is None:
            raise MMSparseError("this Searcher was opened without its run (load_run=False)")
        return self.run

    @property
    def inference_free(self) -> bool:
        """Whether the run's text queries are term lookups (no text encoder, no dense side)."""
        return self.run is not None and self.run.model.inference_free

    def _encode_terms(self, term_ids: list[Any]) -> tuple[None, sp.csr_matrix]:
        """Inference-free query vectors of tokenised queries (full-vocabulary ids)."""
        from mmsparse.sparse.ops import prune

        run = self.require_run()
        ev = run.config.serving
        q = prune(run.model.encode_query_terms(term_ids), ev.text_topk, ev.threshold)
        return None, sp.csr_matrix(q.numpy())

    def _encode_feats(self, feats: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
        from mmsparse.index.encode import encode_vectors

        run = self.require_run()
        ev = run.config.serving
        return encode_vectors(
            run.model, feats, "text", topk=ev.text_topk, threshold=ev.threshold, batch_size=256
        )

    def encode_text(self, texts: list[str]) -> tuple[np.ndarray | None, sp.csr_matrix]:
        """Dense and sparse query vectors of raw texts (through the run's text encoder).

        For a run with inference-free queries the texts are only tokenised with the run's
        vocabulary and looked up; the dense vectors are then ``None``.
        """
        run = self.require_run()
        if run.model.inference_free:
            return self._encode_terms([self.vocab.encode(t) for t in texts])
        if self._text_encoder is None:
            extraction = self.checkpoint_extraction(run)
            if extraction:
                log.info(
                    "loading the run's text encoder (10-25 s on a CPU, once per process; "
                    "for many queries: mmsparse search --queries FILE, or mmsparse serve)"
                )
            self._text_encoder = load_text_encoder(extraction)
        feats = np.asarray(self._text_encoder.encode(list(texts)), dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != run.model.d_txt:
            raise MMSparseError(
                f"the text encoder gives vectors of shape {feats.shape}, the run expects "
                f"(N, {run.model.d_txt})"
            )
        return self._encode_feats(feats)

    @staticmethod
    def checkpoint_extraction(run: Any) -> dict[str, Any] | None:
        """The backbone extraction recorded in a run's checkpoint (``model.json``), if any.

        The text encoder of a query must be the one the checkpoint's features came from, so
        only the checkpoint is asked (not a bundle, as :func:`mmsparse.runs.run_extraction`
        also does).
        """
        from mmsparse.io_utils import read_json
        from mmsparse.runs import checkpoint_dir

        info = read_json(checkpoint_dir(run.run_dir) / "model.json", "model config")
        backbone = info.get("backbone") if isinstance(info, dict) else None
        if isinstance(backbone, dict) and backbone.get("extraction"):
            return backbone["extraction"]
        return None

    def store(self) -> Any:
        """The feature store of the index's data (loaded on first use)."""
        if self._store is None:
            from mmsparse.runs import load_run_data

            run = self.require_run()
            data = self.data_dir
            if not self.data and data and not Path(data).is_dir():
                raise DataError(
                    f"{data}: the index's data directory (data_dir in "
                    f"{self.index_dir / 'index.json'}) is not there; give the features' "
                    "directory with --data DIR"
                )
            self._store = load_run_data(run, data, self.bundle)
        return self._store

    @property
    def data_dir(self) -> str | Path | None:
        """The feature directory of caption queries: the one given, else the index's."""
        return self.data or self.manifest.data_dir or None

    @property
    def text_encoder(self) -> Any:
        """The text encoder given or loaded (``None`` before the first text query)."""
        return self._text_encoder

    @property
    def modes(self) -> tuple[str, ...]:
        """Search modes this index serves (``dense``/``hybrid`` where it holds dense).

        Only ``sparse`` with a run whose queries are inference-free (no dense query side).
        """
        if self.inference_free:
            return ("sparse",)
        return self.engine.modes

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The indexed sparse vector of an image row: ``(term ids, weights)``, as searched."""
        return self.engine.doc_vector(int(row))

    def doc_dense(self, row: int) -> np.ndarray | None:
        """``(1, dense_dim)`` indexed dense vector of a row (``None``: the index has none)."""
        return self.engine.doc_dense(int(row))

    def encode_captions(self, caption_ids: list[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        """Dense and sparse query vectors of captions of the data, by caption id.

        Raises:
            DataError: On an unknown caption id.
        """
        store = self.store()
        rows = [store.caption_row(c) for c in caption_ids]
        if self.inference_free:
            indptr, indices = store.caption_token_ids(store.vocabulary(self.run.model.vocab_size))
            return self._encode_terms([indices[indptr[r] : indptr[r + 1]] for r in rows])
        return self._encode_feats(store.caption_feats[rows])

    # -- search ---------------------------------------------------------------------------

    def assess(self, text: str, result: SearchResult) -> Verdict:
        """The verdict on a text query's result (see :mod:`mmsparse.index.confidence`)."""
        top = result.hits[0].score if result.hits else None
        known = None if self.calibration is not None or self.vocab is None else self.known_ids()
        return assess(text, top, result.mode, self.vocab, self.calibration, known)

    def known_ids(self) -> set[int]:
        """Ids of the run's known words: the calibration's, else the head's whole words."""
        if self.calibration is not None:
            return self.calibration.known_set
        if self._known is None and self.vocab is not None:
            from mmsparse.index.verdict import vocabulary_word_ids

            term_ids = getattr(self.run.model, "term_ids", None)  # the head's terms only
            ids = None if term_ids is None else term_ids.cpu().numpy()
            self._known = set(vocabulary_word_ids(self.vocab, ids).tolist())
        return self._known or set()

    def search_vectors(
        self,
        sparse: sp.spmatrix | np.ndarray,
        dense: np.ndarray | None = None,
        *,
        k: int = 10,
        mode: str = "sparse",
        explain: bool = False,
        explain_terms: int = 10,
        query_terms: int | None = 20,
        weights: tuple[float, float] | None = None,
        **engine_kwargs: Any,
    ) -> list[SearchResult]:
        """Search with query vectors, one result per row.

        Args:
            sparse: ``(B, V)`` query sparse vectors.
            dense: ``(B, dense_dim)`` query dense vectors (``dense``/``hybrid`` modes).
            k: Results per query (lowered to the index size, with a note).
            mode: ``sparse``, ``dense`` or ``hybrid`` (the latter two where the index holds
                dense vectors: :attr:`modes`).
            explain: Add the matching terms and their contributions to every hit.
            explain_terms: Terms shown per hit.
            query_terms: Query terms listed in :attr:`SearchResult.query_terms`
                (``None``: all; :attr:`SearchResult.n_query_terms` counts them).
            weights: ``(w1, w2)`` of a ``hybrid`` search instead of the index's.
            **engine_kwargs: Engine search parameters (``mmsparse index engines`` lists
                them: Seismic ``query_cut``, ``heap_factor``; kannolo ``ef_search``; Milvus
                ``candidates``), and ``threads`` or ``live`` (see
                :meth:`~mmsparse.index.engines.Engine.search_batch`).

        Returns:
            One :class:`SearchResult` per query.

        Raises:
            MMSparseError: On ``k <= 0``, a mode the index does not serve, or a bad
                engine parameter.
            IndexFormatError: If the query vectors are of another vocabulary.
        """
        if mode != "sparse" and dense is None and self.inference_free:
            raise QueryError(
                f"mode={mode} needs a dense query vector, and this run's queries are "
                "inference-free (model.query_encoder=lookup: no text encoder, no dense "
                "query side); search with mode=sparse"
            )
        k = check_k(k)
        notes = list(self.notes)
        n = self.manifest.n_images
        if k > n:
            notes.append(f"k={k} is larger than the index ({n} images); returning all {n}")
            k = n
        threads = engine_kwargs.pop("threads", None)
        live = engine_kwargs.pop("live", None)
        query = self.engine.check_query(
            sparse,
            k,
            dense=dense,
            mode=mode,
            threads=threads,
            live=live,
            params=engine_kwargs,
            weights=weights,
        )
        sparse = query.sparse
        t0 = time.perf_counter()
        hits = self.engine.search(query)
        seconds = (time.perf_counter() - t0) / max(sparse.shape[0], 1)
        vocab = self.vocab
        results = []
        for i in range(sparse.shape[0]):
            rows, scores = hits.query(i)
            q = sparse[i]
            q_notes = list(notes)
            if mode == "sparse" and rows.size == 0:
                q_notes.append(
                    "no indexed image shares a term with this query (empty sparse "
                    "vector or only unseen terms): no result"
                )
            res = SearchResult(
                query=None,
                caption_id=None,
                k=k,
                mode=mode,
                engine=self.manifest.engine,
                notes=q_notes,
                seconds=seconds,
                n_query_terms=int(q.nnz),
                weights=self.engine.hybrid_weights(query) if mode == "hybrid" else None,
            )
            order = np.lexsort((q.indices, -q.data))
            res.query_terms = [
                (_term(vocab, int(q.indices[j])), float(q.data[j]))
                for j in (order if query_terms is None else order[:query_terms])
            ]
            terms_w = None
            if explain and rows.size and q.nnz:
                terms_w = self.engine.doc_weights(rows, q.indices)
            dense_scores = None
            if explain and mode != "sparse" and rows.size:
                # (k, d) stored vectors of the hits · (d,) query: each hit's dense score S_d
                docs = np.concatenate([self.engine.doc_dense(int(r)) for r in rows.tolist()])
                dense_scores = docs.astype(np.float64) @ query.dense[i].astype(np.float64)
            for r, (row, score) in enumerate(zip(rows.tolist(), scores.tolist())):
                hit = Hit(
                    rank=r + 1,
                    row=int(row),
                    image_id=self.image_ids[row],
                    filename=self.filenames[row],
                    score=float(score),
                )
                if explain:
                    hit.terms = []
                    hit.shared_terms = 0
                    hit.sparse_score = 0.0
                    hit.missing_terms = [
                        (_term(vocab, int(q.indices[j])), float(q.data[j]))
                        for j in order[:explain_terms]
                    ]
                    hit.n_missing = int(q.nnz)
                    if dense_scores is not None:
                        hit.dense_score = float(dense_scores[r])
                    if terms_w is not None:
                        prod = q.data * terms_w[r]
                        nz = np.flatnonzero(prod)
                        hit.shared_terms = int(nz.size)
                        hit.sparse_score = float(prod.astype(np.float64).sum())
                        absent = order[terms_w[r][order] == 0]  # heaviest first
                        hit.n_missing = int(absent.size)
                        hit.missing_terms = [
                            (_term(vocab, int(q.indices[j])), float(q.data[j]))
                            for j in absent[:explain_terms]
                        ]
                        top = nz[np.lexsort((q.indices[nz], -prod[nz]))][:explain_terms]
                        hit.terms = [
                            (
                                _term(vocab, int(q.indices[j])),
                                float(q.data[j]),
                                float(terms_w[r, j]),
                                float(prod[j]),
                            )
                            for j in top
                        ]
                res.hits.append(hit)
            results.append(res)
        return results

    def search(
        self,
        text: str | None = None,
        *,
        caption_id: str | None = None,
        k: int = 10,
        mode: str = "sparse",
        explain: bool = False,
        **engine_kwargs: Any,
    ) -> SearchResult:
        """Search with raw text (through the run's text encoder) or a caption id.

        Raises:
            MMSparseError: On an empty query, both or neither of text and caption id, or
                ``k <= 0``.
            DataError: On an unknown caption id.
        """
        if (text is None) == (caption_id is None):
            raise MMSparseError("give either a query text or --caption-id, not both/neither")
        cut_note = None
        if text is not None:
            if not text.strip():
                raise MMSparseError("empty query: give some words to search for")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # Bytes of a command line that are not UTF-8 arrive as lone surrogates; the
                # text encoder's tokenizer raised a TypeError on them.
                raise MMSparseError(
                    "the query is not valid UTF-8 text (undecodable bytes or lone surrogates)"
                ) from None
            check_k(k)
            self.require_run()
            text, was_cut = text.strip(), False
            if not self.inference_free:  # a lookup has no length limit
                text, was_cut = cap_query(text, self.vocab)
            if was_cut:
                cut_note = (
                    f"query cut to its first {len(text.split())} words "
                    f"({MAX_QUERY_PIECES} word pieces, the text encoder's limit)"
                )
            dense, sparse = self.encode_text([text])
        else:
            try:
                dense, sparse = self.encode_captions([str(caption_id)])
            except DataError as exc:
                raise DataError(f"{exc} (in {self.store().root})") from exc
        result = self.search_vectors(
            sparse, dense, k=k, mode=mode, explain=explain, **engine_kwargs
        )[0]
        result.query = text
        result.caption_id = None if caption_id is None else str(caption_id)
        if cut_note:
            result.notes.insert(0, cut_note)
        if caption_id is not None:
            store = self.store()
            text = store.caption_texts[store.caption_row(str(caption_id))]
            result.notes.append(f"caption {caption_id}: {text!r}")
        result.confidence = self.assess(str(text), result)
        if result.confidence.flagged:
            result.notes.append(result.confidence.note())
        return result

    def close(self) -> None:
        """Release the index (its generation's segments)."""
        self.view.close()


def _term(vocab: Any, i: int) -> str:
    return vocab.term(i) if vocab is not None else f"#{i}"


def search_index(
    index_dir: str | Path,
    text: str | None = None,
    *,
    caption_id: str | None = None,
    k: int = 10,
    mode: str = "sparse",
    explain: bool = False,
    run_dir: str | Path | None = None,
    data: str | Path | None = None,
    bundle: str | Path | None = None,
    **engine_kwargs: Any,
) -> SearchResult:
    """Search an index once (opens the index and its run, then closes them).

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        text: Query text (encoded through the run's extraction backend).
        caption_id: Or a caption id of the data, used as query.
        k: Number of images.
        mode: ``sparse`` (default), or ``dense``/``hybrid`` for an index with dense vectors.
        explain: Show matching terms and contributions.
        run_dir: Encode with this run instead of the manifest's.
        data: Feature directory for caption ids (default: the index's).
        bundle: Backbone bundle directory for caption ids (default: the run's).
        **engine_kwargs: Engine search knobs.

    Returns:
        The :class:`SearchResult`.
    """
    searcher = Searcher(index_dir, run_dir=run_dir, data=data, bundle=bundle)
    try:
        return searcher.search(
            text, caption_id=caption_id, k=k, mode=mode, explain=explain, **engine_kwargs
        )
    finally:
        searcher.close()


class _SearchModule(types.ModuleType):
    """This module, callable like the function it once shadowed (deprecated)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        warnings.warn(
            "calling mmsparse.index.search(...) is deprecated; use "
            "mmsparse.index.search_index(...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return search_index(*args, **kwargs)


sys.modules[__name__].__class__ = _SearchModule

"""An opened generation of an index: its segments searched as one index.

:func:`open_view` opens the current generation of an index (:mod:`mmsparse.index.generations`;
an index as ``mmsparse index build`` wrote it is generation 0 with one segment) into an
:class:`IndexView`: every segment's engine, image ids and file names, and its deleted
rows. :class:`SegmentedEngine` searches the segments as one index:

* **global rows** are the segments' rows one after another, in the generation's order,
  deleted rows included (so a row never changes within a generation);
* every segment is searched for its own top ``k`` with its deleted rows left out (the
  engines' ``live`` mask), and the hits are merged by the index's tie rule: **score
  descending, then global row ascending**. For an exact engine this is the exact top
  ``k`` of the live images: the per-segment lists hold every candidate of the global top
  ``k``;
* scores are comparable across segments: each segment's quantisation has its own scale,
  and the engines return dequantised scores (the impacts times the scale), so the merged
  ranking is the one over the dequantised vectors of all live images (tested against brute
  force after adds, removals and merges);
* stored weights and vectors (explanations, "more like this") map a global row to its
  segment and row there.

A view never changes: a new generation is a new view. Segments are immutable, so a view
opened after another may share the unchanged segments' opened engines (``reuse``) instead
of reading them again; each :class:`OpenSegment` counts the views that use it and is
closed with the last one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError
from mmsparse.index.engines import Engine, Query, open_engine
from mmsparse.index.generations import (
    Generation,
    SegmentRef,
    read_current,
    read_deletes,
)
from mmsparse.index.hits import SearchHits, check_live
from mmsparse.index.manifest import MANIFEST_NAME, IndexManifest, read_docs

log = logging.getLogger(__name__)

#: Collection fields every segment's manifest must share with the index's.
SHARED_FIELDS = ("engine", "checkpoint_sha256", "vocab_sha256", "vocab_size", "dense_dim")


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """``(inode, size, modification time ns)`` of a file, or ``None`` if it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (int(st.st_ino), int(st.st_size), int(st.st_mtime_ns))


class Holders:
    """The holders of something that is closed once retired and let go by the last one.

    Thread-safe (a segment shared by the views of several generations, a generation held
    by the requests in flight).

    Args:
        close: Called once, when it is retired and nobody holds it.
        retired: Retired from the start: closed as soon as its holders drop to none.
    """

    def __init__(self, close: Callable[[], Any], *, retired: bool = False) -> None:
        self._close = close
        self._retired = retired
        self._count = 0
        self._closed = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """One holder more."""
        with self._lock:
            self._count += 1

    def release(self) -> None:
        """One holder less; a retired thing is closed with the last one."""
        with self._lock:
            self._count -= 1
        self._close_if_done()

    def retire(self) -> None:
        """No new holder; closed now if none holds it, else with the last one."""
        with self._lock:
            self._retired = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        with self._lock:
            done = self._retired and self._count <= 0 and not self._closed
            self._closed = self._closed or done
        if done:
            self._close()


class OpenSegment:
    """One segment of an index, opened: its engine, manifest, ids and file names.

    Attributes:
        name: Segment name (``base``, ``sNNNNNN``).
        directory: Its directory.
        manifest: Its own :class:`~mmsparse.index.IndexManifest` (its rows, its scale).
        engine: The opened engine over its rows.
        image_ids: Image id of each row.
        filenames: Image file name of each row.
        stamps: :func:`file_stamp` of each of its files when it was opened.
    """

    def __init__(
        self, index_dir: Path, ref: SegmentRef, *, verify: bool = True, in_memory: bool = False
    ) -> None:
        self.name = ref.name
        self.directory = index_dir / ref.path
        self.manifest = IndexManifest.load(self.directory)
        if self.manifest.n_images != ref.n_docs:
            raise IndexFormatError(
                f"{self.directory}: segment {ref.name} holds {self.manifest.n_images} images, "
                f"its generation says {ref.n_docs}"
            )
        self.image_ids, self.filenames = read_docs(self.directory, self.manifest.n_images)
        self.engine: Engine = open_engine(
            self.directory, self.manifest, verify=verify, in_memory=in_memory
        )
        self.stamps = {p: file_stamp(p) for p in self.files()}
        self._holders = Holders(self.engine.close, retired=True)

    def files(self) -> list[Path]:
        """Its manifest, document list and engine files (those that exist)."""
        names = [MANIFEST_NAME, "docs.json", *type(self.engine).files]
        return [self.directory / n for n in names if (self.directory / n).exists()]

    def unchanged(self) -> bool:
        """Whether its files are still those it was opened from (same inode, size, time)."""
        return all(file_stamp(p) == stamp for p, stamp in self.stamps.items())

    def acquire(self) -> None:
        """One view more."""
        self._holders.acquire()

    def release(self) -> None:
        """One view less; the engine is closed with the last one."""
        self._holders.release()


class SegmentedEngine:
    """The segments of a generation searched as one index (see the module docstring).

    It offers the search surface of an :class:`~mmsparse.index.engines.Engine`
    (``check_query``, ``search``, ``search_batch``, ``doc_weights``, ``doc_vector``,
    ``doc_dense``, ``term_rows``, ``stored_vectors``, ``modes``, ``check_mode``), over
    global rows. With
    one segment, any attribute it does not define is that segment's engine's (e.g.
    ``.index`` of the ``inverted`` engine).

    Attributes:
        engines: The segments' engines, in order.
        offsets: ``(n_segments + 1,)`` first global row of each segment, and the total.
        live: ``(n_docs,)`` bool, False for deleted rows; ``None`` when nothing is deleted.
        n_docs: Global rows (deleted ones included).
        n_live: Rows not deleted.
    """

    def __init__(self, engines: list[Engine], deleted: list[np.ndarray]) -> None:
        if not engines:
            raise IndexFormatError("an index generation without segments")
        self.engines = list(engines)
        sizes = [int(e.n_docs) for e in engines]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_docs = int(self.offsets[-1])
        if any(d.size for d in deleted):
            self.live: np.ndarray | None = np.ones(self.n_docs, dtype=bool)
            for off, rows in zip(self.offsets[:-1], deleted):
                self.live[off + rows] = False
        else:
            self.live = None
        self.n_live = self.n_docs if self.live is None else int(self.live.sum())
        first = engines[0]
        self.name = first.name
        self.capabilities = first.capabilities
        self.search_params = first.search_params
        self.max_k = first.max_k
        self.vocab_size = first.vocab_size
        self.dense_dim = first.dense_dim
        self.has_dense = all(e.has_dense for e in engines)
        self.w1, self.w2 = first.w1, first.w2
        self.directory = first.directory

    def __getattr__(self, name: str) -> Any:
        # A one-segment generation is its engine (callers that reach into the engine).
        engines = self.__dict__.get("engines")
        if engines is not None and len(engines) == 1 and not name.startswith("__"):
            return getattr(engines[0], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- search ------------------------------------------------------------------------

    @property
    def modes(self) -> tuple[str, ...]:
        """The search modes every segment serves."""
        modes = self.engines[0].modes
        return tuple(m for m in modes if all(m in e.modes for e in self.engines))

    def check_mode(self, mode: str) -> str:
        """``mode`` if every segment serves it (else the first one's error)."""
        for engine in self.engines:
            engine.check_mode(mode)
        return mode

    def check_query(
        self,
        sparse: sp.spmatrix | np.ndarray,
        k: int,
        *,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
        live: np.ndarray | None = None,
        params: Any = None,
        weights: tuple[float, float] | None = None,
    ) -> Query:
        """Every check of a search request (:meth:`Engine.check_query`), over global rows.

        ``live`` (one bool per global row) is combined with the generation's deletions.
        """
        live = check_live(live, self.n_docs)
        self.check_mode(mode)
        query = self.engines[0].check_query(
            sparse,
            k,
            dense=dense,
            mode=mode,
            threads=threads,
            live=None,
            params=params,
            weights=weights,
        )
        if self.live is not None:
            live = self.live if live is None else (live & self.live)
        query.live = live
        return query

    #: Top-``k`` live images of every query: :meth:`Engine.search_batch`'s checks
    #: (:meth:`check_query` here, over global rows), then :meth:`search`.
    search_batch = Engine.search_batch

    def hybrid_weights(self, query: Query | None = None) -> tuple[float, float]:
        """``(w1, w2)`` of a hybrid search: the query's, else the index's."""
        return self.engines[0].hybrid_weights(query)

    def search(self, query: Query) -> SearchHits:
        """Run a request checked by :meth:`check_query`: each segment, then the merge."""
        if len(self.engines) == 1:
            return self.engines[0].search(query)
        n_q, k = query.sparse.shape[0], query.k
        rows_parts, score_parts = [], []
        for engine, start, end in zip(self.engines, self.offsets[:-1], self.offsets[1:]):
            live = None if query.live is None else query.live[start:end]
            if live is not None:
                if not live.any():
                    continue
                if live.all():
                    live = None
            hits = engine.search(replace(query, live=live))
            rows = np.where(hits.rows >= 0, hits.rows + start, -1)
            rows_parts.append(rows)
            score_parts.append(hits.scores)
        out_rows = np.full((n_q, k), -1, dtype=np.int64)
        out_scores = np.zeros((n_q, k), dtype=np.float32)
        if not rows_parts:
            return SearchHits(rows=out_rows, scores=out_scores)
        rows = np.concatenate(rows_parts, axis=1)
        scores = np.concatenate(score_parts, axis=1).astype(np.float32)
        for i in range(n_q):
            ok = rows[i] >= 0
            r, s = rows[i][ok], scores[i][ok]
            order = np.lexsort((r, -s))[:k]  # score descending, then global row
            out_rows[i, : order.size] = r[order]
            out_scores[i, : order.size] = s[order]
        return SearchHits(rows=out_rows, scores=out_scores)

    # -- stored vectors ----------------------------------------------------------------

    def locate(self, row: int) -> tuple[int, int]:
        """``(segment number, row in the segment)`` of a global row."""
        row = int(row)
        if not 0 <= row < self.n_docs:
            raise IndexError(f"row {row} outside the index (0..{self.n_docs - 1})")
        seg = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return seg, row - int(self.offsets[seg])

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights of global ``rows`` at ``terms`` (``(len(rows), len(terms))``)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((rows.size, len(terms)), dtype=np.float32)
        seg_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for seg in np.unique(seg_of):
            at = np.flatnonzero(seg_of == seg)
            local = rows[at] - self.offsets[seg]
            out[at] = self.engines[int(seg)].doc_weights(local, terms)
        return out

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored sparse vector of a global row: ``(term ids, weights)``."""
        seg, local = self.locate(row)
        return self.engines[seg].doc_vector(local)

    def doc_dense(self, row: int) -> np.ndarray | None:
        """The stored dense vector of a global row (``None`` without dense)."""
        seg, local = self.locate(row)
        return self.engines[seg].doc_dense(local)

    def term_rows(self, term: int) -> np.ndarray:
        """Global rows whose stored sparse vector holds ``term`` (deleted ones included)."""
        parts = [
            np.asarray(e.term_rows(term), dtype=np.int64) + off
            for e, off in zip(self.engines, self.offsets[:-1])
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def stored_vectors(self) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """Every global row's stored vectors (deleted ones included), in row order."""
        parts = [e.stored_vectors() for e in self.engines]
        sparse = sp.vstack([p[0] for p in parts], format="csr").astype(np.float32)
        dense = None
        if all(p[1] is not None for p in parts):
            dense = np.concatenate([p[1] for p in parts]).astype(np.float32)
        return sparse, dense

    @property
    def nbytes(self) -> int:
        """Bytes of every segment's engine files."""
        return int(sum(e.nbytes for e in self.engines))

    def close(self) -> None:
        """Nothing: the view owns the segments (:meth:`IndexView.close`)."""


@dataclass
class IndexView:
    """One generation of an index, opened (see the module docstring).

    Attributes:
        index_dir: The index directory.
        collection: The collection manifest (``INDEX/index.json``).
        generation: The :class:`~mmsparse.index.generations.Generation`.
        segments: Its opened segments, in order.
        manifest: The collection manifest with ``n_images`` the live images of this
            generation (what a search reports).
        engine: The :class:`SegmentedEngine` over the segments.
        image_ids: Image id of every global row (deleted rows included).
        filenames: File name of every global row.
        row_of: Global row of every live image id.
    """

    index_dir: Path
    collection: IndexManifest
    generation: Generation
    segments: list[OpenSegment]
    manifest: IndexManifest = dataclasses.field(init=False)
    engine: SegmentedEngine = dataclasses.field(init=False)
    image_ids: list[str] = dataclasses.field(init=False)
    filenames: list[str] = dataclasses.field(init=False)
    row_of: dict[str, int] = dataclasses.field(init=False)
    _closed: bool = dataclasses.field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        deleted = [read_deletes(self.index_dir, ref) for ref in self.generation.segments]
        self.engine = SegmentedEngine([s.engine for s in self.segments], deleted)
        self.manifest = replace(self.collection, n_images=int(self.engine.n_live))
        self.image_ids = [i for s in self.segments for i in s.image_ids]
        self.filenames = [f for s in self.segments for f in s.filenames]
        live = self.engine.live
        self.row_of = {
            image_id: row
            for row, image_id in enumerate(self.image_ids)
            if live is None or live[row]
        }

    @property
    def number(self) -> int:
        """The generation number."""
        return self.generation.generation

    def is_live_row(self, row: int) -> bool:
        """Whether a global row is not deleted."""
        return self.engine.live is None or bool(self.engine.live[int(row)])

    def segment_of(self, row: int) -> tuple[OpenSegment, SegmentRef, int]:
        """``(opened segment, its reference, row there)`` of a global row."""
        seg, local = self.engine.locate(row)
        return self.segments[seg], self.generation.segments[seg], local

    def stamps(self) -> dict[Path, tuple[int, int, int] | None]:
        """The file identity of every segment file, as opened."""
        out: dict[Path, tuple[int, int, int] | None] = {}
        for seg in self.segments:
            out.update(seg.stamps)
        return out

    def close(self) -> None:
        """Release the segments (each closed when no other view uses it)."""
        if self._closed:
            return
        self._closed = True
        for seg in self.segments:
            seg.release()


def open_view(
    index_dir: str | Path,
    *,
    verify: bool = True,
    in_memory: bool = False,
    reuse: IndexView | None = None,
    generation: Generation | None = None,
) -> IndexView:
    """Open the current generation of an index (see the module docstring).

    Args:
        index_dir: The index directory.
        verify: Check the segments' checksums.
        in_memory: Read the engines' files into memory instead of memory-mapping them
            (``mmsparse serve``).
        reuse: A view opened before: its segments that this generation still uses, with
            files unchanged since, are shared instead of read again.
        generation: Open this generation instead of the current one.

    Returns:
        The :class:`IndexView` (close it when done).

    Raises:
        IndexFormatError: If a file is missing or corrupt, or a segment does not belong to
            the index (another run, vocabulary, engine or options).
    """
    index_dir = Path(index_dir)
    collection = IndexManifest.load(index_dir)
    gen = generation if generation is not None else read_current(index_dir, collection)
    known = {}
    if reuse is not None and reuse.index_dir == index_dir:
        known = {(s.name, str(s.directory)): s for s in reuse.segments}
    segments: list[OpenSegment] = []
    try:
        for ref in gen.segments:
            seg = known.get((ref.name, str(index_dir / ref.path)))
            if seg is None or not seg.unchanged() or seg.manifest.n_images != ref.n_docs:
                seg = OpenSegment(index_dir, ref, verify=verify, in_memory=in_memory)
                _check_segment(collection, seg)
            seg.acquire()
            segments.append(seg)
        return IndexView(
            index_dir=index_dir, collection=collection, generation=gen, segments=segments
        )
    except BaseException:
        for seg in segments:
            seg.release()
        raise


def _check_segment(collection: IndexManifest, seg: OpenSegment) -> None:
    m = seg.manifest
    for name in SHARED_FIELDS:
        if getattr(m, name) != getattr(collection, name):
            raise IndexFormatError(
                f"{seg.directory}: segment {seg.name} has another {name} than the index "
                f"({getattr(m, name)!r} vs {getattr(collection, name)!r})"
            )
    ours, theirs = collection.options, m.options
    if (ours.image_topk, ours.threshold, ours.quantize) != (
        theirs.image_topk,
        theirs.threshold,
        theirs.quantize,
    ):
        raise IndexFormatError(
            f"{seg.directory}: segment {seg.name} was built with other pruning or "
            "quantisation options than the index"
        )

"""Changing an index without rebuilding it: add, remove, optimize (a live index).

The library behind ``mmsparse index add``, ``index remove``, ``index optimize`` and
``index info``. Each change is published as a new generation
(:mod:`mmsparse.index.generations`): new images go into a new immutable **segment** (a
complete engine directory over them), removed images into a new **deletion file**, and
``CURRENT`` is switched atomically, so a running ``mmsparse serve`` changes from one
complete generation to the next between two requests (:mod:`mmsparse.serve.generations`).

* :func:`add_vectors` adds already encoded image vectors (``add_images``, in
  :mod:`mmsparse.index.folder`, encodes a folder of photos first). An id already in the
  index is **replaced** by default (the old row is deleted in the same generation that
  adds the new one: an update), or skipped, or refused (``existing``).
* :func:`remove_images` deletes images by id; unknown ids are refused, all listed.
* :func:`optimize_index` merges every segment into one without the deleted rows, and
  computes the confidence calibration again (:mod:`mmsparse.index.confidence`).
* Merges also happen after an add, once the add is published, by a **tiered rule**: a
  segment's tier is the number of decimal digits of its live image count, and when
  ``merge_factor`` (10) adjacent segments share a tier they are merged into one (of the
  next tier). The number of segments stays logarithmic in the index size and each image
  is rewritten a logarithmic number of times.
* Scores stay comparable across segments: each segment has its own quantisation scale
  and searches return dequantised scores; a merge rebuilds from the dequantised stored
  vectors (``none``: exactly; ``uint8``/``uint16``: requantised with the merged scale, a
  change of at most half a quantisation step per weight).

One writer at a time (:class:`~mmsparse.index.generations.IndexLock`; a second gets a
one-line error at once); readers never wait. Engines that cannot hold an index as
segments (``milvus``: one collection) get a one-line error.

The confidence calibration depends on the run and on the score distribution of the
collection, not on its exact images: once an index is live, its calibration is tied to
the collection (engine, run, vocabulary, options), so it stays valid across adds and
removals, and ``index optimize`` computes it again over the images of the day.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index.engines import Engine, get_engine
from mmsparse.index.generations import (
    BASE_SEGMENT,
    GC_GRACE_S,
    SEGMENTS_DIR,
    Generation,
    IndexLock,
    SegmentRef,
    collect_garbage,
    generation_path,
    is_live,
    list_generations,
    next_segment_name,
    publish,
    read_current,
    read_deletes,
    write_deletes,
)
from mmsparse.index.manifest import IndexManifest, IndexOptions, read_docs
from mmsparse.io_utils import atomic_write_json

log = logging.getLogger(__name__)

#: Adjacent segments of one tier that are merged into one (``merge_factor``).
MERGE_FACTOR = 10
EXISTING = ("replace", "skip", "error")


@dataclass
class LiveReport:
    """What a change of a live index did.

    Attributes:
        index: The index directory.
        operation: ``add``, ``remove`` or ``optimize``.
        generation: The current generation afterwards.
        published: The generations this call published (an add, then a merge).
        added: Images added.
        replaced: Images whose id was already there, replaced.
        skipped: Ids already there, left as they were (``existing="skip"``).
        removed: Images deleted.
        merged: Segments merged, as ``[[names], into]`` per merge.
        n_images: Live images afterwards.
        segments: Segments afterwards.
        deleted_rows: Deleted rows still held by segments (an optimize drops them).
        garbage: Files deleted because no generation within the grace period uses them.
        calibration: What happened to the confidence calibration.
        seconds: Time of each stage.
        files: ``mmsparse index add --images``: what the folder held (see
            :func:`mmsparse.index.folder.add_images`).
    """

    index: str
    operation: str
    generation: int
    published: list[int] = field(default_factory=list)
    added: int = 0
    replaced: int = 0
    skipped: int = 0
    removed: int = 0
    merged: list[list[Any]] = field(default_factory=list)
    n_images: int = 0
    segments: int = 0
    deleted_rows: int = 0
    garbage: list[str] = field(default_factory=list)
    calibration: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


class LiveState:
    """The current generation of a locked index, with every segment's ids and deletions.

    Read under the index's lock (:class:`~mmsparse.index.generations.IndexLock`) by the
    operations that publish a new generation (here, and ``add_images`` of
    :mod:`mmsparse.index.folder`).
    """

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self.collection = IndexManifest.load(index_dir)
        self.gen = read_current(index_dir, self.collection)
        self.deleted = [read_deletes(index_dir, ref) for ref in self.gen.segments]
        self.ids: list[list[str]] = []
        self.filenames: list[list[str]] = []
        for ref in self.gen.segments:
            seg_manifest = IndexManifest.load(index_dir / ref.path)
            ids, names = read_docs(index_dir / ref.path, seg_manifest.n_images)
            self.ids.append(ids)
            self.filenames.append(names)

    def live_rows(self) -> dict[str, tuple[int, int]]:
        """``{image id: (segment number, row)}`` of every live image."""
        out = {}
        for s, ids in enumerate(self.ids):
            dead = set(self.deleted[s].tolist())
            for row, image_id in enumerate(ids):
                if row not in dead:
                    out[image_id] = (s, row)
        return out


def engine_of(manifest: IndexManifest, action: str) -> type[Engine]:
    """The index's engine class, if it can be changed by segments.

    Raises:
        MMSparseError: One line naming the engine and what to do instead.
    """
    cls = get_engine(manifest.engine)
    if "incremental" not in cls.capabilities:
        able = [
            e.name
            for e in (get_engine(n) for n in _engine_names())
            if "incremental" in e.capabilities
        ]
        raise MMSparseError(
            f"the {cls.name} engine cannot {action} images of an index (it holds one "
            f"collection, not segments); rebuild the index with 'mmsparse index build', or "
            f"build it with --engine {' / '.join(able)} to keep it live"
        )
    return cls


def _engine_names() -> tuple[str, ...]:
    from mmsparse.index.engines import engine_names

    return engine_names()


def stores_dense(cls: type[Engine], manifest: IndexManifest) -> bool:
    """Whether the index holds dense vectors (then every segment must)."""
    return bool(cls.always_dense or manifest.engine_params.get("dense_file"))


def _manifest_fields(collection: IndexManifest) -> dict[str, Any]:
    """The collection's fields a new segment's manifest repeats."""
    keep = ("run_dir", "checkpoint_sha256", "vocab_sha256", "split", "data_dir", "w1", "w2")
    out = {k: getattr(collection, k) for k in keep}
    if hasattr(collection, "images_dir"):  # an index of a folder of photos
        out["images_dir"] = collection.images_dir
    return out


def _build_segment(
    state: LiveState,
    sparse: sp.csr_matrix,
    dense: np.ndarray | None,
    image_ids: list[str],
    filenames: list[str],
    progress: bool,
) -> SegmentRef:
    """Write a new segment (a temporary folder renamed into place) and describe it."""
    from mmsparse.index.build import index_vectors

    c = state.collection
    cls = get_engine(c.engine)
    name = next_segment_name(state.index_dir)
    final = state.index_dir / SEGMENTS_DIR / name
    tmp = state.index_dir / SEGMENTS_DIR / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n = sparse.shape[0]
    if dense is None:
        dense = np.zeros((n, int(c.dense_dim)), dtype=np.float32)  # not stored
    index_vectors(
        tmp,
        c.engine,
        sparse,
        dense,
        list(image_ids),
        list(filenames),
        manifest_fields=_manifest_fields(c),
        options=IndexOptions(
            image_topk=c.options.image_topk,
            threshold=c.options.threshold,
            quantize=c.options.quantize,
        ),
        engine_params=cls.params_of(c.engine_params) or None,
        store_dense=stores_dense(cls, c) and not cls.always_dense,
        progress=progress,
    )
    os.replace(tmp, final)
    return SegmentRef(name=name, path=f"{SEGMENTS_DIR}/{name}", n_docs=int(n))


def _next_generation(
    state: LiveState,
    refs: list[SegmentRef],
    deleted: list[np.ndarray],
    *,
    operation: str,
    note: str,
    image_roots: dict[str, str] | None = None,
) -> Generation:
    """A generation of ``refs`` with their deleted rows.

    New deletion files are written where the deleted rows changed; segments without a live
    row are left out.
    """
    number = state.gen.generation + 1
    old = {r.name: (r, d) for r, d in zip(state.gen.segments, state.deleted)}
    out: list[SegmentRef] = []
    for ref, rows in zip(refs, deleted):
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size >= ref.n_docs:
            continue
        prev = old.get(ref.name)
        if prev is not None and np.array_equal(prev[1], rows):
            out.append(prev[0])
            continue
        new = SegmentRef(name=ref.name, path=ref.path, n_docs=ref.n_docs)
        if rows.size:
            new.deletes, new.deletes_sha256 = write_deletes(state.index_dir, ref.name, number, rows)
            new.n_deleted = int(rows.size)
        out.append(new)
    roots = dict(state.gen.image_roots if image_roots is None else image_roots)
    return Generation(
        generation=number,
        segments=out,
        operation=operation,
        note=note,
        parent=state.gen.generation,
        image_roots=roots,
    )


def _publish(state: LiveState, gen: Generation, report: LiveReport) -> LiveState:
    """Publish ``gen`` (converting an index as built on its first change) and re-read."""
    index_dir = state.index_dir
    first = not is_live(index_dir)
    classic_identity = None
    if first:
        from mmsparse.index.verdict import index_identity

        classic_identity = index_identity(index_dir, state.collection)
        zero = state.gen
        zero.created_unix = zero.created_unix or time.time()
        # Generation 0 gets its manifest too, so the garbage collector's grace period
        # applies to it like to any other generation.
        atomic_write_json(index_dir / generation_path(0), zero.to_dict())
    publish(index_dir, gen)
    report.published.append(gen.generation)
    if first:
        _adopt_calibration(index_dir, state.collection, classic_identity, report)
    return LiveState(index_dir)


def _adopt_calibration(
    index_dir: Path, collection: IndexManifest, classic: str | None, report: LiveReport
) -> None:
    """Tie an index's calibration to its collection once it is live (see the module doc)."""
    from mmsparse.index.verdict import CALIBRATION_NAME, Calibration, index_identity

    path = index_dir / CALIBRATION_NAME

    def note(text: str) -> None:
        report.calibration = report.calibration or text

    if not path.is_file():
        note("none (the index has no confidence.json)")
        return
    try:
        cal = Calibration.load(index_dir)
    except IndexFormatError as exc:
        note(f"not kept ({exc})")
        return
    ours = index_identity(index_dir, collection)  # live now: the collection's
    if cal.index_sha256 == ours:
        note("kept (tied to the collection)")
        return
    if cal.index_sha256 != classic:
        note("not kept (it belonged to another build of the index)")
        return
    cal.index_sha256 = ours
    cal.save(index_dir)
    note("kept (tied to the collection from now on)")


def _tier(n_live: int) -> int:
    return len(str(max(int(n_live), 1)))


def merge_candidates(sizes: list[int], merge_factor: int = MERGE_FACTOR) -> list[int] | None:
    """The segments the tiered rule merges next, or ``None``.

    Args:
        sizes: Live images of each segment, in order.
        merge_factor: Adjacent segments of one tier that are merged (0 or 1: never).

    Returns:
        Indices of a run of at least ``merge_factor`` adjacent segments of the same tier
        (the newest such run; the whole run), or ``None``.
    """
    if merge_factor < 2 or len(sizes) < merge_factor:
        return None
    tiers = [_tier(n) for n in sizes]
    end = len(tiers)
    while end > 0:
        start = end - 1
        while start > 0 and tiers[start - 1] == tiers[end - 1]:
            start -= 1
        if end - start >= merge_factor:
            return list(range(start, end))
        end = start
    return None


def _merge(
    state: LiveState,
    which: list[int],
    report: LiveReport,
    *,
    operation: str,
    progress: bool,
    before_publish: Callable[[Generation], None] | None = None,
) -> LiveState:
    """Merge adjacent segments ``which`` into one (deleted rows dropped) and publish.

    ``before_publish`` is called with the new generation, written but not yet published.
    """
    from mmsparse.index.segments import OpenSegment

    t0 = time.perf_counter()
    refs = state.gen.segments
    names = [refs[i].name for i in which]
    sparse_parts, dense_parts, ids, filenames = [], [], [], []
    has_dense = stores_dense(get_engine(state.collection.engine), state.collection)
    items = which
    if progress:
        from tqdm import tqdm

        items = tqdm(which, desc=f"{operation}: reading segments", unit="segment", leave=False)
    for i in items:
        seg = OpenSegment(state.index_dir, refs[i], verify=True)
        try:
            sparse, dense = seg.engine.stored_vectors()
        finally:
            seg.engine.close()
        keep = np.setdiff1d(np.arange(refs[i].n_docs), state.deleted[i])
        sparse_parts.append(sparse[keep])
        if has_dense:
            if dense is None:
                raise IndexFormatError(f"{seg.directory}: a segment without dense vectors")
            dense_parts.append(dense[keep])
        ids += [state.ids[i][r] for r in keep.tolist()]
        filenames += [state.filenames[i][r] for r in keep.tolist()]
    sparse = sp.vstack(sparse_parts, format="csr").astype(np.float32)
    dense = np.concatenate(dense_parts) if has_dense else None
    merged = _build_segment(state, sparse, dense, ids, filenames, progress)
    new_refs = [*refs[: which[0]], merged, *refs[which[-1] + 1 :]]
    new_deleted = [
        *state.deleted[: which[0]],
        np.zeros(0, np.int64),
        *state.deleted[which[-1] + 1 :],
    ]
    gen = _next_generation(
        state,
        new_refs,
        new_deleted,
        operation=operation,
        note=f"merged {len(which)} segment(s) ({', '.join(names)}) into {merged.name}: "
        f"{len(ids)} images",
    )
    report.merged.append([names, merged.name])
    report.seconds[operation] = round(
        report.seconds.get(operation, 0.0) + time.perf_counter() - t0, 3
    )
    if before_publish is not None:
        before_publish(gen)
    return _publish(state, gen, report)


def _auto_merge(
    state: LiveState, report: LiveReport, merge_factor: int, progress: bool
) -> LiveState:
    while True:
        which = merge_candidates([r.n_live for r in state.gen.segments], merge_factor)
        if which is None:
            return state
        state = _merge(state, which, report, operation="merge", progress=progress)


def _finish(state: LiveState, report: LiveReport, gc_grace_s: float) -> LiveReport:
    report.garbage = collect_garbage(state.index_dir, grace_s=gc_grace_s)
    gen = state.gen
    report.generation = gen.generation
    report.n_images = gen.n_images
    report.segments = len(gen.segments)
    report.deleted_rows = gen.n_deleted
    return report


def check_vectors(
    collection: IndexManifest,
    sparse: sp.spmatrix,
    dense: np.ndarray | None,
    image_ids: list[str],
    filenames: list[str] | None,
    needs_dense: bool,
) -> tuple[sp.csr_matrix, np.ndarray | None, list[str], list[str]]:
    """Vectors and ids to add, checked against the index (one-line errors).

    Raises:
        MMSparseError: On another vocabulary or dimension, a missing dense part, ids
            that repeat, or lengths that differ.
    """
    sparse = sp.csr_matrix(sparse, dtype=np.float32)
    n = sparse.shape[0]
    if sparse.shape[1] != collection.vocab_size:
        raise IndexFormatError(
            f"the vectors to add have {sparse.shape[1]} sparse dimensions, the index "
            f"{collection.vocab_size} (another run?)"
        )
    image_ids = [str(i) for i in image_ids]
    filenames = list(image_ids) if filenames is None else [str(f) for f in filenames]
    if len(image_ids) != n or len(filenames) != n:
        raise MMSparseError(f"{len(image_ids)} image ids for {n} vectors to add")
    seen: set[str] = set()
    repeated = sorted({i for i in image_ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if repeated:
        raise MMSparseError(
            f"{len(repeated)} image id(s) appear more than once among the images to add: "
            + ", ".join(repeated[:10])
            + (" ..." if len(repeated) > 10 else "")
        )
    if dense is not None:
        dense = np.asarray(dense, dtype=np.float32)
        if dense.shape != (n, collection.dense_dim):
            raise IndexFormatError(
                f"dense vectors of shape {dense.shape} to add; the index holds "
                f"({n}, {collection.dense_dim})"
            )
    elif needs_dense:
        raise MMSparseError("the index holds dense vectors: give the images' dense vectors too")
    return sparse, dense, image_ids, filenames


def add_vectors(
    index_dir: str | Path,
    sparse: sp.spmatrix,
    dense: np.ndarray | None,
    image_ids: list[str],
    filenames: list[str] | None = None,
    *,
    existing: str = "replace",
    image_roots: dict[str, str] | None = None,
    merge_factor: int = MERGE_FACTOR,
    gc_grace_s: float = GC_GRACE_S,
    progress: bool = False,
    note: str = "",
) -> LiveReport:
    """Add encoded images to an index as a new segment, published as a new generation.

    Args:
        index_dir: An index directory (as built, or live).
        sparse: ``(n, V)`` image sparse vectors, pruned with the index's options.
        dense: ``(n, dense_dim)`` image dense vectors (needed when the index holds them).
        image_ids: Id of every image (unique).
        filenames: File name of every image (default: the id).
        existing: An id already in the index is ``replace``-d (update: the old row is
            deleted in the same generation), ``skip``-ped, or an ``error``.
        image_roots: ``{id prefix: folder}`` to record for serving the new images' files
            (see :class:`~mmsparse.index.generations.Generation`).
        merge_factor: The tiered merge rule's factor (0: no merge after the add).
        gc_grace_s: Seconds before the files of a replaced generation are deleted.
        progress: Show progress bars.
        note: What is added, for the generation's note.

    Returns:
        The :class:`LiveReport`.

    Raises:
        MMSparseError: If the engine cannot change by segments, another writer holds the
            index, an id is already there with ``existing="error"``, or on bad vectors.
    """
    index_dir = Path(index_dir)
    collection = IndexManifest.load(index_dir)
    engine_of(collection, "add")
    with IndexLock(index_dir, "index add"):
        return add_vectors_locked(
            index_dir,
            sparse,
            dense,
            image_ids,
            filenames,
            existing=existing,
            image_roots=image_roots,
            merge_factor=merge_factor,
            gc_grace_s=gc_grace_s,
            progress=progress,
            note=note,
        )


def add_vectors_locked(
    index_dir: Path,
    sparse: sp.spmatrix,
    dense: np.ndarray | None,
    image_ids: list[str],
    filenames: list[str] | None = None,
    *,
    existing: str = "replace",
    image_roots: dict[str, str] | None = None,
    merge_factor: int = MERGE_FACTOR,
    gc_grace_s: float = GC_GRACE_S,
    progress: bool = False,
    note: str = "",
) -> LiveReport:
    """:func:`add_vectors` for a caller that holds the index's lock already."""
    if existing not in EXISTING:
        raise MMSparseError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    t0 = time.perf_counter()
    state = LiveState(index_dir)
    cls = engine_of(state.collection, "add")
    sparse, dense, image_ids, filenames = check_vectors(
        state.collection, sparse, dense, image_ids, filenames, stores_dense(cls, state.collection)
    )
    report = LiveReport(index=str(index_dir), operation="add", generation=state.gen.generation)
    live = state.live_rows()
    present = [i for i in image_ids if i in live]
    if present and existing == "error":
        raise MMSparseError(
            f"{len(present)} of the {len(image_ids)} images to add are in the index already: "
            + ", ".join(present[:10])
            + (" ..." if len(present) > 10 else "")
            + " (--existing replace updates them, --existing skip leaves them)"
        )
    keep = np.arange(len(image_ids))
    if present and existing == "skip":
        there = set(present)
        keep = np.array([j for j, i in enumerate(image_ids) if i not in there], dtype=np.int64)
        report.skipped = len(present)
    elif present:
        report.replaced = len(present)
    if keep.size == 0:
        report.seconds["total"] = round(time.perf_counter() - t0, 3)
        return _finish(state, report, gc_grace_s)
    if keep.size < len(image_ids):
        sparse = sparse[keep]
        dense = None if dense is None else dense[keep]
        image_ids = [image_ids[j] for j in keep.tolist()]
        filenames = [filenames[j] for j in keep.tolist()]
    if sparse.nnz == 0:
        raise IndexFormatError("every image vector to add is empty after pruning")
    t1 = time.perf_counter()
    ref = _build_segment(state, sparse, dense, image_ids, filenames, progress)
    report.seconds["segment"] = round(time.perf_counter() - t1, 3)
    deleted = [d.copy() for d in state.deleted]
    if existing == "replace":
        for image_id in present:
            s, row = live[image_id]
            deleted[s] = np.append(deleted[s], row)
    roots = dict(state.gen.image_roots)
    roots.update(image_roots or {})
    gen = _next_generation(
        state,
        [*state.gen.segments, ref],
        [*deleted, np.zeros(0, np.int64)],
        operation="add",
        note=f"added {len(image_ids)} images"
        + (f" ({report.replaced} replaced)" if report.replaced else "")
        + (f" of {note}" if note else ""),
        image_roots=roots,
    )
    report.added = len(image_ids)
    state = _publish(state, gen, report)
    state = _auto_merge(state, report, merge_factor, progress)
    report.seconds["total"] = round(time.perf_counter() - t0, 3)
    return _finish(state, report, gc_grace_s)


def remove_images(
    index_dir: str | Path,
    image_ids: list[str],
    *,
    gc_grace_s: float = GC_GRACE_S,
) -> LiveReport:
    """Delete images by id, published as a new generation (a new deletion file).

    Args:
        index_dir: An index directory (as built, or live).
        image_ids: Ids to delete (repeats are ignored).
        gc_grace_s: Seconds before the files of a replaced generation are deleted.

    Returns:
        The :class:`LiveReport`.

    Raises:
        MMSparseError: If an id is not in the index (every such id is listed, with the
            count), the removal would leave the index empty, the engine cannot change by
            segments, or another writer holds the index.
    """
    index_dir = Path(index_dir)
    engine_of(IndexManifest.load(index_dir), "remove")
    with IndexLock(index_dir, "index remove"):
        t0 = time.perf_counter()
        state = LiveState(index_dir)
        ids = list(dict.fromkeys(str(i) for i in image_ids))
        live = state.live_rows()
        unknown = [i for i in ids if i not in live]
        if unknown:
            raise MMSparseError(
                f"{len(unknown)} of the {len(ids)} ids to remove are not in the index "
                f"{index_dir}: "
                + ", ".join(repr(i) for i in unknown[:10])
                + (f" ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
                + "; nothing was removed"
            )
        if not ids:
            raise MMSparseError("no image id to remove was given")
        if len(ids) >= len(live):
            raise MMSparseError(
                f"removing all {len(live)} images would leave the index empty; delete the "
                "index folder instead, or build a new one"
            )
        deleted = [d.copy() for d in state.deleted]
        for image_id in ids:
            s, row = live[image_id]
            deleted[s] = np.append(deleted[s], row)
        report = LiveReport(
            index=str(index_dir), operation="remove", generation=state.gen.generation
        )
        gen = _next_generation(
            state,
            list(state.gen.segments),
            deleted,
            operation="remove",
            note=f"removed {len(ids)} images",
        )
        report.removed = len(ids)
        state = _publish(state, gen, report)
        report.seconds["total"] = round(time.perf_counter() - t0, 3)
        return _finish(state, report, gc_grace_s)


def image_files(index_dir: str | Path) -> dict[Path, str]:
    """The file on disk of every live image of an index: ``{absolute path: image id}``.

    An image's file is its file name in the index's photo folder (``images_dir``; an index
    of a split: ``images/`` of its data folder), or in the folder its id prefix names
    (photos added from another folder).

    Raises:
        MMSparseError: If the index has no photo folder to find files in.
    """
    index_dir = Path(index_dir)
    state = LiveState(index_dir)
    c = state.collection
    own = getattr(c, "images_dir", "") or ""
    if not own and c.data_dir and (Path(c.data_dir) / "images").is_dir():
        own = str(Path(c.data_dir) / "images")
    roots = sorted(state.gen.image_roots.items(), key=lambda kv: len(kv[0]), reverse=True)
    out: dict[Path, str] = {}
    for image_id, (s, row) in state.live_rows().items():
        name = state.filenames[s][row]
        for prefix, root in roots:
            if name.startswith(prefix):
                out[(Path(root) / name[len(prefix) :]).resolve()] = image_id
                break
        else:
            if own:
                out[(Path(own) / name).resolve()] = image_id
    if not out:
        raise MMSparseError(
            f"{index_dir}: the index knows no folder of its image files; remove by id with "
            "--ids FILE"
        )
    return out


def ids_of_files(index_dir: str | Path, paths: list[str | Path]) -> list[str]:
    """The ids of the live images whose files are ``paths`` (a folder: every one under it).

    Raises:
        MMSparseError: Listing every path that is no indexed image (nor a folder holding
            one), with the count; nothing is removed then.
    """
    files = image_files(index_dir)
    ids: list[str] = []
    unknown: list[str] = []
    for given in paths:
        path = Path(given).resolve()
        found = files.get(path)
        if found is not None:
            ids.append(found)
            continue
        under = [i for f, i in files.items() if f.is_relative_to(path)]
        if under:
            ids += sorted(under)
        else:
            unknown.append(str(given))
    if unknown:
        raise MMSparseError(
            f"{len(unknown)} of the {len(paths)} paths given are no image of the index "
            f"{index_dir} (nor a folder holding one): "
            + ", ".join(unknown[:10])
            + (f" ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
            + "; nothing was removed"
        )
    return list(dict.fromkeys(ids))


def optimize_index(
    index_dir: str | Path,
    *,
    calibrate: bool = True,
    gc_grace_s: float = GC_GRACE_S,
    progress: bool = False,
    text_encoder: Any = None,
) -> LiveReport:
    """Merge every segment into one without the deleted rows; calibrate again.

    Args:
        index_dir: An index directory.
        calibrate: Compute the confidence calibration again over the merged images (needs
            the run's data; a failure is a warning and the calibration is kept).
        gc_grace_s: Seconds before the files of a replaced generation are deleted.
        progress: Show progress bars.
        text_encoder: Replaces the run's text encoder for the calibration (tests).

    Returns:
        The :class:`LiveReport` (no new generation when the index is one segment with
        nothing deleted already).
    """
    index_dir = Path(index_dir)
    engine_of(IndexManifest.load(index_dir), "optimize")
    with IndexLock(index_dir, "index optimize"):
        t0 = time.perf_counter()
        state = LiveState(index_dir)
        report = LiveReport(
            index=str(index_dir), operation="optimize", generation=state.gen.generation
        )
        if len(state.gen.segments) == 1 and state.gen.n_deleted == 0:
            report.calibration = "unchanged (the index is one segment with nothing deleted)"
        else:
            which = list(range(len(state.gen.segments)))

            def recalibrate(gen: Generation) -> None:
                # before the switch: the merged generation and its calibration come together
                report.calibration = _recalibrate(index_dir, gen, text_encoder, progress)

            state = _merge(
                state,
                which,
                report,
                operation="optimize",
                progress=progress,
                before_publish=recalibrate if calibrate else None,
            )
        report.seconds["total"] = round(time.perf_counter() - t0, 3)
        return _finish(state, report, gc_grace_s)


def _recalibrate(index_dir: Path, gen: Generation, text_encoder: Any, progress: bool) -> str:
    """Compute the calibration over generation ``gen`` (not published yet) and save it."""
    from mmsparse.index.confidence import calibrate
    from mmsparse.index.search import Searcher
    from mmsparse.index.segments import open_view
    from mmsparse.index.verdict import collection_identity

    t0 = time.perf_counter()
    try:
        view = open_view(index_dir, generation=gen)
        searcher = Searcher(index_dir, view=view, text_encoder=text_encoder)
        try:
            cal = calibrate(searcher, progress=progress)
        finally:
            searcher.close()
    except MMSparseError as exc:
        log.warning("%s: confidence calibration not computed again (%s)", index_dir, exc)
        return f"kept: not computed again ({exc})"
    cal.index_sha256 = collection_identity(view.collection)
    cal.save(index_dir)
    return f"computed again over the merged images in {time.perf_counter() - t0:.1f} s"


def live_info(index_dir: str | Path) -> dict[str, Any]:
    """What an index holds (``mmsparse index info``).

    Its generation, segments, deleted rows, and the generations still on disk.

    Returns:
        JSON-ready: ``index``, ``engine``, ``live`` (has generations), ``generation``,
        ``n_images``, ``deleted_rows``, ``segments`` (name, images, deleted, path),
        ``generations`` (number, operation, note, created), ``image_roots``,
        ``incremental`` (whether the engine can change by segments).
    """
    index_dir = Path(index_dir)
    collection = IndexManifest.load(index_dir)
    gen = read_current(index_dir, collection)
    history = list_generations(index_dir) if is_live(index_dir) else [gen]
    cls = get_engine(collection.engine)
    return {
        "index": str(index_dir),
        "engine": collection.engine,
        "incremental": "incremental" in cls.capabilities,
        "live": is_live(index_dir),
        "generation": gen.generation,
        "created": gen.created,
        "n_images": gen.n_images,
        "deleted_rows": gen.n_deleted,
        "segments": [
            {
                "name": s.name,
                "path": s.path,
                "images": s.n_live,
                "deleted": s.n_deleted,
                "rows": s.n_docs,
            }
            for s in gen.segments
        ],
        "image_roots": dict(gen.image_roots),
        "generations": [
            {
                "generation": g.generation,
                "operation": g.operation,
                "note": g.note,
                "created": g.created,
                "images": g.n_images,
                "segments": len(g.segments),
                "current": g.generation == gen.generation,
            }
            for g in history
        ],
    }


__all__ = [
    "BASE_SEGMENT",
    "EXISTING",
    "MERGE_FACTOR",
    "LiveReport",
    "add_vectors",
    "add_vectors_locked",
    "check_vectors",
    "engine_of",
    "ids_of_files",
    "image_files",
    "live_info",
    "merge_candidates",
    "optimize_index",
    "remove_images",
    "stores_dense",
]

"""Generations of a live index: immutable segments, deletion files and one pointer.

An index that ``mmsparse index add``, ``index remove`` or ``index optimize`` has changed
is *live*: it is a sequence of **generations**, each a complete, consistent view of the
collection, and a pointer names the current one. Nothing a generation references is ever
written again, so a reader (``mmsparse serve``, ``mmsparse search``) that opened one keeps
a consistent view while writers publish the next. The layout::

    INDEX/index.json            the collection manifest (engine, run, vocabulary, options,
                                images folder), and the manifest of segment "base"
    INDEX/docs.json, postings.mmsi, ...
                                segment "base": the index as 'mmsparse index build' wrote
                                it (left where it is; removed only when no generation
                                within the grace period uses it)
    INDEX/CURRENT               the pointer: {"generation": N, "manifest":
                                "generations/g00000N.json", "sha256": of that file}
    INDEX/generations/gNNNNNN.json
                                one generation: its segments in order, each with its
                                deletion file, the live and total image counts
    INDEX/segments/sNNNNNN/     one segment: index.json, docs.json and the engine's files
                                over its own images (rows 0..n-1), as 'index build' writes
    INDEX/deletes/<segment>.gNNNNNN.npy
                                the rows of a segment deleted as of generation N (sorted
                                int64; its sha256 is in the generation manifest)
    INDEX/LOCK                  writers hold an exclusive flock on it (readers never lock)

An index without ``CURRENT`` (every index written by ``mmsparse index build``) is read as
generation 0 with the one segment "base" and nothing deleted: no conversion is needed, and
the first change writes new files beside the old ones.

Publishing a generation (:func:`publish`) writes its manifest, then replaces ``CURRENT``
atomically (temporary file, fsync, ``os.replace``, fsync of the directory): a reader sees
the old generation or the new one, never a mix, and a writer killed at any point leaves
the index at the last published generation. Files that no generation uses any more are
deleted by :func:`collect_garbage` once the grace period has passed since the last
generation that used them was replaced (so a reader that read ``CURRENT`` just before the
switch can still open what it names).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index.manifest import DOCS_NAME, IndexManifest
from mmsparse.io_utils import atomic_write_bytes, json_text

log = logging.getLogger(__name__)

CURRENT_NAME = "CURRENT"
LOCK_NAME = "LOCK"
GENERATIONS_DIR = "generations"
SEGMENTS_DIR = "segments"
DELETES_DIR = "deletes"
BASE_SEGMENT = "base"
GENERATION_FORMAT = "mmsparse-generation"
CURRENT_FORMAT = "mmsparse-current"
GENERATION_VERSION = 1
#: Seconds a replaced generation's files are kept for readers that have not switched yet.
GC_GRACE_S = 300.0
#: Every file and folder of an index directory that belongs to the live layout.
LIVE_NAMES = (CURRENT_NAME, GENERATIONS_DIR, SEGMENTS_DIR, DELETES_DIR)
_SEGMENT_NAME = re.compile(r"^s(\d{6,})$")


@dataclass
class SegmentRef:
    """One segment of a generation.

    Attributes:
        name: ``base`` (the index directory itself) or ``sNNNNNN``.
        path: Its directory relative to the index (``.`` for ``base``).
        n_docs: Rows of the segment (deleted ones included).
        deletes: Deletion file relative to the index (``""``: nothing deleted).
        n_deleted: Rows deleted.
        deletes_sha256: sha256 of the deletion file.
    """

    name: str
    path: str
    n_docs: int
    deletes: str = ""
    n_deleted: int = 0
    deletes_sha256: str = ""

    @property
    def n_live(self) -> int:
        """Rows not deleted."""
        return self.n_docs - self.n_deleted


@dataclass
class Generation:
    """One generation of an index (``generations/gNNNNNN.json``).

    Attributes:
        generation: Its number (0: the index as built).
        segments: Its segments, in order: global rows are their rows one after another.
        operation: What made it: ``build``, ``add``, ``remove``, ``merge``, ``optimize``.
        note: One line saying what changed.
        parent: The generation it was made from (``None`` for 0).
        created: When it was published (UTC, ISO 8601).
        created_unix: The same, in seconds since the epoch.
        n_images: Live images.
        n_rows: Rows, deleted ones included.
        image_roots: ``{id prefix: absolute folder}`` of images added from folders outside
            the index's own images folder: the file of an image whose id starts with the
            prefix is that folder's file at the rest of the id (e.g. ``trip/`` →
            ``/home/me/trip``: ``trip/a.jpg`` is ``/home/me/trip/a.jpg``).
        format: Always ``mmsparse-generation``.
        version: Format version.
    """

    generation: int
    segments: list[SegmentRef]
    operation: str = "build"
    note: str = ""
    parent: int | None = None
    created: str = ""
    created_unix: float = 0.0
    n_images: int = 0
    n_rows: int = 0
    image_roots: dict[str, str] = field(default_factory=dict)
    format: str = GENERATION_FORMAT
    version: int = GENERATION_VERSION

    def __post_init__(self) -> None:
        self.n_images = sum(s.n_live for s in self.segments)
        self.n_rows = sum(s.n_docs for s in self.segments)

    @property
    def n_deleted(self) -> int:
        """Rows deleted but still in a segment (an optimize removes them)."""
        return self.n_rows - self.n_images

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, where: str | Path) -> Generation:
        """A generation from its JSON.

        Raises:
            IndexFormatError: If it is not a generation manifest of this version.
        """
        if not isinstance(raw, dict) or raw.get("format") != GENERATION_FORMAT:
            raise IndexFormatError(f"{where}: not an mmsparse generation manifest")
        if raw.get("version") != GENERATION_VERSION:
            raise IndexFormatError(
                f"{where}: generation format version {raw.get('version')} is not supported "
                f"(expected {GENERATION_VERSION})"
            )
        try:
            raw = dict(raw)
            segments = [SegmentRef(**s) for s in raw.pop("segments")]
            gen = cls(segments=segments, **raw)
        except (KeyError, TypeError) as exc:
            raise IndexFormatError(f"{where}: incomplete generation manifest ({exc})") from None
        if not segments:
            raise IndexFormatError(f"{where}: a generation without segments")
        return gen


def generation_zero(manifest: IndexManifest) -> Generation:
    """Generation 0 of an index as ``mmsparse index build`` wrote it: segment ``base``."""
    base = SegmentRef(name=BASE_SEGMENT, path=".", n_docs=int(manifest.n_images))
    return Generation(
        generation=0,
        segments=[base],
        operation="build",
        note=f"built with {int(manifest.n_images)} images",
        created=manifest.created,
        created_unix=_unix(manifest.created),
    )


def _unix(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 UTC time (0 if unreadable)."""
    import calendar

    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return 0.0


def is_live(index_dir: str | Path) -> bool:
    """Whether an index has generations (a ``CURRENT`` pointer)."""
    return (Path(index_dir) / CURRENT_NAME).is_file()


def generation_path(generation: int) -> str:
    """The manifest of a generation, relative to the index."""
    return f"{GENERATIONS_DIR}/g{int(generation):06d}.json"


def read_current(index_dir: str | Path, manifest: IndexManifest | None = None) -> Generation:
    """The current generation of an index (generation 0 for an index without ``CURRENT``).

    Args:
        index_dir: The index directory.
        manifest: Its collection manifest, when already read (for generation 0).

    Raises:
        IndexFormatError: If the pointer or the manifest it names is missing or corrupt.
    """
    index_dir = Path(index_dir)
    pointer = index_dir / CURRENT_NAME
    try:
        data = pointer.read_bytes()
    except FileNotFoundError:
        return generation_zero(manifest or IndexManifest.load(index_dir))
    except OSError as exc:
        raise IndexFormatError(f"{pointer}: unreadable ({exc.strerror})") from None
    try:
        ptr = json.loads(data.decode("utf-8"))
        if ptr.get("format") != CURRENT_FORMAT:
            raise ValueError("not an mmsparse generation pointer")
        name, sha = str(ptr["manifest"]), str(ptr["sha256"])
        number = int(ptr["generation"])
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{pointer}: corrupt generation pointer ({exc})") from None
    return read_generation(index_dir, number, name, sha)


def read_generation(
    index_dir: str | Path, number: int, name: str | None = None, sha256: str | None = None
) -> Generation:
    """A generation's manifest, checked against the sha256 the pointer records.

    Raises:
        IndexFormatError: If the file is missing, corrupt or of another generation.
    """
    path = Path(index_dir) / (name or generation_path(number))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexFormatError(
            f"{path}: generation {number} manifest unreadable ({exc.strerror})"
        ) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise IndexFormatError(f"{path}: checksum mismatch (corrupt generation manifest)")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable generation manifest ({exc})") from None
    gen = Generation.from_dict(raw, path)
    if gen.generation != number:
        raise IndexFormatError(f"{path}: holds generation {gen.generation}, not {number}")
    return gen


def list_generations(index_dir: str | Path) -> list[Generation]:
    """Every generation manifest still on disk, oldest first (unreadable ones skipped)."""
    out = []
    for path in sorted((Path(index_dir) / GENERATIONS_DIR).glob("g*.json")):
        try:
            number = int(path.stem[1:])
            out.append(read_generation(index_dir, number))
        except (ValueError, IndexFormatError):
            continue
    return out


def fsync_dir(path: str | Path) -> None:
    """Flush a directory to disk, so that a rename in it survives a crash (where supported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(index_dir: str | Path, gen: Generation) -> Generation:
    """Write a generation's manifest and switch ``CURRENT`` to it atomically.

    The caller holds the :class:`IndexLock`; every file the generation names is written.

    Returns:
        The generation, with its creation time filled in.
    """
    index_dir = Path(index_dir)
    now = time.time()
    gen.created_unix = round(now, 3)
    gen.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    name = generation_path(gen.generation)
    data = (json_text(gen.to_dict(), what=name) + "\n").encode("utf-8")
    atomic_write_bytes(index_dir / name, data)
    fsync_dir(index_dir / GENERATIONS_DIR)
    pointer = {
        "format": CURRENT_FORMAT,
        "version": GENERATION_VERSION,
        "generation": gen.generation,
        "manifest": name,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(index_dir / CURRENT_NAME, (json_text(pointer) + "\n").encode("utf-8"))
    fsync_dir(index_dir)
    return gen


# -- deletion files -------------------------------------------------------------------------


def write_deletes(
    index_dir: str | Path, segment: str, generation: int, rows: np.ndarray
) -> tuple[str, str]:
    """Write the deleted rows of a segment as of a generation (an immutable file).

    Returns:
        ``(path relative to the index, sha256)``.
    """
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    data = buf.getvalue()
    name = f"{DELETES_DIR}/{segment}.g{int(generation):06d}.npy"
    atomic_write_bytes(Path(index_dir) / name, data)
    return name, hashlib.sha256(data).hexdigest()


def read_deletes(index_dir: str | Path, ref: SegmentRef) -> np.ndarray:
    """The deleted rows of a segment (sorted int64; empty when none).

    Raises:
        IndexFormatError: If the file is missing, corrupt or does not fit the segment.
    """
    if not ref.deletes:
        return np.zeros(0, dtype=np.int64)
    path = Path(index_dir) / ref.deletes
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexFormatError(f"{path}: deletion file unreadable ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != ref.deletes_sha256:
        raise IndexFormatError(f"{path}: checksum mismatch (corrupt deletion file)")
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: unreadable deletion file ({exc})") from None
    if (
        rows.dtype != np.int64
        or rows.ndim != 1
        or rows.size != ref.n_deleted
        or (rows.size and (rows[0] < 0 or rows[-1] >= ref.n_docs or np.any(np.diff(rows) <= 0)))
    ):
        raise IndexFormatError(
            f"{path}: does not fit segment {ref.name} ({ref.n_docs} rows, {ref.n_deleted} deleted)"
        )
    return rows


# -- the writers' lock ---------------------------------------------------------------------


class IndexLock:
    """An exclusive lock on an index for one writer (``flock`` on ``INDEX/LOCK``).

    A second writer gets a one-line :class:`~mmsparse.errors.MMSparseError` at once (it
    does not wait); readers never take it. The lock is released when the holder exits or
    dies (the kernel drops a dead process's locks).

    Args:
        index_dir: The index directory.
        operation: What the holder does (``index add``), shown to a second writer.

    Example:
        >>> with IndexLock("photos-index", "index add"):   # doctest: +SKIP
        ...     ...
    """

    def __init__(self, index_dir: str | Path, operation: str) -> None:
        self.index_dir = Path(index_dir)
        self.operation = operation
        self._fd: int | None = None

    def __enter__(self) -> IndexLock:
        path = self.index_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MMSparseError(f"{path}: cannot create the index lock ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MMSparseError(
                    f"{self.index_dir}: another writer is changing this index "
                    f"({holder or 'unknown process'}); wait until it ends, then run "
                    f"'mmsparse {self.operation}' again"
                ) from None
            raise MMSparseError(f"{path}: cannot lock the index ({exc.strerror})") from None
        info = (
            f"pid {os.getpid()}, mmsparse {self.operation}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8"), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None


# -- garbage collection --------------------------------------------------------------------


def next_segment_name(index_dir: str | Path) -> str:
    """A segment name no file uses yet (``sNNNNNN``, one above the largest)."""
    top = 0
    root = Path(index_dir) / SEGMENTS_DIR
    if root.is_dir():
        for path in root.iterdir():
            m = _SEGMENT_NAME.match(path.name.lstrip(".").split(".")[0].removeprefix("tmp-"))
            if m:
                top = max(top, int(m.group(1)))
    return f"s{top + 1:06d}"


def base_files(manifest: IndexManifest) -> list[str]:
    """The files of segment ``base`` in the index directory (docs and the engine's)."""
    from mmsparse.index.engines import get_engine

    try:
        files = list(get_engine(manifest.engine).files)
    except MMSparseError:
        files = []
    return [DOCS_NAME, *files]


def collect_garbage(
    index_dir: str | Path, *, grace_s: float = GC_GRACE_S, now: float | None = None
) -> list[str]:
    """Delete what no generation within the grace period uses; the caller holds the lock.

    A generation is *kept* if it is the current one, or if the generation that replaced
    it was published less than ``grace_s`` seconds ago (a reader may have read its pointer
    just before the switch). Kept generations keep their segments and deletion files;
    the manifests of the others, and every segment, deletion file and unfinished
    temporary folder (``segments/.tmp-*``, left by a killed writer) that no kept
    generation names, are deleted. Segment ``base`` (the index directory's own files) is
    deleted the same way, except ``index.json``, which stays as the collection manifest.

    Returns:
        The paths deleted, relative to the index.
    """
    index_dir = Path(index_dir)
    if not is_live(index_dir):
        return []
    now = time.time() if now is None else now
    current = read_current(index_dir)
    gens = {g.generation: g for g in list_generations(index_dir)}
    gens[current.generation] = current
    numbers = sorted(gens)
    kept = {current.generation}
    for i, number in enumerate(numbers[:-1]):
        successor = gens[numbers[i + 1]]
        if now - successor.created_unix < grace_s and number < current.generation:
            kept.add(number)
    used_segments = {s.path for n in kept for s in gens[n].segments}
    used_deletes = {s.deletes for n in kept for s in gens[n].segments if s.deletes}
    removed: list[str] = []

    def drop(path: Path) -> None:
        rel = path.relative_to(index_dir).as_posix()
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(rel)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: could not delete (%s); it is left", path, exc.strerror)

    for number in gens:
        path = index_dir / generation_path(number)
        if number not in kept and path.is_file():
            drop(path)
    seg_root = index_dir / SEGMENTS_DIR
    if seg_root.is_dir():
        for path in sorted(seg_root.iterdir()):
            rel = f"{SEGMENTS_DIR}/{path.name}"
            if rel not in used_segments:
                drop(path)
    del_root = index_dir / DELETES_DIR
    if del_root.is_dir():
        for path in sorted(del_root.iterdir()):
            if f"{DELETES_DIR}/{path.name}" not in used_deletes:
                drop(path)
    if "." not in used_segments:
        try:
            manifest = IndexManifest.load(index_dir)
        except IndexFormatError:
            manifest = None
        if manifest is not None:
            for name in base_files(manifest):
                path = index_dir / name
                if path.exists():
                    drop(path)
    return removed


def remove_live_layout(index_dir: str | Path) -> None:
    """Delete every generation file of an index, ``CURRENT`` first.

    The index is a plain one again, generation 0 of its own files (what ``mmsparse index
    build`` does before writing over a live index).
    """
    index_dir = Path(index_dir)
    pointer = index_dir / CURRENT_NAME
    if pointer.exists():
        pointer.unlink()
        fsync_dir(index_dir)
    for name in (GENERATIONS_DIR, SEGMENTS_DIR, DELETES_DIR):
        path = index_dir / name
        if path.is_dir():
            shutil.rmtree(path)


__all__ = [
    "BASE_SEGMENT",
    "CURRENT_NAME",
    "DELETES_DIR",
    "GC_GRACE_S",
    "GENERATIONS_DIR",
    "LIVE_NAMES",
    "LOCK_NAME",
    "SEGMENTS_DIR",
    "Generation",
    "IndexLock",
    "SegmentRef",
    "collect_garbage",
    "fsync_dir",
    "generation_path",
    "generation_zero",
    "is_live",
    "list_generations",
    "next_segment_name",
    "publish",
    "read_current",
    "read_deletes",
    "read_generation",
    "remove_live_layout",
    "write_deletes",
]

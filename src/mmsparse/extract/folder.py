"""Encoding a folder of photos (no captions) with an extraction backend, resumably.

:func:`list_image_folder` decides which files of a folder are images, deliberately:

* the folder is walked recursively; every image is named by its path relative to the
  folder, in POSIX form (``2023/beach/IMG_0001.jpg``), the same on every machine;
* files with an image suffix (``.jpg .jpeg .png .bmp .gif .webp .tif .tiff``, any case)
  are candidates; any other file is reported (``not an image file``) and skipped;
* symbolic links, to files or folders, are reported and not followed: a link inside the
  folder points at a file that is indexed under its own path (no photo twice), a link
  out of the folder would be a file that ``mmsparse serve`` does not show (it only reads
  inside the folder), and a link loop cannot make the walk endless. Hard links and
  bind mounts are ordinary files and folders;
* hidden files and folders (names starting with ``.``) are skipped and counted, not listed
  one by one (``.DS_Store``, ``.thumbnails/``, ``.git/``);
* unreadable folders, names that are not valid UTF-8 and special files (sockets, pipes)
  are reported and skipped.

:func:`encode_folder` then opens, orients (EXIF), converts and encodes the candidates
exactly as ``mmsparse extract`` does (:mod:`mmsparse.extract.batches`), in batches; a file
that cannot be decoded is reported and skipped. Every batch is written to a shard file
in a cache directory, named by the batch's files with their sizes and modification
times, so that:

* a killed run, started again, encodes only the batches not yet written (the result is
  the same as an uninterrupted run: the batches are the same);
* running again on the same folder reuses every unchanged batch; after photos were added
  or changed, only the batches that hold them are encoded again.

Cache directory::

    cache.json              format, version and the backend's ``extraction`` description
                            (another backend or package version discards the shards)
    img-<sha256>.safetensors one batch: features and its file names (see batches.py)

Shards of batches that no longer exist are deleted at the end of a complete run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import CheckpointError, ConfigError, DataError, MMSparseError
from mmsparse.extract._common import log
from mmsparse.extract.backends import Backend
from mmsparse.extract.batches import BatchCallback, encode_image_batches, read_image_shard
from mmsparse.extract.inputs import IMAGE_SUFFIXES
from mmsparse.io_utils import atomic_write_json, read_json

CACHE_FORMAT = "mmsparse-image-cache"
CACHE_VERSION = 1
CACHE_META = "cache.json"
SHARD_PREFIX = "img-"

NOT_IMAGE = "not an image file (by its suffix)"
SYMLINK = "symbolic link (not followed)"
SYMLINK_LOOP = "symbolic link loop (not followed)"
SYMLINK_BROKEN = "broken symbolic link"
NOT_REGULAR = "not a regular file"
BAD_NAME = "file name is not valid UTF-8 (rename it)"
UNREADABLE = "unreadable image"


@dataclass
class FolderListing:
    """The image files of a folder (see the module docstring for what is listed).

    Attributes:
        root: The folder (resolved).
        files: POSIX paths relative to ``root`` of the candidate image files, sorted.
        stamps: ``(size, modification time in ns)`` of each file.
        skipped: ``(relative path, reason)`` of everything reported and skipped.
        hidden: Hidden files and folders skipped (not listed).
    """

    root: Path
    files: list[str] = field(default_factory=list)
    stamps: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    hidden: int = 0


def list_image_folder(images: str | Path, *, exclude: Sequence[str | Path] = ()) -> FolderListing:
    """List the image files of a folder, recursively (see the module docstring).

    Args:
        images: The folder.
        exclude: Folders not to walk into (e.g. an index written inside the folder).

    Returns:
        The :class:`FolderListing`.

    Raises:
        DataError: If ``images`` is not a folder.
    """
    root = Path(images)
    if not root.is_dir():
        raise DataError(f"{root}: images folder not found (--images)")
    root = root.resolve()
    skip_dirs = {Path(p).resolve() for p in exclude}
    listing = FolderListing(root=root)
    found: list[tuple[str, tuple[int, int]]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            listing.skipped.append(
                (prefix or ".", f"folder not readable ({type(exc).__name__}: {exc.strerror})")
            )
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                listing.hidden += 1
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                listing.skipped.append((rel.encode("utf-8", "replace").decode(), BAD_NAME))
                continue
            if entry.is_symlink():
                listing.skipped.append((rel, _link_reason(entry.path)))
            elif entry.is_dir(follow_symlinks=False):
                if Path(entry.path).resolve() not in skip_dirs:
                    stack.append((Path(entry.path), rel + "/"))
            elif not entry.is_file(follow_symlinks=False):
                listing.skipped.append((rel, NOT_REGULAR))
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                listing.skipped.append((rel, NOT_IMAGE))
            else:
                st = entry.stat(follow_symlinks=False)
                found.append((rel, (int(st.st_size), int(st.st_mtime_ns))))
    found.sort()
    listing.files = [name for name, _ in found]
    listing.stamps = [stamp for _, stamp in found]
    listing.skipped.sort()
    return listing


def _link_reason(path: str) -> str:
    try:
        Path(path).resolve(strict=True)
    except RuntimeError:  # "Symlink loop" (Python < 3.13)
        return SYMLINK_LOOP
    except OSError as exc:
        return SYMLINK_LOOP if exc.errno == errno.ELOOP else SYMLINK_BROKEN
    return SYMLINK


@dataclass
class FolderFeatures:
    """The backbone features of a folder's images (:func:`encode_folder`).

    Attributes:
        root: The image folder.
        ids: Relative POSIX path of each encoded image (the image id).
        features: ``(len(ids), d_img)`` float32 features, in the order of ``ids``.
        n_files: Candidate image files found (encoded + unreadable).
        skipped: ``(relative path, reason)`` of every file reported and skipped (listing
            and unreadable images), sorted by path.
        hidden: Hidden files and folders skipped.
        converted: Original mode to count, for images converted to RGB.
        known: Image files left out because the caller has them already (``keep``).
        encoded_batches: Batches encoded by this call.
        resumed_batches: Batches found in the cache (a killed or earlier run).
        seconds: ``list`` (walking the folder), ``decode`` and ``backbone`` (see
            :class:`~mmsparse.extract.batches.ImageStageStats`; ``decode`` runs in a
            thread beside ``backbone``), ``images`` (wall time of decoding and encoding).
    """

    root: str
    ids: list[str]
    features: np.ndarray
    n_files: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    hidden: int = 0
    converted: dict[str, int] = field(default_factory=dict)
    known: int = 0
    encoded_batches: int = 0
    resumed_batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the features and ids, as plain JSON types."""
        d = asdict(self)
        del d["features"], d["ids"]
        d["n_images"] = len(self.ids)
        d["skipped"] = [list(x) for x in self.skipped]
        return d


def encode_folder(
    engine: Backend,
    images: str | Path,
    cache_dir: str | Path,
    *,
    batch_size: int = 64,
    exclude: Sequence[str | Path] = (),
    progress: bool = True,
    callback: BatchCallback | None = None,
    keep: Callable[[str], bool] | None = None,
) -> FolderFeatures:
    """Encode every image of a folder with an extraction backend (see the module docstring).

    Args:
        engine: The backend (e.g. ``get_backend("effnet-minilm")()``, or
            :func:`~mmsparse.extract.load_image_backend` of a run's ``extraction``).
        images: The folder (walked recursively).
        cache_dir: Where the encoded batches are kept (created); a killed or repeated
            run reuses them.
        batch_size: Images per forward pass (64, as ``mmsparse extract``).
        exclude: Folders inside ``images`` not to walk into.
        progress: Show a progress bar on stderr.
        callback: Called as ``callback(done, total)`` (images) after each encoded batch.
        keep: Encode only the image files (relative paths) for which it is true; the
            others are counted as ``known`` (``mmsparse index add`` leaves out the photos
            an index has already).

    Returns:
        The :class:`FolderFeatures`.

    Raises:
        DataError: If the folder holds no image file, or none could be read.
        MMSparseError: If ``cache_dir`` holds something that is not an image cache.
        ConfigError: If ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    t0 = time.perf_counter()
    cache = Path(cache_dir)
    listing = list_image_folder(images, exclude=[*exclude, cache])
    known = 0
    if keep is not None:
        kept = [(f, st) for f, st in zip(listing.files, listing.stamps) if keep(f)]
        known = len(listing.files) - len(kept)
        listing.files = [f for f, _ in kept]
        listing.stamps = [st for _, st in kept]
    seconds = {"list": round(time.perf_counter() - t0, 3)}
    if not listing.files:
        raise DataError(
            f"{listing.root}: no image file found ({' '.join(IMAGE_SUFFIXES)}; "
            + (f"{known} left out as known, " if known else "")
            + f"{len(listing.skipped)} other file(s) skipped, {listing.hidden} hidden)"
        )
    _prepare_cache(cache, engine.extraction())
    batches = [
        list(range(i, min(i + batch_size, len(listing.files))))
        for i in range(0, len(listing.files), batch_size)
    ]
    names = [[listing.files[i] for i in batch] for batch in batches]
    shards = [cache / _shard_name(listing, batch) for batch in batches]
    stage = encode_image_batches(
        engine, listing.root, names, shards, progress=progress, callback=callback
    )
    seconds.update(
        decode=stage.seconds["decode"],
        backbone=stage.seconds["backbone"],
        images=stage.seconds["wall"],
    )
    ids: list[str] = []
    parts: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    modes: Counter[str] = Counter()
    for batch_names, path in zip(names, shards):
        try:
            shard = read_image_shard(path)
        except (CheckpointError, DataError) as exc:
            raise MMSparseError(f"{exc}; delete {cache} to encode the folder afresh") from exc
        if shard.names != batch_names:
            raise MMSparseError(
                f"{path}: holds other files than its batch; delete {cache} to encode the "
                "folder afresh"
            )
        ids += [batch_names[i] for i in shard.ok]
        parts.append(shard.emb)
        failed += [(name, f"{UNREADABLE} ({why})") for name, why in shard.failed]
        modes.update(shard.modes)
    _drop_stale_shards(cache, {p.name for p in shards})
    if not ids:
        raise DataError(
            f"{listing.root}: none of the {len(listing.files)} image files could be read "
            f"(first: {failed[0][0]}: {failed[0][1]})"
        )
    features = np.concatenate(parts).astype(np.float32, copy=False)
    skipped = sorted([*listing.skipped, *failed])
    if skipped:
        log.warning(
            "%d file(s) of %s skipped: %s",
            len(skipped),
            listing.root,
            ", ".join(f"{name} ({why})" for name, why in skipped[:5])
            + (" ..." if len(skipped) > 5 else ""),
        )
    return FolderFeatures(
        root=str(listing.root),
        ids=ids,
        features=features,
        n_files=len(listing.files),
        skipped=skipped,
        hidden=listing.hidden,
        converted=dict(sorted(modes.items())),
        known=known,
        encoded_batches=stage.encoded_batches,
        resumed_batches=stage.resumed_batches,
        seconds=seconds,
    )


def _shard_name(listing: FolderListing, batch: list[int]) -> str:
    """The shard file of a batch: a digest of its files with their sizes and mtimes."""
    record = [[listing.files[i], *listing.stamps[i]] for i in batch]
    digest = hashlib.sha256(json.dumps(record, allow_nan=False).encode("utf-8")).hexdigest()
    return f"{SHARD_PREFIX}{digest[:32]}.safetensors"


def _prepare_cache(cache: Path, extraction: dict[str, Any]) -> None:
    """Create or check the cache directory; discard shards of another extraction."""
    meta_path = cache / CACHE_META
    want = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "extraction": json.loads(json.dumps(extraction, allow_nan=False)),
    }
    if cache.exists() and not cache.is_dir():
        raise MMSparseError(f"{cache}: exists and is not a directory (image feature cache)")
    if cache.is_dir() and any(cache.iterdir()):
        try:
            meta = read_json(meta_path, "image feature cache")
        except CheckpointError:
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise MMSparseError(
                f"{cache}: not an mmsparse image feature cache (no {CACHE_META}); "
                "nothing there was changed: move it away or choose another output"
            )
        for tmp in cache.glob(f".{SHARD_PREFIX}*.tmp"):  # writes cut short by a kill
            tmp.unlink()
        if meta == want:
            return
        log.warning("%s holds features of another backbone or version; discarding them", cache)
        _drop_stale_shards(cache, set())
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, want)


def _drop_stale_shards(cache: Path, keep: set[str]) -> None:
    for path in cache.glob(f"{SHARD_PREFIX}*.safetensors"):
        if path.name not in keep:
            path.unlink()

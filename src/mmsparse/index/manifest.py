"""The index manifest: what an index directory holds and how it was built.

Every index directory written by :func:`mmsparse.index.build_index` has::

    INDEX/index.json     the manifest (this module): format, version, engine, the run and
                         checkpoint it was built from (sha256), the vocabulary (size, sha256),
                         the split, the pruning/quantisation options, engine parameters, sizes
    INDEX/docs.json      image ids and file names, one per indexed row
    INDEX/...            the engine's files (postings.mmsi, seismic.index.seismic, milvus.db,
                         index.bmp, kannolo.hnsw...: each engine's ``files``)

An index of a folder of photos (:func:`mmsparse.index.build_folder_index`) also has::

    INDEX/folder.json    what the build found: every skipped file with the reason
    INDEX/features/      the backbone features of the folder's images, in batches (kept:
                         a killed build resumes from it, and building again encodes only
                         new or changed photos; deleting it loses nothing the index needs)
    INDEX/features-added/  the same for each folder 'mmsparse index add --images' read

An index changed by ``mmsparse index add``, ``remove`` or ``optimize`` is *live*: it also
has ``CURRENT``, ``generations/``, ``segments/``, ``deletes/`` and ``LOCK``
(:mod:`mmsparse.index.generations`); ``index.json`` stays the collection's manifest.

The manifest is what makes an index safe to reuse: a search refuses an index whose
checkpoint or vocabulary no longer match the run, and reports options that differ from
the run's evaluation options.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmsparse.errors import CheckpointError, IndexFormatError
from mmsparse.io_utils import atomic_write_json, file_sha256, read_json

INDEX_FORMAT = "mmsparse-index"
INDEX_VERSION = 1
MANIFEST_NAME = "index.json"
DOCS_NAME = "docs.json"
FOLDER_REPORT_NAME = "folder.json"
FEATURES_DIR = "features"
ADDED_FEATURES_DIR = "features-added"  # mmsparse index add --images: one cache per folder
FEATURES_MARKER = "cache.json"  # mmsparse.extract.folder.CACHE_META: the folder is ours
CALIBRATION_FILE = "confidence.json"  # mmsparse.index.confidence.CALIBRATION_NAME
#: Files and folders of an index directory that are not the engine's (not in its size).
NOT_ENGINE_FILES = (
    MANIFEST_NAME,
    DOCS_NAME,
    FOLDER_REPORT_NAME,
    FEATURES_DIR,
    ADDED_FEATURES_DIR,
    CALIBRATION_FILE,
    # a live index (mmsparse.index.generations): its pointer, lock and generations
    "CURRENT",
    "LOCK",
    "generations",
    "segments",
    "deletes",
)


@dataclass(frozen=True)
class IndexOptions:
    """Pruning and quantisation applied to the image vectors before indexing.

    Attributes:
        image_topk: Terms kept per image vector (``None``: all).
        threshold: Weights at or below it were zeroed.
        quantize: ``none``, ``uint8`` or ``uint16`` integer impacts.
        scale: Dequantisation scale of the impacts (1 without quantisation).
    """

    image_topk: int | None = None
    threshold: float = 0.0
    quantize: str = "none"
    scale: float = 1.0


@dataclass
class IndexManifest:
    """Description of an index directory (``index.json``).

    Attributes:
        engine: The engine's registry name (``inverted``, ``seismic``, ``milvus``, ``bmp``,
            ``kannolo``, or any other registered; checked when the index is opened).
        run_dir: Absolute run directory the vectors came from.
        checkpoint_sha256: sha256 of the run's ``best/model.safetensors``.
        vocab_size: Number of sparse dimensions.
        vocab_sha256: sha256 of the vocabulary terms (one per line).
        split: Split whose images are indexed (``""`` for a folder index).
        data_dir: Feature directory the images were read from (``""`` for a folder
            index).
        n_images: Number of indexed images.
        dense_dim: Size of the dense vectors (stored by engines that hold them).
        w1: Dense weight of the run's hybrid score.
        w2: Sparse weight of the run's hybrid score.
        options: :class:`IndexOptions`.
        engine_params: Engine-specific build parameters (and the Milvus URI/collection).
        stats: Sizes and timings (nnz, mean terms per image, bytes, build seconds).
        images_dir: A folder index: the absolute image folder (``mmsparse serve`` shows
            its files); ``""`` for an index of a split.
        folder: A folder index: counts (files, images, skipped by reason, hidden), the
            backbone and device, and ``seconds`` of each stage (``list``, ``load``,
            ``decode``, ``backbone``, ``images``, ``heads``, ``index``, ``total``).
        created: Build time (UTC, ISO 8601).
        format: Always ``mmsparse-index``.
        version: Manifest format version.
    """

    engine: str
    run_dir: str
    checkpoint_sha256: str
    vocab_size: int
    vocab_sha256: str
    split: str
    data_dir: str
    n_images: int
    dense_dim: int
    w1: float
    w2: float
    options: IndexOptions = field(default_factory=IndexOptions)
    engine_params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    images_dir: str = ""
    folder: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = INDEX_FORMAT
    version: int = INDEX_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        """Write ``index.json`` atomically into ``directory``."""
        if not self.created:
            self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = Path(directory) / MANIFEST_NAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> IndexManifest:
        """Read and validate ``INDEX/index.json``.

        Raises:
            IndexFormatError: If the directory is not an mmsparse index or is of another
                version.
        """
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise IndexFormatError(f"{directory}: index directory not found")
        try:
            raw = read_json(path, "index manifest")
        except CheckpointError as exc:
            raise IndexFormatError(
                f"{path}: not an mmsparse index (no readable {MANIFEST_NAME}; build one with "
                "'mmsparse index build')"
            ) from exc
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            raise IndexFormatError(f"{path}: not an mmsparse index manifest")
        if raw.get("version") != INDEX_VERSION:
            raise IndexFormatError(
                f"{path}: index version {raw.get('version')} is not supported (expected "
                f"{INDEX_VERSION}); rebuild the index"
            )
        try:
            options = IndexOptions(**raw.pop("options"))
            manifest = cls(options=options, **raw)
        except (KeyError, TypeError) as exc:
            raise IndexFormatError(f"{path}: incomplete index manifest ({exc})") from exc
        return manifest


def run_fingerprint(run_dir: str | Path) -> str:
    """sha256 of the run's selected checkpoint weights (``best/model.safetensors``).

    What ``checkpoint_sha256`` records, so that a search refuses an index whose run was
    retrained.
    """
    from mmsparse.model.model import WEIGHTS_NAME
    from mmsparse.runs import checkpoint_dir

    return file_sha256(checkpoint_dir(run_dir) / WEIGHTS_NAME)


def vocab_sha256(tokens: list[str]) -> str:
    """sha256 of the vocabulary terms joined by newlines (hex)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def is_feature_cache(path: str | Path) -> bool:
    """Whether ``path`` is the image feature cache of a folder index (``INDEX/features``)."""
    path = Path(path)
    return path.name == FEATURES_DIR and (path / FEATURES_MARKER).is_file()


def write_docs(directory: str | Path, image_ids: list[str], filenames: list[str]) -> None:
    """Write ``docs.json`` (image ids and file names of the indexed rows)."""
    atomic_write_json(Path(directory) / DOCS_NAME, {"image_ids": image_ids, "filenames": filenames})


def read_docs(directory: str | Path, n_images: int) -> tuple[list[str], list[str]]:
    """Read ``docs.json``; check it has one entry per indexed row.

    Raises:
        IndexFormatError: If missing, unreadable or of the wrong length.
    """
    path = Path(directory) / DOCS_NAME
    try:
        raw = read_json(path, "index document list")
        ids, names = list(map(str, raw["image_ids"])), list(map(str, raw["filenames"]))
    except (CheckpointError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{path}: missing or unreadable document list ({exc})") from exc
    if len(ids) != n_images or len(names) != n_images:
        raise IndexFormatError(
            f"{path}: {len(ids)} image ids for an index of {n_images} images (corrupt index)"
        )
    return ids, names

"""Indexing a folder of your own photos (no captions) with a trained run.

:func:`build_folder_index` is the library behind ``mmsparse index build RUN --images DIR
--out INDEX``. The run's ``model.json`` records the backbone its features came from
(``backbone.extraction``: the backend and its preprocessing); the photos are encoded
with that backbone by the code ``mmsparse extract`` uses
(:func:`mmsparse.extract.encode_folder`: batched, resumable, EXIF orientation applied,
unreadable and non-image files reported and skipped), then by the run's heads (its
pruning options, as ``index build --split``), then indexed by
:func:`~mmsparse.index.build.index_vectors`. Each image's id and file name is its path
relative to the folder, in POSIX form.

The index directory holds, besides the engine's files::

    index.json     the manifest; images_dir (the folder, for ``mmsparse serve``) and
                   folder (counts and the seconds of every stage)
    folder.json    every skipped file with the reason
    confidence.json the calibration of the query verdicts (mmsparse.index.confidence): the
                   run's validation captions searched against these photos
    features/      the backbone features, kept (see mmsparse.extract.folder): a killed
                   build resumes, and building again encodes only new or changed photos;
                   delete it to save space (about 5 KB per photo for effnet-minilm)
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsparse.errors import CheckpointError, IndexFormatError, MMSparseError
from mmsparse.index.build import check_build_request, index_vectors
from mmsparse.index.encode import encode_vectors
from mmsparse.index.manifest import (
    FEATURES_DIR,
    FOLDER_REPORT_NAME,
    MANIFEST_NAME,
    IndexManifest,
    IndexOptions,
    is_feature_cache,
    run_fingerprint,
    vocab_sha256,
)
from mmsparse.io_utils import atomic_write_json, read_json

if TYPE_CHECKING:
    from mmsparse.extract.batches import BatchCallback

log = logging.getLogger(__name__)


@dataclass
class FolderIndexReport:
    """What :func:`build_folder_index` wrote and found.

    Attributes:
        manifest: The index manifest (``index.json``); ``manifest.folder["seconds"]``
            holds the time of each stage.
        skipped: ``(relative path, reason)`` of every file reported and skipped.
    """

    manifest: IndexManifest
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's fields and the skipped files, as plain JSON types."""
        return {**self.manifest.to_dict(), "skipped": [list(x) for x in self.skipped]}


def build_folder_index(
    run_dir: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    engine: str = "inverted",
    image_topk: int | None = None,
    threshold: float | None = None,
    quantize: str = "none",
    engine_params: dict[str, Any] | None = None,
    store_dense: bool = False,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    callback: BatchCallback | None = None,
    calibrate: bool = True,
) -> FolderIndexReport:
    """Index every image of a folder with a trained run (see the module docstring).

    Args:
        run_dir: A run directory written by ``mmsparse train`` whose backbone can encode
            raw images (its ``model.json`` records an extraction backend).
        images: The folder of photos (walked recursively; no captions needed).
        out: Index directory to write (an existing index there is replaced; a killed
            build of the same folder there is resumed).
        engine: A registered engine (``mmsparse index engines`` lists them).
        image_topk: Terms kept per image (default: the run's ``serving.image_topk``).
        threshold: Weights at or below it are dropped (default: the run's
            ``eval.threshold``).
        quantize: ``none``, ``uint8`` or ``uint16`` integer impacts.
        engine_params: Engine parameters (``mmsparse index engines`` lists them).
        store_dense: ``inverted``: also store the dense vectors (dense/hybrid search).
        device: Device of the backbone and the heads (``cpu``, ``cuda``, ``auto``).
        batch_size: Images per backbone forward pass.
        progress: Show progress bars.
        callback: Called as ``callback(done, total)`` (images) after each encoded batch.
        calibrate: Also write the confidence calibration (``confidence.json``,
            :mod:`mmsparse.index.confidence`): the run's validation captions searched
            against these photos. It needs the run's data; a failure is a warning.

    Returns:
        The :class:`FolderIndexReport` (its manifest is written to ``out/index.json``).

    Raises:
        MMSparseError: If the run's backbone cannot encode raw images (a features-only
            run), ``out`` is a non-empty directory that is not an index, or on a bad
            option.
        DataError: If the folder is missing or holds no readable image.
        CheckpointError: If the run is missing or broken.

    Example:
        >>> rep = build_folder_index("runs/flickr8k", "photos", "photos-index")  # doctest: +SKIP
        >>> sorted(rep.manifest.folder["seconds"])  # doctest: +SKIP
        ['backbone', 'decode', 'heads', 'images', 'index', 'list', 'load', 'total']
    """
    from mmsparse.extract import encode_folder, load_image_backend
    from mmsparse.runs import hybrid_weights, load_run, resolve_device, run_extraction

    t_start = time.perf_counter()
    check_build_request(  # before the photos are encoded (minutes), not after
        engine,
        engine_params,
        store_dense=store_dense,
        image_topk=image_topk,
        threshold=threshold,
        quantize=quantize,
    )
    out = Path(out)
    _check_out(out)
    dev = resolve_device(device)
    run = load_run(run_dir, device=dev)
    extraction = run_extraction(run)
    if extraction is None:
        raise MMSparseError(
            f"{run_dir}: this run's backbone ({_backbone_name(run)}) cannot encode raw "
            "images: it was trained on features only, with no extraction backend recorded "
            "(train on features made by 'mmsparse extract' to index photos; index a split "
            "of its data with --split instead)"
        )
    backend = load_image_backend(extraction, device=str(dev))
    if backend.d_img != run.model.d_img:
        raise MMSparseError(
            f"{run_dir}: backbone {backend.name} gives {backend.d_img}-d image features "
            f"but the run's image head takes {run.model.d_img}"
        )
    backend.load_image_model()
    seconds = {"load": round(time.perf_counter() - t_start, 3)}

    feats = encode_folder(
        backend,
        images,
        out / FEATURES_DIR,
        batch_size=batch_size,
        exclude=[out],
        progress=progress,
        callback=callback,
    )
    seconds.update(feats.seconds)

    t0 = time.perf_counter()
    cfg = run.config
    topk = cfg.serving.image_topk if image_topk is None else image_topk
    thr = cfg.eval.threshold if threshold is None else float(threshold)
    dense, sparse = encode_vectors(
        run.model,
        feats.features,
        "image",
        topk=topk,
        threshold=thr,
        batch_size=cfg.eval.batch_size,
        progress=progress,
    )
    seconds["heads"] = round(time.perf_counter() - t0, 3)
    if sparse.nnz == 0:
        raise IndexFormatError(
            f"{run_dir}: every image vector of {feats.root} is empty after pruning "
            f"(threshold {thr}); nothing to index"
        )

    t0 = time.perf_counter()
    (out / FOLDER_REPORT_NAME).unlink(missing_ok=True)  # of an earlier build
    w1, w2 = hybrid_weights(cfg, run.model)
    manifest = index_vectors(
        out,
        engine,
        sparse,
        dense,
        feats.ids,
        feats.ids,
        manifest_fields={
            "run_dir": str(Path(run_dir).resolve()),
            "checkpoint_sha256": run_fingerprint(run_dir),
            "vocab_sha256": vocab_sha256(run.vocab.tokens),
            "split": "",
            "data_dir": "",
            "images_dir": feats.root,
            "w1": w1,
            "w2": w2,
        },
        options=IndexOptions(image_topk=topk, threshold=thr, quantize=quantize),
        engine_params=engine_params,
        store_dense=store_dense,
        progress=progress,
    )
    seconds["index"] = round(time.perf_counter() - t0, 3)
    if calibrate:
        t0 = time.perf_counter()
        from mmsparse.index.confidence import calibrate_index

        try:
            calibrate_index(out, progress=progress)
        except MMSparseError as exc:
            log.warning("%s: no confidence calibration (%s)", out, exc)
        seconds["calibrate"] = round(time.perf_counter() - t0, 3)
    seconds["total"] = round(time.perf_counter() - t_start, 3)
    summary = feats.summary()
    manifest.folder = {
        "backend": backend.name,
        "device": str(backend.device),
        "batch_size": int(batch_size),
        "n_files": summary["n_files"],
        "n_images": summary["n_images"],
        "skipped": len(feats.skipped),
        "skipped_by_reason": dict(Counter(_reason_kind(why) for _, why in feats.skipped)),
        "hidden": feats.hidden,
        "converted": feats.converted,
        "encoded_batches": feats.encoded_batches,
        "resumed_batches": feats.resumed_batches,
        "seconds": seconds,
    }
    manifest.save(out)
    atomic_write_json(
        out / FOLDER_REPORT_NAME,
        {"images_dir": feats.root, "skipped": [list(x) for x in feats.skipped]},
    )
    return FolderIndexReport(manifest=manifest, skipped=list(feats.skipped))


def _check_out(out: Path) -> None:
    """Refuse an output that is neither new, an index, nor a killed folder build."""
    if out.exists() and not out.is_dir():
        raise MMSparseError(f"{out}: exists and is not a directory; choose another --out")
    if not out.is_dir() or (out / MANIFEST_NAME).is_file():
        return
    foreign = [
        p.name
        for p in out.iterdir()
        if not is_feature_cache(p) and not (p.name == FEATURES_DIR and not any(p.iterdir()))
    ]
    if foreign:
        raise MMSparseError(
            f"{out}: directory exists, is not empty ({foreign[0]} ...) and holds no mmsparse "
            "index; choose another --out"
        )


def _backbone_name(run: Any) -> str:
    from mmsparse.runs import checkpoint_dir

    try:
        info = read_json(checkpoint_dir(run.run_dir) / "model.json", "model description")
    except CheckpointError:
        info = {}
    backbone = info.get("backbone") if isinstance(info, dict) else None
    if isinstance(backbone, dict) and backbone.get("name"):
        return str(backbone["name"])
    return str(run.config.data.backbone or "unknown")


def _reason_kind(why: str) -> str:
    """A skip reason without its details: ``unreadable image (OSError: ...)`` → ..."""
    return why.split(" (")[0]

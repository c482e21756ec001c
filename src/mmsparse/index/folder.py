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

from mmsparse.errors import CheckpointError, DataError, IndexFormatError, MMSparseError
from mmsparse.index.build import check_build_request, index_vectors
from mmsparse.index.encode import encode_vectors
from mmsparse.index.manifest import (
    ADDED_FEATURES_DIR,
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
    from mmsparse.index.live import LiveReport

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
    from mmsparse.extract import encode_folder
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
    backend = _load_backbone(run, run_dir, extraction, dev)
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


def add_images(
    index_dir: str | Path,
    images: str | Path,
    *,
    run_dir: str | Path | None = None,
    name: str | None = None,
    existing: str = "skip",
    device: str = "cpu",
    batch_size: int = 64,
    merge_factor: int | None = None,
    gc_grace_s: float | None = None,
    progress: bool = True,
    callback: BatchCallback | None = None,
) -> LiveReport:
    """Add the photos of a folder to an index, as a new segment (``mmsparse index add``).

    The photos are encoded as :func:`build_folder_index` encodes them (the run's backbone,
    then its heads, with the **index's** pruning options), then added by
    :func:`~mmsparse.index.live.add_vectors` and published as a new generation; a running
    ``mmsparse serve`` switches to it. The photos' ids (see ``docs/photos.md``):

    * a folder inside the index's own photo folder (or that folder itself): the path
      relative to the index's folder, as ``index build --images`` names them
      (``2024/trip/IMG_1.jpg``), and ``mmsparse serve`` shows the file from there;
    * any other folder (or any folder, for an index of a split): ``NAME/`` and the path
      relative to the folder, ``NAME`` being ``name`` (default: the folder's name); the
      generation records NAME's folder, where ``mmsparse serve`` shows the files from.
      A NAME that is a folder of the index's own photo folder, or that names another
      folder already, is refused (choose another ``name``).

    Photos whose id the index holds already are left out before encoding
    (``existing="skip"``, the default: adding a folder again adds its new photos), or
    encoded again and replaced (``replace``: e.g. after editing them), or refused
    (``error``). Their backbone features are kept in ``INDEX/features-added/`` (one
    cache per folder), so a killed add encodes only what is left when run again.

    Args:
        index_dir: The index (built with ``index build``, of a folder or a split).
        images: The folder of photos to add (walked recursively, as for a build).
        run_dir: The run to encode with (default: the index's; it must be the same
            checkpoint and vocabulary).
        name: The id prefix of a folder outside the index's photo folder.
        existing: ``skip``, ``replace`` or ``error`` (see above).
        device: Device of the backbone and the heads.
        batch_size: Images per backbone forward pass.
        merge_factor: The tiered merge rule's factor (default
            :data:`~mmsparse.index.live.MERGE_FACTOR`; 0: no merge).
        gc_grace_s: Seconds before a replaced generation's files are deleted (default
            :data:`~mmsparse.index.generations.GC_GRACE_S`).
        progress: Show progress bars.
        callback: Called as ``callback(done, total)`` after each encoded batch.

    Returns:
        The :class:`~mmsparse.index.live.LiveReport`; its ``files`` holds what the folder
        held (``n_files``, ``known``, ``skipped`` with reasons, ``seconds``).

    Raises:
        MMSparseError: If the engine cannot change by segments (milvus), another writer
            holds the index, the run is not the index's or cannot encode photos, the name
            is taken, or an id is there with ``existing="error"``.
        DataError: If the folder is missing.
    """
    from mmsparse.extract import encode_folder, list_image_folder
    from mmsparse.index.generations import GC_GRACE_S, IndexLock
    from mmsparse.index.live import (
        EXISTING,
        MERGE_FACTOR,
        LiveReport,
        LiveState,
        add_vectors_locked,
        engine_of,
    )
    from mmsparse.runs import resolve_device, run_extraction

    t_start = time.perf_counter()
    index_dir = Path(index_dir)
    collection = IndexManifest.load(index_dir)
    engine_of(collection, "add")
    if existing not in EXISTING:
        raise MMSparseError(f"--existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    folder = Path(images)
    if not folder.is_dir():
        raise DataError(f"{folder}: images folder not found (--images)")
    folder = folder.resolve()
    prefix, roots = _added_ids(index_dir, collection, folder, name)
    with IndexLock(index_dir, "index add"):
        state = LiveState(index_dir)
        live = state.live_rows()
        run_dir = run_dir or collection.run_dir
        run = _index_run(index_dir, collection, run_dir, resolve_device(device))
        extraction = run_extraction(run)
        if extraction is None:
            raise MMSparseError(
                f"{run_dir}: this run's backbone ({_backbone_name(run)}) cannot encode raw "
                "images (it was trained on features only); photos cannot be added"
            )
        listing = list_image_folder(folder, exclude=[index_dir])
        ids = [prefix + f for f in listing.files]
        present = [i for i in ids if i in live]
        report = LiveReport(index=str(index_dir), operation="add", generation=state.gen.generation)
        if present and existing == "error":
            raise MMSparseError(
                f"{len(present)} of the {len(ids)} photos of {folder} are in the index "
                "already: "
                + ", ".join(present[:10])
                + (" ..." if len(present) > 10 else "")
                + " (--existing skip leaves them, --existing replace encodes them again)"
            )
        if existing == "skip" and ids and len(present) == len(ids):
            report.skipped = len(present)
            report.files = {"n_files": len(ids), "known": len(present), "skipped": []}
            report.n_images, report.segments = state.gen.n_images, len(state.gen.segments)
            report.deleted_rows = state.gen.n_deleted
            log.info(
                "%s: all %d photos of %s are in the index already", index_dir, len(ids), folder
            )
            return report
        t0 = time.perf_counter()
        backend = _load_backbone(run, run_dir, extraction, resolve_device(device))
        seconds = {"load": round(time.perf_counter() - t0, 3)}
        skip_known = existing == "skip"
        feats = encode_folder(
            backend,
            folder,
            index_dir / ADDED_FEATURES_DIR / _cache_key(folder),
            batch_size=batch_size,
            exclude=[index_dir],
            progress=progress,
            callback=callback,
            keep=(lambda f: prefix + f not in live) if skip_known else None,
        )
        seconds.update(feats.seconds)
        t0 = time.perf_counter()
        opts = collection.options
        dense, sparse = encode_vectors(
            run.model,
            feats.features,
            "image",
            topk=opts.image_topk,
            threshold=opts.threshold,
            batch_size=run.config.eval.batch_size,
            progress=progress,
        )
        seconds["heads"] = round(time.perf_counter() - t0, 3)
        new_ids = [prefix + f for f in feats.ids]
        report = add_vectors_locked(
            index_dir,
            sparse,
            dense,
            new_ids,
            new_ids,
            existing=existing,
            image_roots=roots,
            merge_factor=MERGE_FACTOR if merge_factor is None else merge_factor,
            gc_grace_s=GC_GRACE_S if gc_grace_s is None else gc_grace_s,
            progress=progress,
            note=str(folder),
        )
        report.skipped += feats.known
        seconds["total"] = round(time.perf_counter() - t_start, 3)
        report.seconds = {**seconds, **report.seconds, "total": seconds["total"]}
        report.files = {
            "folder": str(folder),
            "id_prefix": prefix,
            "n_files": feats.n_files + feats.known,
            "known": feats.known,
            "encoded": len(feats.ids),
            "skipped": [list(x) for x in feats.skipped],
            "encoded_batches": feats.encoded_batches,
            "resumed_batches": feats.resumed_batches,
        }
        return report


def _added_ids(
    index_dir: Path, collection: IndexManifest, folder: Path, name: str | None
) -> tuple[str, dict[str, str]]:
    """The id prefix of the photos of ``folder``, and the image roots to record."""
    own = Path(collection.images_dir).resolve() if collection.images_dir else None
    if own is not None and (folder == own or folder.is_relative_to(own)):
        if name is not None:
            raise MMSparseError(
                f"--name applies to a folder outside the index's photo folder {own}; the "
                f"photos of {folder} are named by their path in it"
            )
        rel = folder.relative_to(own).as_posix()
        return ("" if rel == "." else rel + "/"), {}
    label = name if name is not None else folder.name
    if not label or "/" in label or label in (".", "..") or label.startswith("."):
        raise MMSparseError(
            f"--name {label!r}: give a plain name (no '/', not hidden) for the photos of {folder}"
        )
    if own is not None and (own / label).exists():
        raise MMSparseError(
            f"--name {label}: the index's photo folder {own} has a {label!r} of its own, so "
            f"the ids of {folder} would mix with its photos; choose another --name"
        )
    from mmsparse.index.generations import read_current

    taken = read_current(index_dir, collection).image_roots.get(label + "/")
    if taken is not None and Path(taken) != folder:
        raise MMSparseError(
            f"--name {label}: already names the photos of {taken}; choose another --name"
        )
    return label + "/", {label + "/": str(folder)}


def _index_run(index_dir: Path, collection: IndexManifest, run_dir: str | Path, device: Any) -> Any:
    """The index's run, loaded, checked to be the checkpoint and vocabulary it was built with.

    Raises:
        IndexFormatError: If the run is not there or is not the index's.
    """
    from mmsparse.runs import load_run

    if not Path(run_dir).is_dir():
        raise IndexFormatError(
            f"{index_dir}: the run it was built from, {run_dir}, is not there; give the run's "
            "directory with --run RUN_DIR"
        )
    run = load_run(run_dir, device=device)
    if vocab_sha256(run.vocab.tokens) != collection.vocab_sha256:
        raise IndexFormatError(
            f"{index_dir}: the index was built with another vocabulary than the run {run_dir}"
        )
    fingerprint = run_fingerprint(run_dir)
    if fingerprint != collection.checkpoint_sha256:
        raise IndexFormatError(
            f"{index_dir}: the index was built from checkpoint "
            f"{collection.checkpoint_sha256[:12]} but {run_dir} holds {fingerprint[:12]}; "
            "photos added with it would not match (rebuild the index with 'mmsparse index build')"
        )
    return run


def _load_backbone(run: Any, run_dir: Any, extraction: dict[str, Any], device: Any) -> Any:
    """The run's backbone image encoder, its weights loaded, checked against the run."""
    from mmsparse.extract import load_image_backend

    backend = load_image_backend(extraction, device=str(device))
    if backend.d_img != run.model.d_img:
        raise MMSparseError(
            f"{run_dir}: backbone {backend.name} gives {backend.d_img}-d image features "
            f"but the run's image head takes {run.model.d_img}"
        )
    backend.load_image_model()
    return backend


def _cache_key(folder: Path) -> str:
    """The feature cache of an added folder: a digest of its absolute path."""
    import hashlib

    return hashlib.sha256(str(folder).encode("utf-8")).hexdigest()[:16]


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

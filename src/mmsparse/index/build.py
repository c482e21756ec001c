"""Building an index of a trained run's images (the library behind ``mmsparse index build``)."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index.encode import encode_vectors
from mmsparse.index.engines import DEFAULT_ENGINE, Engine, all_engines, get_engine
from mmsparse.index.generations import IndexLock, is_live, remove_live_layout
from mmsparse.index.manifest import (
    MANIFEST_NAME,
    NOT_ENGINE_FILES,
    IndexManifest,
    IndexOptions,
    is_feature_cache,
    run_fingerprint,
    vocab_sha256,
    write_docs,
)
from mmsparse.index.quantize import QUANTIZE_MODES, quantize

log = logging.getLogger(__name__)


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MMSparseError(f"{out}: exists and is not a directory")
    # A folder build's feature cache may precede the first index.json (a killed build).
    others = [p for p in out.iterdir() if not is_feature_cache(p)] if out.is_dir() else []
    if others and not (out / MANIFEST_NAME).is_file():
        raise MMSparseError(
            f"{out}: directory exists, is not empty and holds no mmsparse index; "
            "choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def check_build_request(
    engine: str,
    engine_params: dict[str, Any] | None = None,
    *,
    store_dense: bool = False,
    image_topk: int | None = None,
    threshold: float | None = None,
    quantize: str = "none",
) -> type[Engine]:
    """Check an index build's options before any work.

    The engine and its parameters, ``--dense``, the pruning and the quantisation.

    Returns:
        The engine class.

    Raises:
        MMSparseError: On an unknown engine, parameter or option, naming it.
    """
    cls = get_engine(engine)
    cls.check_params(engine_params, "build")
    if store_dense and "dense" not in cls.capabilities:
        optional = [
            e.name for e in all_engines() if "dense" in e.capabilities and not e.always_dense
        ]
        always = [e.name for e in all_engines() if e.always_dense]
        note = f" ({', '.join(always)} always holds dense vectors)" if always else ""
        raise MMSparseError(
            f"--dense applies to --engine {' or '.join(optional)}, not {engine}{note}"
        )
    if image_topk is not None and (isinstance(image_topk, bool) or image_topk < 1):
        raise MMSparseError(f"--image-topk must be >= 1, got {image_topk}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise MMSparseError(f"--threshold must be a finite number >= 0, got {threshold}")
    if quantize not in QUANTIZE_MODES:
        raise MMSparseError(
            f"unknown quantisation {quantize!r} (one of {', '.join(QUANTIZE_MODES)})"
        )
    return cls


def index_vectors(
    out: str | Path,
    engine: str,
    sparse: sp.csr_matrix,
    dense: np.ndarray,
    image_ids: list[str],
    filenames: list[str],
    *,
    manifest_fields: dict[str, Any],
    options: IndexOptions | None = None,
    engine_params: dict[str, Any] | None = None,
    store_dense: bool = False,
    progress: bool = False,
) -> IndexManifest:
    """Index already encoded (and pruned) image vectors with one engine.

    Quantisation (``options.quantize``) is applied by the engine's build
    (:meth:`mmsparse.index.engines.Engine.build`): the ``inverted`` engine stores the
    integer impacts, the other engines the dequantised weights, so every engine serves
    exactly the same vectors.

    Args:
        out: Index directory (created; an existing index there is replaced).
        engine: A registered engine (:func:`mmsparse.index.engines.engine_names`).
        sparse: ``(n, V)`` image sparse vectors, already pruned.
        dense: ``(n, dense_dim)`` image dense vectors.
        image_ids: Image id of every row.
        filenames: Image file name of every row.
        manifest_fields: ``run_dir``, ``checkpoint_sha256``, ``vocab_sha256``, ``split``,
            ``data_dir``, ``w1``, ``w2`` for the manifest.
        options: Pruning/quantisation options to record (``scale`` is filled in here).
        engine_params: Engine parameters (see ``mmsparse index engines``).
        store_dense: Also store the dense vectors where the engine may (``inverted``:
            ``dense.npy``), so the index serves dense and hybrid search (engines that
            always hold them, milvus, do regardless).
        progress: Show progress bars.

    Returns:
        The saved :class:`IndexManifest`.

    Raises:
        MMSparseError: On an unknown engine, parameter or option, or a non-index output
            directory.
    """
    options = options or IndexOptions()
    cls = check_build_request(
        engine,
        engine_params,
        store_dense=store_dense,
        image_topk=options.image_topk,
        threshold=options.threshold,
        quantize=options.quantize,
    )
    n = sparse.shape[0]
    if dense.shape[0] != n or len(image_ids) != n or len(filenames) != n:
        raise MMSparseError("sparse vectors, dense vectors and image ids differ in length")
    out = Path(out)
    _prepare_out(out)
    # Over an existing index: one writer at a time (mmsparse.index.generations.IndexLock)
    lock = IndexLock(out, "index build") if (out / MANIFEST_NAME).is_file() else nullcontext()
    with lock:
        return _write_index(
            out,
            cls,
            engine,
            sparse,
            dense,
            image_ids,
            filenames,
            manifest_fields,
            options,
            engine_params,
            store_dense,
            progress,
        )


def _write_index(
    out: Path,
    cls: type[Engine],
    engine: str,
    sparse: sp.csr_matrix,
    dense: np.ndarray,
    image_ids: list[str],
    filenames: list[str],
    manifest_fields: dict[str, Any],
    options: IndexOptions,
    engine_params: dict[str, Any] | None,
    store_dense: bool,
    progress: bool,
) -> IndexManifest:
    n = sparse.shape[0]
    t0 = time.perf_counter()
    for other in all_engines():  # a previous index here may be of another engine
        other.remove_files(out)
    impacts, scale = quantize(sparse, options.quantize)
    impacts.eliminate_zeros()
    nnz = int(impacts.nnz)
    del impacts
    params = cls.build(
        out,
        sparse,
        dense if (store_dense or cls.always_dense) else None,
        params=engine_params,
        quantize=options.quantize,
        image_ids=list(image_ids),
        progress=progress,
    )
    options = IndexOptions(
        image_topk=options.image_topk,
        threshold=options.threshold,
        quantize=options.quantize,
        scale=scale,
    )
    write_docs(out, list(image_ids), list(filenames))
    if is_live(out):
        # A build over a live index makes it an index as built again: generation 0 of the
        # files just written (a server switches to it when index.json changes below).
        remove_live_layout(out)
    build_seconds = time.perf_counter() - t0
    engine_bytes = sum(
        p.stat().st_size
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] not in NOT_ENGINE_FILES
    )
    manifest = IndexManifest(
        engine=engine,
        vocab_size=int(sparse.shape[1]),
        n_images=int(n),
        dense_dim=int(dense.shape[1]),
        options=options,
        engine_params=params,
        stats={
            "nnz": nnz,
            "mean_terms_per_image": float(nnz / max(n, 1)),
            "engine_bytes": int(engine_bytes),
            "bytes_per_image": float(engine_bytes / max(n, 1)),
            "build_seconds": float(f"{build_seconds:.4g}"),
        },
        **manifest_fields,
    )
    manifest.save(out)
    return manifest


def build_index(
    run_dir: str | Path,
    out: str | Path,
    *,
    split: str = "val",
    engine: str = DEFAULT_ENGINE,
    data: str | Path | None = None,
    image_topk: int | None = None,
    threshold: float | None = None,
    quantize: str = "none",
    bundle: str | Path | None = None,
    engine_params: dict[str, Any] | None = None,
    store_dense: bool = False,
    device: str = "cpu",
    progress: bool = True,
    calibrate: bool = True,
) -> IndexManifest:
    """Index the images of a split with a trained run's sparse (and dense) vectors.

    Args:
        run_dir: A run directory written by ``mmsparse train``.
        out: Index directory to write (an existing index there is replaced).
        split: Split whose images are indexed (``val``, ``test``, ``train``...).
        engine: A registered engine: ``inverted`` (exact, ours), ``seismic``, ``milvus``,
            ``bmp``, ``kannolo`` (``mmsparse index engines`` lists them).
        data: Another feature directory of the same backbone (default: the run's data).
        image_topk: Terms kept per image (default: the run's ``eval.image_topk``).
        threshold: Weights at or below it are dropped (default: the run's
            ``eval.threshold``).
        quantize: ``none``, ``uint8`` or ``uint16`` integer impacts.
        engine_params: Engine parameters (``mmsparse index engines`` lists them).
        store_dense: ``inverted``: also store the images' dense vectors, for dense and
            hybrid search (see :mod:`mmsparse.index.dense`).
        device: Device to encode on.
        progress: Show progress bars.
        bundle: The backbone bundle directory to use instead of the run's (a moved run).
        calibrate: Also write the confidence calibration (``confidence.json``, see
            :mod:`mmsparse.index.confidence`); a failure there is a warning, the index stays.

    Returns:
        The :class:`IndexManifest` written to ``out/index.json``.

    Raises:
        CheckpointError: If the run is missing or broken.
        DataError: If the data is unreadable or the split is empty.
        MMSparseError: On a bad option or engine failure.
    """
    from mmsparse.runs import hybrid_weights, load_run, load_run_data, resolve_device

    check_build_request(
        engine,
        engine_params,
        store_dense=store_dense,
        image_topk=image_topk,
        threshold=threshold,
        quantize=quantize,
    )
    dev = resolve_device(device)
    run = load_run(run_dir, device=dev)
    store = load_run_data(run, data, bundle)
    sp_ = store.split(split)
    cfg = run.config
    topk = cfg.serving.image_topk if image_topk is None else image_topk
    thr = cfg.eval.threshold if threshold is None else float(threshold)
    w1, w2 = hybrid_weights(cfg, run.model)
    dense, sparse = encode_vectors(
        run.model,
        store.image_feats[sp_.image_rows],
        "image",
        topk=topk,
        threshold=thr,
        batch_size=cfg.eval.batch_size,
        progress=progress,
    )
    if sparse.nnz == 0:
        raise IndexFormatError(
            f"{run_dir}: every image vector of split '{split}' is empty after pruning "
            f"(threshold {thr}); nothing to index"
        )
    manifest = index_vectors(
        out,
        engine,
        sparse,
        dense,
        [store.image_ids[i] for i in sp_.image_rows],
        [store.image_filenames[i] for i in sp_.image_rows],
        manifest_fields={
            "run_dir": str(Path(run_dir).resolve()),
            "checkpoint_sha256": run_fingerprint(run_dir),
            "vocab_sha256": vocab_sha256(run.vocab.tokens),
            "split": sp_.name,
            "data_dir": str(store.root) if store.root else "",
            "w1": w1,
            "w2": w2,
        },
        options=IndexOptions(image_topk=topk, threshold=thr, quantize=quantize),
        engine_params=engine_params,
        store_dense=store_dense,
        progress=progress,
    )
    if calibrate:
        from mmsparse.index.confidence import calibrate_index

        try:
            calibrate_index(out, data=data, bundle=bundle, progress=progress)
        except MMSparseError as exc:
            log.warning("%s: no confidence calibration (%s)", out, exc)
    return manifest

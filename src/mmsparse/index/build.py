"""Building an index of a trained run's images (the library behind ``mmsparse index build``)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index.encode import encode_vectors
from mmsparse.index.engines import build_inverted, build_milvus, build_seismic
from mmsparse.index.inverted import read_header
from mmsparse.index.manifest import (
    ENGINES,
    MANIFEST_NAME,
    NOT_ENGINE_FILES,
    IndexManifest,
    IndexOptions,
    file_sha256,
    is_feature_cache,
    vocab_sha256,
    write_docs,
)
from mmsparse.index.quantize import QUANTIZE_MODES, dequantize, quantize

log = logging.getLogger(__name__)


def run_fingerprint(run_dir: str | Path) -> str:
    """sha256 of the run's selected checkpoint weights (``best/model.safetensors``)."""
    from mmsparse.model.model import WEIGHTS_NAME
    from mmsparse.runs import checkpoint_dir

    return file_sha256(checkpoint_dir(run_dir) / WEIGHTS_NAME)


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

    Quantisation (``options.quantize``) is applied here: the ``inverted`` engine stores the
    integer impacts, the other engines the dequantised weights, so every engine serves
    exactly the same vectors.

    Args:
        out: Index directory (created; an existing index there is replaced).
        engine: ``inverted``, ``seismic`` or ``milvus``.
        sparse: ``(n, V)`` image sparse vectors, already pruned.
        dense: ``(n, dense_dim)`` image dense vectors.
        image_ids: Image id of every row.
        filenames: Image file name of every row.
        manifest_fields: ``run_dir``, ``checkpoint_sha256``, ``vocab_sha256``, ``split``,
            ``data_dir``, ``w1``, ``w2`` for the manifest.
        options: Pruning/quantisation options to record (``scale`` is filled in here).
        engine_params: Engine parameters (Seismic knobs; Milvus ``uri``, ``collection``...).
        store_dense: ``inverted``: also store the dense vectors (``dense.npy``), so the
            index serves dense and hybrid search (milvus always holds them).
        progress: Show progress bars.

    Returns:
        The saved :class:`IndexManifest`.

    Raises:
        MMSparseError: On an unknown engine or option, or a non-index output directory.
    """
    if engine not in ENGINES:
        raise MMSparseError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    options = options or IndexOptions()
    if options.quantize not in QUANTIZE_MODES:
        raise MMSparseError(
            f"unknown quantisation {options.quantize!r} (one of {', '.join(QUANTIZE_MODES)})"
        )
    if store_dense and engine not in ("inverted", "milvus"):
        raise MMSparseError(
            f"--dense applies to --engine inverted, not {engine} (milvus always holds dense "
            "vectors)"
        )
    n = sparse.shape[0]
    if dense.shape[0] != n or len(image_ids) != n or len(filenames) != n:
        raise MMSparseError("sparse vectors, dense vectors and image ids differ in length")
    out = Path(out)
    _prepare_out(out)
    t0 = time.perf_counter()
    for stale in (
        "postings.mmsi",
        "seismic.index.seismic",
        "dense.npy",
        "index.bmp",
        "bmp_meta.npz",
        "kannolo.hnsw",
        "kannolo_meta.npz",
    ):
        if (out / stale).exists():
            (out / stale).unlink()
    if engine == "inverted":
        params = build_inverted(out, sparse, options.quantize, dense if store_dense else None)
        header = read_header(out / "postings.mmsi")[0]
        scale, nnz = float(header["scale"]), int(header["nnz"])
    else:
        qsparse, scale = quantize(sparse, options.quantize)
        served = dequantize(qsparse, scale) if options.quantize != "none" else qsparse
        del qsparse
        nnz = int(served.nnz)
        if engine == "seismic":
            params = build_seismic(out, served, engine_params)
        elif engine == "bmp":  # stores 8-bit impacts of the served weights
            from mmsparse.index.bmp_engine import build_bmp

            params = build_bmp(out, served, engine_params)
        elif engine == "kannolo":
            from mmsparse.index.kannolo_engine import build_kannolo

            params = build_kannolo(out, served, engine_params)
        else:
            stale_db = out / "milvus.db"  # a previous milvus-lite database of this index
            if stale_db.is_dir():
                shutil.rmtree(stale_db)
            elif stale_db.exists():
                stale_db.unlink()
            params = build_milvus(out, served, dense, image_ids, engine_params, progress=progress)
        del served
    options = IndexOptions(
        image_topk=options.image_topk,
        threshold=options.threshold,
        quantize=options.quantize,
        scale=scale,
    )
    write_docs(out, list(image_ids), list(filenames))
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
    engine: str = "inverted",
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
        engine: ``inverted`` (exact, ours), ``seismic`` (approximate) or ``milvus``.
        data: Another feature directory of the same backbone (default: the run's data).
        image_topk: Terms kept per image (default: the run's ``eval.image_topk``).
        threshold: Weights at or below it are dropped (default: the run's
            ``eval.threshold``).
        quantize: ``none``, ``uint8`` or ``uint16`` integer impacts.
        engine_params: Engine parameters (see :mod:`mmsparse.index.engines`).
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

    if image_topk is not None and image_topk < 1:
        raise MMSparseError(f"--image-topk must be >= 1, got {image_topk}")
    if threshold is not None and threshold < 0:
        raise MMSparseError(f"--threshold must be >= 0, got {threshold}")
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

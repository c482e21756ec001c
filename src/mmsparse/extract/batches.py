"""Encoding image files in batches into shard files, resumably.

Shared by :func:`~mmsparse.extract.extract_features` (a captioned dataset) and
:func:`~mmsparse.extract.encode_folder` (a folder of photos): both open images with
:func:`~mmsparse.extract.images.open_rgb` (EXIF orientation, any mode to RGB), preprocess
and encode them with the same backend methods, so the features are the same.

Each batch of image files becomes one safetensors shard, written atomically: ``emb``
``(n_ok, d_img)`` float32 and metadata ``names`` (the batch's files), ``ok`` (positions
in the batch that were encoded), ``failed`` (``[name, reason]`` of unreadable files) and
``modes`` (original modes converted to RGB). A batch whose shard exists is skipped, so a
killed run continues where it stopped. The next batch is opened and preprocessed in a
thread while the current one goes through the backbone.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import DataError
from mmsparse.extract._common import log
from mmsparse.extract.backends import Backend
from mmsparse.extract.images import LoadedImage, open_rgb
from mmsparse.io_utils import load_tensors, save_tensors

#: ``callback(done, total)``: images handled so far (resumed ones included) and in all.
BatchCallback = Callable[[int, int], None]


@dataclass
class ImageShard:
    """One encoded batch, read back from its shard file.

    Attributes:
        names: The batch's image files (relative to the image folder); ``None`` in shards
            written before names were recorded.
        emb: ``(len(ok), d_img)`` float32 features of the readable images.
        ok: Positions in the batch of the rows of ``emb``.
        failed: ``(name, reason)`` of the unreadable files.
        modes: Original mode to count, for images converted to RGB.
    """

    names: list[str] | None
    emb: np.ndarray
    ok: list[int]
    failed: list[tuple[str, str]]
    modes: dict[str, int]


@dataclass
class ImageStageStats:
    """What :func:`encode_image_batches` did, and where its time went.

    Attributes:
        encoded_batches: Batches encoded now.
        resumed_batches: Batches whose shard already existed (skipped).
        seconds: ``decode`` (open, EXIF orientation, RGB, preprocessing; summed in the
            loader thread, which overlaps ``backbone``), ``backbone`` (the image model's
            forward passes, including its loading if not loaded before), ``wall`` (the
            whole stage, shard writes included).
    """

    encoded_batches: int = 0
    resumed_batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def read_image_shard(path: str | Path) -> ImageShard:
    """Read a shard written by :func:`encode_image_batches`.

    Raises:
        CheckpointError: If the file is missing or truncated.
        DataError: If its metadata is not that of an image shard.
    """
    tensors, meta = load_tensors(path)
    try:
        shard = ImageShard(
            names=json.loads(meta["names"]) if "names" in meta else None,
            emb=tensors["emb"].numpy(),
            ok=[int(i) for i in json.loads(meta["ok"])],
            failed=[(str(f), str(why)) for f, why in json.loads(meta["failed"])],
            modes={str(k): int(v) for k, v in json.loads(meta["modes"]).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not an image shard of mmsparse ({exc})") from exc
    if shard.emb.shape[0] != len(shard.ok):
        raise DataError(f"{path}: {shard.emb.shape[0]} feature rows for {len(shard.ok)} images")
    return shard


def encode_image_batches(
    engine: Backend,
    root: str | Path,
    batches: Sequence[Sequence[str]],
    shards: Sequence[Path],
    *,
    progress: bool = True,
    desc: str = "images",
    callback: BatchCallback | None = None,
) -> ImageStageStats:
    """Encode every batch of image files whose shard does not exist yet.

    Args:
        engine: The extraction backend (``preprocess``, ``encode_pixels``).
        root: The image folder; ``batches`` hold paths relative to it.
        batches: The image files of each batch.
        shards: The shard file of each batch (written atomically).
        progress: Show a progress bar (images) on stderr.
        desc: The progress bar's label.
        callback: Called as ``callback(done, total)`` (images) after each written shard.

    Returns:
        The :class:`ImageStageStats`.
    """
    t_start = time.perf_counter()
    root = Path(root)
    total = sum(len(b) for b in batches)
    todo = [k for k in range(len(batches)) if not Path(shards[k]).is_file()]
    stats = ImageStageStats(resumed_batches=len(batches) - len(todo))
    done = total - sum(len(batches[k]) for k in todo)
    decode = [0.0]
    backbone = 0.0

    def load(k: int) -> list[tuple[LoadedImage, np.ndarray | None]]:
        t0 = time.perf_counter()
        out = []
        for name in batches[k]:
            loaded = open_rgb(root / name)
            pixels = None
            if loaded.image is not None:
                try:
                    pixels = engine.preprocess(loaded.image)
                except Exception as exc:  # reported like an unreadable file
                    loaded.error = f"preprocessing failed ({type(exc).__name__}: {exc})"
            loaded.image = None  # the full-size decoded image is not needed any more
            out.append((loaded, pixels))
        decode[0] += time.perf_counter() - t0
        return out

    bar = progress_bar(total, desc, progress, initial=done)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            for k, loaded in zip(todo, _prefetch(pool, load, todo)):
                backbone += _write_shard(engine, shards[k], batches[k], loaded)
                stats.encoded_batches += 1
                done += len(batches[k])
                bar.update(len(batches[k]))
                if callback is not None:
                    callback(done, total)
    finally:
        bar.close()
    stats.seconds = {
        "decode": round(decode[0], 3),
        "backbone": round(backbone, 3),
        "wall": round(time.perf_counter() - t_start, 3),
    }
    return stats


def progress_bar(total: int, desc: str, progress: bool, initial: int = 0, unit: str = "img") -> Any:
    """A tqdm bar on stderr (disabled when ``progress`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=not progress
    )


def _prefetch(
    pool: ThreadPoolExecutor, load: Callable[[int], Any], todo: list[int]
) -> Iterator[Any]:
    """Open and preprocess the next batch in a thread while the current one is encoded."""
    pending = pool.submit(load, todo[0]) if todo else None
    for i in range(len(todo)):
        current = pending
        pending = pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
        yield current.result()  # type: ignore[union-attr]


def _write_shard(
    engine: Backend,
    path: Path,
    names: Sequence[str],
    loaded: list[tuple[LoadedImage, np.ndarray | None]],
) -> float:
    """Encode one batch and write its shard; returns the seconds of the forward pass."""
    ok = [i for i, (_, px) in enumerate(loaded) if px is not None]
    failed = [
        [names[i], li.error or "unreadable"] for i, (li, px) in enumerate(loaded) if px is None
    ]
    modes = Counter(li.mode for li, px in loaded if px is not None and li.mode != "RGB")
    t0 = time.perf_counter()
    if ok:
        emb = engine.encode_pixels(np.stack([loaded[i][1] for i in ok]))  # (n_ok, d_img)
    else:
        emb = np.zeros((0, engine.d_img), dtype=np.float32)
    seconds = time.perf_counter() - t0
    for name, why in failed:
        log.warning("skipping unreadable image %s (%s)", name, why)
    save_tensors(
        path,
        {"emb": np.ascontiguousarray(emb, dtype=np.float32)},
        {
            "names": json.dumps(list(names), allow_nan=False),
            "ok": json.dumps(ok, allow_nan=False),
            "failed": json.dumps(failed, allow_nan=False),
            "modes": json.dumps(dict(modes), allow_nan=False),
        },
    )
    return seconds

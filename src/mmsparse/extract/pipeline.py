"""``extract_features``: a folder of images and a caption file to the paper's release format.

Output directory::

    img_embs_before_proj_<image_tag>.parquet    columns id (imgid), emb (d_img float32)
    text_embs_before_proj_<text_tag>.parquet    columns id (sentid), emb (d_txt float32)
    dataset_meta.json                           Karpathy format (extracted images only)
    bundle/                                     the backbone bundle
    extract_report.json                         counts, skipped files, timings

Resumable: while it runs, finished batches are written as shard files under
``<out>/.extract-work/`` (each written atomically), together with a ``plan.json`` that
fingerprints the inputs, the backend and the batch sizes. Run the same command again
after a kill and it skips the finished shards; the final files are written atomically
only when every shard exists, then the work directory is removed. A changed plan (other
inputs, backend or batch sizes) discards the stale shards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.data.formats import write_feature_parquet
from mmsparse.errors import ConfigError, DataError
from mmsparse.extract._common import log
from mmsparse.extract.backends import Backend, get_backend
from mmsparse.extract.batches import encode_image_batches, progress_bar, read_image_shard
from mmsparse.extract.inputs import CaptionSet, ImageEntry, check_images, read_captions
from mmsparse.io_utils import atomic_write_json, load_tensors, read_json, save_tensors

WORK_DIR = ".extract-work"
PLAN_VERSION = 1


@dataclass
class ExtractReport:
    """What :func:`extract_features` did.

    Attributes:
        out_dir: The output directory.
        backend: Backend name.
        image_file: The image feature parquet file.
        text_file: The caption feature parquet file.
        bundle: The bundle directory.
        n_images: Images extracted.
        n_captions: Captions extracted.
        skipped_images: ``[(filename, reason)]`` of unreadable images (not extracted).
        skipped_captions: Captions dropped with their unreadable image.
        converted: Original mode to count, for images converted to RGB.
        unlisted_images: Captioned images left out because no split list names them.
        splits: Split name to number of images.
        resumed_batches: Batches (image and text) found done from an earlier run.
        seconds: Wall time of each stage (``images``, ``texts``, ``bundle``, ``total``).
        device: The torch device used.
    """

    out_dir: str
    backend: str
    image_file: str
    text_file: str
    bundle: str
    n_images: int
    n_captions: int
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    skipped_captions: int = 0
    converted: dict[str, int] = field(default_factory=dict)
    unlisted_images: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    resumed_batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        d = asdict(self)
        d["skipped_images"] = [list(x) for x in self.skipped_images]
        return d


def extract_features(
    backend: str,
    images: str | Path,
    captions: str | Path,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    batch_size_images: int = 64,
    batch_size_text: int = 256,
    split_files: Mapping[str, str | Path] | None = None,
    splits: Sequence[str] | None = None,
    model: str | Path | None = None,
    max_length: int | None = None,
    dataset: str | None = None,
    progress: bool = True,
) -> ExtractReport:
    """Encode a folder of images and their captions into the paper's release format.

    Args:
        backend: ``effnet-minilm``, ``blip`` or ``clip``.
        images: Folder of image files (names as in the caption file).
        captions: Karpathy JSON, Flickr8k ``token.txt`` or TSV (see
            :mod:`mmsparse.extract.inputs`).
        out_dir: Output directory (see the module docstring); resumes a killed run there.
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size_images: Images per forward pass.
        batch_size_text: Captions per forward pass.
        split_files: Split name to a file listing its image file names (token/TSV inputs;
            overrides the Karpathy splits). Only listed images are extracted.
        splits: Extract only images of these splits.
        model: Local weights directory (``blip``, ``clip``).
        max_length: Caption length in tokens (backend default if ``None``).
        dataset: Dataset name for ``dataset_meta.json`` (default from the caption file).
        progress: Show progress bars on stderr.

    Returns:
        The :class:`ExtractReport` (also written to ``extract_report.json``).

    Raises:
        DataError: If captions and images do not match (one error listing the captions
            whose image is missing and the images without captions), on malformed
            caption files, or when no image at all could be read.
        ConfigError: On bad options.
    """
    t_start = time.perf_counter()
    for name, value in (
        ("batch_size_images", batch_size_images),
        ("batch_size_text", batch_size_text),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    image_dir = Path(images)
    out = Path(out_dir)
    capset = read_captions(captions, split_files=split_files, splits=splits)
    check_images(capset, image_dir, strict_folder=not split_files and not splits)
    engine = get_backend(backend)(device=device, model=model, max_length=max_length)
    extraction = engine.extraction()
    work = _prepare_work_dir(out, capset, image_dir, extraction, batch_size_images, batch_size_text)
    seconds: dict[str, float] = {}
    resumed = 0

    # -- images --------------------------------------------------------------------------
    entries = capset.images
    img_batches = [
        entries[i : i + batch_size_images] for i in range(0, len(entries), batch_size_images)
    ]
    stage = encode_image_batches(
        engine,
        image_dir,
        [[e.filename for e in batch] for batch in img_batches],
        [_shard(work, "img", k) for k in range(len(img_batches))],
        progress=progress,
    )
    resumed += stage.resumed_batches
    seconds["images"] = stage.seconds["wall"]

    # -- captions ------------------------------------------------------------------------
    t0 = time.perf_counter()
    texts = [s["raw"] for e in entries for s in e.sentences]
    txt_batches = [texts[i : i + batch_size_text] for i in range(0, len(texts), batch_size_text)]
    todo_txt = [k for k in range(len(txt_batches)) if not _shard(work, "txt", k).is_file()]
    resumed += len(txt_batches) - len(todo_txt)
    left = sum(len(txt_batches[k]) for k in todo_txt)
    bar = progress_bar(len(texts), "captions", progress, initial=len(texts) - left, unit="it")
    for k in todo_txt:
        emb = engine.encode_texts(txt_batches[k])  # (batch, d_txt)
        save_tensors(_shard(work, "txt", k), {"emb": emb})
        bar.update(len(txt_batches[k]))
    bar.close()
    seconds["texts"] = round(time.perf_counter() - t0, 3)

    # -- assemble ------------------------------------------------------------------------
    t0 = time.perf_counter()
    bundle = engine.make_bundle()
    bundle.save(out / "bundle")
    seconds["bundle"] = round(time.perf_counter() - t0, 3)
    report = _assemble(
        out, work, engine, capset, img_batches, len(txt_batches), dataset or capset.dataset
    )
    report.resumed_batches = resumed
    report.device = str(engine.device)
    seconds["total"] = round(time.perf_counter() - t_start, 3)
    report.seconds = seconds
    atomic_write_json(out / "extract_report.json", report.to_dict())
    shutil.rmtree(work, ignore_errors=True)
    if report.skipped_images:
        log.warning(
            "%d unreadable image(s) skipped (with their %d captions): %s",
            len(report.skipped_images),
            report.skipped_captions,
            ", ".join(f for f, _ in report.skipped_images[:20]),
        )
    return report


def _shard(work: Path, kind: str, k: int) -> Path:
    return work / f"{kind}-{k:06d}.safetensors"


def _plan(
    capset: CaptionSet,
    image_dir: Path,
    extraction: dict[str, Any],
    batch_size_images: int,
    batch_size_text: int,
) -> dict[str, Any]:
    """Fingerprint of everything that determines the shards."""
    h = hashlib.sha256()
    for e in capset.images:
        try:
            st = (image_dir / e.filename).stat()
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = None
        record = [str(e.imgid), e.filename, e.split, stamp]
        record += [[str(s["sentid"]), s["raw"]] for s in e.sentences]
        h.update(json.dumps(record, allow_nan=False).encode("utf-8"))
    return {
        "version": PLAN_VERSION,
        "inputs_sha256": h.hexdigest(),
        "n_images": len(capset.images),
        "n_captions": capset.n_captions,
        "image_dir": str(image_dir.resolve()),
        "extraction": extraction,
        "batch_size_images": batch_size_images,
        "batch_size_text": batch_size_text,
    }


def _prepare_work_dir(
    out: Path,
    capset: CaptionSet,
    image_dir: Path,
    extraction: dict[str, Any],
    batch_size_images: int,
    batch_size_text: int,
) -> Path:
    work = out / WORK_DIR
    plan = _plan(capset, image_dir, extraction, batch_size_images, batch_size_text)
    plan_path = work / "plan.json"
    if plan_path.is_file():
        try:
            old = read_json(plan_path, "extraction plan")
        except Exception:  # an unreadable plan is just stale
            old = None
        if old == json.loads(json.dumps(plan, allow_nan=False)):
            n = len(list(work.glob("*.safetensors")))
            log.info("resuming the extraction in %s (%d finished batches)", out, n)
            return work
        log.warning("%s holds shards of a different extraction; discarding them", work)
        shutil.rmtree(work)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, plan)
    return work


def _assemble(
    out: Path,
    work: Path,
    engine: Backend,
    capset: CaptionSet,
    img_batches: list[list[ImageEntry]],
    n_txt_batches: int,
    dataset: str,
) -> ExtractReport:
    """Join the shards into the release files (each written atomically)."""
    kept: list[ImageEntry] = []
    img_parts: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    modes: Counter[str] = Counter()
    for k, batch in enumerate(img_batches):
        shard = read_image_shard(_shard(work, "img", k))
        kept += [batch[i] for i in shard.ok]
        img_parts.append(shard.emb)
        skipped += shard.failed
        modes.update(shard.modes)
    if not kept:
        raise DataError(
            f"none of the {len(capset.images)} images could be read (first: "
            f"{skipped[0][0]}: {skipped[0][1]})"
        )
    txt = np.concatenate(
        [load_tensors(_shard(work, "txt", k))[0]["emb"].numpy() for k in range(n_txt_batches)]
    )
    offsets: dict[str, int] = {}
    row = 0
    for e in capset.images:
        offsets[str(e.imgid)] = row
        row += len(e.sentences)
    if txt.shape[0] != row:
        raise DataError(f"{work}: caption shards hold {txt.shape[0]} rows, expected {row}")
    cap_rows = [offsets[str(e.imgid)] + j for e in kept for j in range(len(e.sentences))]
    img_emb = np.concatenate(img_parts)
    image_file = out / f"img_embs_before_proj_{engine.image_tag}.parquet"
    text_file = out / f"text_embs_before_proj_{engine.text_tag}.parquet"
    write_feature_parquet(image_file, [str(e.imgid) for e in kept], img_emb)
    write_feature_parquet(
        text_file, [str(s["sentid"]) for e in kept for s in e.sentences], txt[cap_rows]
    )
    meta_images = [
        {
            "imgid": e.imgid,
            "filename": e.filename,
            "split": e.split,
            "sentids": [s["sentid"] for s in e.sentences],
            "sentences": [
                {"sentid": s["sentid"], "imgid": e.imgid, "raw": s["raw"], "tokens": s["tokens"]}
                for s in e.sentences
            ],
        }
        for e in kept
    ]
    atomic_write_json(out / "dataset_meta.json", {"dataset": dataset, "images": meta_images})
    skipped_names = {f for f, _ in skipped}
    return ExtractReport(
        out_dir=str(out),
        backend=engine.name,
        image_file=str(image_file),
        text_file=str(text_file),
        bundle=str(out / "bundle"),
        n_images=len(kept),
        n_captions=len(cap_rows),
        skipped_images=skipped,
        skipped_captions=sum(
            len(e.sentences) for e in capset.images if e.filename in skipped_names
        ),
        converted=dict(sorted(modes.items())),
        unlisted_images=capset.unlisted,
        splits=dict(Counter(e.split for e in kept)),
    )

"""The feature store: every image and caption feature, mapped to ids and splits.

A :class:`FeatureStore` holds two feature matrices (images, captions) in the order of the
Karpathy metadata, the caption-to-image map, the split of every image, and the caption
texts. :meth:`FeatureStore.split` gives the row indices of one or more splits, which is
all the trainer and the evaluator need: features stay in one array (on the device when
training) and batches are gathered by index.

Example:
    >>> store = load_feature_store("data/flickr8k")            # doctest: +SKIP
    >>> val = store.split("val")                                # doctest: +SKIP
    >>> store.image_feats[val.image_rows].shape                 # doctest: +SKIP
    (1000, 1280)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.config import DataConfig
from mmsparse.data.bundle import BackboneBundle
from mmsparse.data.formats import FEATURE_SUFFIXES, FeatureFile, read_feature_file
from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import DataError

IMAGE_PREFIX = "img_embs_before_proj_"
TEXT_PREFIX = "text_embs_before_proj_"


@dataclass(frozen=True)
class Split:
    """Row indices of one split (or a union of splits).

    Attributes:
        name: Split name(s), joined by ``+``.
        image_rows: ``(n_img,)`` rows into :attr:`FeatureStore.image_feats`.
        caption_rows: ``(n_cap,)`` rows into :attr:`FeatureStore.caption_feats`.
        caption_to_image: ``(n_cap,)`` position of each caption's image in ``image_rows``.
    """

    name: str
    image_rows: np.ndarray
    caption_rows: np.ndarray
    caption_to_image: np.ndarray

    @property
    def n_images(self) -> int:
        """Number of images in the split."""
        return int(self.image_rows.size)

    @property
    def n_captions(self) -> int:
        """Number of captions in the split."""
        return int(self.caption_rows.size)


@dataclass
class FeatureStore:
    """Image and caption features with ids, splits and caption texts.

    Attributes:
        image_ids: Image ids (Karpathy ``imgid`` as strings), one per row.
        image_feats: ``(n_images, d_img)`` float32 features.
        image_split: Split name of every image.
        image_filenames: File name of every image (may be empty strings).
        caption_ids: Caption ids (Karpathy ``sentid`` as strings), one per row.
        caption_feats: ``(n_captions, d_txt)`` float32 features.
        caption_image: ``(n_captions,)`` image row of every caption.
        caption_texts: Raw caption texts.
        caption_tokens: Karpathy ``tokens`` of every caption (may be empty lists).
        bundle: The backbone bundle, or ``None`` (random fallback).
        root: Directory the store was read from, if any.
        name: Dataset name.
    """

    image_ids: list[str]
    image_feats: np.ndarray
    image_split: np.ndarray
    image_filenames: list[str]
    caption_ids: list[str]
    caption_feats: np.ndarray
    caption_image: np.ndarray
    caption_texts: list[str]
    caption_tokens: list[list[str]]
    bundle: BackboneBundle | None = None
    root: Path | None = None
    name: str = "dataset"
    _image_index: dict[str, int] = field(default_factory=dict, repr=False)
    _caption_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._image_index = {k: i for i, k in enumerate(self.image_ids)}
        self._caption_index = {k: i for i, k in enumerate(self.caption_ids)}

    @property
    def d_img(self) -> int:
        """Image feature size."""
        return int(self.image_feats.shape[1])

    @property
    def d_txt(self) -> int:
        """Caption feature size."""
        return int(self.caption_feats.shape[1])

    @property
    def splits(self) -> list[str]:
        """Split names present, in first-seen order."""
        return list(dict.fromkeys(self.image_split.tolist()))

    def image_row(self, image_id: str) -> int:
        """Row of an image id.

        Raises:
            DataError: If the id is unknown.
        """
        try:
            return self._image_index[str(image_id)]
        except KeyError as exc:
            raise DataError(f"{self.name}: unknown image id {image_id}") from exc

    def caption_row(self, caption_id: str) -> int:
        """Row of a caption id.

        Raises:
            DataError: If the id is unknown.
        """
        try:
            return self._caption_index[str(caption_id)]
        except KeyError as exc:
            raise DataError(f"{self.name}: unknown caption id {caption_id}") from exc

    def split(self, names: str | Sequence[str], allow_missing: bool = False) -> Split:
        """Rows of the images and captions of one or more splits.

        Args:
            names: A split name or several (their union, e.g. ``("train", "restval")``).
            allow_missing: Accept names absent from the data as long as the union is
                not empty (``restval`` exists in MSCOCO only).

        Returns:
            The :class:`Split`.

        Raises:
            DataError: If the (union of) split(s) holds no image or no caption.
        """
        names = [names] if isinstance(names, str) else list(names)
        present = set(self.splits)
        missing = [n for n in names if n not in present]
        if missing and not allow_missing:
            raise DataError(
                f"{self._where()}: empty split '{missing[0]}' (no image has this split; "
                f"splits present: {', '.join(sorted(present))})"
            )
        mask = np.isin(self.image_split, names)
        image_rows = np.flatnonzero(mask).astype(np.int64)
        label = "+".join(names)
        if image_rows.size == 0:
            raise DataError(
                f"{self._where()}: empty split '{label}' "
                f"(splits present: {', '.join(sorted(present))})"
            )
        local = np.full(self.image_feats.shape[0], -1, dtype=np.int64)
        local[image_rows] = np.arange(image_rows.size)
        caption_rows = np.flatnonzero(mask[self.caption_image]).astype(np.int64)
        if caption_rows.size == 0:
            raise DataError(f"{self._where()}: split '{label}' has images but no captions")
        return Split(
            name=label,
            image_rows=image_rows,
            caption_rows=caption_rows,
            caption_to_image=local[self.caption_image[caption_rows]],
        )

    def vocabulary(self, vocab_size: int | None = None) -> Vocabulary:
        """The bundle's vocabulary, or the index-named fallback of ``vocab_size`` terms."""
        if self.bundle is not None:
            return self.bundle.vocab
        return Vocabulary.fallback(vocab_size or 30522)

    def caption_token_ids(self, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
        """Unique vocabulary ids of every caption's own tokens, as CSR arrays.

        Uses the Karpathy ``tokens`` when present, else the raw text.
        """
        texts: list[Any] = [
            toks if toks else raw for toks, raw in zip(self.caption_tokens, self.caption_texts)
        ]
        return vocab.token_matrix(texts)

    def _where(self) -> str:
        return str(self.root) if self.root is not None else self.name


def find_feature_file(root: Path, prefix: str, backbone: str, explicit: str | None) -> Path:
    """Locate one modality's feature file in a dataset directory.

    Raises:
        DataError: If no file, or several candidates, are found.
    """
    if explicit:
        path = Path(explicit)
        return path if path.is_absolute() else root / path
    if backbone:
        for suffix in FEATURE_SUFFIXES:
            cand = root / f"{prefix}{backbone}{suffix}"
            if cand.is_file():
                return cand
        raise DataError(f"{root}: no feature file {prefix}{backbone}.{{parquet,safetensors,npy}}")
    found = sorted(p for p in root.glob(f"{prefix}*") if p.suffix.lower() in FEATURE_SUFFIXES)
    if not found:
        raise DataError(f"{root}: no feature file {prefix}<backbone>.parquet")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{root}: several feature files ({names}); set data.backbone")
    return found[0]


def read_karpathy_meta(path: Path) -> dict[str, Any]:
    """Read and check a Karpathy-format ``dataset_meta.json``.

    Raises:
        DataError: On an unreadable file, a missing field, or a duplicate id.
    """
    import json

    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: metadata file not found") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable metadata file ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
        raise DataError(f"{path}: expected a Karpathy-format object with an 'images' list")
    if not meta["images"]:
        raise DataError(f"{path}: the 'images' list is empty")
    return meta


def _assemble(
    meta_path: Path,
    meta: dict[str, Any],
    img: FeatureFile,
    txt: FeatureFile,
) -> dict[str, Any]:
    image_ids: list[str] = []
    image_split: list[str] = []
    filenames: list[str] = []
    caption_ids: list[str] = []
    caption_image: list[int] = []
    texts: list[str] = []
    tokens: list[list[str]] = []
    seen_img: dict[str, int] = {}
    seen_cap: dict[str, int] = {}
    for row, entry in enumerate(meta["images"]):
        if not isinstance(entry, dict):
            raise DataError(f"{meta_path}: image entry {row} is not an object: {entry!r:.60}")
        try:
            img_id = _meta_id(entry["imgid"], meta_path, f"image entry {row}", "imgid")
            split = entry["split"]
            sentences = entry["sentences"]
        except KeyError as exc:
            raise DataError(f"{meta_path}: image entry {row} lacks field {exc}") from exc
        if not isinstance(split, str):
            raise DataError(
                f"{meta_path}: image {img_id}: 'split' must be a string, got {split!r:.60}"
            )
        if not isinstance(sentences, list):
            raise DataError(
                f"{meta_path}: image {img_id}: 'sentences' must be a list, got {sentences!r:.60}"
            )
        if img_id in seen_img:
            raise DataError(
                f"{meta_path}: duplicate image id {img_id} (entries {seen_img[img_id]} and {row})"
            )
        seen_img[img_id] = row
        image_ids.append(img_id)
        image_split.append(split)
        filenames.append(_meta_text(entry.get("filename", ""), meta_path, img_id, "filename"))
        for sent in sentences:
            if not isinstance(sent, dict) or "sentid" not in sent:
                raise DataError(f"{meta_path}: a sentence of image {img_id} lacks field 'sentid'")
            sid = _meta_id(sent["sentid"], meta_path, f"a sentence of image {img_id}", "sentid")
            if sid in seen_cap:
                raise DataError(
                    f"{meta_path}: duplicate caption id {sid} (images "
                    f"{image_ids[caption_image[seen_cap[sid]]]} and {img_id})"
                )
            seen_cap[sid] = len(caption_ids)
            caption_ids.append(sid)
            caption_image.append(row)
            texts.append(_meta_text(sent.get("raw", ""), meta_path, img_id, "raw"))
            toks = sent.get("tokens", [])
            if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
                raise DataError(
                    f"{meta_path}: caption {sid} of image {img_id}: 'tokens' must be a list of "
                    f"strings, got {toks!r:.60}"
                )
            tokens.append(toks)
    img_emb = _align(img, image_ids, "image", meta_path)
    txt_emb = _align(txt, caption_ids, "caption", meta_path)
    return {
        "image_ids": image_ids,
        "image_feats": img_emb,
        "image_split": np.asarray(image_split),
        "image_filenames": filenames,
        "caption_ids": caption_ids,
        "caption_feats": txt_emb,
        "caption_image": np.asarray(caption_image, dtype=np.int64),
        "caption_texts": texts,
        "caption_tokens": tokens,
    }


def _meta_id(value: Any, meta_path: Path, where: str, field: str) -> str:
    """An ``imgid`` / ``sentid`` as a string: a JSON string or integer, nothing else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(
            f"{meta_path}: {where}: '{field}' must be a string or an integer, got {value!r:.60}"
        )
    return str(value)


def _meta_text(value: Any, meta_path: Path, img_id: str, field: str) -> str:
    """An optional text field (``filename``, ``raw``): a string, or null for empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{meta_path}: image {img_id}: '{field}' must be a string, got {value!r:.60}"
        )
    return value


def _align(ff: FeatureFile, ids: list[str], what: str, meta_path: Path) -> np.ndarray:
    """Reorder feature rows to the metadata order, checking both id sets."""
    if ff.ids is None:
        if ff.emb.shape[0] != len(ids):
            raise DataError(
                f"{ff.path}: {ff.emb.shape[0]} rows without ids, but {meta_path} lists "
                f"{len(ids)} {what}s"
            )
        return ff.emb
    index = {k: i for i, k in enumerate(ff.ids)}
    missing = [k for k in ids if k not in index]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            f"{ff.path}: {what} id {missing[0]}{more} is in {meta_path.name} but has no feature"
        )
    if len(index) != len(ids):
        known = set(ids)
        extra = [k for k in ff.ids if k not in known]
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        row = index[extra[0]]
        raise DataError(
            f"{ff.path}: {what} id {extra[0]}{more} (row {row}) has a feature but is not in "
            f"{meta_path.name}"
        )
    order = np.fromiter((index[k] for k in ids), dtype=np.int64, count=len(ids))
    if np.array_equal(order, np.arange(len(ids))):
        return ff.emb
    return ff.emb[order]


def load_feature_store(
    config: DataConfig | str | Path,
    *,
    d_img: int | None = None,
    d_txt: int | None = None,
    load_bundle: bool = True,
) -> FeatureStore:
    """Load a dataset directory in the paper's release format (or .npy/.safetensors).

    Args:
        config: A :class:`DataConfig` or just the dataset directory.
        d_img: Expected image feature size, checked if given.
        d_txt: Expected caption feature size, checked if given.
        load_bundle: Also load ``config.bundle`` when set.

    Returns:
        The validated :class:`FeatureStore`.

    Raises:
        DataError: On any inconsistency; the message names the file and the id or row.
    """
    if not isinstance(config, DataConfig):
        config = DataConfig(path=str(config))
    if not config.path:
        raise DataError("data.path is not set: point it at a directory of feature files")
    from mmsparse.paths import expand_path

    root = Path(expand_path(config.path, "data.path"))
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    img_path = find_feature_file(root, IMAGE_PREFIX, config.backbone, config.image_file)
    txt_path = find_feature_file(root, TEXT_PREFIX, config.backbone, config.text_file)
    meta_path = root / config.meta_file
    meta = read_karpathy_meta(meta_path)
    img = read_feature_file(img_path, d_img)
    txt = read_feature_file(txt_path, d_txt)
    parts = _assemble(meta_path, meta, img, txt)
    bundle = None
    if load_bundle and config.bundle:
        bundle_path = Path(expand_path(config.bundle, "data.bundle"))
        bundle = BackboneBundle.load(bundle_path)
        bundle.check_dims(parts["image_feats"].shape[1], parts["caption_feats"].shape[1])
    return FeatureStore(**parts, bundle=bundle, root=root, name=str(meta.get("dataset", root.name)))


def write_release(
    store: FeatureStore,
    directory: str | Path,
    backbone: str,
    *,
    dataset: str | None = None,
) -> Path:
    """Write a store in the paper's release format (two parquet files + metadata).

    Args:
        store: The features to write.
        directory: Destination directory (created).
        backbone: Suffix of the file names (``img_embs_before_proj_<backbone>.parquet``).
        dataset: Dataset name written into the metadata.

    Returns:
        The directory.
    """
    from mmsparse.data.formats import write_feature_parquet
    from mmsparse.io_utils import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_feature_parquet(
        directory / f"{IMAGE_PREFIX}{backbone}.parquet", store.image_ids, store.image_feats
    )
    write_feature_parquet(
        directory / f"{TEXT_PREFIX}{backbone}.parquet", store.caption_ids, store.caption_feats
    )
    atomic_write_text(directory / "dataset_meta.json", karpathy_json(store, dataset))
    return directory


def karpathy_json(store: FeatureStore, dataset: str | None = None) -> str:
    """The store's metadata as Karpathy-format JSON text."""
    import json

    by_image: list[list[int]] = [[] for _ in store.image_ids]
    for row, img in enumerate(store.caption_image.tolist()):
        by_image[img].append(row)
    images = []
    for i, img_id in enumerate(store.image_ids):
        sents = [
            {
                "sentid": _maybe_int(store.caption_ids[r]),
                "imgid": _maybe_int(img_id),
                "raw": store.caption_texts[r],
                "tokens": store.caption_tokens[r],
            }
            for r in by_image[i]
        ]
        images.append(
            {
                "imgid": _maybe_int(img_id),
                "filename": store.image_filenames[i],
                "split": str(store.image_split[i]),
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
            }
        )
    return json.dumps({"dataset": dataset or store.name, "images": images}, allow_nan=False)


def _maybe_int(value: str) -> int | str:
    return int(value) if value.isdigit() else value

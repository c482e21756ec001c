"""Reading extraction inputs: caption files, split lists and the image folder.

Caption files (the format is detected from the content):

* Karpathy JSON (``dataset_meta.json`` style): ``{"images": [{"imgid", "filename",
  "split", "sentences": [{"sentid", "raw", "tokens"}]}]}``; ids and splits are kept.
* Flickr8k ``token.txt``: one ``<filename>#<n><TAB><caption>`` per line.
* A two-column TSV: ``<filename><TAB><caption>`` per line (an optional header line
  ``filename<TAB>caption``).

For ``token.txt`` and TSV inputs, image ids are assigned ``0, 1, ...`` in order of first
appearance, caption ids ``0, 1, ...`` image by image in file order, and ``tokens`` are the
lower-cased alphanumeric words of the caption. Splits come from split list files (one
file name per line, e.g. Flickr8k's ``Flickr_8k.trainImages.txt``), given as
``{"train": path, "val": path}``; then only the listed images are used. Without split
lists every image is in ``train``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsparse.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_TOKEN_LINE = re.compile(r"^(?P<file>[^\t#]+)#(?P<n>\d+)\t(?P<caption>.*)$")
_WORD = re.compile(r"[a-z0-9]+")
MAX_LISTED = 20


@dataclass
class ImageEntry:
    """One image and its captions, as they go into ``dataset_meta.json``.

    Attributes:
        imgid: Image id (Karpathy ``imgid``).
        filename: Path of the image relative to the image folder.
        split: Split name.
        sentences: ``[{"sentid", "raw", "tokens"}]``.
    """

    imgid: int | str
    filename: str
    split: str
    sentences: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CaptionSet:
    """The images and captions selected for extraction.

    Attributes:
        images: Entries in metadata order.
        source: The caption file.
        format: ``karpathy``, ``flickr8k-token`` or ``tsv``.
        dataset: Dataset name (from the Karpathy file, else the caption file's stem).
        unlisted: Captioned images left out because no split list names them.
        listed_uncaptioned: Images named by a split list that have no caption (reported
            by :func:`check_images`).
    """

    images: list[ImageEntry]
    source: Path
    format: str
    dataset: str
    unlisted: int = 0
    listed_uncaptioned: list[str] = field(default_factory=list)

    @property
    def n_captions(self) -> int:
        """Number of captions."""
        return sum(len(e.sentences) for e in self.images)


def simple_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric words of a caption (``tokens`` for non-Karpathy inputs)."""
    return _WORD.findall(text.lower())


def read_captions(
    path: str | Path,
    split_files: Mapping[str, str | Path] | None = None,
    splits: Sequence[str] | None = None,
) -> CaptionSet:
    """Read a caption file (Karpathy JSON, Flickr8k ``token.txt`` or TSV).

    Args:
        path: The caption file.
        split_files: Split name to a file listing that split's image file names; when
            given, only listed images are kept and their split is the list's name.
        splits: Keep only images of these splits (after ``split_files``).

    Returns:
        The :class:`CaptionSet`.

    Raises:
        DataError: Naming the file and line (or entry) of any malformed input.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: caption file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable caption file ({exc})") from exc
    dataset: str | None = None
    if text.lstrip().startswith("{"):
        images, dataset = _read_karpathy(path, text)
        fmt = "karpathy"
    else:
        images, fmt = _read_lines(path, text)
    unlisted, listed_uncaptioned = 0, []
    if split_files:
        images, unlisted, listed_uncaptioned = _apply_split_lists(images, split_files)
    if splits:
        wanted = set(splits)
        present = {e.split for e in images}
        unknown = sorted(wanted - present)
        if unknown:
            raise DataError(
                f"{path}: no image has split {unknown[0]!r} "
                f"(splits present: {', '.join(sorted(present)) or 'none'})"
            )
        images = [e for e in images if e.split in wanted]
    if not images and not listed_uncaptioned:
        raise DataError(f"{path}: no captioned image selected")
    return CaptionSet(
        images=images,
        source=path,
        format=fmt,
        dataset=str(dataset or path.stem),
        unlisted=unlisted,
        listed_uncaptioned=listed_uncaptioned,
    )


def _read_karpathy(path: Path, text: str) -> tuple[list[ImageEntry], str | None]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
        raise DataError(f"{path}: expected a Karpathy-format object with an 'images' list")
    images: list[ImageEntry] = []
    seen_img: set[str] = set()
    seen_sent: set[str] = set()
    for row, entry in enumerate(meta["images"]):
        try:
            imgid = entry["imgid"]
            filename = str(entry["filename"])
            sentences = entry["sentences"]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: image entry {row} lacks field {exc}") from exc
        if entry.get("filepath"):
            filename = f"{entry['filepath']}/{filename}"
        if str(imgid) in seen_img:
            raise DataError(f"{path}: duplicate image id {imgid} (entry {row})")
        seen_img.add(str(imgid))
        sents = []
        for sent in sentences:
            try:
                sid, raw = sent["sentid"], str(sent["raw"])
            except (KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}: a sentence of image {imgid} ({filename}) lacks field {exc}"
                ) from exc
            if str(sid) in seen_sent:
                raise DataError(f"{path}: duplicate caption id {sid} (image {imgid})")
            seen_sent.add(str(sid))
            tokens = sent.get("tokens") or simple_tokens(raw)
            sents.append({"sentid": sid, "raw": raw, "tokens": [str(t) for t in tokens]})
        images.append(ImageEntry(imgid, filename, str(entry.get("split", "train")), sents))
    dataset = meta.get("dataset")
    return images, None if dataset is None else str(dataset)


def _read_lines(path: Path, text: str) -> tuple[list[ImageEntry], str]:
    lines = text.splitlines()
    rows = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not rows:
        raise DataError(f"{path}: empty caption file")
    token_format = bool(_TOKEN_LINE.match(rows[0][1]))
    fmt = "flickr8k-token" if token_format else "tsv"
    by_file: dict[str, ImageEntry] = {}
    for lineno, line in rows:
        if token_format:
            m = _TOKEN_LINE.match(line)
            if not m:
                raise DataError(
                    f"{path}:{lineno}: expected '<filename>#<n><TAB><caption>' (Flickr8k "
                    f"token.txt), got {line[:80]!r}"
                )
            filename, caption = m["file"].strip(), m["caption"].strip()
        else:
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(
                    f"{path}:{lineno}: expected two tab-separated columns "
                    f"'<filename><TAB><caption>', got {len(parts)} in {line[:80]!r}"
                )
            filename, caption = parts[0].strip(), parts[1].strip()
            if lineno == rows[0][0] and (filename.lower(), caption.lower()) in {
                ("filename", "caption"),
                ("image", "caption"),
            }:
                continue
        if not filename:
            raise DataError(f"{path}:{lineno}: empty file name")
        if not caption:
            raise DataError(f"{path}:{lineno}: empty caption for {filename}")
        entry = by_file.get(filename)
        if entry is None:
            entry = by_file[filename] = ImageEntry(len(by_file), filename, "train")
        entry.sentences.append({"raw": caption, "tokens": simple_tokens(caption)})
    sentid = 0
    for entry in by_file.values():
        for sent in entry.sentences:
            sent["sentid"] = sentid
            sentid += 1
        entry.sentences = [
            {"sentid": s["sentid"], "raw": s["raw"], "tokens": s["tokens"]} for s in entry.sentences
        ]
    return list(by_file.values()), fmt


def _apply_split_lists(
    images: list[ImageEntry], split_files: Mapping[str, str | Path]
) -> tuple[list[ImageEntry], int, list[str]]:
    split_of: dict[str, str] = {}
    where: dict[str, Path] = {}
    for name, file in split_files.items():
        file = Path(file)
        try:
            names = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: cannot read split list ({exc})") from exc
        for fn in filter(None, names):
            if fn in split_of and split_of[fn] != name:
                raise DataError(
                    f"{file}: image {fn} is also in the {split_of[fn]!r} list {where[fn]}"
                )
            split_of[fn] = name
            where[fn] = file
    kept = []
    for entry in images:
        name = split_of.get(entry.filename) or split_of.get(Path(entry.filename).name)
        if name is not None:
            entry.split = name
            kept.append(entry)
    captioned = {e.filename for e in images} | {Path(e.filename).name for e in images}
    without = sorted(fn for fn in split_of if fn not in captioned)
    return kept, len(images) - len(kept), without


def check_images(captions: CaptionSet, image_dir: str | Path, strict_folder: bool) -> None:
    """Check that every selected captioned image exists, and (optionally) the converse.

    Args:
        captions: The selected images and captions.
        image_dir: The image folder.
        strict_folder: Also require every image file in the folder to have a caption
            (used when no split list or split filter narrows the selection). Images named
            by split lists must always have captions.

    Raises:
        DataError: One error listing every captioned image missing from the folder and
            every image in the folder without a caption.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    missing = [e.filename for e in captions.images if not (image_dir / e.filename).is_file()]
    uncaptioned: list[str] = list(captions.listed_uncaptioned)
    if strict_folder:
        captioned = {e.filename for e in captions.images}
        uncaptioned = sorted(
            p.name
            for p in image_dir.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in captioned
        )
    if not missing and not uncaptioned:
        return
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} captioned image(s) not found in {image_dir}: {_names(missing)}"
        )
    if uncaptioned:
        where = "named by the split lists" if captions.listed_uncaptioned else f"in {image_dir}"
        parts.append(
            f"{len(uncaptioned)} image(s) {where} have no caption in "
            f"{captions.source}: {_names(uncaptioned)}"
        )
    raise DataError("captions and images do not match: " + "; ".join(parts))


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")

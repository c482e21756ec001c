"""Opening images robustly: every readable image becomes RGB, unreadable ones are reported.

``PIL.Image.open(path).convert("RGB")`` is the preprocessing the shared Flickr8k features
used, so RGB images are untouched. Other modes are converted: grayscale (``L``, ``1``),
palette (``P``, through RGBA when it has transparency), ``RGBA``/``LA`` (alpha dropped, as
``convert("RGB")`` does), ``CMYK`` and ``YCbCr`` via Pillow's conversions, and 16-bit or
32-bit grayscale (``I;16``, ``I``, ``F``) scaled to 8 bits first. Multi-frame files use
their first frame.

EXIF orientation is applied first (:func:`apply_orientation`): a photo that a camera stored
sideways with an ``Orientation`` tag is encoded upright, as people see it. Images without
the tag (all of the shared Flickr8k JPEGs) are untouched, so their features are the
reference ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.extract._common import log, require_dist

EXIF_ORIENTATION = 0x0112
#: What ``extraction`` records about orientation (the backends' preprocessing).
ORIENTATION_NOTE = "EXIF Orientation tag applied first (as PIL.ImageOps.exif_transpose)"


@dataclass
class LoadedImage:
    """The outcome of opening one image file.

    Attributes:
        image: The RGB ``PIL.Image``, or ``None`` when unreadable.
        mode: The file's original mode (``RGB``, ``L``, ``CMYK`` ...), ``None`` if unreadable.
        error: Why the file could not be read, or ``None``.
    """

    image: Any
    mode: str | None
    error: str | None


def open_rgb(path: str | Path) -> LoadedImage:
    """Open an image file as RGB, converting other modes; never raises on bad files.

    Args:
        path: The image file.

    Returns:
        A :class:`LoadedImage` (with ``error`` set when the file is unreadable).
    """
    pil = require_dist("pillow", "PIL.Image", "Reading images")
    try:
        with pil.open(path) as img:
            img.load()
            mode = img.mode
            rgb = to_rgb(apply_orientation(img))
        return LoadedImage(rgb, mode, None)
    except Exception as exc:  # any decoder failure is reported, never fatal
        reason = str(exc).strip() or type(exc).__name__
        return LoadedImage(None, None, f"{type(exc).__name__}: {reason}")


def apply_orientation(img: Any) -> Any:
    """Rotate/flip a loaded ``PIL.Image`` upright by its EXIF ``Orientation`` tag.

    Returns the image itself when there is no tag (or it is 1, or unreadable: a photo
    with a damaged EXIF block is still encoded, as stored, and a debug line says so).
    """
    pil = require_dist("pillow", "PIL.Image", "Reading images")
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception as exc:  # a damaged EXIF block must not make the image unreadable
        log.debug("EXIF of %s unreadable (%s); orientation not applied", img, exc)
        return img
    method = {
        2: pil.Transpose.FLIP_LEFT_RIGHT,
        3: pil.Transpose.ROTATE_180,
        4: pil.Transpose.FLIP_TOP_BOTTOM,
        5: pil.Transpose.TRANSPOSE,
        6: pil.Transpose.ROTATE_270,
        7: pil.Transpose.TRANSVERSE,
        8: pil.Transpose.ROTATE_90,
    }.get(orientation)
    return img if method is None else img.transpose(method)


def to_rgb(img: Any) -> Any:
    """Convert a loaded ``PIL.Image`` of any mode to RGB (see the module docstring)."""
    pil = require_dist("pillow", "PIL.Image", "Reading images")
    mode = img.mode
    if mode == "RGB":
        return img.convert("RGB")  # a copy detached from the file, as the reference did
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 255.0)
        arr8 = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return pil.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")

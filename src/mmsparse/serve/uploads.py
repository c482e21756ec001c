"""Images as queries in ``mmsparse serve``: uploads checked, decoded, encoded and kept.

An uploaded image goes through the run's backbone image encoder (the one its features were
extracted with, :func:`mmsparse.extract.load_image_backend`), then the run's image heads,
pruned as the index's images were, so it is searched like an indexed image: image-to-image,
sparse · sparse over shared vocabulary terms, dense · dense, or hybrid. Uploads are checked
before decoding: size (``max_upload_mb``), type by the file's first bytes (JPEG, PNG, WebP,
GIF, BMP), and the pixel count from the header (decompression bombs); a bad file is a 4xx
JSON error. A run without a backbone image encoder (features only, e.g. the synthetic demo)
answers 409.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import functools
import hashlib
import io
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import MMSparseError
from mmsparse.serve.limits import Admission, ServeLimits
from mmsparse.serve.queries import QueryInputError

#: Magic bytes of the accepted upload types: ``(offset, bytes)`` that must all match.
IMAGE_SIGNATURES: dict[str, tuple[tuple[int, bytes], ...]] = {
    "jpeg": ((0, b"\xff\xd8\xff"),),
    "png": ((0, b"\x89PNG\r\n\x1a\n"),),
    "gif": ((0, b"GIF8"),),
    "webp": ((0, b"RIFF"), (8, b"WEBP")),
    "bmp": ((0, b"BM"),),
}
#: Pillow's format names of the accepted types (the decoded file must be one of them).
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP"}


def sniff_image_type(head: bytes) -> str | None:
    """The image type of a file's first bytes, or ``None``.

    One of ``jpeg``, ``png``, ``gif``, ``webp``, ``bmp``.
    """
    for name, checks in IMAGE_SIGNATURES.items():
        if all(head[o : o + len(b)] == b for o, b in checks):
            return name
    return None


@dataclass
class DecodedUpload:
    """An uploaded image, checked and decoded.

    Attributes:
        image: The upright RGB ``PIL.Image``.
        kind: ``jpeg``, ``png``, ``gif``, ``webp`` or ``bmp``.
        width: Width in pixels (as stored).
        height: Height in pixels (as stored).
        sha256: Hex digest of the file's bytes.
        nbytes: Size of the file.
    """

    image: Any
    kind: str
    width: int
    height: int
    sha256: str
    nbytes: int


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedUpload:
    """Check an uploaded file and decode it to an upright RGB image.

    Raises:
        QueryInputError: 400 for an empty or undecodable file, 413 above ``max_bytes`` or
            ``max_pixels``, 415 for a file that is not JPEG, PNG, WebP, GIF or BMP.
    """
    if not data:
        raise QueryInputError("the upload is empty: send the image file as the request body")
    if len(data) > max_bytes:
        raise QueryInputError(
            f"the image is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB "
            "(serve --max-upload-mb)",
            413,
        )
    kind = sniff_image_type(data[:16])
    if kind is None:
        raise QueryInputError(
            "the upload is not a JPEG, PNG, WebP, GIF or BMP image (judged by its first bytes)",
            415,
        )
    from PIL import Image

    from mmsparse.extract.images import apply_orientation, to_rgb

    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[kind]]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise QueryInputError(
                    f"the image is {width} x {height} pixels; the limit is "
                    f"{max_pixels / 1e6:.0f} megapixels",
                    413,
                )
            img.load()
            rgb = to_rgb(apply_orientation(img))
    except QueryInputError:
        raise
    except Image.DecompressionBombError:
        raise QueryInputError(
            "the image has too many pixels (a decompression bomb?)", 413
        ) from None
    except Exception as exc:  # any decoder failure is the file's
        reason = str(exc).strip() or type(exc).__name__
        raise QueryInputError(
            f"the {kind.upper()} file cannot be decoded ({reason[:120]})"
        ) from None
    return DecodedUpload(
        image=rgb,
        kind=kind,
        width=int(width),
        height=int(height),
        sha256=hashlib.sha256(data).hexdigest(),
        nbytes=len(data),
    )


def thumbnail_jpeg(image: Any, size: int = 256) -> bytes:
    """A small JPEG of an RGB ``PIL.Image`` (the page shows it as the query image)."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class _BackendImages:
    """``encode_images`` over an extraction backend's ``preprocess`` + ``encode_pixels``."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def encode_images(self, images: list[Any]) -> np.ndarray:
        pixels = np.stack([self.backend.preprocess(im) for im in images])  # (B, 3, H, W)
        return np.asarray(self.backend.encode_pixels(pixels), dtype=np.float32)

    def load(self) -> None:
        self.backend.load_image_model()


class ImageQueryEncoder:
    """Raw images to query vectors: the run's backbone image encoder, then its image heads.

    Args:
        run: The loaded run (:func:`mmsparse.runs.load_run`).
        topk: Terms kept per image (the index's ``image_topk``).
        threshold: Weights at or below it are dropped (the index's ``threshold``).
        image_encoder: An object with ``encode_images(list[PIL.Image]) -> (N, d_img)``
            used instead of the run's backbone (tests, custom encoders).

    Attributes:
        error: Why images cannot be encoded (``None``: they can).
    """

    def __init__(
        self, run: Any, *, topk: int | None, threshold: float, image_encoder: Any = None
    ) -> None:
        self.run = run
        self.topk = topk
        self.threshold = float(threshold)
        self._encoder = image_encoder
        self._lock = threading.Lock()
        self.error: str | None = None
        if self._encoder is None:
            self.error = self._find_backend()

    def _find_backend(self) -> str | None:
        if self.run is None:
            return "the index was opened without its run"
        from mmsparse.runs import run_extraction

        extraction = run_extraction(self.run)
        if extraction is None:
            return (
                "this run's backbone cannot encode raw images (it was trained on features "
                "only, with no extraction backend recorded); search by an indexed image with "
                "like=IMAGE_ID instead"
            )
        try:
            from mmsparse.extract import load_image_backend

            backend = load_image_backend(extraction, device="cpu")
        except (ImportError, MMSparseError) as exc:
            return f"the run's image encoder cannot be loaded here ({exc})"
        if backend.d_img != self.run.model.d_img:
            return (
                f"the backbone {backend.name} gives {backend.d_img}-d image features but the "
                f"run's image head takes {self.run.model.d_img}"
            )
        self._encoder = _BackendImages(backend)
        return None

    @property
    def available(self) -> bool:
        """Whether images can be encoded."""
        return self.error is None

    def load(self) -> None:
        """Load the backbone's weights now (else on the first image)."""
        if self.available and hasattr(self._encoder, "load"):
            with self._lock:
                self._encoder.load()

    def encode(self, images: list[Any]) -> tuple[np.ndarray, sp.csr_matrix]:
        """``(dense (N, dense_dim), sparse (N, V) CSR)`` query vectors of RGB images.

        Raises:
            QueryInputError: 409 when the run cannot encode images.
        """
        if not self.available:
            raise QueryInputError(f"search by uploaded image is not available: {self.error}", 409)
        from mmsparse.index.encode import encode_vectors

        with self._lock:  # one image batch at a time through the backbone
            feats = np.asarray(self._encoder.encode_images(list(images)), dtype=np.float32)
        d_img = self.run.model.d_img
        if feats.ndim != 2 or feats.shape != (len(images), d_img):
            raise MMSparseError(
                f"the image encoder gives features of shape {feats.shape}, the run expects "
                f"({len(images)}, {d_img})"
            )
        return encode_vectors(
            self.run.model, feats, "image", topk=self.topk, threshold=self.threshold
        )


@dataclass
class UploadedQuery:
    """An uploaded image's query vectors, kept so that later requests can name it.

    Attributes:
        upload_id: The first 16 hex digits of the file's sha256.
        sparse: ``(1, V)`` query sparse vector.
        dense: ``(1, dense_dim)`` query dense vector.
        thumbnail: A small JPEG of the image.
        meta: ``kind``, ``width``, ``height``, ``bytes``.
    """

    upload_id: str
    sparse: sp.csr_matrix
    dense: np.ndarray
    thumbnail: bytes
    meta: dict[str, Any]


class UploadCache:
    """The last ``size`` uploaded queries, by id (least recently used dropped first)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: collections.OrderedDict[str, UploadedQuery] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: UploadedQuery) -> None:
        """Keep ``item`` (dropping the least recently used beyond the size)."""
        with self._lock:
            self._items[item.upload_id] = item
            self._items.move_to_end(item.upload_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, upload_id: str) -> UploadedQuery | None:
        """The kept query of an id, or ``None``."""
        with self._lock:
            item = self._items.get(upload_id)
            if item is not None:
                self._items.move_to_end(upload_id)
            return item

    def __len__(self) -> int:
        return len(self._items)


class ImageQueries:
    """The service's path of uploaded query images: checked, decoded, encoded, kept.

    Args:
        run: The loaded run (its image heads).
        topk: Terms kept per image (the index's ``image_topk``).
        threshold: Weights at or below it are dropped (the index's ``threshold``).
        limits: The service's :class:`~mmsparse.serve.limits.ServeLimits` (upload size,
            pixels, uploads kept).
        image_encoder: Replaces the run's backbone (see :class:`ImageQueryEncoder`).

    Attributes:
        encoder: The :class:`ImageQueryEncoder`.
        cache: The :class:`UploadCache` of recent uploads.
    """

    def __init__(
        self,
        run: Any,
        *,
        topk: int | None,
        threshold: float,
        limits: ServeLimits,
        image_encoder: Any = None,
    ) -> None:
        self.limits = limits
        self.encoder = ImageQueryEncoder(
            run, topk=topk, threshold=threshold, image_encoder=image_encoder
        )
        self.cache = UploadCache(limits.uploads_kept)
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mmsparse-images")

    @property
    def available(self) -> bool:
        """Whether uploaded images can be searched."""
        return self.encoder.available

    @property
    def error(self) -> str | None:
        """Why they cannot (``None``: they can)."""
        return self.encoder.error

    async def upload(self, data: bytes, admission: Admission) -> dict[str, Any]:
        """Check, decode and encode an uploaded file, and keep its query vectors.

        A file already kept (the same sha256) is not encoded again. The encoding takes one
        of ``admission``'s places (:class:`~mmsparse.serve.limits.Admission`).

        Returns:
            The answer's ``upload``: ``id`` (the first 16 hex digits of the sha256),
            ``kind``, ``width``, ``height``, ``bytes``, ``thumbnail_url``.

        Raises:
            QueryInputError: 400 undecodable, 413 too large, 415 not an image, 409 when
                the run cannot encode images.
            Overloaded: If too many searches are in flight.
        """
        if not self.available:
            raise QueryInputError(f"search by uploaded image is not available: {self.error}", 409)
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(
            self._pool,
            functools.partial(
                decode_upload,
                data,
                max_bytes=self.limits.max_upload_mb * 1_000_000,
                max_pixels=self.limits.max_upload_pixels,
            ),
        )
        upload_id = decoded.sha256[:16]
        if self.cache.get(upload_id) is None:
            with admission.slot():
                dense, sparse = await loop.run_in_executor(
                    self._pool, self.encoder.encode, [decoded.image]
                )
                thumb = await loop.run_in_executor(self._pool, thumbnail_jpeg, decoded.image)
            self.cache.put(
                UploadedQuery(
                    upload_id=upload_id,
                    sparse=sparse[0],
                    dense=dense[:1],
                    thumbnail=thumb,
                    meta={
                        "kind": decoded.kind,
                        "width": decoded.width,
                        "height": decoded.height,
                        "bytes": decoded.nbytes,
                    },
                )
            )
        item = self.cache.get(upload_id)
        assert item is not None
        return {
            "id": upload_id,
            **item.meta,
            "thumbnail_url": f"/api/uploads/{upload_id}/thumbnail",
        }

    def query(self, upload_id: str) -> UploadedQuery:
        """The kept query vectors of an upload.

        Raises:
            QueryInputError: 404 when the server no longer holds it.
        """
        item = self.cache.get(str(upload_id))
        if item is None:
            raise QueryInputError(
                f"no uploaded image {str(upload_id)[:40]!r} (the server keeps the last "
                f"{self.limits.uploads_kept} uploads); upload it again",
                404,
            )
        return item

    def thumbnail(self, upload_id: str) -> bytes:
        """The small JPEG of an uploaded query image.

        Raises:
            QueryInputError: 404 when the server no longer holds it.
        """
        item = self.cache.get(str(upload_id))
        if item is None:
            raise QueryInputError(f"no uploaded image {str(upload_id)[:40]!r}", 404)
        return item.thumbnail

    def warm_up(self) -> None:
        """Load the backbone and encode one grey image (when images can be encoded)."""
        if not self.available:
            return
        from PIL import Image

        self.encoder.load()
        self.encoder.encode([Image.new("RGB", (64, 64), (128, 128, 128))])

    def close(self) -> None:
        """Stop the image thread (work not yet started is cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

"""Queries of ``mmsparse serve`` beyond plain text: edited terms, and images as queries.

**Edited queries.** A text (or image) query is a weighted bag of vocabulary terms; the API
takes edits of it as ``terms=EDIT,EDIT,...`` (``GET /api/search``), so an edited query is
reproducible from its URL. Each edit is ``[+|-]TERM[:FACTOR]``:

- ``TERM:FACTOR`` multiplies the term's query weight by ``FACTOR`` (``0`` drops the term,
  ``2`` doubles it); a term the query does not hold has weight 0, so a factor does nothing
  there (a note says so);
- ``+TERM`` requires the term: only images whose indexed sparse vector holds it are ranked;
- ``-TERM`` excludes it: images that hold it are not ranked.

``TERM`` is the vocabulary's spelling (``dog``, ``##s``), with ``%``, ``,``, ``:`` and a
leading ``+``/``-`` percent-encoded (``%2C``); ``#ID`` names a term by its id. Required and
excluded terms are a **filter**: a boolean mask of the rows that may be ranked, built from
the terms' rows (:meth:`~mmsparse.index.engines.Engine.term_rows`: the posting lists of the
``inverted`` engine) and handed to the engine as its ``live`` mask. The ``inverted`` engine
ranks only those rows (exact: the same top-k as ranking every image and keeping the
admitted ones); other engines are asked for more candidates and the others dropped
(:meth:`~mmsparse.index.engines.Engine.search`). Weights change the sparse vector, so the
``sparse`` and ``hybrid`` scores; a ``dense`` score is not made of words, and only the
filter applies to it.

**Images as queries.** An uploaded image goes through the run's backbone image encoder
(the one its features were extracted with, :func:`mmsparse.extract.load_image_backend`),
then the run's image heads, pruned as the index's images were, so it is searched like an
indexed image: image-to-image, sparse · sparse over shared vocabulary terms, dense · dense,
or hybrid. Uploads are checked before decoding: size (``max_upload_mb``), type by the
file's first bytes (JPEG, PNG, WebP, GIF, BMP), and the pixel count from the header
(decompression bombs); a bad file is a 4xx JSON error. A run without a backbone image
encoder (features only, e.g. the synthetic demo) answers 409.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import MMSparseError

MAX_EDITS = 128

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


class QueryInputError(MMSparseError):
    """A query edit or an uploaded image is not acceptable (served as a 4xx).

    Attributes:
        status: The HTTP status: 400 (bad edit, undecodable image), 413 (too large),
            415 (not an image type), 409 (the run cannot encode images).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- edited queries -------------------------------------------------------------------------


@dataclass(frozen=True)
class TermEdit:
    """One edit of a query's terms.

    Attributes:
        term: The term as the vocabulary spells it.
        term_id: Its id.
        factor: Multiplies the term's query weight (``None``: unchanged).
        require: Only images holding the term are ranked.
        exclude: Images holding the term are not ranked.
    """

    term: str
    term_id: int
    factor: float | None = None
    require: bool = False
    exclude: bool = False

    def spec(self) -> str:
        """The edit as written in ``terms=`` (canonical form)."""
        head = "+" if self.require else "-" if self.exclude else ""
        name = quote_term(self.term)
        tail = "" if self.factor is None else f":{_number(self.factor)}"
        return f"{head}{name}{tail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``term``, ``factor``, ``require``, ``exclude``."""
        return {
            "term": self.term,
            "factor": self.factor,
            "require": self.require,
            "exclude": self.exclude,
        }


def _number(x: float) -> str:
    return f"{x:g}"


def quote_term(term: str) -> str:
    """A term percent-encoded where ``terms=`` would misread it.

    ``%``, ``,``, ``:`` and a leading ``+`` or ``-`` are escaped.
    """
    out = term.replace("%", "%25").replace(",", "%2C").replace(":", "%3A")
    if out[:1] in ("+", "-"):
        out = f"%{ord(out[0]):02X}" + out[1:]
    return out


def _term_id(name: str, vocab: Any) -> int | None:
    tid = vocab.id(name) if getattr(vocab, "named", True) else None
    if tid is None and name.startswith("#") and name[1:].isdigit():
        n = int(name[1:])
        if 0 <= n < len(vocab):
            return n
    return tid


def parse_terms(spec: str | None, vocab: Any) -> list[TermEdit]:
    """The edits of a ``terms=`` value (see the module docstring).

    A term edited twice keeps the last factor and either flag.

    Raises:
        QueryInputError: On an unknown term, a bad factor, a term both required and
            excluded, or more than :data:`MAX_EDITS` edits; the message names the edit.
    """
    if spec is None or not spec.strip():
        return []
    if vocab is None:
        raise QueryInputError("terms= needs the run's vocabulary (the index opened without it)")
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if len(entries) > MAX_EDITS:
        raise QueryInputError(f"terms: at most {MAX_EDITS} edits, got {len(entries)}")
    edits: dict[int, TermEdit] = {}
    for entry in entries:
        shown = entry[:60]
        require = exclude = False
        body = entry
        if body[0] in "+-" and len(body) > 1:
            require, exclude = body[0] == "+", body[0] == "-"
            body = body[1:]
        factor: float | None = None
        if ":" in body:
            name_part, _, value = body.rpartition(":")
            try:
                factor = float(value)
            except ValueError:
                raise QueryInputError(
                    f"terms: {shown!r}: the factor after ':' must be a number, got {value[:20]!r}"
                ) from None
            if not math.isfinite(factor) or factor < 0 or factor > 1000:
                raise QueryInputError(
                    f"terms: {shown!r}: the factor must be between 0 and 1000, got {value[:20]!r}"
                )
            body = name_part
        name = urllib.parse.unquote(body)
        if not name:
            raise QueryInputError(f"terms: {shown!r} names no term")
        tid = _term_id(name, vocab)
        if tid is None:
            raise QueryInputError(
                f"terms: {name[:40]!r} is not a term of this run's vocabulary (edit the "
                "query's listed terms, or write #ID for a term id)"
            )
        term = vocab.term(tid)
        old = edits.get(tid)
        if old is not None:
            factor = old.factor if factor is None else factor
            require, exclude = require or old.require, exclude or old.exclude
        if require and exclude:
            raise QueryInputError(f"terms: {term!r} is both required (+) and excluded (-)")
        edits[tid] = TermEdit(term, tid, factor, require, exclude)
    return list(edits.values())


def terms_spec(edits: list[TermEdit]) -> str:
    """The canonical ``terms=`` value of a list of edits."""
    return ",".join(e.spec() for e in edits)


def apply_edits(
    sparse: sp.csr_matrix, edits: list[TermEdit], vocab: Any = None
) -> tuple[sp.csr_matrix, list[str]]:
    """The query's sparse vector with every factor applied.

    Args:
        sparse: ``(1, V)`` query sparse vector.
        edits: The edits (filters are not applied here: see :func:`filter_mask`).
        vocab: Names terms in the notes.

    Returns:
        ``((1, V) float32 CSR, notes)``: terms at factor 0 are removed.
    """
    q = sp.csr_matrix(sparse, dtype=np.float32, copy=True)
    q.sort_indices()
    notes = []
    held = dict(zip(q.indices.tolist(), range(q.nnz)))
    data = q.data.copy()
    for e in edits:
        if e.factor is None:
            continue
        j = held.get(e.term_id)
        if j is None:
            if e.factor != 0:
                notes.append(
                    f"{e.term!r} is not one of the query's terms: its factor changes nothing "
                    f"(+{quote_term(e.term)} requires it instead)"
                )
            continue
        data[j] = np.float32(data[j] * e.factor)
    q = sp.csr_matrix((data, q.indices.copy(), q.indptr.copy()), shape=q.shape)
    q.eliminate_zeros()
    return q, notes


def filter_mask(
    edits: list[TermEdit], n_docs: int, term_rows: Any, live: np.ndarray | None = None
) -> np.ndarray | None:
    """The rows a filtered query may rank: holding every required term, no excluded one.

    Args:
        edits: The edits (only ``require`` and ``exclude`` count).
        n_docs: Rows of the index.
        term_rows: ``term_rows(term_id) -> int64 rows`` holding the term.
        live: An existing mask to narrow (``None``: every row).

    Returns:
        ``(n_docs,)`` bool, or ``live`` unchanged when no edit filters.
    """
    filters = [e for e in edits if e.require or e.exclude]
    if not filters:
        return live
    mask = np.ones(n_docs, dtype=bool) if live is None else np.array(live, dtype=bool)
    for e in filters:
        has = np.zeros(n_docs, dtype=bool)
        has[np.asarray(term_rows(e.term_id), dtype=np.int64)] = True
        mask &= has if e.require else ~has
    return mask


def rows_sharing_terms(term_ids: np.ndarray, n_docs: int, term_rows: Any) -> np.ndarray:
    """``(n_docs,)`` bool: the rows holding at least one of ``term_ids``."""
    mask = np.zeros(n_docs, dtype=bool)
    for t in np.asarray(term_ids, dtype=np.int64).tolist():
        mask[np.asarray(term_rows(t), dtype=np.int64)] = True
    return mask


# -- images as queries ----------------------------------------------------------------------


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

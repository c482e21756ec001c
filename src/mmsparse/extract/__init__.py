"""Feature extraction: images and captions to the paper's release format, plus bundles.

Public API:

* :func:`build_bundle` -- write a backend's backbone bundle (word embeddings, vocabulary,
  projections, ``extraction`` description).
* :func:`load_text_encoder` -- a :class:`TextEncoder` that encodes raw text exactly as a
  backend encoded the captions (used to search with free text).
* :func:`extract_features` -- a folder of images and a caption file to the paper's
  release format (parquet features, ``dataset_meta.json``, ``bundle/``), resumable.

Heavy dependencies (the ``extract`` extra) are imported only when a backend is used.
"""

from mmsparse.extract.backends import (
    BACKENDS,
    Backend,
    TextEncoder,
    get_backend,
    load_text_encoder,
)
from mmsparse.extract.bundle import build_bundle
from mmsparse.extract.inputs import CaptionSet, ImageEntry, check_images, read_captions
from mmsparse.extract.pipeline import ExtractReport, extract_features

__all__ = [
    "BACKENDS",
    "Backend",
    "CaptionSet",
    "ExtractReport",
    "ImageEntry",
    "TextEncoder",
    "build_bundle",
    "check_images",
    "extract_features",
    "get_backend",
    "load_text_encoder",
    "read_captions",
]

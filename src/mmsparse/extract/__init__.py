"""Feature extraction: images and captions to the paper's release format, plus bundles.

Public API:

* :func:`build_bundle` -- write a backend's backbone bundle (word embeddings, vocabulary,
  projections, ``extraction`` description).
* :func:`load_text_encoder` -- a :class:`TextEncoder` that encodes raw text exactly as a
  backend encoded the captions (used to search with free text).
* :func:`load_image_backend` -- the backend that encodes raw images exactly as an
  ``extraction`` description says (used to index a folder of photos with a run).
* :func:`extract_features` -- a folder of images and a caption file to the paper's
  release format (parquet features, ``dataset_meta.json``, ``bundle/``), resumable.
* :func:`encode_folder` -- the features of every image of a folder without captions
  (recursive, resumable, unreadable and non-image files reported); the listing rules are
  :func:`list_image_folder`'s.

Heavy dependencies (the ``extract`` extra) are imported only when a backend is used.
"""

from mmsparse.extract.backends import (
    BACKENDS,
    Backend,
    TextEncoder,
    get_backend,
    load_image_backend,
    load_text_encoder,
)
from mmsparse.extract.bundle import build_bundle
from mmsparse.extract.folder import FolderFeatures, FolderListing, encode_folder, list_image_folder
from mmsparse.extract.inputs import CaptionSet, ImageEntry, check_images, read_captions
from mmsparse.extract.pipeline import ExtractReport, extract_features

__all__ = [
    "BACKENDS",
    "Backend",
    "CaptionSet",
    "ExtractReport",
    "FolderFeatures",
    "FolderListing",
    "ImageEntry",
    "TextEncoder",
    "build_bundle",
    "check_images",
    "encode_folder",
    "extract_features",
    "get_backend",
    "list_image_folder",
    "load_image_backend",
    "load_text_encoder",
    "read_captions",
]

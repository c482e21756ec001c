"""Feature extraction: images and captions to the paper's release format, plus bundles.

Public API:

* :func:`build_bundle` -- write a backend's backbone bundle (word embeddings, vocabulary,
  projections, ``extraction`` description).
* :func:`load_text_encoder` -- a :class:`TextEncoder` that encodes raw text exactly as a
  backend encoded the captions (used to search with free text).

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

__all__ = [
    "BACKENDS",
    "Backend",
    "TextEncoder",
    "build_bundle",
    "get_backend",
    "load_text_encoder",
]

"""The backbone bundle: what a real dual encoder contributes besides its features.

A bundle is a directory::

    bundle.json          {"format": "mmsparse-bundle", "version": 1, "name": ...,
                          "d_img": ..., "d_txt": ..., "dense_dim": ..., "d_word": ...,
                          "vocab_size": ..., "extraction": {...} or null}
    bundle.safetensors   optional tensors: text_proj.weight (dense_dim, d_txt),
                         text_proj.bias (dense_dim,), vision_proj.weight (dense_dim, d_img),
                         vision_proj.bias (dense_dim,), word_embeddings (vocab_size, d_word)
    vocab.txt            one vocabulary term per line (vocab_size lines)

``text_proj`` / ``vision_proj`` initialise the dense heads (the VLP's final layer);
``word_embeddings`` initialises the sparse head's vocabulary projector ``V``; ``vocab.txt``
names the sparse dimensions. ``extraction`` records how features were made (backend and
model), so raw text can be encoded at search time the same way.

Without a bundle (the fallback), the dense heads and ``V`` are initialised at random from
the run's seed and terms are named by index; the vocabulary size defaults to 30,522 and
the word size to 768 unless the model config says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import CheckpointError, DataError
from mmsparse.io_utils import (
    atomic_write_json,
    load_tensors,
    read_json,
    save_tensors,
    verify_checksums,
    write_checksums,
)

BUNDLE_FORMAT = "mmsparse-bundle"
BUNDLE_VERSION = 1
PROJECTION_KEYS = ("text_proj.weight", "text_proj.bias", "vision_proj.weight", "vision_proj.bias")


@dataclass
class BackboneBundle:
    """Projection weights, word embeddings and vocabulary of a backbone.

    Attributes:
        name: Backbone name (e.g. ``blip``, ``effnet-minilm``).
        vocab: The vocabulary naming the sparse dimensions.
        word_embeddings: ``(vocab_size, d_word)`` float32 array, or ``None``.
        projections: Arrays under :data:`PROJECTION_KEYS`, possibly empty.
        extraction: How the features were extracted (backend name and options), or ``None``.
        path: Directory the bundle was read from, if any.
    """

    name: str
    vocab: Vocabulary
    word_embeddings: np.ndarray | None = None
    projections: dict[str, np.ndarray] = field(default_factory=dict)
    extraction: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary terms (sparse dimensions)."""
        return len(self.vocab)

    @property
    def d_word(self) -> int | None:
        """Word-embedding size, or ``None`` without word embeddings."""
        return None if self.word_embeddings is None else int(self.word_embeddings.shape[1])

    def check_dims(self, d_img: int, d_txt: int) -> None:
        """Check the bundle against the feature sizes of the data.

        Both the projections' input sizes and the feature sizes the bundle's extraction
        backend produces (``extraction.d_img`` / ``d_txt``) must match: features of another
        backbone are refused for every method, the dense stage 0 included.

        Raises:
            DataError: Naming the bundle file and both sizes.
        """
        meta = self.path / "bundle.json" if self.path else "bundle"
        extraction = self.extraction if isinstance(self.extraction, dict) else {}
        for key, what, got in (("d_img", "image", d_img), ("d_txt", "caption", d_txt)):
            want = extraction.get(key)
            if isinstance(want, int) and want != got:
                raise DataError(
                    f"{meta}: the bundle's extraction ({extraction.get('backend', '?')}) "
                    f"makes {what} features of size {want} but the data has {got} (features "
                    "of another backbone? use its bundle, or data.bundle=null)"
                )
        where = self.path / "bundle.safetensors" if self.path else "bundle"
        for key, d_in in (("text_proj.weight", d_txt), ("vision_proj.weight", d_img)):
            if key in self.projections and self.projections[key].shape[1] != d_in:
                raise DataError(
                    f"{where}: {key} expects features of size {self.projections[key].shape[1]}"
                    f" but the data has {d_in}"
                )

    def save(self, directory: str | Path) -> Path:
        """Write the bundle to ``directory`` (files written atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = dict(self.projections)
        if self.word_embeddings is not None:
            tensors["word_embeddings"] = self.word_embeddings.astype(np.float32)
        save_tensors(directory / "bundle.safetensors", tensors)
        self.vocab.save(directory / "vocab.txt")
        dense_dim = (
            int(self.projections["text_proj.weight"].shape[0])
            if "text_proj.weight" in self.projections
            else None
        )
        atomic_write_json(
            directory / "bundle.json",
            {
                "format": BUNDLE_FORMAT,
                "version": BUNDLE_VERSION,
                "name": self.name,
                "d_img": _in_dim(self.projections, "vision_proj.weight"),
                "d_txt": _in_dim(self.projections, "text_proj.weight"),
                "dense_dim": dense_dim,
                "d_word": self.d_word,
                "vocab_size": self.vocab_size,
                "extraction": self.extraction,
            },
        )
        write_checksums(directory, ["bundle.json", "bundle.safetensors", "vocab.txt"])
        self.path = directory
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BackboneBundle:
        """Read and validate a bundle directory.

        Raises:
            DataError: If a file is missing, unreadable, or shapes disagree.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise DataError(
                f"{directory}: backbone bundle directory not found (create one with "
                f"'mmsparse extract --backend NAME --bundle-only --out {directory}', or set "
                f"data.bundle=null for the random fallback)"
            )
        try:
            verify_checksums(directory)
            meta = read_json(directory / "bundle.json", "bundle description")
        except CheckpointError as exc:
            raise DataError(str(exc)) from exc
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise DataError(f"{directory / 'bundle.json'}: not an mmsparse backbone bundle")
        if meta.get("version") != BUNDLE_VERSION:
            raise DataError(
                f"{directory / 'bundle.json'}: bundle version {meta.get('version')} "
                f"is not supported (expected {BUNDLE_VERSION})"
            )
        vocab = Vocabulary.from_file(directory / "vocab.txt")
        tensors: dict[str, np.ndarray] = {}
        st = directory / "bundle.safetensors"
        if st.exists():
            try:
                raw, _ = load_tensors(st)
            except CheckpointError as exc:
                raise DataError(str(exc)) from exc
            tensors = {k: v.float().numpy() for k, v in raw.items()}
        emb = tensors.pop("word_embeddings", None)
        if emb is not None and emb.shape[0] != len(vocab):
            raise DataError(
                f"{st}: word_embeddings has {emb.shape[0]} rows but vocab.txt has "
                f"{len(vocab)} terms"
            )
        unknown = set(tensors) - set(PROJECTION_KEYS)
        if unknown:
            raise DataError(f"{st}: unknown tensors {sorted(unknown)}")
        for mod in ("text_proj", "vision_proj"):
            w, b = tensors.get(f"{mod}.weight"), tensors.get(f"{mod}.bias")
            if (w is None) != (b is None):
                raise DataError(f"{st}: {mod} needs both .weight and .bias")
            if w is not None and (w.ndim != 2 or b.shape != (w.shape[0],)):
                raise DataError(f"{st}: {mod} has inconsistent shapes {w.shape} and {b.shape}")
        for key, arr in list(tensors.items()) + (
            [("word_embeddings", emb)] if emb is not None else []
        ):
            if not np.isfinite(arr).all():
                raise DataError(f"{st}: NaN or inf in {key}")
        return cls(
            name=str(meta.get("name", directory.name)),
            vocab=vocab,
            word_embeddings=emb,
            projections=tensors,
            extraction=meta.get("extraction"),
            path=directory,
        )


def _in_dim(tensors: dict[str, np.ndarray], key: str) -> int | None:
    return int(tensors[key].shape[1]) if key in tensors else None

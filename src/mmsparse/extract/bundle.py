"""Building a backbone bundle (projections, word embeddings, vocabulary) for a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsparse.data.bundle import BackboneBundle
from mmsparse.extract.backends import get_backend


def build_bundle(backend: str, out_dir: str | Path, **opts: Any) -> BackboneBundle:
    """Write the backbone bundle of an extraction backend to ``out_dir``.

    The bundle holds what the backbone contributes besides its features: its final
    projections (``blip``, ``clip``; ``effnet-minilm`` has none, its encoders are not
    aligned), its text encoder's word-embedding matrix (initialises the sparse head's
    vocabulary projector) and vocabulary (names the sparse dimensions), and the
    ``extraction`` dict describing the backend so raw text can be encoded later.

    Args:
        backend: ``effnet-minilm``, ``blip`` or ``clip``.
        out_dir: The bundle directory to write (``bundle.json``, ``bundle.safetensors``,
            ``vocab.txt``; created, files written atomically).
        **opts: Backend options: ``device`` (default ``cpu``), ``model`` (local weights
            directory, ``blip``/``clip``), ``max_length`` (caption tokens).

    Returns:
        The saved :class:`~mmsparse.data.bundle.BackboneBundle`.

    Raises:
        ConfigError: On an unknown backend or option.
        MissingExtraError: If the ``extract`` extra is not installed.

    Example:
        >>> b = build_bundle("effnet-minilm", "bundles/effnet-minilm")  # doctest: +SKIP
        >>> b.word_embeddings.shape, len(b.vocab)                       # doctest: +SKIP
        ((30522, 384), 30522)
    """
    from mmsparse.errors import ConfigError

    known = {"device", "model", "max_length"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(
            f"build_bundle: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    cls = get_backend(backend)
    instance = cls(
        device=opts.get("device") or "cpu",
        model=opts.get("model"),
        max_length=opts.get("max_length"),
    )
    bundle = instance.make_bundle()
    bundle.save(out_dir)
    return bundle

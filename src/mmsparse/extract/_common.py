"""Small helpers shared by the extraction backends: devices, versions, quiet model loading."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

from mmsparse.errors import ConfigError, MissingExtraError

log = logging.getLogger("mmsparse.extract")

EXTRACTION_FORMAT = 1


def torch_device(name: str) -> Any:
    """``auto`` → CUDA when available, else CPU; otherwise the named torch device.

    Raises:
        ConfigError: If CUDA is asked for but not available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {name!r} (use cpu, cuda or auto)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or ``None`` when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def require_dist(dist: str, module: str, purpose: str) -> Any:
    """Import ``module`` of distribution ``dist`` from the ``extract`` extra, with a hint.

    Raises:
        MissingExtraError: If it is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the package '{dist}': pip install 'mmsparse[extract]'"
        ) from exc


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Capture what third-party loaders print on stdout (kept off ``--json`` output)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    text = buf.getvalue().strip()
    if text:
        log.debug("%s", text)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Disable TF32 matmuls/convolutions on CUDA so GPU features match CPU float32 ones."""
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

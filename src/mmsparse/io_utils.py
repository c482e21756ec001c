"""Small file helpers shared by every layer: atomic writes and safetensors I/O.

Atomic means: the content goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the target, so a reader (or a run killed halfway) sees either
the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import CheckpointError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Args:
        path: The final destination.

    Yields:
        A temporary path in the same directory to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_tensors(
    path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
    """Save torch tensors or numpy arrays to a safetensors file, atomically.

    Args:
        path: Destination ``.safetensors`` file.
        tensors: Name to tensor (torch) or array (numpy); all of one kind.
        metadata: Optional string-to-string header metadata.
    """
    import torch
    from safetensors.torch import save_file

    converted = {}
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        converted[name] = value.detach().contiguous().cpu()
    with atomic_path(path) as tmp:
        save_file(converted, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file into torch tensors, with its header metadata.

    Args:
        path: A ``.safetensors`` file.
        device: Device to load onto.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        CheckpointError: If the file is missing, truncated or not a safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:
        raise CheckpointError(
            f"{path}: unreadable or truncated safetensors file ({type(exc).__name__}: {exc})"
        ) from exc
    return tensors, dict(metadata)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read a JSON file with a clear error naming the file.

    Raises:
        CheckpointError: If it cannot be read or parsed.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {what} not found") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({exc})") from exc

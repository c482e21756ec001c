"""Small file helpers shared by every layer: atomic writes and safetensors I/O.

Atomic means: the content goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the target, so a reader (or a run killed halfway) sees either
the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import CheckpointError, MMSparseError

FILE_MODE = 0o666  # files: rw-rw-rw- minus the umask (0644 under the usual umask 022)
DIR_MODE = 0o777  # directories: rwxrwxrwx minus the umask (0755)
CHECKSUMS_NAME = "checksums.json"
ENV_NO_VERIFY = "MMSPARSE_NO_VERIFY"
_VERIFY = [True]
_WARNED_UNVERIFIED: set[str] = set()

logger = logging.getLogger("mmsparse.io")


def current_umask() -> int:
    """The process's umask (read without changing it for good)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_public_dir(path: str | Path) -> Path:
    """Give a directory the usual permissions (``tempfile.mkdtemp`` makes it 0700)."""
    path = Path(path)
    os.chmod(path, DIR_MODE & ~current_umask())
    return path


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
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files, and a writer may have replaced the file (safetensors
        # does): give the finished file the usual permissions (0644 under umask 022).
        os.chmod(tmp_path, FILE_MODE & ~current_umask())
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


def _nonfinite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first non-finite float in ``obj`` (dicts, lists, tuples): ``(key path, value)``."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "the value", obj)
    if isinstance(obj, dict):
        items: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = _nonfinite(value, key)
        if found:
            return found
    return None


def json_text(obj: Any, *, indent: int | None = 2, default: Any = None, what: str = "JSON") -> str:
    """``obj`` as strict JSON: a NaN or infinity is an error, never invalid JSON.

    Args:
        obj: Plain data (dicts, lists, strings, numbers, booleans, ``None``).
        indent: Indentation (``None``: one line).
        default: ``json.dumps``' fallback for other objects.
        what: What is written (a file, "stdout"), for the error message.

    Raises:
        MMSparseError: Naming the key of a non-finite number.
    """
    try:
        return json.dumps(obj, indent=indent, default=default, allow_nan=False)
    except ValueError as exc:
        found = _nonfinite(obj)
        if found is None:
            raise
        raise MMSparseError(
            f"{what}: {found[0]} is {found[1]}, which JSON cannot hold (a finite number is "
            "needed); nothing was written"
        ) from exc


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically.

    Raises:
        MMSparseError: If ``obj`` holds a NaN or an infinity (the file is left as it was).
    """
    atomic_write_text(path, json_text(obj, what=str(path)) + "\n")


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


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def set_verify(enabled: bool) -> None:
    """Switch the checksum check of :func:`verify_checksums` on or off for this process.

    The command line's ``--no-verify`` switches it off; so does ``MMSPARSE_NO_VERIFY=1``.
    """
    _VERIFY[0] = bool(enabled)


def verify_enabled() -> bool:
    """Whether checkpoints are verified on load (see :func:`set_verify`)."""
    return _VERIFY[0] and os.environ.get(ENV_NO_VERIFY, "").strip() in ("", "0")


def write_checksums(directory: str | Path, names: list[str]) -> None:
    """Record the sha256 of ``names`` (files in ``directory``) in ``checksums.json``.

    Written atomically after the files themselves, so a complete ``checksums.json``
    always describes complete files.
    """
    directory = Path(directory)
    sums = {name: file_sha256(directory / name) for name in sorted(names)}
    atomic_write_json(directory / CHECKSUMS_NAME, {"algorithm": "sha256", "files": sums})


def record_checksums(directory: str | Path) -> list[str]:
    """Record (again) the sha256 of every file of a checkpoint directory.

    For a directory whose ``checksums.json`` was lost: every visible regular file but the
    record itself is recorded, as it is now (check it first: whatever changed is taken as
    correct from then on).

    Returns:
        The recorded file names.
    """
    directory = Path(directory)
    names = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != CHECKSUMS_NAME
    )
    write_checksums(directory, names)
    return names


def verify_checksums(directory: str | Path, names: list[str] | None = None) -> None:
    """Check files of ``directory`` against its ``checksums.json``.

    A directory without ``checksums.json`` (written before checksums were recorded, or
    the record was deleted) is loaded unverified, with a warning (once per directory)
    that says how to record it again or to switch the check off; with verification
    switched off (:func:`set_verify`) nothing is checked or said.

    Args:
        directory: A checkpoint directory.
        names: The files to check (default: every file recorded).

    Raises:
        CheckpointError: Naming the damaged or missing file and how to skip the check.
    """
    directory = Path(directory)
    record = directory / CHECKSUMS_NAME
    if not verify_enabled():
        return
    if not record.is_file():
        key = str(directory.resolve())
        if key not in _WARNED_UNVERIFIED:
            _WARNED_UNVERIFIED.add(key)
            logger.warning(
                "%s: no %s, so its files are loaded unverified (written before checksums "
                "existed, or the record was deleted); record it again with python -c "
                "\"import mmsparse.io_utils as u; u.record_checksums('%s')\" or pass "
                "--no-verify (MMSPARSE_NO_VERIFY=1) to load without checking",
                directory,
                CHECKSUMS_NAME,
                directory,
            )
        return
    data = read_json(record, "checksum record")
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{record}: not a checksum record (no 'files' mapping)")
    for name in sorted(files if names is None else [n for n in names if n in files]):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found (listed in {CHECKSUMS_NAME})")
        if file_sha256(path) != files[name]:
            raise CheckpointError(
                f"{path}: checksum mismatch: the file changed since it was written (sha256 "
                f"in {CHECKSUMS_NAME}); restore or retrain it, or pass --no-verify to load "
                "it anyway"
            )

"""A run directory's lifecycle: checked, created, resumed, checkpointed, finished.

The layout (``mmsparse.runs`` reads it)::

    RUN_DIR/config.json      the RunConfig, paths resolved (written when the run starts)
    RUN_DIR/metrics.jsonl    one JSON object per logged step, epoch and validation
    RUN_DIR/checkpoints/     the resumable state (checksummed, replaced atomically)
    RUN_DIR/best/            the selected model (checksummed, swapped in with renames)
    RUN_DIR/final.json       the summary, written when training ends
    RUN_DIR/curves.png       training curves (``train.plot``)

:class:`RunDirectory` names these files and does every write of a run to them; the
functions below answer questions about a run directory without opening it for writing
(``bench frontier`` asks :func:`resume_conflicts` before it trains anything).

One training at a time: while a run trains, rank 0 holds an exclusive ``fcntl.flock`` on
``RUN_DIR/.train.lock`` (:class:`RunLock`); a second training into the same folder stops
with a one-line error. The operating system releases the lock when the process ends, even
by ``kill -9``, so a killed run resumes at once; the file is removed when the training
ends and travels harmlessly with a folder that is moved.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mmsparse.config import RunConfig, config_from_dict, save_config
from mmsparse.errors import CheckpointError, ConfigError, MMSparseError
from mmsparse.io_utils import atomic_write_json, json_text, make_public_dir
from mmsparse.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    repair_directory,
    save_checkpoint,
    swap_in_directory,
    truncate_log,
)

logger = logging.getLogger("mmsparse.train")

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FINAL_NAME = "final.json"
CURVES_NAME = "curves.png"
BEST_NAME = "best"
CHECKPOINTS_NAME = "checkpoints"
SELECTION_NAME = "selection.json"

LOCK_NAME = ".train.lock"
# Names a run (or ``mmsparse evaluate``) writes in its folder; hidden temporary files of
# atomic writes (``.NAME.*.tmp``, ``.best.tmp-*``) too.
RUN_ENTRIES = frozenset(
    {
        CONFIG_NAME,
        METRICS_NAME,
        FINAL_NAME,
        CURVES_NAME,
        BEST_NAME,
        f"{BEST_NAME}.old",
        CHECKPOINTS_NAME,
        LOCK_NAME,
    }
)
# The top-level keys of a saved RunConfig (a run writes every one of them).
RUN_CONFIG_KEYS = frozenset(RunConfig().to_dict())

# Config keys that may differ between the sessions of a resumed run.
RESUME_FREE_KEYS = ("train.progress", "train.plot", "train.compile", "train.log_every")


class RunLock:
    """An exclusive lock on a run folder for the lifetime of one training.

    ``fcntl.flock`` on ``RUN_DIR/.train.lock``, taken without waiting; the lock file says
    who holds it (process id and host). Released by :meth:`release` (which removes the
    file) or by the operating system when the process ends. Where ``fcntl`` or ``flock``
    is unavailable (another OS, some network file systems) training goes on unlocked, with
    a warning.

    Args:
        folder: The run folder (it must exist).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            ConfigError: If another training holds it (naming the folder and the holder).
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("%s: no file locking on this system; not locked", self.folder)
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(
                        f"{self.folder}: another training is writing this run folder"
                        f"{f' ({holder})' if holder else ''}; wait for it to end, or train "
                        "into another --out"
                    ) from None
                logger.warning("%s: cannot lock the run folder (%s); not locked", self.folder, exc)
                return
            # The last holder removes the file when it ends: make sure the file we locked
            # is still the one at the path (else lock the new one).
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let the lock go (no-op when not held)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # the folder was moved or the file removed meanwhile
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, in a few words (``None``: not a write failure)."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device"
        return " ".join(str(exc.strerror or exc).split())
    if type(exc).__name__ == "SafetensorError":  # safetensors' writer (no OSError subclass)
        text = str(exc)
        if "code: 28" in text or "StorageFull" in text:
            return "no space left on device"
        return " ".join(text.split())[:200]
    return None


def _read_holder(fd: int) -> str:
    """What the lock file says of its holder (empty if unreadable)."""
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


class RunDirectory:
    """The files of one run directory, and every write a training makes to them.

    Args:
        path: The run directory (it need not exist yet).

    Attributes:
        path: The run directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: RunLock | None = None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        """``config.json``."""
        return self.path / CONFIG_NAME

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / METRICS_NAME

    @property
    def final_path(self) -> Path:
        """``final.json``."""
        return self.path / FINAL_NAME

    @property
    def curves_path(self) -> Path:
        """``curves.png``."""
        return self.path / CURVES_NAME

    @property
    def best_dir(self) -> Path:
        """``best/``: the selected model."""
        return self.path / BEST_NAME

    @property
    def checkpoints_dir(self) -> Path:
        """``checkpoints/``: the resumable state."""
        return self.path / CHECKPOINTS_NAME

    # -- questions --------------------------------------------------------------------

    def has_progress(self) -> bool:
        """Whether the directory holds a completed checkpoint or a selected model."""
        return has_progress(self.path)

    def saved_config(self) -> RunConfig:
        """The config saved in the directory.

        Raises:
            CheckpointError: If there is none or it is unreadable.
        """
        return resume_config(self.path)

    def resume_conflicts(self, cfg: RunConfig) -> list[str]:
        """Config keys in which ``cfg`` differs from the saved run (:func:`resume_conflicts`)."""
        return resume_conflicts(cfg, self.path)

    # -- starting ---------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse a folder that holds files no run wrote (before anything is written).

        Fine: a missing or empty folder, a run folder (its ``config.json`` is a run's and
        it has a checkpoint or a model; files the user added there are left alone), or a
        folder holding only names a run writes (a start that failed early).

        Raises:
            ConfigError: Naming the folder and the first files that are not a run's.
        """
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: not a folder; choose another --out")
        run_config = _is_run_config(self.config_path)
        if run_config and self.has_progress():
            return
        foreign = [
            name
            for name in sorted(p.name for p in self.path.iterdir())
            if not _written_by_a_run(name) or (name == CONFIG_NAME and not run_config)
        ]
        if foreign:
            shown = ", ".join(
                f"{n} (not a run's config)" if n == CONFIG_NAME else n for n in foreign[:3]
            )
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise ConfigError(
                f"{self.path}: holds files no mmsparse run wrote ({shown}{more}); train into "
                "a new or empty folder (--out) or an existing run's folder (nothing was "
                "written)"
            )

    def prepare(self, cfg: RunConfig, resume: bool) -> RunConfig:
        """Create the directory, or check it for resuming; returns the config to use.

        A directory whose start failed before its first checkpoint (bad data, a typo in
        the config) holds nothing to protect: the run starts afresh there.

        Raises:
            ConfigError: If the directory holds a run and ``resume`` is false, or
                ``resume`` with a config that differs from the run's.
        """
        saved = self.config_path
        if saved.is_file() and not self.has_progress():
            logger.info("%s holds no completed checkpoint; starting the run afresh", self.path)
            with self.writing(CONFIG_NAME):
                save_config(cfg, saved)
                truncate_log(self.metrics_path, 0)
            return cfg
        if saved.is_file():
            if not resume:
                raise ConfigError(
                    f"{self.path}: already holds a run; pass --resume to continue it or "
                    f"choose another --out (nothing was overwritten)"
                )
            diff = self.resume_conflicts(cfg)
            if diff:
                raise ConfigError(
                    f"{saved}: --resume with a different config (keys {', '.join(diff)}); "
                    f"resume with the run's own config"
                )
            return cfg
        with self.writing(CONFIG_NAME):
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, saved)
        return cfg

    def start(self, cfg: RunConfig, resume: bool) -> RunConfig:
        """Open the folder for a run: check it, prepare it, drop old checkpoints if new.

        :meth:`check_writable`, then the folder is created and locked for this training
        (:class:`RunLock`, held until :meth:`close`), then :meth:`prepare`; without
        ``resume`` any earlier checkpoints are removed.

        Raises:
            ConfigError: If the folder holds files no run wrote, another training holds
                it, or :meth:`prepare` refuses it.
        """
        self.check_writable()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.path)
        lock.acquire()
        self._lock = lock
        try:
            cfg = self.prepare(cfg, resume)
            if not resume and self.checkpoints_dir.exists():
                shutil.rmtree(self.checkpoints_dir)
        except BaseException:
            self.close()
            raise
        return cfg

    def close(self) -> None:
        """Release the folder's lock taken by :meth:`start` (no-op when none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def repair(self) -> None:
        """Undo a swap of ``best/`` that a kill interrupted (before resuming)."""
        repair_directory(self.best_dir)

    # -- checkpoints ------------------------------------------------------------------

    def load_state(self) -> tuple[TrainerState, dict[str, torch.Tensor]] | None:
        """The latest complete checkpoint, or ``None`` when there is none (verified).

        Raises:
            CheckpointError: If the checkpoint is broken.
        """
        return load_checkpoint(self.checkpoints_dir)

    def save_state(
        self, state: TrainerState, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> Path:
        """Write the epoch's checkpoint (the previous one stays until it is complete).

        Raises:
            CheckpointError: If it cannot be written (a full disk, say), in one line.
        """
        with self.writing("the checkpoint"):
            return save_checkpoint(self.checkpoints_dir, state, model, optimizer)

    def save_best(
        self,
        model: Any,
        selection: dict[str, Any],
        *,
        vocab_tokens: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Replace ``best/`` by ``model`` with its ``selection.json`` (renames: atomic).

        Args:
            model: A :class:`~mmsparse.model.SparseDenseModel`.
            selection: Written as ``best/selection.json`` (epoch, metric, validation).
            vocab_tokens: Term names saved beside the weights.
            extra: More fields of ``model.json``.

        Raises:
            CheckpointError: If it cannot be written (a full disk, say), in one line; the
                previous ``best/`` stays (a partial copy is removed on resume).
        """
        with self.writing("the selected model (best/)"):
            tmp = make_public_dir(tempfile.mkdtemp(prefix=".best.tmp-", dir=self.path))
            model.save_pretrained(tmp, vocab_tokens=vocab_tokens, extra=extra)
            atomic_write_json(tmp / SELECTION_NAME, selection)
            swap_in_directory(tmp, self.best_dir)

    def read_selection(self) -> dict[str, Any]:
        """``best/selection.json``.

        Raises:
            CheckpointError: If training selected no model.
        """
        path = self.best_dir / SELECTION_NAME
        if not path.is_file():
            raise CheckpointError(f"{self.path}: training ended without a selected model")
        return json.loads(path.read_text(encoding="utf-8"))

    # -- logs and summary -------------------------------------------------------------

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the ``metrics.jsonl`` records of epochs ``<= last_epoch`` (resume)."""
        with self.writing(METRICS_NAME):
            truncate_log(self.metrics_path, last_epoch)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (strict JSON, one line).

        Raises:
            MMSparseError: If the record holds a NaN or an infinity (see
                :func:`~mmsparse.train.callbacks.strict_record`).
        """
        line = json_text(record, indent=None, what=str(self.metrics_path))
        with self.writing(METRICS_NAME), open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def write_final(self, summary: dict[str, Any]) -> None:
        """Write ``final.json`` (atomically)."""
        with self.writing(FINAL_NAME):
            atomic_write_json(self.final_path, summary)

    def plot(self) -> Path | None:
        """Draw ``curves.png`` from ``metrics.jsonl`` (``None`` without matplotlib)."""
        from mmsparse.train.curves import plot_curves

        with self.writing(CURVES_NAME):
            return plot_curves(self.metrics_path, self.curves_path)

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Turn a failed write (a full disk, no permission) into a one-line error.

        ``OSError`` and safetensors' ``SafetensorError`` become a
        :class:`~mmsparse.errors.CheckpointError` naming the folder, what was being
        written and why, and how to continue (completed epochs are kept: every write of
        a run is atomic).

        Args:
            what: What is written (named in the error).
        """
        try:
            yield
        except MMSparseError:
            raise
        except Exception as exc:
            reason = _write_failure(exc)
            if reason is None:
                raise
            raise CheckpointError(
                f"{self.path}: cannot write {what} ({reason}); completed epochs are kept: "
                f"make room, then continue with 'mmsparse train --resume --out {self.path}'"
            ) from exc


def _written_by_a_run(name: str) -> bool:
    """Whether a folder entry has a name a run writes (see ``RUN_ENTRIES``)."""
    return (
        name in RUN_ENTRIES
        or (name.startswith("eval_") and name.endswith(".json"))  # mmsparse evaluate
        or name.startswith(f".{BEST_NAME}.tmp-")
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a config a run saved (a JSON object of every RunConfig group)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == RUN_CONFIG_KEYS


def has_progress(run_dir: str | Path) -> bool:
    """Whether a run directory holds a completed checkpoint or a selected model."""
    run_dir = Path(run_dir)
    return any(
        p.exists()
        for p in (
            run_dir / CHECKPOINTS_NAME / "latest.json",
            run_dir / BEST_NAME,
            run_dir / f"{BEST_NAME}.old",
            run_dir / FINAL_NAME,
        )
    )


def resume_conflicts(cfg: RunConfig, run_dir: str | Path) -> list[str]:
    """Config keys in which ``cfg`` differs from the run saved in ``run_dir``.

    Display and speed settings (``RESUME_FREE_KEYS``) may change between the sessions of a
    run and are not listed. Empty when the configs agree or ``run_dir`` holds no run with a
    completed checkpoint (such a start is begun afresh, see :meth:`RunDirectory.prepare`).
    """
    saved = Path(run_dir) / CONFIG_NAME
    if not saved.is_file() or not has_progress(run_dir):
        return []
    old = config_from_dict(json.loads(saved.read_text(encoding="utf-8")), str(saved))
    return [d for d in config_diff(old.to_dict(), cfg.to_dict()) if d not in RESUME_FREE_KEYS]


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def resume_config(run_dir: str | Path) -> RunConfig:
    """The config saved in a run directory (to resume it without the original file).

    Raises:
        CheckpointError: If the run directory has no readable config.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no run to resume (config.json not found)")
    return config_from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))

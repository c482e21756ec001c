"""Resumable training state, written so that a kill at any moment loses nothing.

Each epoch's state goes into a fresh directory ``checkpoints/epoch-NNNN/`` (safetensors for
tensors, JSON for the rest); only when it is complete is the pointer file
``checkpoints/latest.json`` replaced atomically, and older epoch directories removed. A
reader therefore always finds one whole checkpoint. The ``best/`` model directory is
replaced by writing a new directory and swapping it in with renames.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmsparse.errors import CheckpointError
from mmsparse.io_utils import (
    atomic_write_json,
    load_tensors,
    read_json,
    save_tensors,
    verify_checksums,
    write_checksums,
)

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
POINTER = "latest.json"


@dataclass
class TrainerState:
    """Everything besides tensors needed to continue a run exactly.

    Attributes:
        epoch: Epochs completed.
        global_step: Optimisation steps completed.
        best_metric: Best validation selection metric so far (``-inf`` before any).
        best_epoch: Epoch that reached it (0: none yet).
        bad_epochs: Validations since the last improvement.
        finished: Training has ended (all epochs or early stopping).
        stopped_early: Ended by early stopping.
        regularizer: State of the sparsity regulariser's schedule.
        scaler: State of the fp16 gradient scaler, if used.
        train_seconds: Wall-clock seconds of training so far.
        config_json: The run config the state belongs to.
    """

    epoch: int = 0
    global_step: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    regularizer: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] | None = None
    train_seconds: float = 0.0
    config_json: dict[str, Any] = field(default_factory=dict)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimiser's per-parameter state into named tensors."""
    out = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{idx}.{key}"] = (
                value if isinstance(value, torch.Tensor) else torch.tensor(value)
            )
    return out


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Restore optimiser state from :func:`optimizer_tensors` output."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


def save_checkpoint(
    ckpt_root: Path, state: TrainerState, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Path:
    """Write the epoch's state to a new directory, then move the pointer to it."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{state.epoch:04d}"
    target = ckpt_root / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    tensors = {
        f"model.{k}": v.detach().float() if v.is_floating_point() else v.detach()
        for k, v in model.state_dict().items()
    }
    tensors.update(optimizer_tensors(optimizer))
    save_tensors(target / STATE_TENSORS, tensors)
    atomic_write_json(target / STATE_JSON, _state_json(state))
    write_checksums(target, [STATE_TENSORS, STATE_JSON])
    _fsync_dir(target)
    atomic_write_json(ckpt_root / POINTER, {"dir": name, "epoch": state.epoch})
    for old in ckpt_root.glob("epoch-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _state_json(state: TrainerState) -> dict[str, Any]:
    data = dict(state.__dict__)
    if data["best_metric"] == float("-inf"):
        data["best_metric"] = None
    return data


def load_checkpoint(ckpt_root: Path) -> tuple[TrainerState, dict[str, torch.Tensor]] | None:
    """Read the latest complete checkpoint, or ``None`` when there is none.

    Raises:
        CheckpointError: If the pointer names a missing or broken checkpoint.
    """
    pointer = ckpt_root / POINTER
    if not pointer.is_file():
        return None
    info = read_json(pointer, "checkpoint pointer")
    target = ckpt_root / str(info.get("dir", ""))
    verify_checksums(target)
    data = read_json(target / STATE_JSON, "trainer state")
    tensors, _ = load_tensors(target / STATE_TENSORS)
    if data.get("best_metric") is None:
        data["best_metric"] = float("-inf")
    try:
        state = TrainerState(**data)
    except TypeError as exc:
        raise CheckpointError(f"{target / STATE_JSON}: unexpected trainer state ({exc})") from exc
    return state, tensors


def swap_in_directory(new_dir: Path, final: Path) -> None:
    """Replace directory ``final`` by ``new_dir`` with renames (old copy kept until done)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new_dir, final)
    if old.exists():
        shutil.rmtree(old)


def repair_directory(final: Path) -> None:
    """Undo a swap interrupted between its two renames (``final`` gone, ``.old`` left)."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def truncate_log(path: Path, last_epoch: int) -> None:
    """Keep only log lines of epochs ``<= last_epoch`` (and drop a torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("epoch", 0)) <= last_epoch:
            kept.append(line)
    from mmsparse.io_utils import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in kept))

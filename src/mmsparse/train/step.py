"""Pieces of a fast training step: optimiser choice, compilation, asynchronous term logging.

The step itself lives in :class:`mmsparse.train.trainer.Trainer`; what is here keeps it
free of host-device synchronisation:

- every per-step scalar (learning rate aside, which AdamW takes as a Python float) comes
  from tables built once on the device and indexed by the step number;
- the loss terms of a step are stacked into one device vector that the loop adds up on the
  device; :class:`AsyncTermLog` copies snapshots of it to pinned host memory without
  blocking and writes them once the copy has landed;
- AdamW is fused (one kernel over all parameters; on CUDA it also takes the fp16 gradient
  scaler's inf check on the device, so ``GradScaler.step`` does not synchronise either).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from mmsparse.config import ObjectiveConfig, TrainConfig
from mmsparse.errors import ConfigError
from mmsparse.losses.objective import term_names as objective_term_names

logger = logging.getLogger("mmsparse.train")

# Devices whose fused AdamW kernel ``train.fused_optimizer=auto`` uses (torch >= 2.4 has one
# for CPU; older versions fall back to the default implementation).
FUSED_DEVICES = ("cuda", "cpu")

COMPILE_MODES = {
    "default": None,
    "reduce-overhead": "reduce-overhead",
    "max-autotune": "max-autotune",
}


class StepTerms(Mapping[str, torch.Tensor]):
    """The loss terms of one step: a read-only ``name -> 0-d tensor`` mapping over one vector.

    Attributes:
        names: Term names, in the order of :attr:`vector`.
        vector: ``(K,)`` detached float32 device tensor of the terms (summed by the loop).
    """

    def __init__(self, names: Sequence[str], vector: torch.Tensor) -> None:
        self.names = tuple(names)
        self.vector = vector
        self._index = {k: i for i, k in enumerate(self.names)}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.vector[self._index[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def term_names(method: str, objective: ObjectiveConfig | None = None) -> tuple[str, ...]:
    """Names of the loss terms a step of ``method`` logs, in their fixed order.

    With an :class:`~mmsparse.config.ObjectiveConfig`, the terms of the options it switches
    on follow (see :func:`mmsparse.losses.term_names`, which this calls).
    """
    cfg = objective if objective is not None else ObjectiveConfig()
    return objective_term_names(dataclasses.replace(cfg, method=method))


def use_fused_adamw(setting: str, device: torch.device) -> bool:
    """Whether ``train.fused_optimizer`` asks for the fused AdamW kernel on ``device``."""
    if setting == "off":
        return False
    if setting == "on":
        return True
    return device.type in FUSED_DEVICES


def make_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    train_cfg: TrainConfig,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW with the run's hyper-parameters, fused when ``train.fused_optimizer`` says so.

    ``auto`` takes the fused kernel on CUDA and CPU and falls back to torch's default
    implementation where this torch has none; ``on`` insists on it. ``params`` may be
    parameter groups; a group's ``lr_scale`` multiplies the scheduled learning rate.

    Raises:
        ConfigError: If ``fused_optimizer=on`` but torch has no fused AdamW for ``device``.
    """
    kwargs: dict[str, Any] = {
        "lr": train_cfg.lr,
        "betas": train_cfg.betas,
        "eps": train_cfg.eps,
        "weight_decay": train_cfg.weight_decay,
    }
    params = list(params)
    if use_fused_adamw(train_cfg.fused_optimizer, device):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, ValueError) as exc:
            if train_cfg.fused_optimizer == "on":
                raise ConfigError(
                    f"train.fused_optimizer=on: no fused AdamW for {device} in torch "
                    f"{torch.__version__} ({exc}); use train.fused_optimizer=auto or off"
                ) from exc
            logger.info("no fused AdamW for %s (%s); using the default one", device, exc)
    return torch.optim.AdamW(params, **kwargs)


def param_groups(
    model: Any, params: Sequence[torch.nn.Parameter], train_cfg: TrainConfig
) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``params`` with their learning-rate scales.

    The sparse head runs at ``train.sparse_lr_scale`` times the rate, the dense heads at
    ``train.dense_lr_scale`` times it, ``tau`` at ``train.tau_lr_scale`` times it (its own
    group only when that is not 1, so that older runs' optimizers still load), the lookup's
    per-term query weights (``model.query_encoder=lookup``) at ``train.query_lr_scale``
    times it, the rest (the sparse scale) at the rate itself.

    Args:
        model: The :class:`~mmsparse.model.SparseDenseModel`.
        params: The parameters to optimise (the method's trainable ones).
        train_cfg: The run's ``train`` group.
    """
    group_of = {id(p): "sparse" for p in model.sparse_head.parameters()}
    group_of.update({id(p): "dense" for p in model.dense_parameters()})
    if train_cfg.tau_lr_scale != 1.0:
        group_of[id(model.tau)] = "tau"
    if getattr(model, "query_weight", None) is not None:
        group_of[id(model.query_weight)] = "query"
    scales = {
        "dense": train_cfg.dense_lr_scale,
        "rest": 1.0,
        "sparse": train_cfg.sparse_lr_scale,
        "tau": train_cfg.tau_lr_scale,
        "query": train_cfg.query_lr_scale,
    }
    members: dict[str, list[torch.nn.Parameter]] = {name: [] for name in scales}
    for p in params:
        members[group_of.get(id(p), "rest")].append(p)
    return [
        {"params": members[name], "lr_scale": scale}
        for name, scale in scales.items()
        if members[name]
    ]


def compile_step(fn: Callable[..., Any], mode: str, device: torch.device) -> Callable[..., Any]:
    """``fn`` compiled as ``train.compile`` asks (``off``: ``fn`` itself).

    ``reduce-overhead`` records CUDA graphs of the forward and backward passes on CUDA
    (cudagraph trees; the loop marks each step's start) and is plain compilation on CPU.
    """
    if mode == "off":
        return fn
    if mode not in COMPILE_MODES:
        raise ConfigError(
            f"train.compile must be one of off, {', '.join(COMPILE_MODES)}; got {mode!r}"
        )
    return torch.compile(fn, mode=COMPILE_MODES[mode], dynamic=False)


def uses_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether compiled steps of ``mode`` replay CUDA graphs on ``device``."""
    return device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")


class AsyncTermLog:
    """Writes snapshots of device-side loss terms without stalling the training loop.

    :meth:`push` starts a non-blocking copy of a ``(K,)`` device vector into pinned host
    memory and records a CUDA event; :meth:`poll` writes every snapshot whose copy has
    finished, in order; :meth:`flush` waits for the rest. On the CPU the copy is immediate.

    Args:
        names: Names of the ``K`` terms.
        device: Device of the vectors.
        write: Receives one record per snapshot: ``meta`` plus ``{name: value}``.
    """

    def __init__(
        self, names: Sequence[str], device: torch.device, write: Callable[[dict], None]
    ) -> None:
        self.names = tuple(names)
        self.device = device
        self.write = write
        self._pending: list[tuple[torch.Tensor, Any, dict[str, Any]]] = []

    def push(self, values: torch.Tensor, meta: dict[str, Any]) -> None:
        """Queue ``values`` (``(K,)``, on the device) with ``meta`` (e.g. epoch, step)."""
        if self.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event, meta))
        else:
            self._pending.append((values.detach().to("cpu", copy=True), None, meta))
        self.poll()

    def poll(self) -> None:
        """Write the snapshots whose copies have finished (never waits)."""
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            self._emit(self._pending.pop(0))

    def flush(self) -> None:
        """Wait for and write every queued snapshot."""
        while self._pending:
            item = self._pending.pop(0)
            if item[1] is not None:
                item[1].synchronize()
            self._emit(item)

    def _emit(self, item: tuple[torch.Tensor, Any, dict[str, Any]]) -> None:
        host, _, meta = item
        record = dict(meta)
        record.update(zip(self.names, host.tolist()))
        self.write(record)

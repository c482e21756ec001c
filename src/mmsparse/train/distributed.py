"""Data-parallel training over several processes (``torchrun``), global-batch objective.

Launch::

    torchrun --nproc_per_node 4 -m mmsparse train --config configs/blip-coco.json --out runs/x

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup` reads them and joins the process group (NCCL on CUDA, gloo
on CPU). The semantics, chosen so that N processes train exactly the run of one:

- ``train.batch_size`` is the **global** batch. Every rank draws the same permutation,
  takes the same global batch of caption rows, and encodes its own contiguous slice
  (rank ``r`` of ``W``: rows ``[r·B/W, (r+1)·B/W)``).
- The vectors of all ranks are gathered **with their gradients** before the loss
  (:func:`gather_with_grad`, as open_clip's ``gather_features`` with
  ``local_loss=False``), so the contrastive and distillation scores use the negatives of
  the whole global batch, in the single-process order. Every rank then computes the same
  global loss; the l1 regulariser is the mean over the global batch.
- The backward of the gather sums the gradients of all ranks' (identical) losses, so each
  rank holds ``W ·`` its share of the gradient; gradients are then averaged over ranks
  (:meth:`DistContext.all_reduce_mean`), which yields exactly the gradient of the global
  loss for every parameter, ``tau`` included.
- Checkpoints, logs, validation and model selection happen on rank 0; the other ranks
  receive its decisions (:meth:`DistContext.broadcast_object`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmsparse.errors import ConfigError, MMSparseError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job (a single process by default).

    Attributes:
        rank: Global rank of this process.
        world_size: Number of processes.
        local_rank: Rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (writes files, validates, logs)."""
        return self.rank == 0

    def local_slice(self, global_batch: int) -> slice:
        """This rank's rows of a global batch of ``global_batch`` rows.

        Raises:
            ConfigError: If the batch does not split evenly over the ranks.
        """
        if global_batch % self.world_size:
            raise ConfigError(
                f"train.batch_size={global_batch} (the global batch) must be divisible by "
                f"the number of processes ({self.world_size})"
            )
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; for small objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only; its result, or its error, reaches every rank.

        An :class:`~mmsparse.errors.MMSparseError` raised on rank 0 is raised again on all
        ranks (same type and message), so no rank waits forever for a failed one.
        """
        if not self.enabled:
            return fn()
        result: Any = None
        error: tuple[type, str] | None = None
        if self.is_main:
            try:
                result = fn()
            except MMSparseError as exc:
                error = (type(exc), str(exc))
        result, error = self.broadcast_object((result, error))
        if error is not None:
            raise error[0](error[1])
        return result

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of ``params`` to every rank (in place)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` over ranks in place, with one collective on a flat buffer."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over ranks (parameters without one skipped)."""
        self.all_reduce_mean([p.grad for p in params if p.grad is not None])


def _collective(new: str, old: str) -> Callable[..., Any]:
    """A single-tensor collective under its current name (torch 2.13 renamed them)."""
    return getattr(dist, new, None) or getattr(dist, old)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of all ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.world = dist.get_rank(), world
        tensor = tensor.contiguous()
        out = tensor.new_empty((world * tensor.shape[0], *tensor.shape[1:]))
        _collective("all_gather_single", "all_gather_into_tensor")(out, tensor)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        n = grad.shape[0] // ctx.world
        if dist.get_backend() == dist.Backend.NCCL:
            out = grad.new_empty((n, *grad.shape[1:]))
            _collective("reduce_scatter_single", "reduce_scatter_tensor")(out, grad)
            return out
        total = grad.clone()
        dist.all_reduce(total)  # gloo has no reduce-scatter: reduce all, keep our rows
        return total[ctx.rank * n : (ctx.rank + 1) * n]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (rank order), keeping gradients.

    The backward pass sums, over ranks, the gradient each rank's loss sends to the rows of
    this rank (open_clip's ``gather_with_grad``). With one process it returns ``tensor``.

    Args:
        tensor: ``(n, ...)`` local rows; the same ``n`` on every rank.

    Returns:
        ``(world_size · n, ...)`` rows of all ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def env_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment ``torchrun`` sets."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def current_context() -> DistContext:
    """The context of an initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        _, _, local = env_rank()
        return DistContext(dist.get_rank(), dist.get_world_size(), local)
    return DistContext()


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true without a process group or torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank()[0] == 0


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> tuple[DistContext, bool]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device: ``train.device`` of the run: CUDA (``auto`` with a GPU, ``cuda``) uses
            NCCL and binds this process to GPU ``LOCAL_RANK``; otherwise gloo.
        timeout_minutes: Collective timeout (validation on rank 0 makes the others wait).

    Returns:
        ``(context, created)``: ``created`` tells whether this call started the group (the
        caller then ends it with :func:`teardown`). An already initialised group is used
        as is; without ``WORLD_SIZE > 1`` the context is a single process.

    Raises:
        ConfigError: If the distributed environment is incomplete.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context(), False
    rank, world, local = env_rank()
    if world <= 1:
        return DistContext(), False
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun")
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return DistContext(rank, world, local), True


def teardown(created: bool) -> None:
    """End the process group if :func:`setup` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, ctx: DistContext) -> str:
    """The device name of this rank: CUDA runs use GPU ``LOCAL_RANK``."""
    if not ctx.enabled:
        return device
    if device == "auto":
        return f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device

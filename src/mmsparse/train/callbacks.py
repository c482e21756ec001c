"""Hooks of the training loop: metrics.jsonl, progress bars, model selection.

:meth:`Trainer.fit <mmsparse.train.trainer.Trainer.fit>` calls every callback of
``trainer.callbacks`` at four points, in list order (as sentence-transformers' callbacks
are called):

- ``on_fit_begin(trainer)`` before the first epoch of this session;
- ``on_epoch_begin(trainer, epoch)``;
- ``on_step_end(trainer, epoch, step, terms, sums)`` after every optimisation step, with
  the step's ``(K,)`` device vector of terms and the epoch's running sums. This runs every
  step: it must not read from the device (no ``float(...)``, ``.item()``, ``.tolist()``)
  except rarely, or it stalls the loop;
- ``on_epoch_end(trainer, epoch, record, val)`` after the epoch's steps, with the epoch's
  ``train`` record (term means, learning rate, ``tau``, ...) and the validation result
  when the epoch was validated (else ``None``); the checkpoint is written after it;
- ``on_fit_end(trainer)`` when the loop ends, normally or by an error.

Callbacks run on rank 0 only (under data parallelism the other ranks receive rank 0's
decisions with the trainer's state). The defaults (:func:`default_callbacks`) are
:class:`ModelSelection`, :class:`MetricsLog` and, with ``train.progress``,
:class:`ProgressBars`; that order matters: a validation record names whether it was
selected.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from mmsparse.train.step import AsyncTermLog

if TYPE_CHECKING:  # pragma: no cover
    from mmsparse.evaluate.retrieval import EvalResult
    from mmsparse.train.trainer import Trainer

logger = logging.getLogger("mmsparse.train")


class Callback:
    """Base class of the loop's hooks; every hook does nothing by default."""

    def on_fit_begin(self, trainer: Trainer) -> None:
        """Before the first epoch of this session."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Before the steps of ``epoch`` (1-based)."""

    def on_step_end(
        self, trainer: Trainer, epoch: int, step: int, terms: torch.Tensor, sums: torch.Tensor
    ) -> None:
        """After step ``step`` (0-based in the epoch); ``terms``/``sums`` stay on the device."""

    def on_epoch_end(
        self, trainer: Trainer, epoch: int, record: dict[str, Any], val: EvalResult | None
    ) -> None:
        """After the epoch's steps (and validation, if any), before its checkpoint."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """When the loop ends (also on an error)."""


def strict_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with non-finite floats as ``None`` (JSON has no NaN or infinity)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def val_record(result: EvalResult, epoch: int, step: int, selected: bool) -> dict[str, Any]:
    """The ``val`` record of ``metrics.jsonl``: every metric under ``direction/type/name``."""
    rec: dict[str, Any] = {"type": "val", "epoch": epoch, "step": step, "selected": selected}
    for direction, by_type in result.metrics.items():
        for st, metrics in by_type.items():
            for name, value in metrics.items():
                rec[f"{direction}/{st}/{name}"] = value
    rec.update({k: v for k, v in result.sparsity.items() if isinstance(v, float | int)})
    return rec


class MetricsLog(Callback):
    """Writes ``metrics.jsonl``: step, train and validation records (strict JSON).

    With ``train.log_every > 0``, a ``step`` record every that many steps holds the mean of
    the terms since the previous one, copied from the device without stalling the step
    (:class:`~mmsparse.train.step.AsyncTermLog`). Every epoch adds its ``train`` record and,
    when validated, its ``val`` record.

    Args:
        log_every: ``train.log_every``.
    """

    def __init__(self, log_every: int = 0) -> None:
        self.log_every = log_every
        self._steps: AsyncTermLog | None = None
        self._window: torch.Tensor | None = None
        self._count = 0
        self._trainer: Trainer | None = None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the run's ``metrics.jsonl``."""
        assert self._trainer is not None
        self._trainer.run.append_metrics(strict_record(record))

    def on_fit_begin(self, trainer: Trainer) -> None:  # noqa: D102
        self._trainer = trainer
        self._steps = AsyncTermLog(trainer.term_names, trainer.device, self._write_step)

    def _write_step(self, record: dict[str, Any]) -> None:
        # A diverged window is not written: training stops at the epoch's end and keeps
        # the last finite epoch; its log ends with the last finite steps.
        if all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            self.write(record)

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:  # noqa: D102
        if self.log_every:
            self._window = torch.zeros(len(trainer.term_names), device=trainer.device)
            self._count = 0

    def on_step_end(  # noqa: D102
        self, trainer: Trainer, epoch: int, step: int, terms: torch.Tensor, sums: torch.Tensor
    ) -> None:
        if self._window is None:
            return
        self._window += terms
        self._count += 1
        if trainer.state.global_step % self.log_every == 0:
            assert self._steps is not None
            meta = {
                "type": "step",
                "epoch": epoch,
                "step": trainer.state.global_step,
                "lr": trainer.learning_rate,
            }
            self._steps.push(self._window / self._count, meta)
            self._window, self._count = torch.zeros_like(self._window), 0

    def on_epoch_end(  # noqa: D102
        self, trainer: Trainer, epoch: int, record: dict[str, Any], val: EvalResult | None
    ) -> None:
        if self._steps is not None:
            self._steps.flush()
        self.write(record)
        if val is not None:
            selected = trainer.state.best_epoch == epoch
            self.write(val_record(val, epoch, trainer.state.global_step, selected))

    def on_fit_end(self, trainer: Trainer) -> None:  # noqa: D102
        if self._steps is not None:
            self._steps.flush()


class ProgressBars(Callback):
    """A bar over the epochs and, under it, one over each epoch's steps (tqdm, stderr).

    The step bar shows the epoch's running mean ``total`` about 20 times an epoch (reading
    it waits for the device, so it is done rarely); the epoch bar shows the epoch's
    ``total`` (as in ``metrics.jsonl``), the selection metric and the best epoch so far.
    """

    def __init__(self) -> None:
        self._epochs: Any = None
        self._steps: Any = None
        self._last_val: EvalResult | None = None

    def on_fit_begin(self, trainer: Trainer) -> None:  # noqa: D102
        from tqdm.auto import tqdm

        cfg = trainer.cfg
        self._epochs = tqdm(
            total=cfg.train.epochs,
            initial=trainer.state.epoch,
            unit="epoch",
            desc=f"{cfg.name} [{cfg.objective.method}]",
            dynamic_ncols=True,
        )

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:  # noqa: D102
        from tqdm.auto import tqdm

        self._steps = tqdm(
            total=trainer.steps_per_epoch,
            desc=f"epoch {epoch}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )

    def on_step_end(  # noqa: D102
        self, trainer: Trainer, epoch: int, step: int, terms: torch.Tensor, sums: torch.Tensor
    ) -> None:
        self._steps.update(1)
        every = max(1, trainer.steps_per_epoch // 20)
        if (step + 1) % every == 0 and "total" in trainer.term_names:
            mean = float(sums[trainer.term_names.index("total")]) / (step + 1)
            self._steps.set_postfix(total=f"{mean:.3f}")

    def on_epoch_end(  # noqa: D102
        self, trainer: Trainer, epoch: int, record: dict[str, Any], val: EvalResult | None
    ) -> None:
        self._close_steps()
        if val is not None:
            self._last_val = val
        post = {"total": f"{record['total']:.3f}"}
        if self._last_val is not None:
            metric = trainer.select_metric
            post[metric] = f"{self._last_val.get(metric):.2f}"
            post["best"] = f"{trainer.state.best_metric:.2f}@{trainer.state.best_epoch}"
        self._epochs.set_postfix(post)
        self._epochs.update(1)

    def on_fit_end(self, trainer: Trainer) -> None:  # noqa: D102
        self._close_steps()
        if self._epochs is not None:
            self._epochs.close()
            self._epochs = None

    def _close_steps(self) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None


class ModelSelection(Callback):
    """Keeps the best validated model in ``best/``; stops after ``patience`` bad validations.

    Args:
        metric: The selection metric (``t2i/sparse/R@1``, ...).
        patience: Validations without improvement that end training (``0``: never).
    """

    def __init__(self, metric: str, patience: int = 0) -> None:
        self.metric = metric
        self.patience = patience

    def on_epoch_end(  # noqa: D102
        self, trainer: Trainer, epoch: int, record: dict[str, Any], val: EvalResult | None
    ) -> None:
        if val is None:
            return
        state = trainer.state
        value = val.get(self.metric)
        if value > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
            trainer.save_best(val)
        else:
            state.bad_epochs += 1
        if self.patience and state.bad_epochs >= self.patience:
            state.finished = state.stopped_early = True
            logger.info(
                "early stopping at epoch %d (best %s = %.2f at epoch %d)",
                epoch,
                self.metric,
                state.best_metric,
                state.best_epoch,
            )


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The callbacks a run's config asks for (on rank 0; none on the other ranks)."""
    if not trainer.dist.is_main:
        return []
    cfg = trainer.cfg.train
    callbacks: list[Callback] = [
        ModelSelection(trainer.select_metric, cfg.patience),
        MetricsLog(cfg.log_every),
    ]
    if cfg.progress:
        callbacks.append(ProgressBars())
    return callbacks

"""The training loop: resident features, index-gathered batches, resumable, logged.

Mechanics (the published schedule): AdamW over the trainable parameters and ``tau``; the
learning rate is warmed up linearly over ``warmup_frac`` of all steps, then decays linearly
to 0; gradients are clipped; fp16 autocast with a gradient scaler on CUDA (fp32 on CPU);
``tau`` is clamped after every step. Mixed precision covers the model's forward pass only:
the scores and the loss are computed in float32. Validation runs every ``eval_every``
epochs; the best epoch by ``select_metric`` is kept in ``best/`` and training stops after
``patience`` validations without improvement.

Who does what:

- the objective (its named terms, and which parameters train for each
  ``objective.method``) is :class:`mmsparse.losses.Objective`, built once from the config;
  the trainer sums and logs the terms it returns;
- the run directory (start, resume checks, checkpoints, ``best/``, ``final.json``) is
  :class:`mmsparse.train.run_dir.RunDirectory`;
- ``metrics.jsonl``, progress bars, model selection and early stopping are callbacks
  (:mod:`mmsparse.train.callbacks`) the loop calls.

Determinism: the batch order of epoch ``e`` comes from a generator seeded with
``(seed, e)`` and expansion-control draws from ``(seed, e, 1)``, and every epoch ends with
a complete checkpoint, so a run killed at any point and resumed replays the same steps:
on CPU it ends with the same metrics as an uninterrupted run.

Speed (see ``docs/train_speed.md``): the step is written not to wait for the device.
Batches are index gathers on resident features, per-step schedule values come from device
tables, loss terms are summed on the device and read at log points only
(``train.log_every``, asynchronously), AdamW is fused (CUDA and CPU), and
``train.compile`` compiles the forward pass and loss (``reduce-overhead``: with CUDA
graphs). Several processes launched by ``torchrun`` train the same run data-parallel over
the global batch (:mod:`mmsparse.train.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsparse.config import EvalConfig, RunConfig
from mmsparse.data.store import FeatureStore, load_feature_store
from mmsparse.errors import ConfigError, NonFiniteError
from mmsparse.evaluate.retrieval import EncodedSplit, EvalResult, encode_split, evaluate_encoded
from mmsparse.losses import Objective, StepInputs, method_spec
from mmsparse.model.model import SparseDenseModel
from mmsparse.paths import resolve_run_paths
from mmsparse.runs import build_model, hybrid_weights, resolve_device
from mmsparse.train.callbacks import Callback, default_callbacks
from mmsparse.train.checkpoint import TrainerState, load_optimizer_tensors
from mmsparse.train.distributed import (
    DistContext,
    current_context,
    gather_with_grad,
    rank_device,
    setup,
    teardown,
)
from mmsparse.train.run_dir import (
    RESUME_FREE_KEYS,
    RunDirectory,
    has_progress,
    resume_config,
    resume_conflicts,
)
from mmsparse.train.step import (
    StepTerms,
    compile_step,
    make_optimizer,
    param_groups,
    uses_cuda_graphs,
)

logger = logging.getLogger("mmsparse.train")

# Importable from here as before the run directory had its own module.
__all__ = [
    "RESUME_FREE_KEYS",
    "TrainResult",
    "Trainer",
    "has_progress",
    "lr_factor",
    "resume_config",
    "resume_conflicts",
    "selection_metric",
    "set_trainable",
    "train",
]


@dataclass
class TrainResult:
    """Outcome of a training run.

    Attributes:
        run_dir: The run directory.
        best_epoch: Epoch of the selected model.
        best_metric: Its validation selection metric.
        select_metric: Name of the selection metric.
        val: Validation result of the selected model (as a dict).
        epochs_run: Epochs completed.
        stopped_early: Whether early stopping ended the run.
        train_seconds: Wall-clock training time (all sessions of a resumed run).
    """

    run_dir: Path
    best_epoch: int
    best_metric: float
    select_metric: str
    val: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    train_seconds: float


def selection_metric(cfg: RunConfig) -> str:
    """The validation metric that selects the model (resolving ``auto`` by the method)."""
    if cfg.train.select_metric != "auto":
        return cfg.train.select_metric
    return method_spec(cfg.objective.method).select_metric


def lr_factor(step: int, total_steps: int, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then linear decay to 0."""
    warmup = round(warmup_frac * total_steps)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def set_trainable(model: SparseDenseModel, method: str) -> list[torch.nn.Parameter]:
    """Freeze what ``method`` keeps fixed; return the parameters to optimise.

    The table of :data:`mmsparse.losses.METHODS` says what each method freezes.
    """
    return method_spec(method).set_trainable(model)


def _amp(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the forward pass: fp16/bf16 on CUDA, bf16 on CPU only when asked."""
    mode = cfg.train.amp
    if mode == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if mode == "bf16" else None
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(
        (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63)
    )


def caption_term_columns(
    store: FeatureStore, vocab: Any, term_ids: torch.Tensor | None, content_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Every caption's own terms as CSR arrays of the sparse head's columns.

    Args:
        store: The features (their captions' tokens).
        vocab: The named vocabulary.
        term_ids: The sparse head's full-vocabulary ids (a restricted vocabulary), or
            ``None`` for all terms. Tokens outside it are dropped (a caption left with none
            is never masked by expansion control and has no lexical target).
        content_only: Keep content words only (lexical grounding).

    Returns:
        ``(indptr, indices)`` with column indices of the head.
    """
    from mmsparse.data.terms import content_mask

    indptr, indices = store.caption_token_ids(vocab)
    keep = np.ones(len(vocab), dtype=bool)
    if content_only:
        keep &= content_mask(vocab)
    column = np.arange(len(vocab), dtype=np.int64)
    if term_ids is not None:
        restricted = np.zeros(len(vocab), dtype=bool)
        ids = term_ids.cpu().numpy()
        restricted[ids] = True
        keep &= restricted
        column = np.full(len(vocab), -1, dtype=np.int64)
        column[ids] = np.arange(ids.size)
    if keep.all():
        return indptr, indices
    ok = keep[indices]
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))[ok]
    new_indptr = np.zeros_like(indptr)
    np.add.at(new_indptr, rows + 1, 1)
    return np.cumsum(new_indptr), column[indices[ok]]


def image_term_columns(
    store: FeatureStore,
    caption_terms: tuple[np.ndarray, np.ndarray],
    train_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For every caption row, the terms of all of its image's training captions (CSR).

    The caption gate's mask (``objective.gate_weight``): the union of the head's columns
    of the training captions of each image, looked up by caption row, so a batch of caption
    rows gathers its images' masks directly. Captions of images without a training caption
    get an empty row.

    Args:
        store: The features (``caption_image``).
        caption_terms: Every caption's terms (:func:`caption_term_columns`).
        train_rows: The training caption rows.
    """
    indptr, indices = caption_terms
    rows = np.asarray(train_rows, dtype=np.int64)
    images = store.caption_image[rows]
    lengths = np.diff(indptr)[rows]
    cols = np.concatenate([indices[indptr[r] : indptr[r + 1]] for r in rows] or [[]])
    pairs = np.unique(np.stack([np.repeat(images, lengths), cols.astype(np.int64)], 1), axis=0)
    n_images = len(store.image_ids)
    img_indptr = np.zeros(n_images + 1, dtype=np.int64)
    np.add.at(img_indptr, pairs[:, 0] + 1, 1)
    img_indptr = np.cumsum(img_indptr)
    # caption row -> its image's union
    cap_img = np.asarray(store.caption_image, dtype=np.int64)
    lens = img_indptr[cap_img + 1] - img_indptr[cap_img]
    out_indptr = np.concatenate([[0], np.cumsum(lens)])
    out = np.concatenate(
        [pairs[img_indptr[i] : img_indptr[i + 1], 1] for i in cap_img] or [np.zeros(0, np.int64)]
    )
    return out_indptr, out


class Trainer:
    """Trains one run (see the module docstring); use :func:`train` for the usual entry.

    Args:
        cfg: The run configuration.
        store: The features.
        run_dir: Where the run is written.
        dist_ctx: This process's place in a data-parallel job (default: the initialised
            process group, else a single process).
        callbacks: The loop's hooks (default: :func:`~mmsparse.train.callbacks.
            default_callbacks`: model selection, ``metrics.jsonl``, progress bars).

    The public surface (used by ``mmsparse bench`` and the tests; everything else is
    internal):

    Attributes:
        cfg: The run configuration.
        run: The :class:`~mmsparse.train.run_dir.RunDirectory`.
        dist: The :class:`~mmsparse.train.distributed.DistContext`.
        device: The training device.
        model: The :class:`~mmsparse.model.SparseDenseModel` being trained.
        objective: The :class:`~mmsparse.losses.Objective`.
        term_names: Names of the logged terms (the order of every step's vector).
        optimizer: The AdamW optimiser.
        params: The parameters it optimises.
        state: The resumable :class:`~mmsparse.train.checkpoint.TrainerState`.
        select_metric: The validation metric that selects the model.
        batch_size: Caption-image pairs of a (global) batch.
        steps_per_epoch: Optimisation steps of an epoch.
        total_steps: Steps of the whole run.
        amp_dtype: Autocast dtype of the forward pass (``None``: float32).
        train_captions: ``(n,)`` device tensor of the training captions' rows.
        callbacks: The loop's hooks.
    """

    def __init__(
        self,
        cfg: RunConfig,
        store: FeatureStore,
        run_dir: str | Path | RunDirectory,
        dist_ctx: DistContext | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.run = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        self.dist = dist_ctx if dist_ctx is not None else current_context()
        self.select_metric = selection_metric(cfg)
        self.device = resolve_device(rank_device(cfg.train.device, self.dist))
        self.train_split = store.split(cfg.data.train_splits, allow_missing=True)
        self.val_split = store.split(cfg.data.val_split)
        self.vocab = store.vocabulary(cfg.model.vocab_size)

        self.model = build_model(cfg, store).to(self.device)
        if len(self.vocab) != self.model.vocab_size:
            self.vocab = self.vocab.fallback(self.model.vocab_size)

        # Features stay resident on the device; batches are gathered by index.
        self.image_feats = torch.from_numpy(store.image_feats).to(self.device)
        self.caption_feats = torch.from_numpy(store.caption_feats).to(self.device)
        self.caption_image = torch.from_numpy(store.caption_image).to(self.device)
        self.train_captions = torch.from_numpy(self.train_split.caption_rows).to(self.device)
        n = self.train_captions.numel()
        self.batch_size = min(cfg.train.batch_size, n)
        self.local_rows = self.dist.local_slice(self.batch_size)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs

        self.objective = Objective(
            cfg.objective,
            n_terms=self.model.n_terms,
            total_steps=self.total_steps,
            caption_terms=self._caption_terms if self.vocab.named else None,
            device=self.device,
            query_lookup=self.model.inference_free,
            image_terms=self._image_terms if self.vocab.named else None,
        )
        self.term_names = self.objective.term_names
        self.params = self.objective.set_trainable(self.model)
        self.dist.broadcast_parameters(list(self.model.parameters()))
        groups = param_groups(self.model, self.params, cfg.train)
        self.optimizer = make_optimizer(groups, cfg.train, self.device)
        self.amp_dtype = _amp(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self._cuda_graphs = uses_cuda_graphs(cfg.train.compile, self.device)
        self._loss_fn = compile_step(self._forward_loss, cfg.train.compile, self.device)
        self.state = TrainerState(config_json=cfg.to_dict())
        self.callbacks = default_callbacks(self) if callbacks is None else callbacks

    def _caption_terms(self, content_only: bool) -> tuple[np.ndarray, np.ndarray]:
        return caption_term_columns(self.store, self.vocab, self.model.term_ids, content_only)

    def _image_terms(self) -> tuple[np.ndarray, np.ndarray]:
        return image_term_columns(
            self.store, self._caption_terms(False), self.train_split.caption_rows
        )

    @property
    def learning_rate(self) -> float:
        """The learning rate of the last step (before group scales)."""
        return self.optimizer.param_groups[0]["lr"]

    def describe(self) -> dict[str, Any]:
        """Sizes and settings of this trainer (for benchmark reports)."""
        return {
            "train_pairs": int(self.train_captions.numel()),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
            "fused_adamw": bool(self.optimizer.defaults.get("fused")),
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
        }

    # -- state --------------------------------------------------------------------

    def restore(self) -> bool:
        """Load the latest checkpoint of the run directory; ``False`` if there is none."""
        if self.dist.is_main:
            self.run.repair()
        self.dist.barrier()
        loaded = self.run.load_state()
        if loaded is None:
            if self.dist.is_main:
                self.run.truncate_metrics(0)
            return False
        state, tensors = loaded
        model_tensors = {
            k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")
        }
        self.model.load_tensors(
            {k: v.to(self.device) for k, v in model_tensors.items()},
            where=str(self.run.checkpoints_dir),
        )
        # The optimiser places each state tensor itself (``step`` stays on the CPU unless
        # the optimiser is fused, so a resumed foreach AdamW does not synchronise).
        load_optimizer_tensors(
            self.optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}
        )
        self.objective.load_state_dict(state.regularizer)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.state = state
        if self.dist.is_main:
            self.run.truncate_metrics(state.epoch)
        logger.info(
            "resumed %s at epoch %d (step %d)", self.run.path, state.epoch, state.global_step
        )
        return True

    def save_checkpoint(self) -> None:
        """Write the resumable state of the completed epoch (rank 0)."""
        self.state.regularizer = self.objective.state_dict()
        self.state.scaler = self.scaler.state_dict() if self.scaler is not None else None
        self.run.save_state(self.state, self.model, self.optimizer)

    def save_best(self, result: EvalResult) -> None:
        """Make the current model the selected one (``best/``), validated as ``result``."""
        bundle = self.store.bundle
        backbone = None
        if bundle is not None:
            backbone = {
                "name": bundle.name,
                "bundle": str(bundle.path) if bundle.path else None,
                "extraction": bundle.extraction,
            }
        self.run.save_best(
            self.model,
            {
                "epoch": self.state.epoch,
                "step": self.state.global_step,
                "metric": self.select_metric,
                "value": result.get(self.select_metric),
                "val": result.to_dict(),
            },
            vocab_tokens=self.vocab.tokens if self.vocab.named else None,
            extra={"backbone": backbone},
        )

    # -- steps --------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Generator | None]:
        """The permutation of training captions of ``epoch`` (1-based) and its RNG.

        Returns:
            ``(perm, gen)``: positions into the training captions on the device, and the
            generator of expansion-control draws (``None`` without expansion control).
        """
        seed = self.cfg.train.seed
        perm = torch.randperm(self.train_captions.numel(), generator=_epoch_generator(seed, epoch))
        perm = perm.to(self.device)
        gen = None
        if self.objective.expansion is not None:
            gen = torch.Generator(device=self.device).manual_seed(
                int(_epoch_generator(seed, epoch, 1).initial_seed())
            )
        return perm, gen

    def batch_rows(self, perm: torch.Tensor, step: int) -> torch.Tensor:
        """Caption rows of the ``step``-th global batch (0-based) of an epoch's order."""
        return self.train_captions[perm[step * self.batch_size : (step + 1) * self.batch_size]]

    def batches(
        self, n: int, first_epoch: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Generator | None]]:
        """The first ``n`` global batches in training order from ``first_epoch`` on.

        Yields:
            ``(caption_rows, generator)`` as :meth:`train_step` takes them.
        """
        epoch = first_epoch
        while n > 0:
            perm, gen = self.epoch_order(epoch)
            for step in range(min(n, self.steps_per_epoch)):
                yield self.batch_rows(perm, step), gen
            n -= self.steps_per_epoch
            epoch += 1

    def _forward_loss(
        self, h_img: torch.Tensor, h_txt: torch.Tensor, inputs: StepInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward pass and loss of this rank's rows: ``(total, stacked terms (K,))``.

        The model runs under autocast when mixed precision is on; the objective casts its
        outputs to float32 and computes every term in float32. With several processes it
        gathers the vectors of all ranks (with gradients) first.
        """
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(
                h_img,
                h_txt,
                with_sparse=self.objective.uses_sparse,
                sparse_stop_grad=self.cfg.objective.sparse_stop_grad,
                with_logits=self.objective.with_logits,
                query_mask=inputs.query_mask,
            )
        terms = self.objective(
            out,
            inputs,
            sparse_scale=self.model.sparse_scale(),
            gather=gather_with_grad if self.dist.enabled else None,
        )
        return terms["total"], self.objective.stack(terms)

    def forward_terms(
        self, caption_rows: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of the global batch ``caption_rows`` at the current step (no update).

        This rank encodes its slice of the batch; with several processes the loss covers
        the whole global batch (see :mod:`mmsparse.train.distributed`).

        Returns:
            ``(total, terms)``: the loss to differentiate and the detached ``(K,)`` vector
            of the terms named by :attr:`term_names`.
        """
        local = caption_rows[self.local_rows]
        h_img, h_txt = self.image_feats[self.caption_image[local]], self.caption_feats[local]
        inputs = self.objective.step_inputs(
            caption_rows, self.state.global_step, gen, self.local_rows
        )
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._loss_fn(h_img, h_txt, inputs)

    def train_step(self, caption_rows: torch.Tensor, gen: torch.Generator | None) -> StepTerms:
        """One optimisation step on the global batch of caption rows.

        Nothing here reads from the device: the learning rate is computed on the host, the
        regulariser weights come from a device table, and the terms stay on the device.

        Returns:
            The detached loss terms (a mapping ``name -> 0-d tensor``; ``.vector`` holds
            them all as one ``(K,)`` device tensor).
        """
        lr = self.cfg.train.lr * lr_factor(
            self.state.global_step, self.total_steps, self.cfg.train.warmup_frac
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        total, stacked = self.forward_terms(caption_rows, gen)
        # A copy: with CUDA graphs the step's outputs are overwritten by the next replay.
        stacked = stacked.clone()
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.cfg.train.grad_clip
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.dist.all_reduce_gradients(self.params)
            self.scaler.unscale_(self.optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.dist.all_reduce_gradients(self.params)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
        self.model.clamp_temperature()
        self.objective.step_once()
        self.state.global_step += 1
        return StepTerms(self.term_names, stacked)

    # -- validation ---------------------------------------------------------------

    @torch.no_grad()
    def encode(self, split: str, eval_cfg: EvalConfig | None = None) -> EncodedSplit:
        """Vectors of every image and caption of ``split`` from the current model.

        Args:
            split: A split of the store (``val``, ``test``).
            eval_cfg: Pruning and batch options (default: the run's serving options).
        """
        return encode_split(
            self.model,
            self.store,
            self.store.split(split),
            eval_cfg if eval_cfg is not None else self.cfg.serving,
            self.device,
            image_feats=self.image_feats,
            caption_feats=self.caption_feats,
            with_sparse=self.objective.uses_sparse,
        )

    @torch.no_grad()
    def validate(self) -> EvalResult:
        """Evaluate the current model on the validation split."""
        w1, w2 = hybrid_weights(self.cfg, self.model)
        return evaluate_encoded(
            self.encode(self.val_split.name),
            w1=w1,
            w2=w2,
            eval_cfg=self.cfg.serving,
            split_name=self.val_split.name,
            score_types=self.objective.score_types,
        )

    # -- the loop -----------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Run (or continue) training to the end; returns the selected model's summary."""
        cfg = self.cfg
        self._emit("on_fit_begin")
        try:
            while not self.state.finished and self.state.epoch < cfg.train.epochs:
                epoch = self.state.epoch + 1
                record = self._train_epoch(epoch)
                validate = epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs
                val = self.validate() if validate and self.dist.is_main else None
                self._emit("on_epoch_end", epoch, record, val)
                if validate:
                    # Rank 0 decides selection and early stopping; every rank follows.
                    self.state = self.dist.broadcast_object(self.state)
                if epoch == cfg.train.epochs:
                    self.state.finished = True
                if self.dist.is_main:
                    self.save_checkpoint()
        finally:
            self._emit("on_fit_end")
        return self.dist.run_on_main(self._finish)

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """The steps of ``epoch``; returns its ``train`` record (term means and schedule)."""
        t0 = time.perf_counter()
        self.model.train()
        perm, gen = self.epoch_order(epoch)
        sums = torch.zeros(len(self.term_names), device=self.device)
        # Steps before the first non-finite term, counted on the device: read once, at the
        # epoch's end, with the sums (no host-device sync per step).
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        finite_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self._emit("on_epoch_begin", epoch)
        for step in range(self.steps_per_epoch):
            terms = self.train_step(self.batch_rows(perm, step), gen).vector
            sums += terms
            finite &= torch.isfinite(terms).all()
            finite_steps += finite
            self._emit("on_step_end", epoch, step, terms, sums)
        *totals, n_finite = torch.cat([sums, finite_steps.to(sums.dtype)[None]]).tolist()
        self._check_finite(epoch, int(n_finite), totals)
        means = [v / self.steps_per_epoch for v in totals]
        seconds = time.perf_counter() - t0
        self.state.train_seconds += seconds
        self.state.epoch = epoch
        record: dict[str, Any] = dict(zip(self.term_names, means))
        record.update(
            type="train",
            epoch=epoch,
            step=self.state.global_step,
            lr=self.learning_rate,
            tau=float(self.model.tau.detach()),
            **self.objective.schedule_values(),
            seconds=seconds,
        )
        return record

    def _check_finite(self, epoch: int, finite_steps: int, sums: list[float]) -> None:
        """Stop a diverged run before its epoch is saved (rank 0 decides for every rank).

        Raises:
            NonFiniteError: Naming the first non-finite step, the likely cause and what is
                kept.
        """
        diverged = finite_steps < self.steps_per_epoch or not all(map(math.isfinite, sums))
        diverged = self.dist.broadcast_object(diverged)
        if not diverged:
            return
        step = self.state.global_step - self.steps_per_epoch + finite_steps + 1
        value = "NaN" if any(map(math.isnan, sums)) else "infinite"
        kept = (
            f"epoch {self.state.epoch} is kept (the last finite checkpoint, in "
            f"{self.run.checkpoints_dir})"
            if self.state.epoch > 0
            else "nothing was saved (no epoch ended with a finite loss)"
        )
        raise NonFiniteError(
            f"training diverged: the loss is {value} at step {step} (epoch {epoch}); the "
            f"likely cause is the learning rate (train.lr={self.cfg.train.lr:g}): lower it "
            f"and train again; {kept}"
        )

    def _finish(self) -> TrainResult:
        selection = self.run.read_selection()
        result = TrainResult(
            run_dir=self.run.path,
            best_epoch=self.state.best_epoch,
            best_metric=self.state.best_metric,
            select_metric=self.select_metric,
            val=selection["val"],
            epochs_run=self.state.epoch,
            stopped_early=self.state.stopped_early,
            train_seconds=self.state.train_seconds,
        )
        self.run.write_final(
            {
                "best_epoch": result.best_epoch,
                "best_metric": result.best_metric,
                "select_metric": result.select_metric,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "train_seconds": round(result.train_seconds, 3),
                "steps_per_epoch": self.steps_per_epoch,
                "device": str(self.device),
                "world_size": self.dist.world_size,
                "val": result.val,
            }
        )
        if self.cfg.train.plot:
            self.run.plot()
        return result


def missing_data_fix(
    cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False
) -> str | None:
    """How to point ``mmsparse train`` at its features when ``data.path`` is missing.

    Args:
        cfg: The config as given (its ``data.path`` unresolved, so the environment
            variables it reads can be named).
        run_dir: The run directory (``--out``).
        resume: Resuming: a run with progress keeps its recorded ``data.path``.

    Returns:
        The fix in a few words, or ``None`` when ``data.path`` is a folder.
    """
    written = cfg.data.path
    try:
        path = resolve_run_paths(cfg).data.path
    except ConfigError:  # an unset variable: that error names it already
        return None
    if path and Path(path).is_dir():
        return None
    if resume and run_dir is not None and has_progress(run_dir):
        return "put the features back there (a resumed run keeps its data.path)"
    names = dict.fromkeys(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", written))
    via = "".join(f"set {name}=DIR or " for name in names)
    return f"{via}pass --set data.path=DIR (a folder of feature files)"


def train(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, store: FeatureStore | None = None
) -> TrainResult:
    """Train a run and write it to ``run_dir`` (resuming it when asked).

    Args:
        cfg: The run configuration.
        run_dir: Output directory (created). With ``resume=True`` an existing run there is
            continued from its last complete checkpoint.
        resume: Continue an interrupted run.
        store: Features already in memory (e.g. synthetic); default: load ``cfg.data``.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) every process calls this;
    they train one run data-parallel, rank 0 writing the run directory (see
    :mod:`mmsparse.train.distributed`).

    Returns:
        The :class:`TrainResult` of the selected (best) epoch (on every rank).

    Raises:
        ConfigError: If ``run_dir`` holds another run, or on a bad configuration.
        DataError: On bad input data.
        CheckpointError: On a broken checkpoint.
        NonFiniteError: If the loss became NaN or infinite (the diverged epoch is not
            saved; the last finite checkpoint is kept).
    """
    run = RunDirectory(run_dir)
    cfg = resolve_run_paths(cfg)  # recorded absolute: the run works from any folder
    ctx, created = setup(cfg.train.device)
    try:
        torch.manual_seed(cfg.train.seed)
        # Rank 0 checks, locks (until the end) and prepares the folder; it alone writes.
        cfg = ctx.run_on_main(lambda: run.start(cfg, resume))
        store = store if store is not None else load_feature_store(cfg.data)
        trainer = Trainer(cfg, store, run, dist_ctx=ctx)
        if resume:
            trainer.restore()
        return trainer.fit()
    finally:
        run.close()
        teardown(created)

"""The training loop: resident features, index-gathered batches, resumable, logged.

Mechanics (the published schedule): AdamW over the trainable parameters and ``tau``; the
learning rate is warmed up linearly over ``warmup_frac`` of all steps, then decays linearly
to 0; gradients are clipped; fp16 autocast with a gradient scaler on CUDA (fp32 on CPU);
``tau`` is clamped after every step. Mixed precision covers the model's forward pass only:
the scores and the loss are computed in float32. Validation runs every ``eval_every``
epochs; the best epoch by ``select_metric`` is kept in ``best/`` and training stops after
``patience`` validations without improvement.

The objective (its named terms, and which parameters train for each
``objective.method``) is :class:`mmsparse.losses.Objective`, built once from the config;
the trainer sums and logs the terms it returns.

Determinism: the batch order of epoch ``e`` comes from a generator seeded with
``(seed, e)`` and expansion-control draws from ``(seed, e, 1)``, and every epoch ends with
a complete checkpoint, so a run killed at any point and resumed replays the same steps:
on CPU it ends with the same metrics as an uninterrupted run.

Speed (see ``docs/train_speed.md``): the step is written not to wait for the device.
Batches are index gathers on resident features, per-step schedule values come from device
tables, loss terms are summed on the device and read at log points only
(``train.log_every``, asynchronously), AdamW is fused (CUDA and CPU), and
``train.compile`` compiles the forward pass and loss (``reduce-overhead``: with CUDA
graphs). Several processes launched by
``torchrun`` train the same run data-parallel over the global batch
(:mod:`mmsparse.train.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmsparse.config import RunConfig, config_from_dict, save_config
from mmsparse.data.store import FeatureStore, load_feature_store
from mmsparse.errors import CheckpointError, ConfigError
from mmsparse.evaluate.retrieval import EvalResult, encode_split, evaluate_encoded
from mmsparse.io_utils import atomic_write_json, make_public_dir
from mmsparse.losses import Objective, StepInputs, method_spec
from mmsparse.model.model import SparseDenseModel
from mmsparse.paths import resolve_run_paths
from mmsparse.runs import build_model, hybrid_weights, resolve_device
from mmsparse.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    load_optimizer_tensors,
    repair_directory,
    save_checkpoint,
    swap_in_directory,
    truncate_log,
)
from mmsparse.train.distributed import (
    DistContext,
    current_context,
    gather_with_grad,
    rank_device,
    setup,
    teardown,
)
from mmsparse.train.step import (
    AsyncTermLog,
    StepTerms,
    compile_step,
    make_optimizer,
    uses_cuda_graphs,
)

logger = logging.getLogger("mmsparse.train")

# Config keys that may differ between the sessions of a resumed run.
RESUME_FREE_KEYS = ("train.progress", "train.plot", "train.compile", "train.log_every")


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
    """The validation metric that selects the model (resolving ``auto``)."""
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


class Trainer:
    """Trains one run (see the module docstring); use :func:`train` for the usual entry.

    Args:
        cfg: The run configuration.
        store: The features (``cfg.data`` is loaded when ``None``).
        run_dir: Where the run is written.
        dist_ctx: This process's place in a data-parallel job (default: the initialised
            process group, else a single process).
    """

    def __init__(
        self,
        cfg: RunConfig,
        store: FeatureStore,
        run_dir: Path,
        dist_ctx: DistContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.run_dir = run_dir
        self.dist = dist_ctx if dist_ctx is not None else current_context()
        self.method = cfg.objective.method
        self.metric_name = selection_metric(cfg)
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
        )
        self.term_names = self.objective.term_names
        self.params = self.objective.set_trainable(self.model)
        self.dist.broadcast_parameters(list(self.model.parameters()))
        self.optimizer = make_optimizer(self._param_groups(), cfg.train, self.device)
        self.amp_dtype = _amp(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.compile_mode = cfg.train.compile
        self._cuda_graphs = uses_cuda_graphs(self.compile_mode, self.device)
        self._loss_fn = compile_step(self._forward_loss, self.compile_mode, self.device)
        self.state = TrainerState(config_json=cfg.to_dict())
        self.log_path = run_dir / "metrics.jsonl"

    def _param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups with their learning-rate scales.

        The sparse head runs at ``train.sparse_lr_scale`` times the rate, the dense heads
        at ``train.dense_lr_scale`` times it, ``tau`` at ``train.tau_lr_scale`` times it
        (its own group only when that is not 1), the rest (the sparse scale) at the rate
        itself.
        """
        train = self.cfg.train
        group_of = {id(p): "sparse" for p in self.model.sparse_head.parameters()}
        group_of.update({id(p): "dense" for p in self.model.dense_parameters()})
        if train.tau_lr_scale != 1.0:  # else in "rest": the groups of older runs' optimizers
            group_of[id(self.model.tau)] = "tau"
        scales = {
            "dense": train.dense_lr_scale,
            "rest": 1.0,
            "sparse": train.sparse_lr_scale,
            "tau": train.tau_lr_scale,
        }
        members: dict[str, list[torch.nn.Parameter]] = {name: [] for name in scales}
        for p in self.params:
            members[group_of.get(id(p), "rest")].append(p)
        return [
            {"params": members[name], "lr_scale": scale}
            for name, scale in scales.items()
            if members[name]
        ]

    def _caption_terms(self, content_only: bool) -> tuple[Any, Any]:
        """Every caption's own terms as CSR arrays of the sparse head's columns.

        With a restricted vocabulary, tokens outside it are dropped (a caption left with
        none is never masked by expansion control and has no lexical target).
        """
        import numpy as np

        from mmsparse.data.terms import content_mask

        indptr, indices = self.store.caption_token_ids(self.vocab)
        keep = np.ones(len(self.vocab), dtype=bool)
        if content_only:
            keep &= content_mask(self.vocab)
        column = np.arange(len(self.vocab), dtype=np.int64)
        if self.model.term_ids is not None:
            restricted = np.zeros(len(self.vocab), dtype=bool)
            ids = self.model.term_ids.cpu().numpy()
            restricted[ids] = True
            keep &= restricted
            column = np.full(len(self.vocab), -1, dtype=np.int64)
            column[ids] = np.arange(ids.size)
        if keep.all():
            return indptr, indices
        ok = keep[indices]
        rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))[ok]
        new_indptr = np.zeros_like(indptr)
        np.add.at(new_indptr, rows + 1, 1)
        return np.cumsum(new_indptr), column[indices[ok]]

    # -- state --------------------------------------------------------------------

    def restore(self) -> bool:
        """Load the latest checkpoint of the run directory; ``False`` if there is none."""
        if self.dist.is_main:
            repair_directory(self.run_dir / "best")
        self.dist.barrier()
        loaded = load_checkpoint(self.run_dir / "checkpoints")
        if loaded is None:
            if self.dist.is_main:
                truncate_log(self.log_path, 0)
            return False
        state, tensors = loaded
        model_tensors = {
            k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")
        }
        self.model.load_tensors(
            {k: v.to(self.device) for k, v in model_tensors.items()},
            where=str(self.run_dir / "checkpoints"),
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
            truncate_log(self.log_path, state.epoch)
        logger.info(
            "resumed %s at epoch %d (step %d)", self.run_dir, state.epoch, state.global_step
        )
        return True

    def _checkpoint(self) -> None:
        self.state.regularizer = self.objective.state_dict()
        self.state.scaler = self.scaler.state_dict() if self.scaler is not None else None
        save_checkpoint(self.run_dir / "checkpoints", self.state, self.model, self.optimizer)

    def _save_best(self, result: EvalResult) -> None:
        tmp = make_public_dir(tempfile.mkdtemp(prefix=".best.tmp-", dir=self.run_dir))
        self.model.save_pretrained(
            tmp,
            vocab_tokens=self.vocab.tokens if self.vocab.named else None,
            extra={"backbone": self._backbone_info()},
        )
        atomic_write_json(
            tmp / "selection.json",
            {
                "epoch": self.state.epoch,
                "step": self.state.global_step,
                "metric": self.metric_name,
                "value": result.get(self.metric_name),
                "val": result.to_dict(),
            },
        )
        swap_in_directory(tmp, self.run_dir / "best")

    def _backbone_info(self) -> dict[str, Any] | None:
        bundle = self.store.bundle
        if bundle is None:
            return None
        return {
            "name": bundle.name,
            "bundle": str(bundle.path) if bundle.path else None,
            "extraction": bundle.extraction,
        }

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

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

    @torch.no_grad()
    def validate(self) -> EvalResult:
        """Evaluate the current model on the validation split."""
        enc = encode_split(
            self.model,
            self.store,
            self.val_split,
            self.cfg.serving,
            self.device,
            image_feats=self.image_feats,
            caption_feats=self.caption_feats,
            with_sparse=self.objective.uses_sparse,
        )
        hybrid = hybrid_weights(self.cfg, self.model)
        return evaluate_encoded(
            enc,
            w1=hybrid[0],
            w2=hybrid[1],
            eval_cfg=self.cfg.serving,
            split_name=self.val_split.name,
            score_types=self.objective.score_types,
        )

    def fit(self) -> TrainResult:
        """Run (or continue) training to the end; returns the selected model's summary."""
        cfg = self.cfg
        main = self.dist.is_main
        bar = None
        if cfg.train.progress and main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.train.epochs,
                initial=self.state.epoch,
                unit="epoch",
                desc=f"{cfg.name} [{self.method}]",
                dynamic_ncols=True,
            )
        step_log = AsyncTermLog(self.term_names, self.device, self._log)
        log_every = cfg.train.log_every
        last_val: EvalResult | None = None
        while not self.state.finished and self.state.epoch < cfg.train.epochs:
            epoch = self.state.epoch + 1
            t0 = time.perf_counter()
            self.model.train()
            perm, gen = self.epoch_order(epoch)
            sums = torch.zeros(len(self.term_names), device=self.device)
            window = torch.zeros_like(sums) if log_every else None
            window_steps = 0
            step_bar = self._step_bar(epoch) if bar is not None else None
            for step in range(self.steps_per_epoch):
                terms = self.train_step(self.batch_rows(perm, step), gen).vector
                sums += terms
                if step_bar is not None:
                    self._advance_step_bar(step_bar, step, sums)
                if window is not None:
                    window += terms
                    window_steps += 1
                    if self.state.global_step % log_every == 0 and main:
                        meta = {"type": "step", "epoch": epoch, "step": self.state.global_step}
                        meta["lr"] = self.optimizer.param_groups[0]["lr"]
                        step_log.push(window / window_steps, meta)
                        window, window_steps = torch.zeros_like(sums), 0
            step_log.flush()
            if step_bar is not None:
                step_bar.close()
            seconds = time.perf_counter() - t0
            self.state.train_seconds += seconds
            self.state.epoch = epoch
            means = [v / self.steps_per_epoch for v in sums.tolist()]
            train_rec: dict[str, Any] = dict(zip(self.term_names, means))
            train_rec.update(
                type="train",
                epoch=epoch,
                step=self.state.global_step,
                lr=self.optimizer.param_groups[0]["lr"],
                tau=float(self.model.tau.detach()),
                **self.objective.schedule_values(),
                seconds=seconds,
            )
            self._log(train_rec)
            if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
                if main:
                    last_val = self._validate_and_select(epoch)
                # Rank 0 decides selection and early stopping; every rank follows.
                self.state = self.dist.broadcast_object(self.state)
            if epoch == cfg.train.epochs:
                self.state.finished = True
            if main:
                self._checkpoint()
            if bar is not None:
                # Named as in metrics.jsonl: "total" is the epoch's mean of the loss minimised.
                post = {"total": f"{train_rec['total']:.3f}"}
                if last_val is not None:
                    post[self.metric_name] = f"{last_val.get(self.metric_name):.2f}"
                    post["best"] = f"{self.state.best_metric:.2f}@{self.state.best_epoch}"
                bar.set_postfix(post)
                bar.update(1)
        if bar is not None:
            bar.close()
        return self.dist.run_on_main(self._finish)

    def _step_bar(self, epoch: int) -> Any:
        """The progress bar of one epoch's steps (under the epochs' bar; removed after)."""
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )

    def _advance_step_bar(self, step_bar: Any, step: int, sums: torch.Tensor) -> None:
        """Advance the step bar; about 20 times an epoch it shows the running mean ``total``.

        Reading the mean waits for the device, so it is done rarely.
        """
        step_bar.update(1)
        every = max(1, self.steps_per_epoch // 20)
        if (step + 1) % every == 0 and "total" in self.term_names:
            mean = float(sums[self.term_names.index("total")]) / (step + 1)
            step_bar.set_postfix(total=f"{mean:.3f}")

    def _validate_and_select(self, epoch: int) -> EvalResult:
        """Validate, keep the best model, and update early stopping (rank 0)."""
        result = self.validate()
        value = result.get(self.metric_name)
        improved = value > self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_epoch = value, epoch
            self.state.bad_epochs = 0
            self._save_best(result)
        else:
            self.state.bad_epochs += 1
        self._log(_flatten_val(result, epoch, self.state.global_step, improved))
        if self.cfg.train.patience and self.state.bad_epochs >= self.cfg.train.patience:
            self.state.finished = self.state.stopped_early = True
            logger.info(
                "early stopping at epoch %d (best %s = %.2f at epoch %d)",
                epoch,
                self.metric_name,
                self.state.best_metric,
                self.state.best_epoch,
            )
        return result

    def _finish(self) -> TrainResult:
        selection_path = self.run_dir / "best" / "selection.json"
        if not selection_path.is_file():
            raise CheckpointError(f"{self.run_dir}: training ended without a selected model")
        selection = json.loads(selection_path.read_text(encoding="utf-8"))
        result = TrainResult(
            run_dir=self.run_dir,
            best_epoch=self.state.best_epoch,
            best_metric=self.state.best_metric,
            select_metric=self.metric_name,
            val=selection["val"],
            epochs_run=self.state.epoch,
            stopped_early=self.state.stopped_early,
            train_seconds=self.state.train_seconds,
        )
        atomic_write_json(
            self.run_dir / "final.json",
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
            },
        )
        if self.cfg.train.plot:
            from mmsparse.train.curves import plot_curves

            plot_curves(self.log_path, self.run_dir / "curves.png")
        return result


def _flatten_val(result: EvalResult, epoch: int, step: int, improved: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": "val", "epoch": epoch, "step": step, "selected": improved}
    for direction, by_type in result.metrics.items():
        for st, metrics in by_type.items():
            for name, value in metrics.items():
                rec[f"{direction}/{st}/{name}"] = value
    rec.update({k: v for k, v in result.sparsity.items() if isinstance(v, float | int)})
    return rec


def _prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """Create the run directory or check it for resuming; returns the config to use."""
    saved = run_dir / "config.json"
    if saved.is_file() and not has_progress(run_dir):
        # A start that failed before its first checkpoint (bad data, a typo in the
        # config): nothing to protect, so the corrected command starts afresh.
        logger.info("%s holds no completed checkpoint; starting the run afresh", run_dir)
        save_config(cfg, saved)
        truncate_log(run_dir / "metrics.jsonl", 0)
        return cfg
    if saved.is_file():
        if not resume:
            raise ConfigError(
                f"{run_dir}: already holds a run; pass --resume to continue it or choose "
                f"another --out (nothing was overwritten)"
            )
        diff = resume_conflicts(cfg, run_dir)
        if diff:
            raise ConfigError(
                f"{saved}: --resume with a different config (keys {', '.join(diff)}); "
                f"resume with the run's own config"
            )
        return cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return cfg


def resume_conflicts(cfg: RunConfig, run_dir: str | Path) -> list[str]:
    """Config keys in which ``cfg`` differs from the run saved in ``run_dir``.

    Display and speed settings (``RESUME_FREE_KEYS``) may change between the sessions of a
    run and are not listed. Empty when the configs agree or ``run_dir`` holds no run with a
    completed checkpoint (such a start is begun afresh, see :func:`_prepare_run_dir`).
    """
    saved = Path(run_dir) / "config.json"
    if not saved.is_file() or not has_progress(run_dir):
        return []
    old = config_from_dict(json.loads(saved.read_text(encoding="utf-8")), str(saved))
    return [d for d in _config_diff(old.to_dict(), cfg.to_dict()) if d not in RESUME_FREE_KEYS]


def has_progress(run_dir: str | Path) -> bool:
    """Whether a run directory holds a completed checkpoint or a selected model."""
    run_dir = Path(run_dir)
    return any(
        p.exists()
        for p in (
            run_dir / "checkpoints" / "latest.json",
            run_dir / "best",
            run_dir / "best.old",
            run_dir / "final.json",
        )
    )


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def resume_config(run_dir: str | Path) -> RunConfig:
    """The config saved in a run directory (to resume it without the original file).

    Raises:
        CheckpointError: If the run directory has no readable config.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no run to resume (config.json not found)")
    return config_from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))


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
    """
    run_dir = Path(run_dir)
    cfg = resolve_run_paths(cfg)  # recorded absolute: the run works from any folder
    ctx, created = setup(cfg.train.device)
    try:
        torch.manual_seed(cfg.train.seed)
        cfg = ctx.run_on_main(lambda: _prepare_run_dir(cfg, run_dir, resume))
        if not resume:
            ctx.run_on_main(lambda: _clear_checkpoints(run_dir))
        store = store if store is not None else load_feature_store(cfg.data)
        trainer = Trainer(cfg, store, run_dir, dist_ctx=ctx)
        if resume:
            trainer.restore()
        return trainer.fit()
    finally:
        teardown(created)


def _clear_checkpoints(run_dir: Path) -> None:
    if (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")

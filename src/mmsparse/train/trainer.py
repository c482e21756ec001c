"""The training loop: resident features, index-gathered batches, resumable, logged.

Mechanics (the published schedule): AdamW over the trainable parameters and ``tau``; the
learning rate is warmed up linearly over ``warmup_frac`` of all steps, then decays linearly
to 0; gradients are clipped; fp16 autocast with a gradient scaler on CUDA (fp32 on CPU);
``tau`` is clamped after every step. Validation runs every ``eval_every`` epochs; the best
epoch by ``select_metric`` is kept in ``best/`` and training stops after ``patience``
validations without improvement.

Which parameters train depends on ``objective.method``:

=============== ===================== ============= ======
method          dense heads           sparse head   tau
=============== ===================== ============= ======
``joint``       yes                   yes           yes
``no_distill``  yes                   yes           yes
``frozen_dense`` no                   yes           yes
``d2s``         no                    yes           no
``dense``       yes                   (unused)      yes
=============== ===================== ============= ======

Determinism: the batch order of epoch ``e`` comes from a generator seeded with
``(seed, e)`` and expansion-control draws from ``(seed, e, 1)``, and every epoch ends with
a complete checkpoint, so a run killed at any point and resumed replays the same steps:
on CPU it ends with the same metrics as an uninterrupted run.
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
from mmsparse.io_utils import atomic_write_json
from mmsparse.losses import (
    ExpansionControl,
    SparsityRegularizer,
    d2s_objective,
    dense_objective,
    joint_objective,
    padded_token_ids,
)
from mmsparse.model.model import SparseDenseModel
from mmsparse.runs import build_model, resolve_device
from mmsparse.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    load_optimizer_tensors,
    repair_directory,
    save_checkpoint,
    swap_in_directory,
    truncate_log,
)

logger = logging.getLogger("mmsparse.train")

SPARSE_METHODS = ("joint", "no_distill", "frozen_dense", "d2s")


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
    return "t2i/dense/R@1" if cfg.objective.method == "dense" else "t2i/sparse/R@1"


def lr_factor(step: int, total_steps: int, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then linear decay to 0."""
    warmup = round(warmup_frac * total_steps)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def set_trainable(model: SparseDenseModel, method: str) -> list[torch.nn.Parameter]:
    """Freeze what ``method`` keeps fixed; return the parameters to optimise."""
    for p in model.parameters():
        p.requires_grad_(True)
    if method in ("d2s", "frozen_dense"):
        for p in model.dense_parameters():
            p.requires_grad_(False)
    if method == "d2s":
        model.tau.requires_grad_(False)
    if method == "dense":
        for p in model.sparse_head.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _amp(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    mode = cfg.train.amp
    if device.type != "cuda" or mode == "off":
        return None
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
    """

    def __init__(self, cfg: RunConfig, store: FeatureStore, run_dir: Path) -> None:
        self.cfg = cfg
        self.store = store
        self.run_dir = run_dir
        self.method = cfg.objective.method
        self.metric_name = selection_metric(cfg)
        self.device = resolve_device(cfg.train.device)
        self.train_split = store.split(cfg.data.train_splits, allow_missing=True)
        self.val_split = store.split(cfg.data.val_split)
        self.vocab = store.vocabulary(cfg.model.vocab_size)

        self.model = build_model(cfg, store).to(self.device)
        if len(self.vocab) != self.model.vocab_size:
            self.vocab = self.vocab.fallback(self.model.vocab_size)
        params = set_trainable(self.model, self.method)
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.train.lr,
            betas=cfg.train.betas,
            eps=cfg.train.eps,
            weight_decay=cfg.train.weight_decay,
        )
        self.amp_dtype = _amp(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        # Features stay resident on the device; batches are gathered by index.
        self.image_feats = torch.from_numpy(store.image_feats).to(self.device)
        self.caption_feats = torch.from_numpy(store.caption_feats).to(self.device)
        self.caption_image = torch.from_numpy(store.caption_image).to(self.device)
        self.train_captions = torch.from_numpy(self.train_split.caption_rows).to(self.device)
        n = self.train_captions.numel()
        self.batch_size = min(cfg.train.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs

        self.regularizer = SparsityRegularizer(
            cfg.objective.q_reg,
            cfg.objective.d_reg,
            self.total_steps,
            cfg.objective.reg_warmup_frac,
        )
        self.expansion = None
        if cfg.objective.expansion_control and self.method in SPARSE_METHODS:
            if not self.vocab.named:
                raise ConfigError(
                    "objective.expansion_control needs a named vocabulary (a backbone bundle "
                    "with vocab.txt): captions must map to vocabulary ids"
                )
            indptr, indices = store.caption_token_ids(self.vocab)
            self.expansion = ExpansionControl(
                padded_token_ids(indptr, indices, pad=self.model.vocab_size).to(self.device),
                self.model.vocab_size,
                self.total_steps,
                cfg.objective.expansion_p0,
                cfg.objective.expansion_decay_frac,
            )
        self.state = TrainerState(config_json=cfg.to_dict())
        self.log_path = run_dir / "metrics.jsonl"

    # -- state --------------------------------------------------------------------

    def restore(self) -> bool:
        """Load the latest checkpoint of the run directory; ``False`` if there is none."""
        repair_directory(self.run_dir / "best")
        loaded = load_checkpoint(self.run_dir / "checkpoints")
        if loaded is None:
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
        load_optimizer_tensors(
            self.optimizer,
            {k: v.to(self.device) for k, v in tensors.items() if k.startswith("optim.")},
        )
        self.regularizer.load_state_dict(state.regularizer)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.state = state
        truncate_log(self.log_path, state.epoch)
        logger.info(
            "resumed %s at epoch %d (step %d)", self.run_dir, state.epoch, state.global_step
        )
        return True

    def _checkpoint(self) -> None:
        self.state.regularizer = self.regularizer.state_dict()
        self.state.scaler = self.scaler.state_dict() if self.scaler is not None else None
        save_checkpoint(self.run_dir / "checkpoints", self.state, self.model, self.optimizer)

    def _save_best(self, result: EvalResult) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".best.tmp-", dir=self.run_dir))
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
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    # -- steps --------------------------------------------------------------------

    def objective(
        self, out: Any, caption_rows: torch.Tensor, gen: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch (the total under ``total``)."""
        obj = self.cfg.objective
        if self.method == "dense":
            terms = dense_objective(out.img_dense, out.txt_dense, tau=out.tau)
            terms["total"] = terms["loss"]
            return terms
        txt_sparse = out.txt_sparse
        if self.expansion is not None:
            txt_sparse = self.expansion(txt_sparse, caption_rows, self.state.global_step, gen)
        if self.method == "d2s":
            terms = d2s_objective(
                out.img_dense, out.txt_dense, out.img_sparse, txt_sparse, tau=out.tau
            )
        else:
            terms = joint_objective(
                out.img_dense,
                out.txt_dense,
                out.img_sparse,
                txt_sparse,
                tau=out.tau,
                w1=obj.w1,
                w2=obj.w2,
                lam1=obj.lam1,
                lam2=obj.lam2,
                distill_teacher=obj.distill_teacher,
                distill=self.method != "no_distill",
            )
        reg = self.regularizer(txt_sparse, out.img_sparse)
        terms.update(reg)
        terms["total"] = terms["loss"] + reg["reg"]
        return terms

    def train_step(
        self, caption_rows: torch.Tensor, gen: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """One optimisation step on the batch of caption rows; returns detached terms."""
        image_rows = self.caption_image[caption_rows]
        h_img, h_txt = self.image_feats[image_rows], self.caption_feats[caption_rows]
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.train.lr * lr_factor(
                self.state.global_step, self.total_steps, self.cfg.train.warmup_frac
            )
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(h_img, h_txt, with_sparse=self.method != "dense")
            terms = self.objective(out, caption_rows, gen)
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(terms["total"]).backward()
            self.scaler.unscale_(self.optimizer)
            if self.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            terms["total"].backward()
            if self.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
            self.optimizer.step()
        self.model.clamp_temperature()
        self.regularizer.step_once()
        self.state.global_step += 1
        return {k: v.detach() for k, v in terms.items()}

    @torch.no_grad()
    def validate(self) -> EvalResult:
        """Evaluate the current model on the validation split."""
        enc = encode_split(
            self.model,
            self.store,
            self.val_split,
            self.cfg.eval,
            self.device,
            image_feats=self.image_feats,
            caption_feats=self.caption_feats,
        )
        score_types = ("dense",) if self.method == "dense" else ("dense", "sparse", "hybrid")
        return evaluate_encoded(
            enc,
            w1=self.cfg.objective.w1,
            w2=self.cfg.objective.w2,
            eval_cfg=self.cfg.eval,
            split_name=self.val_split.name,
            score_types=score_types,
        )

    def fit(self) -> TrainResult:
        """Run (or continue) training to the end; returns the selected model's summary."""
        cfg = self.cfg
        bar = None
        if cfg.train.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.train.epochs,
                initial=self.state.epoch,
                unit="epoch",
                desc=f"{cfg.name} [{self.method}]",
                dynamic_ncols=True,
            )
        last_val: EvalResult | None = None
        while not self.state.finished and self.state.epoch < cfg.train.epochs:
            epoch = self.state.epoch + 1
            t0 = time.perf_counter()
            self.model.train()
            perm = torch.randperm(
                self.train_captions.numel(), generator=_epoch_generator(cfg.train.seed, epoch)
            )
            perm = perm.to(self.device)
            gen = None
            if self.expansion is not None:
                gen = torch.Generator(device=self.device).manual_seed(
                    int(_epoch_generator(cfg.train.seed, epoch, 1).initial_seed())
                )
            sums: dict[str, torch.Tensor] = {}
            for step in range(self.steps_per_epoch):
                rows = self.train_captions[
                    perm[step * self.batch_size : (step + 1) * self.batch_size]
                ]
                terms = self.train_step(rows, gen)
                for k, v in terms.items():
                    sums[k] = sums[k] + v.float() if k in sums else v.float()
            seconds = time.perf_counter() - t0
            self.state.train_seconds += seconds
            self.state.epoch = epoch
            train_rec = {k: float(v) / self.steps_per_epoch for k, v in sums.items()}
            train_rec.update(
                type="train",
                epoch=epoch,
                step=self.state.global_step,
                lr=self.optimizer.param_groups[0]["lr"],
                tau=float(self.model.tau.detach()),
                eta_t=self.regularizer.eta_t(self.regularizer.step),
                eta_i=self.regularizer.eta_i(self.regularizer.step),
                seconds=seconds,
            )
            self._log(train_rec)
            if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
                last_val = self.validate()
                value = last_val.get(self.metric_name)
                improved = value > self.state.best_metric
                if improved:
                    self.state.best_metric, self.state.best_epoch = value, epoch
                    self.state.bad_epochs = 0
                    self._save_best(last_val)
                else:
                    self.state.bad_epochs += 1
                self._log(_flatten_val(last_val, epoch, self.state.global_step, improved))
                if cfg.train.patience and self.state.bad_epochs >= cfg.train.patience:
                    self.state.finished = self.state.stopped_early = True
                    logger.info(
                        "early stopping at epoch %d (best %s = %.2f at epoch %d)",
                        epoch,
                        self.metric_name,
                        self.state.best_metric,
                        self.state.best_epoch,
                    )
            if epoch == cfg.train.epochs:
                self.state.finished = True
            self._checkpoint()
            if bar is not None:
                post = {"loss": f"{train_rec['total']:.3f}"}
                if last_val is not None:
                    post[self.metric_name] = f"{last_val.get(self.metric_name):.2f}"
                    post["best"] = f"{self.state.best_metric:.2f}@{self.state.best_epoch}"
                bar.set_postfix(post)
                bar.update(1)
        if bar is not None:
            bar.close()
        return self._finish()

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
    if saved.is_file():
        if not resume:
            raise ConfigError(
                f"{run_dir}: already holds a run; pass --resume to continue it or choose "
                f"another --out (nothing was overwritten)"
            )
        old = config_from_dict(json.loads(saved.read_text(encoding="utf-8")), str(saved))
        diff = _config_diff(old.to_dict(), cfg.to_dict())
        # Display-only settings may change between sessions of a run.
        diff = [d for d in diff if d not in ("train.progress", "train.plot")]
        if diff:
            raise ConfigError(
                f"{saved}: --resume with a different config (keys {', '.join(diff)}); "
                f"resume with the run's own config"
            )
        return cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return cfg


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

    Returns:
        The :class:`TrainResult` of the selected (best) epoch.

    Raises:
        ConfigError: If ``run_dir`` holds another run, or on a bad configuration.
        DataError: On bad input data.
        CheckpointError: On a broken checkpoint.
    """
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.train.seed)
    cfg = _prepare_run_dir(cfg, run_dir, resume)
    store = store if store is not None else load_feature_store(cfg.data)
    trainer = Trainer(cfg, store, run_dir)
    if resume:
        trainer.restore()
    elif (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    return trainer.fit()

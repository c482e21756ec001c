"""Training: the resumable loop, its run directory and hooks, checkpoints, fast steps."""

from mmsparse.train.callbacks import Callback, MetricsLog, ModelSelection, ProgressBars
from mmsparse.train.distributed import DistContext, gather_with_grad, is_main_process
from mmsparse.train.run_dir import (
    RunDirectory,
    RunLock,
    has_progress,
    resume_config,
    resume_conflicts,
)
from mmsparse.train.step import StepTerms, make_optimizer, term_names
from mmsparse.train.trainer import (
    Trainer,
    TrainResult,
    lr_factor,
    selection_metric,
    set_trainable,
    train,
)

__all__ = [
    "Callback",
    "DistContext",
    "MetricsLog",
    "ModelSelection",
    "ProgressBars",
    "RunDirectory",
    "RunLock",
    "StepTerms",
    "TrainResult",
    "Trainer",
    "gather_with_grad",
    "has_progress",
    "is_main_process",
    "lr_factor",
    "make_optimizer",
    "resume_config",
    "resume_conflicts",
    "selection_metric",
    "set_trainable",
    "term_names",
    "train",
]

"""Training: the resumable loop, checkpoints, curves, fast steps and data parallelism."""

from mmsparse.train.distributed import DistContext, gather_with_grad, is_main_process
from mmsparse.train.step import StepTerms, make_optimizer, term_names
from mmsparse.train.trainer import (
    Trainer,
    TrainResult,
    lr_factor,
    resume_config,
    selection_metric,
    set_trainable,
    train,
)

__all__ = [
    "DistContext",
    "StepTerms",
    "TrainResult",
    "Trainer",
    "gather_with_grad",
    "is_main_process",
    "lr_factor",
    "make_optimizer",
    "resume_config",
    "selection_metric",
    "set_trainable",
    "term_names",
    "train",
]

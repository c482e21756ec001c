"""Training: the resumable loop, checkpoints and curves."""

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
    "TrainResult",
    "Trainer",
    "lr_factor",
    "resume_config",
    "selection_metric",
    "set_trainable",
    "train",
]

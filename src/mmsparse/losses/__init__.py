"""Objectives: joint, D2S, dense fit, sparsity regulariser, expansion control."""

from mmsparse.losses.expansion import ExpansionControl, padded_token_ids, token_mask
from mmsparse.losses.joint import (
    H,
    d2s_objective,
    dense_objective,
    joint_objective,
    kd,
    nce,
    teacher_distributions,
)
from mmsparse.losses.lexical import lexical_grounding
from mmsparse.losses.regularizer import (
    QuadraticWarmup,
    SparsityRegularizer,
    flops_reg,
    l1,
    sparsity_penalty,
)

__all__ = [
    "ExpansionControl",
    "H",
    "QuadraticWarmup",
    "SparsityRegularizer",
    "d2s_objective",
    "dense_objective",
    "flops_reg",
    "joint_objective",
    "kd",
    "l1",
    "lexical_grounding",
    "nce",
    "padded_token_ids",
    "sparsity_penalty",
    "teacher_distributions",
    "token_mask",
]

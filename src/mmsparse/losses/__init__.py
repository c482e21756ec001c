"""Objectives: joint, D2S, dense fit, sparsity regulariser, expansion control.

:class:`Objective` (``losses/objective.py``) assembles them into the total that training
minimises, from one table of methods and one of optional terms.
"""

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
from mmsparse.losses.lexical import lexical_grounding, lexical_pair
from mmsparse.losses.objective import (
    METHODS,
    OPTION_TERMS,
    Method,
    Objective,
    OptionTerm,
    StepInputs,
    Vectors,
    method_spec,
    term_names,
)
from mmsparse.losses.regularizer import (
    QuadraticWarmup,
    SparsityRegularizer,
    flops_reg,
    l1,
    sparsity_penalty,
    sparsity_terms,
)

__all__ = [
    "METHODS",
    "OPTION_TERMS",
    "ExpansionControl",
    "H",
    "Method",
    "Objective",
    "OptionTerm",
    "QuadraticWarmup",
    "SparsityRegularizer",
    "StepInputs",
    "Vectors",
    "d2s_objective",
    "dense_objective",
    "flops_reg",
    "joint_objective",
    "kd",
    "l1",
    "lexical_grounding",
    "lexical_pair",
    "method_spec",
    "nce",
    "padded_token_ids",
    "sparsity_penalty",
    "sparsity_terms",
    "teacher_distributions",
    "term_names",
    "token_mask",
]

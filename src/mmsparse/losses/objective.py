"""The training objective, built once from the config: named terms, one table per method.

The total that training minimises (METHOD.md, plus the options of ``ObjectiveConfig``)::

    total = loss + R + sum_k weight_k · term_k

- ``loss`` and its parts come from the method's ranking function (:data:`METHODS`):
  ``joint`` and its ablations :func:`~mmsparse.losses.joint.joint_objective`, ``d2s``
  :func:`~mmsparse.losses.joint.d2s_objective`, ``dense``
  :func:`~mmsparse.losses.joint.dense_objective`;
- ``R`` is the sparsity regulariser with its quadratic warm-up
  (:func:`~mmsparse.losses.regularizer.sparsity_terms`, weights ``eta_t``, ``eta_i`` of the
  step), for every method that trains the sparse head;
- the optional terms (:data:`OPTION_TERMS`: lexical grounding, the learned sparse scale,
  the caption gate) follow when the config switches them on.

Before the terms, caption vectors may be masked by expansion control
(:class:`~mmsparse.losses.expansion.ExpansionControl`) and every sparse vector capped to
its ``objective.train_*_topk`` heaviest terms (train as you serve; annealed from a larger
cap with ``objective.topk_anneal_factor``). With inference-free queries
(``model.query_encoder=lookup``) the caption vectors are the model's lookup of each
caption's own terms (:attr:`StepInputs.query_mask`), not its sparse head's output.

Adding a method is one :class:`Method` row in :data:`METHODS` plus its ranking function
(and its name in :data:`mmsparse.config.Method`); adding a term is one :class:`OptionTerm`
in :data:`OPTION_TERMS` plus the function that computes it. The logged names and their
order (:attr:`Objective.term_names`) follow from the tables; ``metrics.jsonl`` of older
runs keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from mmsparse.config import ObjectiveConfig
from mmsparse.errors import ConfigError
from mmsparse.losses.expansion import ExpansionControl, padded_token_ids, token_mask
from mmsparse.losses.joint import d2s_objective, dense_objective, joint_objective
from mmsparse.losses.lexical import lexical_pair
from mmsparse.losses.postings import annealed_topk, caption_gate
from mmsparse.losses.regularizer import SparsityRegularizer, sparsity_terms
from mmsparse.sparse.ops import prune

# The ranking terms each ranking function returns, in their logged order.
JOINT_TERMS = (
    "loss",
    "contrastive",
    "distill",
    "nce_dense",
    "nce_sparse",
    "nce_integrated",
    "kd_dense",
    "kd_sparse",
)
D2S_TERMS = ("loss", "distill")
DENSE_TERMS = ("loss", "contrastive")
REG_TERMS = ("reg", "l1_txt", "l1_img")

# The parameter groups a method may freeze (see Method.frozen).
PARAMETER_GROUPS = ("dense", "sparse", "tau")


class Vectors(NamedTuple):
    """What the terms of one batch are computed from (all float32).

    Attributes:
        img_dense: ``(B, D)`` image dense vectors ``E_img`` (the global batch).
        txt_dense: ``(B, D)`` caption dense vectors ``E_txt``.
        img_sparse: ``(B, V)`` image sparse vectors ``Z_img`` (``(B, 0)`` for ``dense``).
        txt_sparse: ``(B, V)`` caption sparse vectors ``Z_txt`` (after expansion control
            and the training cap).
        tau: The temperature.
        sparse_scale: ``s`` of ``S_s = s · Z_img Z_txt^T`` (``1`` unless learned).
        eta: ``(2,)`` regulariser weights ``(eta_t, eta_i)`` of the step.
        img_logits: ``(b, V)`` pre-activation logits of this process's images, if asked.
        txt_logits: ``(b, V)`` the same of its captions (``None`` for lookup captions).
        lexical_target: ``(b, V)`` 0/1 content words of this process's captions, if asked.
        gate: ``(B, V)`` 0/1 terms each image of the global batch may activate (the word
            pieces of all of its training captions), if asked.
    """

    img_dense: torch.Tensor
    txt_dense: torch.Tensor
    img_sparse: torch.Tensor
    txt_sparse: torch.Tensor
    tau: torch.Tensor
    sparse_scale: torch.Tensor | float
    eta: torch.Tensor
    img_logits: torch.Tensor | None = None
    txt_logits: torch.Tensor | None = None
    lexical_target: torch.Tensor | None = None
    gate: torch.Tensor | None = None


RankingFn = Callable[[Vectors, ObjectiveConfig], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    """One ``objective.method``: its ranking loss and what it trains.

    Attributes:
        name: The config value.
        ranking: ``(vectors, objective config) -> {name: 0-d tensor}`` with ``loss`` (what
            the total adds) and its logged parts.
        ranking_terms: The names ``ranking`` returns, in their logged order.
        uses_sparse: Whether the sparse head is in the loss (and is evaluated); when not,
            the regulariser and the optional terms are off and the sparse head is frozen.
        frozen: Parameter groups that stay fixed (of ``dense``, ``sparse``, ``tau``).
        select_metric: The selection metric of ``train.select_metric=auto``.
        description: One line for tables and docs.
    """

    name: str
    ranking: RankingFn
    ranking_terms: tuple[str, ...]
    uses_sparse: bool = True
    frozen: tuple[str, ...] = ()
    select_metric: str = "t2i/sparse/R@1"
    description: str = ""

    @property
    def score_types(self) -> tuple[str, ...]:
        """The score types a model of this method is evaluated with."""
        return ("dense", "sparse", "hybrid") if self.uses_sparse else ("dense",)

    def set_trainable(self, model: Any) -> list[torch.nn.Parameter]:
        """Freeze what this method keeps fixed; return the parameters to optimise.

        ``model`` is a :class:`~mmsparse.model.SparseDenseModel` (``dense_parameters()``,
        ``sparse_head``, ``tau``); every other parameter (e.g. the learned sparse scale)
        trains.
        """
        groups = {
            "dense": list(model.dense_parameters()),
            "sparse": list(model.sparse_head.parameters()),
            "tau": [model.tau],
        }
        for p in model.parameters():
            p.requires_grad_(True)
        for name in self.frozen:
            for p in groups[name]:
                p.requires_grad_(False)
        return [p for p in model.parameters() if p.requires_grad]


def _joint(v: Vectors, o: ObjectiveConfig, distill: bool = True) -> dict[str, torch.Tensor]:
    return joint_objective(
        v.img_dense,
        v.txt_dense,
        v.img_sparse,
        v.txt_sparse,
        tau=v.tau,
        w1=o.w1,
        w2=o.w2,
        lam1=o.lam1,
        lam2=o.lam2,
        distill_teacher=o.distill_teacher,
        distill=distill,
        sparse_scale=v.sparse_scale,
        contrastive_weight=o.contrastive_weight,
    )


def _no_distill(v: Vectors, o: ObjectiveConfig) -> dict[str, torch.Tensor]:
    return _joint(v, o, distill=False)


def _d2s(v: Vectors, o: ObjectiveConfig) -> dict[str, torch.Tensor]:
    return d2s_objective(
        v.img_dense,
        v.txt_dense,
        v.img_sparse,
        v.txt_sparse,
        tau=v.tau,
        sparse_scale=v.sparse_scale,
    )


def _dense(v: Vectors, o: ObjectiveConfig) -> dict[str, torch.Tensor]:
    return dense_objective(v.img_dense, v.txt_dense, tau=v.tau)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("joint", _joint, JOINT_TERMS, description="the paper's joint objective"),
        Method(
            "no_distill",
            _no_distill,
            JOINT_TERMS,
            description="ablation: L' = 0, so loss = L / 2",
        ),
        Method(
            "frozen_dense",
            _joint,
            JOINT_TERMS,
            frozen=("dense",),
            description="ablation: dense heads frozen",
        ),
        Method(
            "d2s",
            _d2s,
            D2S_TERMS,
            frozen=("dense", "tau"),
            description="D2S: sparse scores distilled from the frozen dense model",
        ),
        Method(
            "dense",
            _dense,
            DENSE_TERMS,
            uses_sparse=False,
            frozen=("sparse",),
            select_metric="t2i/dense/R@1",
            description="contrastive fit of the dense heads (stage 0, dense baseline)",
        ),
    )
}


def method_spec(name: str) -> Method:
    """The :class:`Method` row of ``objective.method`` ``name``.

    Raises:
        ConfigError: For an unknown method.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"objective.method must be one of {', '.join(METHODS)}; got {name!r}"
        ) from None


def _lexical(v: Vectors, o: ObjectiveConfig) -> torch.Tensor:
    assert v.img_logits is not None and v.lexical_target is not None
    return lexical_pair(v.img_logits, v.txt_logits, v.lexical_target)


def _gate(v: Vectors, o: ObjectiveConfig) -> torch.Tensor:
    assert v.gate is not None
    return caption_gate(v.img_sparse, v.gate)


def _sparse_scale(v: Vectors, o: ObjectiveConfig) -> torch.Tensor:
    return torch.as_tensor(v.sparse_scale).detach()


@dataclass(frozen=True)
class OptionTerm:
    """An optional term of the objective (with a method that trains the sparse head).

    Attributes:
        name: Logged name.
        key: The config setting that switches it on (named in errors).
        enabled: Whether the objective config switches it on.
        compute: ``(vectors, objective config) -> 0-d tensor``.
        weight: Its weight in ``total`` (``None``: logged only).
        needs_logits: ``compute`` reads the sparse head's pre-activation logits.
        needs_content_words: ``compute`` reads each caption's content words
            (:attr:`Vectors.lexical_target`; needs a named vocabulary).
        needs_image_terms: ``compute`` reads the terms of all of each image's training
            captions (:attr:`Vectors.gate`; needs a named vocabulary).
    """

    name: str
    key: str
    enabled: Callable[[ObjectiveConfig], bool]
    compute: Callable[[Vectors, ObjectiveConfig], torch.Tensor]
    weight: Callable[[ObjectiveConfig], float] | None = None
    needs_logits: bool = False
    needs_content_words: bool = False
    needs_image_terms: bool = False


OPTION_TERMS: tuple[OptionTerm, ...] = (
    OptionTerm(
        "lexical",
        key="objective.lexical_weight > 0",
        enabled=lambda o: o.lexical_weight > 0,
        compute=_lexical,
        weight=lambda o: o.lexical_weight,
        needs_logits=True,
        needs_content_words=True,
    ),
    OptionTerm(
        "sparse_scale",
        key="objective.sparse_scale=learned",
        enabled=lambda o: o.sparse_scale == "learned",
        compute=_sparse_scale,
    ),
    OptionTerm(
        "gate",
        key="objective.gate_weight > 0",
        enabled=lambda o: o.gate_weight > 0,
        compute=_gate,
        weight=lambda o: o.gate_weight,
        needs_image_terms=True,
    ),
)


def term_names(cfg: ObjectiveConfig) -> tuple[str, ...]:
    """Names of the terms a step logs under ``cfg``, in their fixed order.

    The method's ranking terms, then (with the sparse head) ``reg``, ``l1_txt``,
    ``l1_img``, then ``total``, then the optional terms the config switches on.
    """
    method = method_spec(cfg.method)
    if not method.uses_sparse:
        return (*method.ranking_terms, "total")
    options = tuple(t.name for t in OPTION_TERMS if t.enabled(cfg))
    return (*method.ranking_terms, *REG_TERMS, "total", *options)


CaptionTerms = Callable[[bool], tuple[np.ndarray, np.ndarray]]


class StepInputs(NamedTuple):
    """Per-step inputs of the objective made outside the compiled step.

    Attributes:
        eta: ``(2,)`` device buffer of the step's regulariser weights.
        expansion: Expansion control's ``(masked, keep)`` for this process's captions, or
            ``None`` (off, or probability 0).
        lexical_target: ``(b, V)`` content words of this process's captions, or ``None``.
        query_mask: ``(b, V)`` 0/1 terms of this process's captions, the model's lookup
            input (``model.query_encoder=lookup``), or ``None``.
        gate: ``(B, V)`` terms each image of the global batch may activate, or ``None``.
        topk: The step's training caps ``(text, image)`` when annealed, else ``None``
            (``objective.train_*_topk``).
    """

    eta: torch.Tensor
    expansion: tuple[torch.Tensor, torch.Tensor] | None
    lexical_target: torch.Tensor | None
    query_mask: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    topk: tuple[int | None, int | None] | None = None


class Objective:
    """The objective of one run: which parameters train, and the named terms of a batch.

    Args:
        cfg: The objective config.
        n_terms: Columns of the sparse head (its possibly restricted vocabulary).
        total_steps: All optimisation steps of the run (the schedules' horizon).
        caption_terms: ``content_only -> (indptr, indices)``: every caption's terms as CSR
            arrays of the sparse head's columns (content words only when asked); ``None``
            when the vocabulary has no names (expansion control and lexical grounding then
            refuse to start).
        device: The training device (tables of token ids and regulariser weights).
        query_lookup: The model's queries are lookups of their own terms
            (``model.query_encoder=lookup``): :meth:`step_inputs` gives each caption's terms.
        image_terms: ``() -> (indptr, indices)``: for every caption row, the terms of all
            of its image's training captions as the head's columns (the caption gate);
            ``None`` when the vocabulary has no names.

    Raises:
        ConfigError: If an option needs what the run lacks (a named vocabulary, a head
            with at least ``train_*_topk`` terms).

    Attributes:
        method: The :class:`Method` row.
        options: The enabled :class:`OptionTerm` rows.
        term_names: Logged term names, in order (:func:`term_names`).
        regularizer: The regulariser's schedule (saved in checkpoints).
        expansion: Expansion control, or ``None``.
    """

    def __init__(
        self,
        cfg: ObjectiveConfig,
        *,
        n_terms: int,
        total_steps: int,
        caption_terms: CaptionTerms | None = None,
        device: torch.device | str = "cpu",
        query_lookup: bool = False,
        image_terms: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        self.method = method_spec(cfg.method)
        self.n_terms = n_terms
        self.device = torch.device(device)
        sparse = self.method.uses_sparse
        self.options = tuple(t for t in OPTION_TERMS if sparse and t.enabled(cfg))
        self.term_names = term_names(cfg)
        self.regularizer = SparsityRegularizer(
            cfg.q_reg,
            cfg.d_reg,
            total_steps,
            cfg.reg_warmup_frac,
            kind=cfg.reg_text or cfg.reg,
            kind_img=cfg.reg_image or cfg.reg,
            df_alpha=cfg.df_alpha,
            df_beta=cfg.df_beta,
        )
        self._eta_table: torch.Tensor | None = None
        self._eta = torch.zeros(2, device=self.device)
        self._check_train_topk()
        self.expansion: ExpansionControl | None = None
        if cfg.expansion_control and sparse:
            indptr, indices = self._caption_terms(caption_terms, "objective.expansion_control")
            self.expansion = ExpansionControl(
                padded_token_ids(indptr, indices, pad=n_terms).to(self.device),
                n_terms,
                total_steps,
                cfg.expansion_p0,
                cfg.expansion_decay_frac,
            )
        # Lexical grounding: every caption's content words, as the head's columns.
        self.lexical_ids: torch.Tensor | None = None
        need = next((t for t in self.options if t.needs_content_words), None)
        if need is not None:
            indptr, indices = self._caption_terms(caption_terms, need.key, content_only=True)
            self.lexical_ids = padded_token_ids(indptr, indices, pad=n_terms).to(self.device)
        # Inference-free queries: every caption's own terms, the model's lookup input.
        self.query_ids: torch.Tensor | None = None
        if query_lookup and sparse:
            key = "model.query_encoder=lookup"
            indptr, indices = self._caption_terms(caption_terms, key)
            self.query_ids = padded_token_ids(indptr, indices, pad=n_terms).to(self.device)
        # The caption gate: the terms of all of each caption's image's training captions.
        self.gate_ids: torch.Tensor | None = None
        need = next((t for t in self.options if t.needs_image_terms), None)
        if need is not None:
            if image_terms is None:
                raise ConfigError(
                    f"{need.key} needs a named vocabulary (a backbone bundle with vocab.txt): "
                    "an image's captions must map to vocabulary ids"
                )
            indptr, indices = image_terms()
            self.gate_ids = padded_token_ids(indptr, indices, pad=n_terms).to(self.device)

    @property
    def uses_sparse(self) -> bool:
        """Whether the sparse head is trained and evaluated."""
        return self.method.uses_sparse

    @property
    def with_logits(self) -> bool:
        """Whether the model must return the sparse head's logits."""
        return any(t.needs_logits for t in self.options)

    @property
    def select_metric(self) -> str:
        """The method's default selection metric (``train.select_metric=auto``)."""
        return self.method.select_metric

    @property
    def score_types(self) -> tuple[str, ...]:
        """The score types validation evaluates."""
        return self.method.score_types

    def set_trainable(self, model: Any) -> list[torch.nn.Parameter]:
        """Freeze what the method keeps fixed; return the parameters to optimise."""
        return self.method.set_trainable(model)

    def _check_train_topk(self) -> None:
        """``objective.train_*_topk`` must fit the sparse head's number of terms."""
        for key in ("train_text_topk", "train_image_topk"):
            k = getattr(self.cfg, key)
            if k is not None and k > self.n_terms:
                raise ConfigError(
                    f"objective.{key}={k} exceeds the sparse head's {self.n_terms} terms "
                    "(lower it, or null to switch the cap off)"
                )

    @staticmethod
    def _caption_terms(
        caption_terms: CaptionTerms | None, key: str, content_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        if caption_terms is None:
            what = "vocabulary terms" if content_only else "vocabulary ids"
            raise ConfigError(
                f"{key} needs a named vocabulary (a backbone bundle with vocab.txt): "
                f"captions must map to {what}"
            )
        return caption_terms(content_only)

    # -- per step, outside the compiled part ----------------------------------------

    def eta(self, step: int) -> torch.Tensor:
        """The regulariser weights ``(eta_t, eta_i)`` of ``step`` in a fixed device buffer.

        Copied from a device table built once (no host-device copy per step; the buffer's
        address never changes, as CUDA graphs need).
        """
        if self._eta_table is None:
            self._eta_table = self.regularizer.weight_table(self.device)
        self._eta.copy_(self._eta_table[min(step, self._eta_table.shape[0] - 1)])
        return self._eta

    def step_inputs(
        self,
        caption_rows: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
        local: slice = slice(None),
    ) -> StepInputs:
        """What the step at ``step`` needs besides the model's outputs.

        Args:
            caption_rows: ``(B,)`` caption rows of the global batch (on the device).
            step: The optimisation step.
            generator: Expansion control's generator.
            local: This process's rows of the global batch.
        """
        expansion = None
        if self.expansion is not None:
            expansion = self.expansion.draw(caption_rows, step, generator, local)
        target = query_mask = gate = None
        if self.lexical_ids is not None:
            target = token_mask(self.lexical_ids[caption_rows[local]], self.n_terms)
        if self.query_ids is not None:
            query_mask = token_mask(self.query_ids[caption_rows[local]], self.n_terms)
        if self.gate_ids is not None:  # the images of the global batch (after gathering)
            gate = token_mask(self.gate_ids[caption_rows], self.n_terms)
        return StepInputs(
            self.eta(step), expansion, target, query_mask, gate, self.train_topk(step)
        )

    def train_topk(self, step: int) -> tuple[int | None, int | None] | None:
        """The training caps ``(text, image)`` at ``step`` when annealed, else ``None``.

        ``objective.topk_anneal_factor`` times each cap, falling linearly to it over
        ``objective.topk_anneal_frac`` of the steps
        (:func:`~mmsparse.losses.postings.annealed_topk`).
        """
        cfg = self.cfg
        if cfg.topk_anneal_factor <= 1:
            return None
        return (
            annealed_topk(
                cfg.train_text_topk,
                step,
                self.total_steps,
                cfg.topk_anneal_factor,
                cfg.topk_anneal_frac,
                self.n_terms,
            ),
            annealed_topk(
                cfg.train_image_topk,
                step,
                self.total_steps,
                cfg.topk_anneal_factor,
                cfg.topk_anneal_frac,
                self.n_terms,
            ),
        )

    # -- the terms ------------------------------------------------------------------

    def __call__(
        self,
        out: Any,
        inputs: StepInputs,
        *,
        sparse_scale: torch.Tensor | float = 1.0,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named terms of one batch of model outputs (the total under ``total``).

        The outputs are cast to float32; expansion control, then the training cap, apply to
        this process's sparse vectors; ``gather`` (data parallelism) then joins every
        process's vectors into the global batch before the terms.

        Args:
            out: The model's :class:`~mmsparse.model.model.ModelOutput` of this process's
                rows.
            inputs: :meth:`step_inputs` of the step.
            sparse_scale: ``s`` (the model's :meth:`sparse_scale`).
            gather: Concatenates a tensor over processes, keeping gradients.
        """
        cfg = self.cfg
        img_dense, txt_dense = out.img_dense.float(), out.txt_dense.float()
        img_sparse, txt_sparse = out.img_sparse.float(), out.txt_sparse.float()
        if self.uses_sparse:
            if inputs.expansion is not None:
                txt_sparse = ExpansionControl.apply(txt_sparse, inputs.expansion)
            # Train as you serve: only the k heaviest terms of each vector score.
            k_txt, k_img = inputs.topk or (cfg.train_text_topk, cfg.train_image_topk)
            txt_sparse = prune(txt_sparse, k_txt)
            img_sparse = prune(img_sparse, k_img)
        if gather is not None:
            img_dense, txt_dense = gather(img_dense), gather(txt_dense)
            if self.uses_sparse:
                img_sparse, txt_sparse = gather(img_sparse), gather(txt_sparse)
        vectors = Vectors(
            img_dense,
            txt_dense,
            img_sparse,
            txt_sparse,
            out.tau,
            sparse_scale,
            inputs.eta,
            out.img_logits,
            out.txt_logits,
            inputs.lexical_target,
            inputs.gate,
        )
        return self.terms(vectors)

    def terms(self, v: Vectors) -> dict[str, torch.Tensor]:
        """Named terms of float32 vectors (the total under ``total``)."""
        cfg = self.cfg
        terms = dict(self.method.ranking(v, cfg))
        total = terms["loss"]
        if self.uses_sparse:
            terms.update(
                sparsity_terms(
                    v.txt_sparse,
                    v.img_sparse,
                    v.eta[0],
                    v.eta[1],
                    cfg.reg_text or cfg.reg,
                    cfg.reg_image or cfg.reg,
                    cfg.df_alpha,
                    cfg.df_beta,
                )
            )
            total = total + terms["reg"]
        terms["total"] = total
        for option in self.options:
            value = option.compute(v, cfg)
            terms[option.name] = value
            if option.weight is not None:
                terms["total"] = terms["total"] + option.weight(cfg) * value
        return terms

    def stack(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logged terms as one detached ``(K,)`` float32 vector (:attr:`term_names`)."""
        return torch.stack([terms[k].float() for k in self.term_names]).detach()

    # -- schedule state ---------------------------------------------------------------

    def step_once(self) -> None:
        """Advance the schedules by one optimisation step."""
        self.regularizer.step_once()

    def schedule_values(self) -> dict[str, float]:
        """The regulariser weights at the current step (logged per epoch)."""
        reg = self.regularizer
        return {"eta_t": reg.eta_t(reg.step), "eta_i": reg.eta_i(reg.step)}

    def state_dict(self) -> dict[str, Any]:
        """Schedule state for checkpoints."""
        return self.regularizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedules from :meth:`state_dict`."""
        self.regularizer.load_state_dict(state)
        self._eta_table = None

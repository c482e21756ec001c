"""Typed, frozen run configuration.

A run is described by one :class:`RunConfig` made of four groups (``data``, ``model``,
``objective``, ``train``) and an ``eval`` group. Configurations are read from JSON or YAML
files, patched with ``key=value`` overrides (``train.lr=1e-4``), validated (an unknown key
is an error that names it) and saved as JSON next to every checkpoint.

Example:
    >>> from mmsparse.config import RunConfig, apply_overrides
    >>> cfg = apply_overrides(RunConfig(), ["objective.w2=0.5", "train.epochs=3"])
    >>> cfg.objective.w2, cfg.train.epochs
    (0.5, 3)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmsparse.errors import ConfigError

Method = Literal["joint", "d2s", "dense", "no_distill", "frozen_dense"]
DistillTeacher = Literal["official", "joint", "detached"]

METHODS: tuple[str, ...] = typing.get_args(Method)
DISTILL_TEACHERS: tuple[str, ...] = typing.get_args(DistillTeacher)


@dataclass(frozen=True)
class DataConfig:
    """Where the precomputed features live.

    Attributes:
        path: Dataset directory holding the feature files and ``dataset_meta.json``.
        backbone: Backbone suffix of the release files
            (``img_embs_before_proj_<backbone>.parquet``); empty means "the only one there".
        image_file: Image feature file name inside ``path`` (overrides ``backbone``).
        text_file: Caption feature file name inside ``path`` (overrides ``backbone``).
        meta_file: Karpathy-format metadata file name inside ``path``.
        bundle: Backbone bundle directory (projections, word embeddings, vocabulary) or
            ``None`` for the documented random fallback.
        train_splits: Metadata splits used for training (``restval`` counts as train).
        val_split: Split used for model selection and early stopping.
    """

    path: str = ""
    backbone: str = ""
    image_file: str | None = None
    text_file: str | None = None
    meta_file: str = "dataset_meta.json"
    bundle: str | None = None
    train_splits: tuple[str, ...] = ("train", "restval")
    val_split: str = "val"


@dataclass(frozen=True)
class ModelConfig:
    """Shape and initialisation of the dense heads, sparse head and temperature.

    Attributes:
        d_img: Image feature size (``None``: read from the data).
        d_txt: Caption feature size (``None``: read from the data).
        dense_dim: Output size of the dense heads (256 in BLIP/ALBEF).
        d_word: Word-embedding size of the sparse head (``None``: from the bundle, else 768).
        vocab_size: Vocabulary size (``None``: from the bundle, else 30,522).
        tau_init: Initial temperature.
        tau_min: Lower clamp of the temperature.
        tau_max: Upper clamp of the temperature.
        init_from: A run directory or checkpoint to initialise every tensor from (e.g. a
            stage-0 dense fit); ``None`` initialises from the bundle or at random.
        sparse_init: How ``U`` and ``c`` of the sparse head start: ``random`` (the paper), or
            ``token-lstsq``, an extension: a ridge fit on the training captions so that
            ``LayerNorm(U e + c)`` starts near the (standardised) mean word embedding of each
            caption's own tokens, which makes a caption's own words its active terms from
            the first step (needs a named vocabulary); or ``dense-compose`` (with
            ``sparse_input=features``): each feature map starts as a random ``U`` composed
            with its modality's dense head, the paper's head on the unnormalised ``e``.
        vocab_restrict: Output vocabulary of the sparse head (an extension): ``none`` (all
            terms, the paper), ``train-captions`` (only the word pieces that occur in the
            training captions; the other rows of ``V`` are dropped) or
            ``train-captions-content`` (the same minus function words, punctuation and
            sub-word pieces, see :mod:`mmsparse.data.terms`). Vectors, indexes and exports
            still use the full vocabulary's ids.
        sparse_input: What the sparse head reads: ``dense`` (the normalised dense vector
            ``e``, the paper) or ``features``, an extension: the backbone features ``h``
            through one input map per modality (``U_img``, ``U_txt``; the LayerNorm and
            ``V`` stay shared), so the sparse vectors are not limited to what the dense
            vector keeps, and the sparse losses never move the dense heads.
        query_encoder: How a text query becomes a sparse vector: ``head`` (the paper: the
            text encoder's features through the dense and sparse heads) or ``lookup``, an
            extension (inference-free queries, as OpenSearch's doc-only models and
            V-SPLADE): a caption is its own word pieces, each with one learned weight per
            term (:mod:`mmsparse.losses.inference_free`); serving then needs only the
            tokenizer, never the text encoder, and has no dense query side (no dense or
            hybrid search).
        query_weights: Initial per-term weights of ``query_encoder=lookup``: ``idf`` (the
            BM25 IDF of the training captions) or ``binary`` (1 for every term).
    """

    d_img: int | None = None
    d_txt: int | None = None
    dense_dim: int = 256
    d_word: int | None = None
    vocab_size: int | None = None
    tau_init: float = 0.07
    tau_min: float = 0.001
    tau_max: float = 0.5
    init_from: str | None = None
    sparse_init: Literal["random", "token-lstsq", "dense-compose"] = "random"
    vocab_restrict: Literal["none", "train-captions", "train-captions-content"] = "none"
    sparse_input: Literal["dense", "features"] = "dense"
    query_encoder: Literal["head", "lookup"] = "head"
    query_weights: Literal["idf", "binary"] = "idf"


@dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective and its weights (symbols as in METHOD.md).

    Attributes:
        method: ``joint`` (the paper), ``d2s`` (dense-to-sparse baseline), ``dense``
            (contrastive fit of the dense heads only), ``no_distill`` and ``frozen_dense``
            (the two ablations).
        w1: Weight of the dense score in the integrated score ``S_i``.
        w2: Weight of the sparse score in ``S_i``.
        lam1: Weight of the dense terms.
        lam2: Weight of the sparse terms.
        distill_teacher: ``official``, ``joint`` or ``detached`` (see METHOD.md).
        q_reg: Maximum l1 weight ``eta_t`` of caption (query) sparse vectors.
        d_reg: Maximum l1 weight ``eta_i`` of image (document) sparse vectors.
        reg_warmup_frac: Fraction ``T`` of all steps over which the l1 weights grow
            quadratically to their maximum.
        expansion_control: Probabilistic expansion control on caption vectors.
        expansion_p0: Initial masking probability of expansion control.
        expansion_decay_frac: Fraction of training over which that probability decays
            linearly to 0.
        reg: The sparsity regulariser: ``l1`` (the paper: batch mean of row sums) or
            ``flops`` (SPLADE's FLOPS regulariser ``sum_v (mean_b z_bv)^2``, which
            penalises the terms many vectors share) or ``df-flops`` (FLOPS weighted by each
            term's document frequency, ``df_alpha``, ``df_beta``); same weights and warm-up.
        train_text_topk: Train as you serve: keep only the k largest activations of every
            caption vector in the training forward pass (gradients flow through the kept
            ones); ``None``: off.
        train_image_topk: The same for image vectors.
        sparse_scale: ``none`` (the paper: ``S_s`` unscaled) or ``learned``: the loss sees
            ``s · S_s`` with a learnable ``s > 0`` (a temperature of the sparse scores; no
            ranking changes).
        sparse_scale_init: Initial ``s``.
        sparse_stop_grad: The sparse head reads the dense vectors without gradient: the
            sparse terms of the loss no longer move the dense heads.
        lexical_weight: Weight of the lexical grounding term (an extension, see
            :func:`mmsparse.losses.lexical_grounding`): each image's and caption's sparse
            distribution is pulled towards the content words of the batch's caption.
        contrastive_weight: ``beta`` in the joint objective's ``loss = (beta L + L') / 2``:
            the weight of the hard-label contrastive part ``L`` against the distillation
            part ``L'`` (an extension; 1 is the paper, 0 trains on distillation alone).
        reg_text: The regulariser of caption (query) vectors when it differs from ``reg``:
            ``l1``, ``flops`` or ``df-flops``; ``None``: ``reg``.
        reg_image: The same for image (document) vectors (e.g. ``l1`` on queries with
            ``flops`` on images; ``df-flops``: FLOPS weighted by each term's document
            frequency, :mod:`mmsparse.losses.postings`).
        df_alpha: DF-FLOPS: the document-frequency share at which a term's penalty is half
            of FLOPS's (in ``(0, 1)``).
        df_beta: DF-FLOPS: the steepness of the penalty around ``df_alpha`` (``> 0``).
        gate_weight: Caption-gated image supervision (an extension after V-SPLADE): the
            weight of ``gate(Z_img, G)``, the activation of an image outside the word
            pieces of all of its training captions; ``0``: off.
        topk_anneal_factor: The training cap (``train_text_topk``, ``train_image_topk``)
            starts at this multiple of its value and falls linearly to it (after CSRv2);
            ``1``: a fixed cap.
        topk_anneal_frac: Share of the steps over which the annealed cap reaches its value.
    """

    method: Method = "joint"
    w1: float = 0.1
    w2: float = 0.1
    lam1: float = 0.9
    lam2: float = 0.3
    distill_teacher: DistillTeacher = "detached"
    q_reg: float = 5e-4
    d_reg: float = 3e-5
    reg_warmup_frac: float = 0.2
    expansion_control: bool = False
    expansion_p0: float = 1.0
    expansion_decay_frac: float = 1.0
    reg: Literal["l1", "flops", "df-flops"] = "l1"
    train_text_topk: int | None = None
    train_image_topk: int | None = None
    sparse_scale: Literal["none", "learned"] = "none"
    sparse_scale_init: float = 1.0
    sparse_stop_grad: bool = False
    lexical_weight: float = 0.0
    contrastive_weight: float = 1.0
    reg_text: Literal["l1", "flops", "df-flops"] | None = None
    reg_image: Literal["l1", "flops", "df-flops"] | None = None
    df_alpha: float = 0.1
    df_beta: float = 2.0
    gate_weight: float = 0.0
    topk_anneal_factor: float = 1.0
    topk_anneal_frac: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule of the published configs, plus run mechanics.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Caption-image pairs per step.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_frac: Fraction of steps of linear learning-rate warm-up (then linear decay).
        grad_clip: Gradient-norm clip (``0`` disables clipping).
        amp: Mixed precision of the model's forward pass: ``auto`` (fp16 on CUDA, fp32 on
            CPU), ``fp16`` (CUDA only), ``bf16`` (CUDA, or CPU when asked), ``off``. The loss
            is always computed in float32.
        seed: Seed of initialisation and batch order.
        patience: Early-stopping patience in epochs (``0`` disables early stopping).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        select_metric: Validation metric for model selection and early stopping, such as
            ``t2i/sparse/R@1``; ``auto`` is sparse R@1 for every method but ``dense``,
            dense R@1 for ``dense``.
        eval_every: Evaluate on validation every this many epochs.
        progress: Show progress bars.
        plot: Write PNG training curves (needs matplotlib).
        compile: ``torch.compile`` the forward pass and loss of the training step: ``off``,
            ``default``, ``reduce-overhead`` (adds CUDA graphs on CUDA) or ``max-autotune``.
            The mathematics is unchanged (loss trajectories agree within float noise).
        fused_optimizer: AdamW implementation: ``auto`` (the fused kernel on CUDA and CPU
            where this torch has it, else torch's default), ``on`` (fused, or an error) or
            ``off`` (torch's default).
        log_every: Also log the loss terms every this many steps: ``type: "step"`` records
            in ``metrics.jsonl`` with the mean over the steps since the previous record of
            the epoch, read from the device without stalling the step; ``0``: per-epoch
            records only.
        sparse_lr_scale: Learning rate of the sparse head as a multiple of ``lr`` (the
            D2S code trains its projector at its own rate); ``1``: one rate for all.
        dense_lr_scale: Learning rate of the dense heads (``text_proj``, ``vision_proj``)
            as a multiple of ``lr``; ``0`` keeps them where ``model.init_from`` left them
            (the joint objective then cannot overfit the dense side); ``1``: one rate.
        tau_lr_scale: Learning rate of the temperature ``tau`` as a multiple of ``lr``;
            ``0`` keeps it at the ``model.init_from`` fit (with ``dense_lr_scale`` 0 the
            teacher's dense part is then exactly the stage-0 model, as in D2S).
        query_lr_scale: Learning rate of the per-term query weights of
            ``model.query_encoder=lookup`` as a multiple of ``lr``; ``0`` keeps them at
            their initial values (``model.query_weights``).
    """

    epochs: int = 200
    batch_size: int = 256
    lr: float = 5e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_frac: float = 0.2
    grad_clip: float = 1.0
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"
    seed: int = 42
    patience: int = 20
    device: str = "auto"
    select_metric: str = "auto"
    eval_every: int = 1
    progress: bool = True
    plot: bool = True
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    log_every: int = 0
    sparse_lr_scale: float = 1.0
    dense_lr_scale: float = 1.0
    tau_lr_scale: float = 1.0
    query_lr_scale: float = 1.0


@dataclass(frozen=True)
class EvalConfig:
    """How sparse vectors are evaluated.

    Attributes:
        text_topk: Keep only the top-k terms of each caption vector (``None``: all).
        image_topk: Keep only the top-k terms of each image vector (``None``: all).
        threshold: Zero sparse weights at or below this value.
        batch_size: Queries scored per batched matrix product.
        trec_depth: Documents written per query in TREC run files.
        hybrid: The hybrid score: ``published`` (METHOD.md: ``w1 · dense + w2 · sparse``,
            dense scores without the temperature) or ``integrated`` (an extension: the
            integrated score ``S_i`` the model was trained with,
            ``w1 · dense / tau + w2 · s · sparse``, with the run's temperature and sparse
            scale ``s``).
    """

    text_topk: int | None = None
    image_topk: int | None = None
    threshold: float = 0.0
    batch_size: int = 1024
    trec_depth: int = 100
    hybrid: Literal["published", "integrated"] = "published"


@dataclass(frozen=True)
class RunConfig:
    """A whole training run.

    Attributes:
        name: Free-form name of the run (shown in tables).
        data: :class:`DataConfig`.
        model: :class:`ModelConfig`.
        objective: :class:`ObjectiveConfig`.
        train: :class:`TrainConfig`.
        eval: :class:`EvalConfig`.
    """

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-compatible nested dicts."""
        return _to_plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        """Return the configuration as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)

    def replace(self, **groups: Any) -> RunConfig:
        """Return a copy with whole groups or top-level fields replaced."""
        return dataclasses.replace(self, **groups)

    @property
    def serving(self) -> EvalConfig:
        """The evaluation options vectors are served with.

        ``eval`` with an unset ``text_topk`` / ``image_topk`` taken from the training cap
        ``objective.train_text_topk`` / ``train_image_topk`` (train as you serve: a model
        trained to score with its k heaviest terms is served with them). Evaluation,
        explanations, indexes and exports all encode with these options.
        """
        ev, obj = self.eval, self.objective
        return dataclasses.replace(
            ev,
            text_topk=ev.text_topk if ev.text_topk is not None else obj.train_text_topk,
            image_topk=ev.image_topk if ev.image_topk is not None else obj.train_image_topk,
        )


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value for '{key}'")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: '{key}' must have {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return _from_mapping(tp, value, where, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        # One rule for every integer key: what torch and numpy take (seeds, sizes, counts).
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{where}: '{key}' must be an integer within +-2^63, got {value}")
        return value
    if tp is float:
        number = None
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                number = None
            except OverflowError:  # an integer beyond float range
                number = math.inf
        if number is None:
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        # One rule for every float key: NaN and +-inf (JSON NaN/Infinity, YAML .nan/.inf,
        # an override 'inf', or 1e400) would pass or slip through range checks.
        if not math.isfinite(number):
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        try:
            value.encode("utf-8")  # lone surrogates (YAML "\ud800") cannot be saved
        except UnicodeEncodeError:
            raise ConfigError(f"{where}: '{key}' is not valid Unicode text: {value!r}") from None
        return value
    raise ConfigError(f"{where}: unsupported type for '{key}'")  # pragma: no cover


def _quote(prefix: str, key: Any) -> str:
    """``'train.lr'``; a key with a line break or other control character as its repr."""
    name = f"{prefix}{key}"
    return f"'{name}'" if name.isprintable() else repr(name)


def _from_mapping(cls: type, data: Mapping[str, Any], where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown config key {_quote(prefix, key)} (known: {known})")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", where)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - all fields have defaults
        raise ConfigError(f"{where}: {exc}") from exc
    return obj


def config_from_dict(data: Mapping[str, Any], where: str = "<dict>") -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested dicts.

    Args:
        data: Nested mapping with the groups ``data``, ``model``, ``objective``,
            ``train``, ``eval`` (all optional) and ``name``.
        where: Where the mapping came from, used in error messages.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: On an unknown key or a value of the wrong type; the message names both.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a config must be a mapping at the top level")
    cfg = _from_mapping(RunConfig, data, where)
    validate_config(cfg, where)
    return cfg


def validate_config(cfg: RunConfig, where: str = "<config>") -> None:
    """Check value ranges that types alone cannot express.

    Raises:
        ConfigError: Naming the offending key.
    """
    checks = [
        (cfg.model.dense_dim > 0, "model.dense_dim must be positive"),
        (
            0 < cfg.model.tau_min <= cfg.model.tau_init <= cfg.model.tau_max,
            "model.tau_init must lie in [model.tau_min, model.tau_max] and tau_min > 0",
        ),
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.batch_size >= 2, "train.batch_size must be at least 2 (in-batch negatives)"),
        (cfg.train.lr > 0, "train.lr must be positive"),
        (0 <= cfg.train.warmup_frac <= 1, "train.warmup_frac must lie in [0, 1]"),
        (0 <= cfg.objective.reg_warmup_frac <= 1, "objective.reg_warmup_frac must lie in [0, 1]"),
        (
            cfg.objective.q_reg >= 0 and cfg.objective.d_reg >= 0,
            "objective.q_reg and objective.d_reg must be non-negative",
        ),
        (0 <= cfg.objective.expansion_p0 <= 1, "objective.expansion_p0 must lie in [0, 1]"),
        (cfg.objective.expansion_decay_frac > 0, "objective.expansion_decay_frac must be > 0"),
        (cfg.train.eval_every >= 1, "train.eval_every must be at least 1"),
        (
            cfg.objective.train_text_topk is None or cfg.objective.train_text_topk >= 1,
            "objective.train_text_topk must be at least 1 (or null to switch it off)",
        ),
        (
            cfg.objective.train_image_topk is None or cfg.objective.train_image_topk >= 1,
            "objective.train_image_topk must be at least 1 (or null to switch it off)",
        ),
        (cfg.objective.sparse_scale_init > 0, "objective.sparse_scale_init must be > 0"),
        (cfg.objective.lexical_weight >= 0, "objective.lexical_weight must be non-negative"),
        (
            cfg.objective.contrastive_weight >= 0,
            "objective.contrastive_weight must be non-negative",
        ),
        (cfg.train.sparse_lr_scale > 0, "train.sparse_lr_scale must be > 0"),
        (cfg.train.dense_lr_scale >= 0, "train.dense_lr_scale must be non-negative"),
        (cfg.train.tau_lr_scale >= 0, "train.tau_lr_scale must be non-negative"),
        (cfg.train.query_lr_scale >= 0, "train.query_lr_scale must be non-negative"),
        (
            0 < cfg.objective.df_alpha < 1,
            "objective.df_alpha must lie in (0, 1) (the DF share of half penalty)",
        ),
        (cfg.objective.df_beta > 0, "objective.df_beta must be > 0"),
        (cfg.objective.gate_weight >= 0, "objective.gate_weight must be non-negative"),
        (
            cfg.objective.topk_anneal_factor >= 1,
            "objective.topk_anneal_factor must be at least 1 (1: a fixed cap)",
        ),
        (0 < cfg.objective.topk_anneal_frac <= 1, "objective.topk_anneal_frac must lie in (0, 1]"),
        (
            cfg.model.query_encoder == "head" or not cfg.objective.expansion_control,
            "objective.expansion_control masks caption vectors to their own terms, which "
            "model.query_encoder=lookup queries already are: switch one off",
        ),
        (
            cfg.model.query_encoder == "head" or cfg.objective.method != "dense",
            "model.query_encoder=lookup needs a sparse method (objective.method=dense "
            "trains no sparse vectors)",
        ),
        (
            cfg.model.sparse_init != "dense-compose" or cfg.model.sparse_input == "features",
            "model.sparse_init=dense-compose starts the feature maps from the dense heads: "
            "it needs model.sparse_input=features",
        ),
        (
            cfg.model.sparse_init != "token-lstsq" or cfg.model.sparse_input == "dense",
            "model.sparse_init=token-lstsq fits U on the dense vectors: it needs "
            "model.sparse_input=dense",
        ),
        (cfg.train.patience >= 0, "train.patience must be non-negative"),
        (cfg.train.log_every >= 0, "train.log_every must be non-negative"),
        (cfg.eval.text_topk is None or cfg.eval.text_topk > 0, "eval.text_topk must be > 0"),
        (cfg.eval.image_topk is None or cfg.eval.image_topk > 0, "eval.image_topk must be > 0"),
        (cfg.eval.threshold >= 0, "eval.threshold must be non-negative"),
        (cfg.eval.batch_size > 0, "eval.batch_size must be > 0"),
        (cfg.eval.trec_depth > 0, "eval.trec_depth must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    metric = cfg.train.select_metric.split("/")
    if cfg.train.select_metric != "auto" and (
        len(metric) != 3
        or metric[0] not in ("t2i", "i2t")
        or metric[1] not in ("dense", "sparse", "hybrid")
        or metric[2] not in ("R@1", "R@5", "R@10", "MRR@10")
    ):
        raise ConfigError(
            f"{where}: train.select_metric must look like 't2i/sparse/R@1', "
            f"got {cfg.train.select_metric!r}"
        )


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a JSON or YAML configuration file and apply ``key=value`` overrides.

    Args:
        path: A ``.json``, ``.yaml`` or ``.yml`` file.
        overrides: Dotted ``group.key=value`` strings; values are parsed as JSON when
            possible (numbers, booleans, ``null``, lists), else taken as strings.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file cannot be read or parsed, or on an unknown key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        # YAML's messages span lines (the offending line and a caret): one line here.
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{path}: cannot parse config file: {reason}") from exc
    data = _apply_override_strings(data or {}, overrides, str(path))
    return config_from_dict(data, where=str(path))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _apply_override_strings(
    data: Mapping[str, Any], overrides: Iterable[str], where: str
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a config must be a mapping at the top level")
    data = copy.deepcopy(dict(data))  # YAML may hold dates and such: no JSON round trip
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {_quote('', part)} is not a group")
        node[parts[-1]] = _parse_value(value.strip())
    return data


def apply_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Return ``cfg`` with dotted ``key=value`` overrides applied and validated.

    Args:
        cfg: The base configuration.
        overrides: Strings such as ``"train.lr=1e-4"`` or ``"objective.method=d2s"``.

    Returns:
        A new, validated configuration.

    Raises:
        ConfigError: On an unknown key or a bad value; the message names the key.
    """
    data = _apply_override_strings(cfg.to_dict(), overrides, "override")
    return config_from_dict(data, where="override")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as JSON atomically (temporary file, then rename)."""
    from mmsparse.io_utils import atomic_write_text

    atomic_write_text(Path(path), cfg.to_json() + "\n")

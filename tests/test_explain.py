"""mmsparse.explain on a tiny run trained on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsparse.cli.main import main
from mmsparse.config import RunConfig, apply_overrides
from mmsparse.data import (
    BackboneBundle,
    SyntheticSpec,
    load_feature_store,
    make_synthetic,
    write_release,
)
from mmsparse.errors import ConfigError, DataError, MMSparseError
from mmsparse.explain import explain, format_explain, run_extraction
from mmsparse.runs import load_run
from mmsparse.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    store = make_synthetic(SyntheticSpec(n_train=160, n_val=40, n_test=40, seed=3))
    data = root / "data"
    write_release(store, data, "synth")
    store.bundle.save(data / "bundle")
    cfg = apply_overrides(
        RunConfig(name="explain-test"),
        [
            f"data.path={data}",
            f"data.bundle={data / 'bundle'}",
            "model.dense_dim=16",
            "train.epochs=2",
            "train.batch_size=64",
            "train.lr=2e-3",
            "train.patience=0",
            "train.progress=false",
            "train.seed=3",
            "objective.method=joint",
            "eval.text_topk=12",
            "eval.image_topk=40",
        ],
    )
    train(cfg, root / "run")
    return root / "run"


def _reference(run_dir, caption_id):
    """Independent float64 computation of the caption's and its image's sparse vectors."""
    run = load_run(run_dir)
    store = load_feature_store(run.config.data)
    m = run.model.eval()
    row = store.caption_row(caption_id)
    img_row = int(store.caption_image[row])
    with torch.no_grad():
        q = m.encode_text(store.caption_feats[row : row + 1]).sparse[0].double().numpy()
        d = m.encode_image(store.image_feats[img_row : img_row + 1]).sparse[0].double().numpy()

    def topk(v, k):
        keep = np.argsort(-v, kind="stable")[:k]
        out = np.zeros_like(v)
        out[keep] = v[keep]
        return out

    return run, store, topk(q, 12), topk(d, 40), store.image_ids[img_row]


def test_caption_paired_with_its_image(run_dir):
    cap_id = "805"
    run, store, q, d, img_id = _reference(run_dir, cap_id)
    out = explain(run_dir, caption_id=cap_id, k=5)
    assert out["query"]["kind"] == "caption" and out["query"]["id"] == cap_id
    assert out["query"]["text"] == store.caption_texts[store.caption_row(cap_id)]
    assert out["query"]["nnz"] == int(np.count_nonzero(q)) <= 12
    order = np.argsort(-q, kind="stable")[:5]
    assert [t["term"] for t in out["query"]["terms"]] == [run.vocab.term(int(i)) for i in order]
    np.testing.assert_allclose([t["weight"] for t in out["query"]["terms"]], q[order], rtol=1e-5)
    pair = out["pair"]
    assert pair["image_id"] == img_id
    np.testing.assert_allclose(pair["sparse_score"], q @ d, rtol=1e-5)
    prods = q * d
    assert pair["shared_terms"] == int(np.count_nonzero(prods))
    top = np.sort(prods[prods > 0])[::-1][:5]
    np.testing.assert_allclose([c["product"] for c in pair["contributions"]], top, rtol=1e-5)
    for c in pair["contributions"]:
        assert c["product"] == pytest.approx(c["query_weight"] * c["image_weight"], rel=1e-6)
    # k covering every shared term: the products add up to the score.
    full = explain(run_dir, caption_id=cap_id, k=10_000)
    total = sum(c["product"] for c in full["pair"]["contributions"])
    assert total == pytest.approx(full["pair"]["sparse_score"], rel=1e-5)
    assert -1.0 <= pair["dense_score"] <= 1.0
    text = format_explain(out)
    assert pair["contributions"][0]["term"] in text
    # the listed terms are said to be the top few of more, with their share of the score
    assert f"top 5 of {pair['shared_terms']} shared terms, summing to" in text
    assert f"top 5 of {out['query']['nnz']} non-zero terms" in text


def test_image_and_with_image(run_dir):
    out = explain(run_dir, image="3", k=4)
    assert out["query"]["kind"] == "image" and out["pair"] is None
    assert len(out["query"]["terms"]) == 4 and out["query"]["nnz"] <= 40
    weights = [t["weight"] for t in out["query"]["terms"]]
    assert weights == sorted(weights, reverse=True)
    other = explain(run_dir, caption_id="805", with_image="7")
    assert other["pair"]["image_id"] == "7"


def test_text_through_extraction_backend(run_dir, monkeypatch):
    store = load_feature_store(load_run(run_dir).config.data)
    row = store.caption_row("805")
    raw = store.caption_texts[row]

    class LookupEncoder:  # stands in for a real backend: returns the stored caption feature
        def encode(self, texts, batch_size=256):
            return np.stack([store.caption_feats[store.caption_texts.index(t)] for t in texts])

    by_caption = explain(run_dir, caption_id="805", with_image="7")
    by_text = explain(run_dir, text=raw, with_image="7", text_encoder=LookupEncoder())
    assert by_text["query"]["kind"] == "text" and by_text["query"]["text"] == raw
    assert by_text["query"]["terms"] == by_caption["query"]["terms"]
    assert by_text["pair"]["sparse_score"] == pytest.approx(by_caption["pair"]["sparse_score"])

    # The synthetic features record no extraction backend: a clear error.
    assert run_extraction(load_run(run_dir)) is None
    with pytest.raises(MMSparseError, match="cannot encode raw text"):
        explain(run_dir, text="a dog runs")

    # With one recorded (here in the data bundle), it is handed to load_text_encoder.
    seen = {}

    def fake_loader(extraction, device="cpu"):
        seen["extraction"] = extraction
        return LookupEncoder()

    import mmsparse.extract

    run = load_run(run_dir)
    bundle = BackboneBundle.load(run.config.data.bundle)  # rewritten with its checksums
    bundle.extraction = {"backend": "effnet-minilm", "d_txt": store.d_txt}
    monkeypatch.setattr(mmsparse.extract, "load_text_encoder", fake_loader)
    bundle.save(bundle.path)
    try:
        out = explain(run_dir, text=raw)
    finally:
        bundle.extraction = None
        bundle.save(bundle.path)
    assert seen["extraction"]["backend"] == "effnet-minilm"
    assert out["query"]["terms"] == by_caption["query"]["terms"] and out["pair"] is None


def test_bad_arguments(run_dir):
    with pytest.raises(ConfigError, match="exactly one"):
        explain(run_dir)
    with pytest.raises(ConfigError, match="exactly one"):
        explain(run_dir, image="1", caption_id="2")
    with pytest.raises(ConfigError, match="not --image"):
        explain(run_dir, image="1", with_image="2")
    with pytest.raises(DataError, match="unknown caption id nope"):
        explain(run_dir, caption_id="nope")
    with pytest.raises(DataError, match="unknown image id 99999"):
        explain(run_dir, caption_id="805", with_image="99999")


def test_caption_the_old_spelling_still_works_with_a_deprecation(run_dir, capsys):
    with pytest.warns(DeprecationWarning, match=r"use explain\(caption_id=\.\.\.\)"):
        old = explain(run_dir, caption="805", k=3)
    assert old == explain(run_dir, caption_id="805", k=3)
    assert main(["explain", str(run_dir), "--caption", "805", "--k", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "mmsparse: warning: --caption is deprecated; use --caption-id" in err
    assert json.loads(out) == old
    # still one of --image / --caption-id / --text
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(run_dir), "--caption", "805", "--image", "3"])
    assert exc.value.code == 2


def test_cli(run_dir, capsys):
    assert main(["explain", str(run_dir), "--caption-id", "805", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["query"]["terms"]) == 3 and out["pair"] is not None
    assert main(["explain", str(run_dir), "--image", "3"]) == 0
    assert "non-zero terms" in capsys.readouterr().out
    assert main(["explain", str(run_dir), "--text", "a dog"]) == 2
    assert "cannot encode raw text" in capsys.readouterr().err

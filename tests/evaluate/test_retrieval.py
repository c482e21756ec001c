"""Retrieval metrics against brute-force per-query sorting, ir_measures and ranx."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsparse.config import EvalConfig
from mmsparse.evaluate import (
    EncodedSplit,
    evaluate_encoded,
    evaluate_model,
    metrics_from_ranks,
    metrics_from_run,
    read_qrels,
    read_run,
)
from mmsparse.model import SparseDenseModel


def _encoded(n_img=13, caps=(1, 2, 3), D=6, V=20, seed=0, quantize=False, positive=False):
    rng = np.random.default_rng(seed)
    counts = rng.choice(caps, size=n_img)
    c2i = np.repeat(np.arange(n_img), counts)
    rng.shuffle(c2i)  # captions of an image are not contiguous
    n_cap = c2i.size

    def unit(n):
        x = rng.standard_normal((n, D))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def sparse(n):
        if positive:  # every term non-zero: no score ties
            return np.abs(rng.standard_normal((n, V))) + 0.01
        x = np.maximum(rng.standard_normal((n, V)) - 0.8, 0)
        return np.round(x * 2) / 2 if quantize else x  # quantised: many ties, many zeros

    img_d, txt_d = unit(n_img), unit(n_cap)
    if quantize:
        img_d, txt_d = np.round(img_d * 2) / 2, np.round(txt_d * 2) / 2
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return EncodedSplit(
        image_dense=t(img_d),
        image_sparse=t(sparse(n_img)),
        text_dense=t(txt_d),
        text_sparse=t(sparse(n_cap)),
        caption_to_image=torch.tensor(c2i),
        image_ids=[f"img{i}" for i in range(n_img)],
        caption_ids=[f"cap{i}" for i in range(n_cap)],
    )


def _brute_force(enc, score_type, w1, w2):
    """Per-query stable sorting in numpy (the slow, obvious way)."""
    td, ts = enc.text_dense.numpy().astype(np.float64), enc.text_sparse.numpy().astype(np.float64)
    idn, isp = (
        enc.image_dense.numpy().astype(np.float64),
        enc.image_sparse.numpy().astype(np.float64),
    )
    # score in float32 like the implementation so that ties are the same ties
    dense = (enc.text_dense @ enc.image_dense.T).numpy()
    sparse = (enc.text_sparse @ enc.image_sparse.T).numpy()
    S = {
        "dense": dense,
        "sparse": sparse,
        "hybrid": (w1 * torch.tensor(dense) + w2 * torch.tensor(sparse)).numpy(),
    }[score_type]
    del td, ts, idn, isp
    c2i = enc.caption_to_image.numpy()
    t2i = []
    for q in range(S.shape[0]):
        order = np.argsort(-S[q], kind="stable")
        t2i.append(int(np.flatnonzero(order == c2i[q])[0]) + 1)
    i2t = []
    for q in range(S.shape[1]):
        order = np.argsort(-S[:, q], kind="stable")
        rel = set(np.flatnonzero(c2i == q).tolist())
        i2t.append(next(i + 1 for i, c in enumerate(order) if c in rel))
    return np.array(t2i), np.array(i2t)


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("batch_size", [4, 1000])
def test_ranks_equal_brute_force_with_ties_and_chunks(quantize, batch_size):
    enc = _encoded(quantize=quantize, seed=1)
    res = evaluate_encoded(enc, w1=0.3, w2=0.7, eval_cfg=EvalConfig(batch_size=batch_size))
    for st in ("dense", "sparse", "hybrid"):
        t2i, i2t = _brute_force(enc, st, 0.3, 0.7)
        np.testing.assert_array_equal(res.ranks["t2i"][st], t2i, err_msg=st)
        np.testing.assert_array_equal(res.ranks["i2t"][st], i2t, err_msg=st)
        assert res.metrics["t2i"][st] == metrics_from_ranks(t2i)


def test_metrics_from_ranks_by_hand():
    m = metrics_from_ranks(np.array([1, 2, 6, 11]))
    assert m == pytest.approx(
        {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "MRR@10": 100 * (1 + 0.5 + 1 / 6) / 4}
    )


def _qrels_and_run(enc, res_runs_dir, direction, st):
    return read_run(res_runs_dir / f"{direction}.{st}.trec"), read_qrels(
        res_runs_dir / f"{direction}.qrels"
    )


@pytest.mark.parametrize("quantize", [False, True])
def test_trec_files_reproduce_the_metrics(tmp_path, quantize):
    enc = _encoded(n_img=30, quantize=quantize, seed=2)
    res = evaluate_encoded(
        enc, w1=0.5, w2=0.5, eval_cfg=EvalConfig(batch_size=7, trec_depth=12), trec_dir=tmp_path
    )
    for direction in ("t2i", "i2t"):
        for st in ("dense", "sparse", "hybrid"):
            run, qrels = _qrels_and_run(enc, tmp_path, direction, st)
            assert metrics_from_run(run, qrels) == pytest.approx(res.metrics[direction][st])
            assert all(len(v) == 12 for v in run.values())


def test_cross_check_with_ir_measures_and_ranx(tmp_path):
    ir_measures = pytest.importorskip("ir_measures")
    ranx = pytest.importorskip("ranx")
    # Tie-free scores: trec_eval-style tools break ties by document id, mmsparse by row.
    enc = _encoded(n_img=40, seed=3, positive=True)
    res = evaluate_encoded(
        enc, w1=0.4, w2=0.6, eval_cfg=EvalConfig(trec_depth=40), trec_dir=tmp_path
    )
    for direction in ("t2i", "i2t"):
        for st in ("dense", "sparse", "hybrid"):
            qrels = list(ir_measures.read_trec_qrels(str(tmp_path / f"{direction}.qrels")))
            run = list(ir_measures.read_trec_run(str(tmp_path / f"{direction}.{st}.trec")))
            agg = ir_measures.calc_aggregate(
                [
                    ir_measures.Success @ 1,
                    ir_measures.Success @ 5,
                    ir_measures.Success @ 10,
                    ir_measures.RR @ 10,
                ],
                qrels,
                run,
            )
            ours = res.metrics[direction][st]
            assert ours["R@1"] == pytest.approx(100 * agg[ir_measures.Success @ 1])
            assert ours["R@5"] == pytest.approx(100 * agg[ir_measures.Success @ 5])
            assert ours["R@10"] == pytest.approx(100 * agg[ir_measures.Success @ 10])
            assert ours["MRR@10"] == pytest.approx(100 * agg[ir_measures.RR @ 10])
            q = ranx.Qrels.from_file(str(tmp_path / f"{direction}.qrels"), kind="trec")
            r = ranx.Run.from_file(str(tmp_path / f"{direction}.{st}.trec"), kind="trec")
            scores = ranx.evaluate(q, r, ["hit_rate@1", "hit_rate@5", "mrr@10"])
            assert ours["R@1"] == pytest.approx(100 * scores["hit_rate@1"])
            assert ours["R@5"] == pytest.approx(100 * scores["hit_rate@5"])
            assert ours["MRR@10"] == pytest.approx(100 * scores["mrr@10"])


def test_sparsity_and_pruning_on_a_model(tiny_store):
    model = SparseDenseModel(
        d_img=24, d_txt=16, dense_dim=8, d_word=16, vocab_size=len(tiny_store.bundle.vocab)
    )
    model.init_weights(0, word_embeddings=tiny_store.bundle.word_embeddings)
    full = evaluate_model(model, tiny_store, "val", w1=1.0, w2=0.1)
    pruned = evaluate_model(
        model, tiny_store, "val", w1=1.0, w2=0.1, eval_cfg=EvalConfig(text_topk=3, image_topk=5)
    )
    assert pruned.sparsity["text_nnz"] <= 3 and pruned.sparsity["image_nnz"] <= 5
    assert full.sparsity["text_nnz"] > 3
    assert pruned.sparsity["flops"] < full.sparsity["flops"]
    assert full.info["n_images"] == 40 and full.info["n_captions"] == 120
    # dense metrics do not depend on sparse pruning
    assert full.metrics["t2i"]["dense"] == pruned.metrics["t2i"]["dense"]


@pytest.mark.parametrize("where", ["image_dense", "text_sparse", "all"])
def test_non_finite_scores_are_an_error_not_perfect_ranks(where):
    """A diverged model's NaN scores once ranked every query first (R@1 = 100)."""
    from mmsparse.errors import NonFiniteError

    enc = _encoded(seed=4)
    if where == "all":
        for name in ("image_dense", "image_sparse", "text_dense", "text_sparse"):
            getattr(enc, name).fill_(float("nan"))
    else:
        getattr(enc, where)[2, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"val split: .*not finite.*diverged"):
        evaluate_encoded(enc, w1=0.5, w2=0.5, split_name="val")

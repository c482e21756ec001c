"""Training with inference-free queries, DF-FLOPS, the caption gate and the annealed cap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.evaluate.retrieval import encode_split
from mmsparse.model import SparseDenseModel
from mmsparse.train import Trainer, train
from tests.helpers import TINY_OVERRIDES

LOOKUP = ["model.query_encoder=lookup", "model.vocab_restrict=train-captions"]


def _cfg(*extra):
    return apply_overrides(RunConfig(name="t"), [*TINY_OVERRIDES, *extra])


def test_inference_free_run_trains_its_image_side_against_the_lookup(tmp_path, tiny_store):
    res = train(
        _cfg(*LOOKUP, "train.epochs=2", "objective.lexical_weight=0.5"),
        tmp_path / "r",
        store=tiny_store,
    )
    model = SparseDenseModel.from_pretrained(tmp_path / "r" / "best")
    assert model.inference_free
    # evaluation's caption vectors are the lookup of each caption's own terms
    val = tiny_store.split("val")
    enc = encode_split(model, tiny_store, val)
    vocab = tiny_store.vocabulary()
    indptr, indices = tiny_store.caption_token_ids(vocab)
    for i, r in enumerate(val.caption_rows[:5]):
        own = set(indices[indptr[r] : indptr[r + 1]].tolist())
        got = set(np.flatnonzero(enc.text_sparse[i].numpy()).tolist())
        assert got <= own and got  # only its own terms (a weight <= 0 drops one)
    assert res.val["sparsity"]["text_nnz"] <= max(np.diff(indptr))
    record = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "lexical" in record[0]


@pytest.mark.parametrize(("scale", "moves"), [(0.0, False), (5.0, True)])
def test_query_weights_learn_at_their_own_rate(tmp_path, tiny_store, scale, moves):
    cfg = _cfg(*LOOKUP, "train.epochs=1", f"train.query_lr_scale={scale}")
    trainer = Trainer(cfg, tiny_store, tmp_path / "g")
    start = trainer.model.query_weight.detach().clone()
    groups = {id(p): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert groups[id(trainer.model.query_weight)] == scale
    train(cfg, tmp_path / "r", store=tiny_store)
    end = SparseDenseModel.from_pretrained(tmp_path / "r" / "best").query_weight
    assert (not torch.equal(end, start)) is moves


def test_caption_gate_mask_is_the_union_of_each_images_training_captions(tmp_path, tiny_store):
    trainer = Trainer(_cfg("objective.gate_weight=0.1"), tiny_store, tmp_path / "g")
    gate = trainer.objective.gate_ids.cpu().numpy()
    vocab = tiny_store.vocabulary()
    indptr, indices = tiny_store.caption_token_ids(vocab)
    rows = trainer.train_split.caption_rows
    image = int(tiny_store.caption_image[rows[0]])
    want = set()
    for r in rows[tiny_store.caption_image[rows] == image]:
        want |= set(indices[indptr[r] : indptr[r + 1]].tolist())
    # every caption of the image (the gate is looked up by caption row) has its union
    for r in np.flatnonzero(tiny_store.caption_image == image):
        got = set(gate[r][gate[r] < trainer.model.n_terms].tolist())
        assert got == want and len(want) > 0


def test_gate_df_flops_and_annealed_cap_train_and_log_their_terms(tmp_path, tiny_store):
    cfg = _cfg(
        "train.epochs=2",
        "objective.gate_weight=0.05",
        "objective.reg_image=df-flops",
        "objective.reg_text=l1",
        "objective.train_text_topk=4",
        "objective.train_image_topk=6",
        "objective.topk_anneal_factor=3",
        "objective.topk_anneal_frac=0.5",
    )
    trainer = Trainer(cfg, tiny_store, tmp_path / "t")
    half = trainer.total_steps // 2
    topk = trainer.objective.train_topk
    assert topk(0) == (12, 18)
    assert topk(half) == (4, 6) == topk(trainer.total_steps - 1)
    res = train(cfg, tmp_path / "r", store=tiny_store)
    log = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["gate"]) and r["gate"] >= 0 for r in log if r["type"] == "train")
    assert res.val["sparsity"]["image_nnz"] <= 6


def test_killed_run_with_the_new_options_resumes_exactly(tmp_path, tiny_store, monkeypatch):
    cfg = _cfg(
        *LOOKUP,
        "train.epochs=3",
        "objective.gate_weight=0.05",
        "objective.reg_image=df-flops",
        "objective.train_image_topk=6",
        "objective.topk_anneal_factor=3",
    )
    ref = train(cfg, tmp_path / "ref", store=tiny_store)
    original = Trainer.train_step
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying(self, rows, gen):
        calls["n"] += 1
        if calls["n"] > 7:
            raise Killed
        return original(self, rows, gen)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "run", store=tiny_store)
    monkeypatch.setattr(Trainer, "train_step", original)
    res = train(cfg, tmp_path / "run", store=tiny_store, resume=True)
    a = SparseDenseModel.from_pretrained(tmp_path / "ref" / "best").state_dict()
    b = SparseDenseModel.from_pretrained(tmp_path / "run" / "best").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert res.best_epoch == ref.best_epoch

"""The built-in demo: the whole method on synthetic data, in about a minute on a laptop CPU.

It generates a deterministic synthetic dataset (see :mod:`mmsparse.data.synthetic`), fits
the dense heads contrastively (stage 0: the dense baseline, standing in for a VLP's
pretrained final layer), then trains D2S and the joint method from that same start,
evaluates all three on the test split and shows the top terms of a few images.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.data.store import write_release
from mmsparse.data.synthetic import SyntheticSpec, make_synthetic
from mmsparse.evaluate.report import format_table, result_rows
from mmsparse.evaluate.retrieval import encode_split, evaluate_encoded
from mmsparse.model.model import SparseDenseModel
from mmsparse.sparse.ops import contributions, top_terms
from mmsparse.train.trainer import train

DEMO_NOTE = (
    "This demo runs on SYNTHETIC data generated in-process (scenes of English concept words "
    "mapped to random features), not on real images. To train on real features, see the "
    "README: 'mmsparse train --config configs/flickr8k.json --out runs/flickr8k' or the "
    "published configs in configs/ with the paper's released parquet files."
)

BASE = [
    "model.dense_dim=64",
    "train.batch_size=128",
    "train.lr=2e-3",
    "train.epochs=12",
    "train.patience=0",
    "train.warmup_frac=0.1",
    "objective.w1=0.5",
    "objective.w2=0.1",
    "objective.lam1=0.5",
    "objective.lam2=0.5",
    "objective.q_reg=3e-3",
    "objective.d_reg=1e-3",
    # Captions are masked to their own words early in training (decaying to none at half
    # way), which keeps the sparse terms readable; D2S and joint both use it.
    "objective.expansion_control=true",
    "objective.expansion_decay_frac=0.5",
]


def demo_configs(seed: int = 42, epochs: int | None = None) -> dict[str, RunConfig]:
    """The three demo runs: stage-0 dense fit, D2S and joint (``init_from`` set later)."""
    base = apply_overrides(RunConfig(name="demo"), [*BASE, f"train.seed={seed}"])
    if epochs is not None:
        base = apply_overrides(base, [f"train.epochs={epochs}"])
    return {
        "dense": apply_overrides(base, ["name=dense backbone", "objective.method=dense"]),
        "d2s": apply_overrides(base, ["name=D2S", "objective.method=d2s"]),
        "joint": apply_overrides(base, ["name=joint (ours)", "objective.method=joint"]),
    }


def run_demo(
    out_dir: str | Path | None = None,
    *,
    seed: int = 42,
    epochs: int | None = None,
    spec: SyntheticSpec | None = None,
    progress: bool = True,
    n_examples: int = 3,
) -> dict[str, Any]:
    """Train and evaluate the dense baseline, D2S and the joint method on synthetic data.

    Args:
        out_dir: Keep the three run directories there (default: a temporary directory).
        seed: Seed of data and training.
        epochs: Epochs per run (default 12).
        spec: Synthetic dataset sizes.
        progress: Show progress bars (on stderr).
        n_examples: Test images whose top terms are shown.

    Returns:
        ``{"note", "data", "results": {name: test result}, "table", "examples", "seconds"}``.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec = spec or SyntheticSpec(seed=seed)
    store = make_synthetic(spec)
    cfgs = demo_configs(seed, epochs)
    if not progress:
        cfgs = {k: apply_overrides(c, ["train.progress=false"]) for k, c in cfgs.items()}
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmsparse-demo-")
        out_dir = tmp.name
    out = Path(out_dir)
    try:
        # The data is written next to the runs, so that they can be evaluated, explained and
        # indexed later with the usual commands (mmsparse evaluate OUT/joint --split test).
        write_release(store, out / "data", "synthetic")
        store.bundle.save(out / "data" / "bundle")
        data = [f"data.path={out / 'data'}", f"data.bundle={out / 'data' / 'bundle'}"]
        cfgs = {k: apply_overrides(c, data) for k, c in cfgs.items()}
        train(cfgs["dense"], out / "dense", store=store)
        for name in ("d2s", "joint"):
            cfg = apply_overrides(cfgs[name], [f"model.init_from={out / 'dense'}"])
            train(cfg, out / name, store=store, resume=False)
        test = store.split("test")
        results: dict[str, dict[str, Any]] = {}
        encoded = {}
        for name in ("dense", "d2s", "joint"):
            model = SparseDenseModel.from_pretrained(out / name / "best")
            cfg = cfgs[name]
            enc = encode_split(model, store, test, cfg.eval)
            encoded[name] = enc
            types = (
                ("dense",)
                if name == "dense"
                else (("sparse",) if name == "d2s" else ("dense", "sparse", "hybrid"))
            )
            res = evaluate_encoded(
                enc,
                w1=cfg.objective.w1,
                w2=cfg.objective.w2,
                eval_cfg=cfg.eval,
                split_name="test",
                score_types=types,
            )
            d = res.to_dict()
            if name == "dense":
                d.pop("sparsity")
            results[cfg.name] = d
        rows = []
        for name, res in results.items():
            types = [t for t in ("dense", "sparse", "hybrid") if t in res["t2i"]]
            rows += result_rows(name, res, types)
        table = format_table(rows)
        vocab = store.vocabulary()
        joint = encoded["joint"]
        examples = []
        for pos in range(min(n_examples, test.n_images)):
            row = int(test.image_rows[pos])
            cap_pos = int((test.caption_to_image == pos).nonzero()[0][0])
            examples.append(
                {
                    "image_id": store.image_ids[row],
                    "caption": store.caption_texts[int(test.caption_rows[cap_pos])],
                    "image_terms": top_terms(joint.image_sparse[pos], vocab, 8),
                    "caption_terms": top_terms(joint.text_sparse[cap_pos], vocab, 8),
                    "match": contributions(
                        joint.text_sparse[cap_pos], joint.image_sparse[pos], vocab, 5
                    ),
                }
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "note": DEMO_NOTE,
        "data": {
            "name": "synthetic",
            "train_images": spec.n_train,
            "test_images": spec.n_test,
            "captions_per_image": spec.captions_per_image,
            "vocab_size": len(vocab),
            "seed": spec.seed,
        },
        "results": results,
        "table": table,
        "examples": examples,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def format_demo(report: dict[str, Any]) -> str:
    """The demo report as text for people."""
    lines = [
        report["note"],
        "",
        "Test split (metrics in %, FLOPs = expected term overlaps "
        "per query-image pair, nnz = mean non-zero terms):",
        "",
        report["table"],
        "",
    ]
    lines.append("Top terms of the joint model's sparse vectors (term: weight):")
    for ex in report["examples"]:
        terms = ", ".join(f"{t} {w:.2f}" for t, w in ex["image_terms"])
        lines.append(f"  image {ex['image_id']}: {terms}")
        cap = ", ".join(f"{t} {w:.2f}" for t, w in ex["caption_terms"])
        lines.append(f"    caption {ex['caption']!r}: {cap}")
        match = ", ".join(f"{t} {p:.2f}" for t, _, _, p in ex["match"])
        lines.append(f"    why they match (term: q x d): {match}")
    lines.append("")
    lines.append(
        f"Done in {report['seconds']:.1f} s. Keep the runs with 'mmsparse demo --out DIR', "
        "then e.g. 'mmsparse evaluate DIR/joint --split test'."
    )
    return "\n".join(lines)

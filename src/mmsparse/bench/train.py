"""Training speed at the size of MSCOCO / Flickr30k (``mmsparse bench train``).

Synthetic pre-projection features of a dataset's size with BLIP's dimensions (768-d inputs,
256-d dense vectors, a 30,524-term vocabulary, 768-d word embeddings) are trained with the
real :class:`~mmsparse.train.Trainer` step, with the published hyper-parameters of
``blip-coco``. Reported: milliseconds per step (median over the timed steps, after
warm-up), seconds per epoch, the projected time of the published 200 epochs, peak memory,
and the time of a full evaluation of the test split (dense, sparse and hybrid scores, both
directions), with the device named.

On request (the default at the ``tiny`` scale) the same model and loss also run in a loop
built like the published one (:func:`reference_loop`: a per-item ``Dataset`` returning
dicts, a ``DataLoader`` with worker processes and a collate function, the loss under
autocast, a per-step ``.item()`` of every logged term), timed in the same command, and the
speed-up is reported.

Example:
    >>> report = bench_train("tiny", device="cpu", steps=200)     # doctest: +SKIP
    >>> print(format_report(report))                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsparse.bench.machine import cpu_model, describe_machine, load_average, machine_record
from mmsparse.config import RunConfig, apply_overrides
from mmsparse.data.store import FeatureStore
from mmsparse.errors import ConfigError, DataError
from mmsparse.io_utils import atomic_write_json

logger = logging.getLogger("mmsparse.bench")

REPORT_FORMAT = "mmsparse-train-speed"
PUBLISHED_EPOCHS = 200

# Hyper-parameters of the published blip-coco config (METHOD.md).
BLIP_COCO = [
    "train.lr=5e-5",
    "objective.method=joint",
    "objective.w1=0.1",
    "objective.w2=0.1",
    "objective.lam1=0.9",
    "objective.lam2=0.3",
    "objective.distill_teacher=official",
    "objective.q_reg=5e-4",
    "objective.d_reg=3e-5",
]


@dataclass(frozen=True)
class Scale:
    """Sizes of a synthetic benchmark dataset.

    Attributes:
        name: Scale name.
        n_train: Training images.
        n_test: Test images (the validation split has as many).
        captions_per_image: Captions per image.
        d_in: Size of the pre-projection image and caption features.
        dense_dim: Dense vector size.
        d_word: Word-embedding size of the sparse head.
        vocab_size: Vocabulary size (sparse dimensions).
        batch_size: Pairs per step.
    """

    name: str
    n_train: int
    n_test: int
    captions_per_image: int = 5
    d_in: int = 768
    dense_dim: int = 256
    d_word: int = 768
    vocab_size: int = 30524
    batch_size: int = 256


SCALES: dict[str, Scale] = {
    "coco": Scale("coco", n_train=113_287, n_test=5_000),
    "flickr30k": Scale("flickr30k", n_train=29_783, n_test=1_000),
    "tiny": Scale(
        "tiny",
        n_train=2_000,
        n_test=200,
        d_in=64,
        dense_dim=32,
        d_word=64,
        vocab_size=2_048,
        batch_size=128,
    ),
}


def synthetic_store(scale: Scale, seed: int = 0) -> FeatureStore:
    """Random features of ``scale``'s size (captions are noisy copies of their image's).

    Splits ``train`` / ``val`` / ``test`` with ``n_train`` / ``n_test`` / ``n_test``
    images; no bundle (the model is initialised at random, terms named by index).
    """
    rng = np.random.default_rng(seed)
    n_images = scale.n_train + 2 * scale.n_test
    image_feats = rng.standard_normal((n_images, scale.d_in), dtype=np.float32)
    caption_image = np.repeat(np.arange(n_images, dtype=np.int64), scale.captions_per_image)
    caption_feats = image_feats[caption_image]
    caption_feats += rng.standard_normal(caption_feats.shape, dtype=np.float32)
    split = np.empty(n_images, dtype=object)
    split[: scale.n_train] = "train"
    split[scale.n_train : scale.n_train + scale.n_test] = "val"
    split[scale.n_train + scale.n_test :] = "test"
    n_captions = caption_image.size
    return FeatureStore(
        image_ids=[str(i) for i in range(n_images)],
        image_feats=image_feats,
        image_split=split.astype(str),
        image_filenames=[""] * n_images,
        caption_ids=[str(i) for i in range(n_captions)],
        caption_feats=caption_feats,
        caption_image=caption_image,
        caption_texts=[""] * n_captions,
        caption_tokens=[[] for _ in range(n_captions)],
        bundle=None,
        root=None,
        name=f"synthetic-{scale.name}",
    )


def bench_config(
    scale: Scale,
    *,
    device: str = "auto",
    compile: str = "off",
    amp: str = "auto",
    fused_optimizer: str = "auto",
    seed: int = 42,
) -> RunConfig:
    """The run config benchmarked: blip-coco hyper-parameters at ``scale``'s dimensions."""
    return apply_overrides(
        RunConfig(name=f"bench-{scale.name}"),
        [
            *BLIP_COCO,
            f"model.dense_dim={scale.dense_dim}",
            f"model.d_word={scale.d_word}",
            f"model.vocab_size={scale.vocab_size}",
            f"train.batch_size={scale.batch_size}",
            f"train.epochs={PUBLISHED_EPOCHS}",
            f"train.device={device}",
            f"train.compile={compile}",
            f"train.amp={amp}",
            f"train.fused_optimizer={fused_optimizer}",
            f"train.seed={seed}",
            "train.progress=false",
            "train.plot=false",
            'data.train_splits=["train"]',
        ],
    )


def device_info(device: torch.device) -> dict[str, Any]:
    """The device the step runs on, named: its type and the GPU's name or the CPU's model.

    (The machine around it, threads and load: :func:`mmsparse.bench.machine.machine_record`.)
    """
    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
        info["memory_gib"] = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
    else:
        info["name"] = cpu_model()
    return info


class _Timer:
    """Per-step wall times: CUDA events on a GPU (the CPU runs ahead), else the host clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [1000.0 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    n = len(ordered)
    return {
        "median": round(statistics.median(ordered), 4),
        "mean": round(statistics.fmean(ordered), 4),
        "p10": round(ordered[int(0.1 * (n - 1))], 4),
        "p90": round(ordered[int(0.9 * (n - 1))], 4),
        "min": round(ordered[0], 4),
    }


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "cuda max allocated"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss_kb / 1024, 1), "process peak RSS (whole process)"


def bench_train(
    scale: str | Scale = "tiny",
    *,
    device: str = "auto",
    steps: int = 200,
    warmup: int = 20,
    compile: str = "off",
    amp: str = "auto",
    fused_optimizer: str = "auto",
    reference: bool | None = None,
    reference_workers: int = 2,
    eval_repeats: int = 3,
    seed: int = 0,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """Measure the training step and the evaluation at a dataset's size.

    Under ``torchrun`` every process must call this; the step then is data-parallel over
    the global batch, and only rank 0 evaluates and reports (other ranks return ``{}``).

    Args:
        scale: ``coco``, ``flickr30k``, ``tiny`` or a :class:`Scale`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        steps: Timed steps (the median is over these; at least 200 for a reportable row).
        warmup: Untimed steps first (compilation happens there).
        compile: ``train.compile`` of the step.
        amp: ``train.amp`` of the step.
        fused_optimizer: ``train.fused_optimizer``.
        reference: Also time the published-style loop (:func:`reference_loop`); default:
            at the ``tiny`` scale only.
        reference_workers: DataLoader workers of the reference loop.
        eval_repeats: Timed evaluations of the test split (after one untimed).
        seed: Seed of the synthetic features.
        store: Features to use instead of generating them (must have train/val/test).

    Returns:
        The report (JSON-ready dict); see ``docs/train_speed.md`` for the fields.

    Raises:
        ConfigError: On an unknown scale or bad counts.
    """
    from mmsparse.runs import resolve_device
    from mmsparse.train import Trainer
    from mmsparse.train.distributed import rank_device, setup, teardown

    sc = _scale(scale)
    if steps < 1 or warmup < 0 or eval_repeats < 1:
        raise ConfigError("bench train: --steps and --eval-repeats must be >= 1, --warmup >= 0")
    load_start = load_average()
    ctx, created = setup(device)
    try:
        dev = resolve_device(rank_device(device, ctx))
        t0 = time.perf_counter()
        store = store if store is not None else synthetic_store(sc, seed)
        data_seconds = time.perf_counter() - t0
        cfg = bench_config(
            sc, device=str(dev), compile=compile, amp=amp, fused_optimizer=fused_optimizer
        )
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with tempfile.TemporaryDirectory(prefix="mmsparse-bench-") as tmp:
            trainer = Trainer(cfg, store, Path(tmp), dist_ctx=ctx)
            # every batch (and epoch order) made before the clock starts
            orders = iter(list(trainer.batches(warmup + steps)))
            sums = torch.zeros(len(trainer.term_names), device=dev)
            trainer.model.train()
            t_first = time.perf_counter()
            for _ in range(warmup):
                rows, gen = next(orders)
                sums += trainer.train_step(rows, gen).vector
            _sync(dev)
            warmup_seconds = time.perf_counter() - t_first
            timer = _Timer(dev)
            t0 = time.perf_counter()
            timer.mark()
            for _ in range(steps):
                rows, gen = next(orders)
                sums += trainer.train_step(rows, gen).vector
                timer.mark()
            _sync(dev)
            wall = time.perf_counter() - t0
            step_ms = timer.intervals_ms()
            final_terms = dict(zip(trainer.term_names, (sums / (warmup + steps)).tolist()))
            if not ctx.is_main:
                ctx.barrier()
                return {}
            eval_report, eval_enc = _time_eval(trainer, cfg, store, dev, eval_repeats)
            peak_mb, peak_kind = _peak_memory_mb(dev)
            about = trainer.describe()
            median = statistics.median(step_ms)
            epoch_s = about["steps_per_epoch"] * median / 1000
            report: dict[str, Any] = {
                "format": REPORT_FORMAT,
                "benchmark": "train_speed",
                "scale": sc.name,
                "sizes": {
                    **asdict(sc),
                    "train_pairs": about["train_pairs"],
                    "parameters": about["parameters"],
                },
                "device": device_info(dev),
                "machine": machine_record(load_start),
                "world_size": ctx.world_size,
                "settings": {
                    "compile": compile,
                    "amp": amp,
                    "amp_dtype": about["amp_dtype"],
                    "fused_adamw": about["fused_adamw"],
                    "batch_size": about["batch_size"],
                },
                "steps_timed": steps,
                "warmup_steps": warmup,
                "warmup_seconds": round(warmup_seconds, 3),
                "step_ms": _summary(step_ms),
                "wall_ms_per_step": round(1000 * wall / steps, 4),
                "steps_per_epoch": about["steps_per_epoch"],
                "epoch_seconds": round(epoch_s, 3),
                "projected_200_epochs_seconds": round(PUBLISHED_EPOCHS * epoch_s, 1),
                "projected_200_epochs_with_validation_seconds": round(
                    PUBLISHED_EPOCHS * (epoch_s + eval_report["total_seconds"]), 1
                ),
                "peak_memory_mb": peak_mb,
                "peak_memory_kind": peak_kind,
                "eval": eval_report,
                "mean_terms": {k: round(v, 5) for k, v in final_terms.items()},
                "data_seconds": round(data_seconds, 2),
                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
        ctx.barrier()
        if reference is None:
            reference = sc.name == "tiny" and not ctx.enabled
        if reference:
            ref = reference_loop(
                store, cfg, steps=steps, warmup=warmup, device=dev, num_workers=reference_workers
            )
            report["reference"] = ref
            report["speedup_vs_reference"] = round(ref["step_ms"]["median"] / median, 2)
            report["eval_reference"] = reference_eval(
                eval_enc, w1=cfg.objective.w1, w2=cfg.objective.w2
            )
            report["eval_speedup_vs_reference"] = round(
                report["eval_reference"]["seconds"] / report["eval"]["total_seconds"], 1
            )
        report["machine"] = machine_record(load_start)
        return report
    finally:
        teardown(created)


def _scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r} (choose from {', '.join(SCALES)})")
    return SCALES[scale]


def _time_eval(
    trainer: Any, cfg: RunConfig, store: FeatureStore, dev: torch.device, repeats: int
) -> tuple[dict[str, Any], Any]:
    """Full evaluation of the test split: encoding, ranking (3 score types x 2 directions).

    Returns:
        The timings and the last encoded split.
    """
    from mmsparse.evaluate.retrieval import evaluate_encoded

    split = store.split("test")
    runs = []
    for _ in range(repeats + 1):  # the first run warms up kernels and allocations
        _sync(dev)
        t0 = time.perf_counter()
        enc = trainer.encode("test", cfg.eval)
        _sync(dev)
        t1 = time.perf_counter()
        result = evaluate_encoded(
            enc, w1=cfg.objective.w1, w2=cfg.objective.w2, eval_cfg=cfg.eval, split_name="test"
        )
        _sync(dev)
        t2 = time.perf_counter()
        runs.append((t1 - t0, result.info["rank_seconds"], t2 - t1, t2 - t0, result))
    timed = runs[1:]
    result = timed[-1][4]
    return {
        "split": "test",
        "n_images": split.n_images,
        "n_captions": split.n_captions,
        "score_types": ["dense", "sparse", "hybrid"],
        "repeats": repeats,
        "encode_seconds": round(statistics.median(r[0] for r in timed), 4),
        "rank_seconds": round(statistics.median(r[1] for r in timed), 4),
        "metrics_seconds": round(statistics.median(r[2] for r in timed), 4),
        "total_seconds": round(statistics.median(r[3] for r in timed), 4),
        "t2i_sparse_R@1": round(result.get("t2i/sparse/R@1"), 3),
        "text_nnz": round(float(result.sparsity["text_nnz"]), 1),
        "image_nnz": round(float(result.sparsity["image_nnz"]), 1),
    }, enc


# -- the published-style reference loop ------------------------------------------------


class PairDataset(torch.utils.data.Dataset):
    """One (image, caption) pair per item, as a dict of tensors (the published style)."""

    def __init__(self, store: FeatureStore, caption_rows: np.ndarray) -> None:
        self.image_feats = store.image_feats
        self.caption_feats = store.caption_feats
        self.caption_image = store.caption_image
        self.caption_rows = caption_rows

    def __len__(self) -> int:
        return int(self.caption_rows.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.caption_rows[i])
        return {
            "image": torch.from_numpy(self.image_feats[self.caption_image[row]].copy()),
            "caption": torch.from_numpy(self.caption_feats[row].copy()),
            "caption_row": row,
        }


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a list of :class:`PairDataset` items into a batch dict."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": torch.stack([it["caption"] for it in items]),
        "caption_row": torch.tensor([it["caption_row"] for it in items]),
    }


def reference_loop(
    store: FeatureStore,
    cfg: RunConfig,
    *,
    steps: int = 200,
    warmup: int = 20,
    device: str | torch.device = "cpu",
    num_workers: int = 2,
) -> dict[str, Any]:
    """Time a training loop built like the published one, with the same model and loss.

    A per-item ``Dataset`` returning dicts, a shuffling ``DataLoader`` with ``num_workers``
    worker processes and a collate function, the model and the whole loss under autocast
    (fp16 with a gradient scaler on CUDA, as published; fp32 on CPU), non-fused AdamW, a
    per-step learning-rate update, and a per-step ``.item()`` of every loss term for
    logging. (The published loop also tokenises captions in the collate function; here the
    captions are features already, so that cost is absent.)

    Returns:
        ``{"step_ms": {...}, "num_workers": ..., "steps_timed": ..., "mean_total": ...}``.
    """
    from mmsparse.losses import SparsityRegularizer, joint_objective
    from mmsparse.runs import build_model
    from mmsparse.train import lr_factor, set_trainable

    dev = torch.device(device)
    split = store.split(cfg.data.train_splits, allow_missing=True)
    batch = min(cfg.train.batch_size, split.n_captions)
    loader = torch.utils.data.DataLoader(
        PairDataset(store, split.caption_rows),
        batch_size=batch,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_pairs,
        drop_last=True,
        pin_memory=dev.type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise DataError(f"{store.name}: fewer training pairs than one batch")
    total_steps = steps_per_epoch * cfg.train.epochs
    model = build_model(cfg, store).to(dev)
    params = set_trainable(model, cfg.objective.method)
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.train.lr,
        betas=cfg.train.betas,
        eps=cfg.train.eps,
        weight_decay=cfg.train.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.train.warmup_frac)
    )
    reg = SparsityRegularizer(
        cfg.objective.q_reg, cfg.objective.d_reg, total_steps, cfg.objective.reg_warmup_frac
    )
    use_fp16 = dev.type == "cuda" and cfg.train.amp in ("auto", "fp16")
    scaler = torch.amp.GradScaler("cuda") if use_fp16 else None
    obj = cfg.objective
    logged: list[dict[str, float]] = []

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from loader

    it = batches()
    times: list[float] = []
    model.train()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = next(it)
        h_img = b["image"].to(dev, non_blocking=True)
        h_txt = b["caption"].to(dev, non_blocking=True)
        ctx = (
            torch.autocast(dev.type, dtype=torch.float16) if use_fp16 else contextlib.nullcontext()
        )
        with ctx:
            out = model(h_img, h_txt)
            terms = joint_objective(
                out.img_dense,
                out.txt_dense,
                out.img_sparse,
                out.txt_sparse,
                tau=out.tau,
                w1=obj.w1,
                w2=obj.w2,
                lam1=obj.lam1,
                lam2=obj.lam2,
                distill_teacher=obj.distill_teacher,
            )
            terms.update(reg(out.txt_sparse, out.img_sparse))
            loss = terms["loss"] + terms["reg"]
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            optimizer.step()
        schedule.step()
        model.clamp_temperature()
        reg.step_once()
        record = {k: v.item() for k, v in terms.items()}  # per-step logging
        record["total"] = loss.item()
        logged.append(record)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    del it
    return {
        "style": "per-item Dataset + DataLoader workers + collate + per-step .item() logging",
        "num_workers": num_workers,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "step_ms": _summary(times),
        "mean_total": round(statistics.fmean(r["total"] for r in logged), 5),
    }


def reference_eval(enc: Any, *, w1: float, w2: float, depth: int = 10) -> dict[str, Any]:
    """Evaluate like the published code: per-query sorting into Python dicts, on the host.

    For each score type and direction the score matrix is built with numpy, then every
    query's scores are sorted and its top ``depth`` documents kept in a ``{doc_id: score}``
    dict, from which R@1/5/10 are read. Used to time the batched evaluation against.

    Returns:
        ``{"seconds": ..., "t2i_sparse_R@1": ...}``.
    """
    t0 = time.perf_counter()
    td, id_ = enc.text_dense.cpu().numpy(), enc.image_dense.cpu().numpy()
    ts, is_ = enc.text_sparse.cpu().numpy(), enc.image_sparse.cpu().numpy()
    c2i = enc.caption_to_image.cpu().numpy()
    image_ids, caption_ids = enc.image_ids, enc.caption_ids
    relevant_caps: dict[str, set[str]] = {i: set() for i in image_ids}
    image_of: dict[str, str] = {}
    for c, i in zip(caption_ids, c2i.tolist()):
        relevant_caps[image_ids[i]].add(c)
        image_of[c] = image_ids[i]
    recall: dict[str, float] = {}
    for st in ("dense", "sparse", "hybrid"):
        dense = td @ id_.T if st != "sparse" else None
        sparse = ts @ is_.T if st != "dense" else None
        S = dense if st == "dense" else sparse if st == "sparse" else w1 * dense + w2 * sparse
        for direction, scores, qids, dids in (
            ("t2i", S, caption_ids, image_ids),
            ("i2t", S.T, image_ids, caption_ids),
        ):
            run: dict[str, dict[str, float]] = {}
            for q, row in zip(qids, scores):
                order = np.argsort(-row, kind="stable")[:depth]
                run[q] = {dids[d]: float(row[d]) for d in order}
            hits = 0
            for q, docs in run.items():
                top1 = next(iter(docs))
                hits += top1 == image_of[q] if direction == "t2i" else top1 in relevant_caps[q]
            recall[f"{direction}_{st}_R@1"] = 100.0 * hits / max(len(run), 1)
    return {
        "style": "numpy score matrix + per-query argsort into {doc_id: score} dicts",
        "seconds": round(time.perf_counter() - t0, 4),
        "t2i_sparse_R@1": round(recall["t2i_sparse_R@1"], 3),
    }


# -- reports ------------------------------------------------------------------------------


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


def format_report(report: dict[str, Any]) -> str:
    """A readable table of one :func:`bench_train` report."""
    dev = report["device"]
    st = report["settings"]
    ev = report["eval"]
    lines = [
        f"mmsparse bench train --scale {report['scale']}: {dev['name']}",
        f"  machine: {describe_machine(report['machine'])}",
        f"  settings: compile={st['compile']} amp={st['amp_dtype']} "
        f"fused_adamw={st['fused_adamw']} batch={st['batch_size']} world={report['world_size']}",
        "",
        f"  {'quantity':<34} {'value':>14}",
        f"  {'-' * 34} {'-' * 14}",
    ]
    rows = [
        (
            f"ms / step (median of {report['steps_timed']})",
            f"{report['step_ms']['median']:.3f}",
        ),
        (
            "ms / step (p10 .. p90)",
            f"{report['step_ms']['p10']:.2f}..{report['step_ms']['p90']:.2f}",
        ),
        ("steps / epoch", f"{report['steps_per_epoch']}"),
        ("s / epoch", f"{report['epoch_seconds']:.2f}"),
        ("200 epochs (training)", _fmt_seconds(report["projected_200_epochs_seconds"])),
        (
            "200 epochs (+ validation each)",
            _fmt_seconds(report["projected_200_epochs_with_validation_seconds"]),
        ),
        ("peak memory (MB)", f"{report['peak_memory_mb']:.0f}"),
        (
            f"eval test {ev['n_captions']}x{ev['n_images']} (s)",
            f"{ev['total_seconds']:.4f}",
        ),
        ("  of which encoding (s)", f"{ev['encode_seconds']:.4f}"),
        ("  of which ranking, 3 types x 2 dirs (s)", f"{ev['rank_seconds']:.4f}"),
    ]
    if "reference" in report:
        ref = report["reference"]
        rows += [
            (
                f"published-style loop ms / step ({ref['num_workers']} workers)",
                f"{ref['step_ms']['median']:.3f}",
            ),
            ("speed-up vs published-style loop", f"{report['speedup_vs_reference']:.2f}x"),
        ]
    if "eval_reference" in report:
        rows += [
            ("published-style evaluation (s)", f"{report['eval_reference']['seconds']:.4f}"),
            ("speed-up of the evaluation", f"{report['eval_speedup_vs_reference']:.1f}x"),
        ]
    lines += [f"  {name:<34} {value:>14}" for name, value in rows]
    return "\n".join(lines)


def report_key(report: dict[str, Any]) -> tuple:
    """Identity of a report row in ``benchmarks/train_speed.json`` (replaced when re-run)."""
    st = report["settings"]
    return (
        report["scale"],
        report["device"]["name"],
        report.get("world_size", 1),
        st["compile"],
        st["amp_dtype"],
        st["fused_adamw"],
        "reference" in report,
    )


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Add ``report`` to the JSON file of runs at ``path`` (atomically; same key replaced).

    The file holds ``{"format": ..., "runs": [report, ...], "pending": [...]}``; ``pending``
    lists measurements still to make (``{"command": ..., "status": ...}``), and an entry
    whose command equals the report's is removed once the report is added.

    Raises:
        DataError: If ``path`` exists but is not such a file.
    """
    path = Path(path)
    data: dict[str, Any] = {"format": REPORT_FORMAT, "runs": []}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["runs"] = list(data["runs"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a train-speed report file ({exc})") from exc
    data["runs"] = [r for r in data["runs"] if report_key(r) != report_key(report)] + [report]
    if "pending" in data and report.get("command"):
        data["pending"] = [p for p in data["pending"] if p.get("command") != report["command"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    return path

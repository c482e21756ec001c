"""Evaluate a trained run directory (the library function behind ``mmsparse evaluate``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mmsparse.config import EvalConfig
from mmsparse.evaluate.retrieval import EvalResult, evaluate_model
from mmsparse.io_utils import atomic_write_json
from mmsparse.losses.objective import method_spec
from mmsparse.runs import hybrid_weights, load_run, load_run_data, resolve_device


def evaluate_run(
    run_dir: str | Path,
    split: str = "val",
    *,
    data: str | Path | None = None,
    bundle: str | Path | None = None,
    trec_dir: str | Path | None = None,
    eval_cfg: EvalConfig | None = None,
    device: str = "auto",
    save: bool = True,
) -> EvalResult:
    """Evaluate a run's selected checkpoint on a split.

    Args:
        run_dir: A directory written by ``mmsparse train``.
        split: Split to evaluate (``val`` or ``test``; any split of the data works).
        data: Another dataset directory of the same backbone to evaluate on.
        bundle: The backbone bundle directory to use instead of the run's (a moved run).
        trec_dir: Write TREC run files and qrels there.
        eval_cfg: Pruning and batching options (default: the run's own).
        device: ``auto``, ``cpu`` or ``cuda``.
        save: Also write ``RUN_DIR/eval_<split>.json``.

    Returns:
        The :class:`EvalResult`.

    Raises:
        CheckpointError: If the run or its checkpoint is broken or does not fit the data.
        DataError: If the data is unreadable or the split is empty.
    """
    dev = resolve_device(device)
    run = load_run(run_dir, device=dev)
    store = load_run_data(run, data, bundle)
    cfg = run.config
    eval_cfg = eval_cfg or cfg.serving
    w1, w2 = hybrid_weights(cfg, run.model, eval_cfg)
    with torch.no_grad():
        result = evaluate_model(
            run.model,
            store,
            split,
            w1=w1,
            w2=w2,
            eval_cfg=eval_cfg,
            device=dev,
            trec_dir=trec_dir,
            run_tag=cfg.name,
            # A dense-only run (stage 0, the dense baseline) has an untrained sparse head.
            score_types=method_spec(cfg.objective.method).score_types,
        )
    result.info.update(
        run=str(run_dir),
        data=str(store.root),
        method=cfg.objective.method,
        device=str(dev),
        eval=dataclasses.asdict(eval_cfg),
    )
    if save:
        suffix = "" if data is None else f"@{Path(data).name}"
        atomic_write_json(Path(run_dir) / f"eval_{split}{suffix}.json", result.to_dict())
    return result

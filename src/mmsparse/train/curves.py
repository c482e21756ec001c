"""PNG training curves from a run's ``metrics.jsonl`` (needs the ``plot`` extra)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmsparse.errors import MissingExtraError, require_extra

logger = logging.getLogger("mmsparse.train")


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file (a torn last line is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot loss terms, regulariser weights and validation metrics per epoch.

    Returns:
        The PNG path, or ``None`` when matplotlib is missing (a warning says how to get it).
    """
    try:
        require_extra("matplotlib", "plot", "Plotting training curves")
    except MissingExtraError as exc:
        logger.warning("%s", exc)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmsparse.io_utils import atomic_path

    records = read_metrics(log_path)
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    steps = [r for r in records if r.get("type") == "step"]  # train.log_every > 0
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for key in ("total", "loss", "contrastive", "distill", "reg"):
        if train and key in train[0]:
            ax.plot([r["epoch"] for r in train], [r[key] for r in train], label=key)
    if steps and train and train[0]["step"]:
        per_epoch = train[0]["step"] / train[0]["epoch"]
        ax.plot(
            [r["step"] / per_epoch for r in steps],
            [r["total"] for r in steps],
            lw=0.6,
            alpha=0.6,
            label="total (log_every steps)",
        )
    ax.set(title="training loss terms", xlabel="epoch", yscale="log")
    ax.legend()
    ax = axes[1]
    for key in ("l1_txt", "l1_img"):
        if train and key in train[0]:
            ax.plot([r["epoch"] for r in train], [r[key] for r in train], label=key)
    ax.set(title="l1 of sparse vectors (batch mean)", xlabel="epoch", yscale="log")
    if train and "l1_txt" in train[0]:
        ax.legend()
    ax = axes[2]
    for key in ("t2i/dense/R@1", "t2i/sparse/R@1", "t2i/hybrid/R@1", "i2t/sparse/R@1"):
        if val and key in val[0]:
            ax.plot([r["epoch"] for r in val], [r[key] for r in val], marker=".", label=key)
    ax.set(title="validation", xlabel="epoch", ylabel="%")
    if val:
        ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out_path

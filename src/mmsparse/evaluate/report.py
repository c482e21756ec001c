"""Readable tables of evaluation results (plain text for terminals, Markdown for docs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

METRIC_NAMES = ("R@1", "R@5", "R@10", "MRR@10")


def result_rows(
    name: str, result: Mapping[str, Any], score_types: Sequence[str] = ("dense", "sparse", "hybrid")
) -> list[list[str]]:
    """Table rows of one result dict (as :meth:`EvalResult.to_dict` gives)."""
    rows = []
    sparsity = result.get("sparsity", {})
    for st in score_types:
        if st not in result.get("t2i", {}):
            continue
        row = [name, st]
        for direction in ("t2i", "i2t"):
            row += [f"{result[direction][st][m]:.2f}" for m in METRIC_NAMES]
        if st == "sparse" and sparsity:
            row += [
                f"{sparsity['flops']:.2f}",
                f"{sparsity['text_nnz']:.1f}",
                f"{sparsity['image_nnz']:.1f}",
            ]
        else:
            row += ["", "", ""]
        readable = result.get("readability")
        if st == "sparse" and readable:
            row += [
                f"{readable['image_terms_in_captions']:.1f}",
                f"{readable['caption_terms_in_other_captions']:.1f}",
            ]
        else:
            row += ["", ""]
        rows.append(row)
    return rows


HEADER = [
    "model",
    "score",
    *(f"t2i {m}" for m in METRIC_NAMES),
    *(f"i2t {m}" for m in METRIC_NAMES),
    "FLOPs",
    "nnz/cap",
    "nnz/img",
    "img words %",
    "cap words %",
]


def format_table(
    rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER, markdown: bool = False
) -> str:
    """Align rows under a header, as plain text or as a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(
            str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *(fmt(r) for r in rows)])


def results_table(
    results: Mapping[str, Mapping[str, Any]],
    markdown: bool = False,
    score_types: Sequence[str] = ("dense", "sparse", "hybrid"),
) -> str:
    """A table of several named results (metrics in percent).

    Args:
        results: Name to result dict.
        markdown: Markdown instead of aligned text.
        score_types: Which score types to show.

    Returns:
        The table as one string.
    """
    rows: list[list[str]] = []
    for name, res in results.items():
        rows += result_rows(name, res, score_types)
    return format_table(rows, markdown=markdown)

"""Evaluation: batched retrieval metrics, sparsity statistics, TREC files, tables."""

from mmsparse.evaluate.report import format_table, results_table
from mmsparse.evaluate.retrieval import (
    EncodedSplit,
    EvalResult,
    encode_features,
    encode_split,
    evaluate_encoded,
    evaluate_model,
    metrics_from_ranks,
    rank_split,
)
from mmsparse.evaluate.run import evaluate_run
from mmsparse.evaluate.trec import metrics_from_run, read_qrels, read_run, write_qrels, write_run

__all__ = [
    "EncodedSplit",
    "EvalResult",
    "encode_features",
    "encode_split",
    "evaluate_encoded",
    "evaluate_model",
    "evaluate_run",
    "format_table",
    "metrics_from_ranks",
    "metrics_from_run",
    "rank_split",
    "read_qrels",
    "read_run",
    "results_table",
    "write_qrels",
    "write_run",
]

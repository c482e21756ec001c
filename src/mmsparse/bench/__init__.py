"""Benchmarks (``mmsparse bench ...``): library functions that measure and report."""

from mmsparse.bench.train_speed import (
    SCALES,
    Scale,
    bench_train,
    device_info,
    format_report,
    reference_loop,
    synthetic_store,
    write_report,
)

__all__ = [
    "SCALES",
    "Scale",
    "bench_train",
    "device_info",
    "format_report",
    "reference_loop",
    "synthetic_store",
    "write_report",
]

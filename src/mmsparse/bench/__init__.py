"""Benchmarks: long-running measurements behind ``mmsparse bench`` (not tests)."""

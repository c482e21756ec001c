"""Fixtures of the benchmark tests: the index tests' tiny run (made without training)."""

from __future__ import annotations

from tests.index.conftest import tiny_run  # noqa: F401 - re-exported fixture
from tests.serve.conftest import served_index, server  # noqa: F401 - for bench serve's tests

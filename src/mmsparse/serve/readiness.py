"""Readiness of ``mmsparse serve``: the warm-up run in a thread, then ``/readyz`` says ready.

The first search of a process compiles the engine's kernels (numba: 2-3 s) and the first
uploaded image loads the backbone; the warm-up does both before the first user waits for
them. Until it has run, ``/readyz`` answers 503 and the page says "warming up"; a failed
warm-up still ends in "ready" (the server serves), with its error in the answer and the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class WarmUp:
    """Steps run once in a thread, in order; then :attr:`ready` is set.

    Args:
        steps: Called in order; the first that raises ends the warm-up (its error is kept).

    Attributes:
        ready: Set once the warm-up has ended (run, or failed).
        error: ``"Type: message"`` of the step that failed, else ``None``.
        seconds: How long the warm-up took, once it has ended.
    """

    def __init__(self, steps: list[Callable[[], Any]]) -> None:
        self.steps = list(steps)
        self.ready = threading.Event()
        self.error: str | None = None
        self.seconds: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the steps in a thread; calling it again does nothing."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mmsparse-warm-up", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            for step in self.steps:
                step()
        except Exception as exc:  # the server still serves; readiness says what failed
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("warm-up failed: %s", self.error)
        finally:
            self.seconds = round(time.perf_counter() - t0, 3)
            self.ready.set()

    def readiness(self) -> dict[str, Any]:
        """Answer ``/readyz``: ``ready`` once the warm-up has run."""
        ready = self.ready.is_set()
        return {
            "ready": ready,
            "status": "ready" if ready else "warming up",
            "warm_up_seconds": self.seconds,
            "warm_up_error": self.error,
        }

"""Rate-limited node logging: at most one line per kind of problem every `period` seconds.

rclpy keeps state per call site of a logger method and raises ValueError ('Logger severity
cannot be changed between calls') when one call site logs two severities. So each severity has
its own method here, each with its own single call into the logger; never pick the method with
getattr at one call site.
"""

from __future__ import annotations

import threading
import time


class RateLimitedLog:
    """info / warning / error(kind, text): logged unless `kind` was logged in the last period."""

    def __init__(self, logger, *, period: float = 5.0) -> None:
        self._logger = logger
        self.period = period
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # the worker and the timers log from different threads

    def due(self, kind: str) -> bool:
        """True (and the kind marked as logged now) when `kind` may be logged again."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self.period) < self.period:
                return False
            self._last[kind] = now
            return True

    def info(self, kind: str, text: str) -> None:
        if self.due(kind):
            self._logger.info(text)

    def warning(self, kind: str, text: str) -> None:
        if self.due(kind):
            self._logger.warning(text)

    def error(self, kind: str, text: str) -> None:
        if self.due(kind):
            self._logger.error(text)

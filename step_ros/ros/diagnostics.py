"""Counters of the node and their /diagnostics report (diagnostic_msgs, no diagnostic_updater)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

LATENCY_WINDOW = 500  # latencies kept for the percentiles


class NodeStats:
    """Thread-safe counters: the callback counts input, the worker counts everything else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.published = 0
        self.rejected: Counter[str] = Counter()
        self.latencies_ns: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._last = (time.monotonic(), 0, 0)  # (time, received, processed) at the last report

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def count_processed(self) -> None:
        with self._lock:
            self.processed += 1

    def count_rejected(self, kind: str) -> None:
        with self._lock:
            self.rejected[kind] += 1

    def count_published(self, latency_ns: int) -> None:
        with self._lock:
            self.published += 1
            self.latencies_ns.append(latency_ns)

    def rates(self) -> tuple[float, float, int]:
        """(input Hz, processed Hz, images received) since the previous call."""
        with self._lock:
            now, received, processed = time.monotonic(), self.received, self.processed
            then, received0, processed0 = self._last
            self._last = (now, received, processed)
        elapsed = max(now - then, 1e-9)
        return (received - received0) / elapsed, (processed - processed0) / elapsed, \
            received - received0

    def latency_ms(self) -> tuple[float, float]:
        """(p50, p99) over the last LATENCY_WINDOW published results; nan before the first."""
        with self._lock:
            values = np.array(self.latencies_ns, dtype=np.float64)
        if values.size == 0:
            return float('nan'), float('nan')
        p50, p99 = np.percentile(values, [50, 99]) / 1e6
        return float(p50), float(p99)


def status(*, name: str, hardware_id: str, stats: NodeStats, dropped: dict[str, int],
           buffered: int, num_frames: int, warming_up: bool, image_topic: str,
           fault: str | None = None, problem: str | None = None,
           extra: dict[str, str] | None = None) -> DiagnosticStatus:
    """The DiagnosticStatus of one camera: its state and counters.

    `fault` (the inference worker died or is stuck) makes it ERROR: results have stopped.
    `problem` (e.g. a window that never fills) and an input without images make it WARN.
    `dropped` counts, per input, frames replaced in the worker's slot before it took them.
    """
    input_hz, processed_hz, arrived = stats.rates()
    p50, p99 = stats.latency_ms()
    state = f'warming up ({buffered}/{num_frames} frames)' if warming_up else 'running'
    level, message = DiagnosticStatus.OK, state
    if fault is not None:
        level, message = DiagnosticStatus.ERROR, fault
    elif problem is not None:
        level, message = DiagnosticStatus.WARN, f'{state}; {problem}'
    elif arrived == 0:
        level, message = DiagnosticStatus.WARN, f'{state}; no images on {image_topic}'
    rejected = dict(stats.rejected)
    values = {
        'state': 'worker failed' if fault is not None else state,
        'input rate (Hz)': f'{input_hz:.1f}',
        'processed rate (Hz)': f'{processed_hz:.1f}',
        'received': str(stats.received),
        'processed': str(stats.processed),
        'dropped (worker busy)': str(sum(dropped.values())),
        **{f'dropped: {key}': str(n) for key, n in sorted(dropped.items())},
        'rejected': str(sum(rejected.values())),
        **{f'rejected: {kind}': str(n) for kind, n in sorted(rejected.items())},
        'published': str(stats.published),
        'latency p50 (ms)': f'{p50:.1f}',
        'latency p99 (ms)': f'{p99:.1f}',
        **(extra or {}),
    }
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])

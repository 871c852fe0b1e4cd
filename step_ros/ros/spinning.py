"""An executor spun in a background thread that is joined before rclpy is torn down.

`threading.Thread(target=executor.spin, daemon=True)` with `executor.shutdown(timeout_sec=...)`
can leave the thread inside rcl's wait when the node is destroyed and the context shut down; on a
busy machine the interpreter then exits under it and the process aborts ("terminate called
without an active exception", exit -6). Here the thread spins in short slices and is always
joined first.
"""

from __future__ import annotations

import threading


class BackgroundSpinner:
    """Spin `executor` in a thread until `stop()`; use as a context manager."""

    def __init__(self, executor, *, slice_s: float = 0.05, name: str = 'ros_spinner'):
        self._executor = executor
        self._slice_s = slice_s
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException, ShutdownException

        while not self._halt.is_set():
            try:
                self._executor.spin_once(timeout_sec=self._slice_s)
            except (ExternalShutdownException, ShutdownException):
                return

    def start(self) -> BackgroundSpinner:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Join the thread (it returns within one slice plus the callback it is running), then
        shut the executor down; safe to call twice, or before `start()`."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()
        self._executor.shutdown()

    def __enter__(self) -> BackgroundSpinner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

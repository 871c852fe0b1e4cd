"""Latest-wins hand-off from the subscription callback to one inference worker thread.

The callback only drops the newest message into a one-item slot; if the worker has not taken the
previous one yet, that one is replaced and counted as dropped. So a slow model skips frames
instead of building a backlog of stale ones, and the callback never blocks on the model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class LatestSlot:
    """A one-item mailbox: `put` replaces an unread item, `take` waits for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store `item`; return True when it replaced one the worker never saw (a drop)."""
        with self._cond:
            replaced = self._full
            self._item, self._full = item, True
            self.dropped += int(replaced)
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest item, or None when closed or after `timeout` seconds without one."""
        with self._cond:
            self._cond.wait_for(lambda: self._full or self._closed, timeout=timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Worker:
    """One thread that takes items from a LatestSlot and processes them in order of arrival."""

    def __init__(self, *, process: Callable[[Any], None],
                 on_error: Callable[[BaseException], None], name: str = 'inference') -> None:
        self.slot = LatestSlot()
        self._process = process
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Hand `item` over; True when an unprocessed older item was dropped for it."""
        return self.slot.put(item)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the item in progress; return True when the thread has ended."""
        self.slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self.slot.closed:
            item = self.slot.take()
            if item is None:
                continue
            try:
                self._process(item)
            except Exception as exc:  # one bad frame must not kill the node's only worker
                self._on_error(exc)

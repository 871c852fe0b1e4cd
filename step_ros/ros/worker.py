"""Latest-wins hand-off from the subscription callbacks to one inference worker thread.

Each input (raw and compressed images) has its own one-item slot: a callback only drops the
newest message into its input's slot, replacing (and counting as dropped) one the worker has not
taken yet. So a slow model skips frames instead of building a backlog of stale ones, the callback
never blocks on the model, and a flood on one input cannot starve another: the worker takes the
item that has waited longest, so every input gets its turn.

The worker also reports its health for the watchdog: a thread that died, or one that has not
finished an item for a while although items wait, is a fault that /diagnostics shows as ERROR.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

DEFAULT_INPUT = 'image'


class LatestSlot:
    """One-item mailboxes, one per input: `put` replaces an unread item, `take` waits for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # input -> (sequence number, monotonic time it started waiting, item)
        self._items: dict[str, tuple[int, float, Any]] = {}
        self._sequence = 0
        self._closed = False
        self.dropped_by: Counter[str] = Counter()

    @property
    def dropped(self) -> int:
        """Items replaced before the worker saw them, all inputs together."""
        return sum(self.dropped_by.values())

    def put(self, item: Any, key: str = DEFAULT_INPUT) -> bool:
        """Store `item` for input `key`; True when it replaced one the worker never saw."""
        with self._cond:
            replaced = key in self._items
            # A replacement keeps its place in the queue of inputs: a flooding input must not
            # push itself ahead of one that waits.
            sequence, since = self._items[key][:2] if replaced else (self._sequence,
                                                                      time.monotonic())
            self._sequence += 1
            self._items[key] = (sequence, since, item)
            self.dropped_by[key] += int(replaced)
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The item of the input that waited longest, or None when closed or after `timeout`."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout=timeout)
            if not self._items:
                return None
            key = min(self._items, key=lambda k: self._items[k][0])
            return self._items.pop(key)[2]

    def take_all(self, timeout: float | None = None) -> list[tuple[str, Any]]:
        """Every waiting item as (input, item), longest waiting first; waits for at least one
        (empty when closed or after `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout=timeout)
            order = sorted(self._items, key=lambda k: self._items[k][0])
            items = [(key, self._items[key][2]) for key in order]
            self._items.clear()
            return items

    def waiting_since(self) -> float | None:
        """Monotonic time since which an input has had an item waiting; None when all empty."""
        with self._cond:
            return min((since for _, since, _ in self._items.values()), default=None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Worker:
    """One thread that takes items from a LatestSlot and processes them, never dying of one.

    An exception from `process` goes to `on_error`; an exception from `on_error` itself is
    printed and the thread goes on. Only a BaseException that is not an Exception (or a bug here)
    ends the thread, and `fault()` then says so. With `batched`, `process` gets every item
    waiting at once, as a list of (input, item) (several cameras: one batch).
    """

    def __init__(self, *, process: Callable[[Any], None],
                 on_error: Callable[[BaseException], None], name: str = 'inference',
                 stall_seconds: float = 10.0, batched: bool = False) -> None:
        self.slot = LatestSlot()
        self.batched = batched
        self._process = process
        self._on_error = on_error
        self.stall_seconds = stall_seconds
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._busy_since: float | None = None  # monotonic start of the item in progress
        self._death: str | None = None  # why the thread ended, when it was not stopped

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Any, key: str = DEFAULT_INPUT) -> bool:
        """Hand `item` over for input `key`; True when an older unprocessed item was dropped."""
        return self.slot.put(item, key)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the item in progress; return True when the thread has ended."""
        self.slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def thread_name(self) -> str:
        return self._thread.name

    def fault(self, now: float | None = None) -> str | None:
        """None while healthy; else why the worker cannot keep up (dead, or stuck)."""
        if self.slot.closed or not self._thread.ident:
            return None  # stopping, or not started yet
        if not self._thread.is_alive():
            return f'inference worker died: {self._death or "thread ended"}'
        now = time.monotonic() if now is None else now
        busy_since = self._busy_since
        if busy_since is not None and now - busy_since > self.stall_seconds:
            return (f'inference worker stuck: one frame in progress for {now - busy_since:.0f} s '
                    f'(limit {self.stall_seconds:g} s)')
        waiting = self.slot.waiting_since()
        if busy_since is None and waiting is not None and now - waiting > self.stall_seconds:
            return (f'inference worker stuck: a frame has waited {now - waiting:.0f} s and was '
                    'not taken')
        return None

    def _run(self) -> None:
        try:
            while not self.slot.closed:
                item = self.slot.take_all() if self.batched else self.slot.take()
                if item is None or (self.batched and not item):
                    continue
                self._busy_since = time.monotonic()
                try:
                    self._process(item)
                except Exception as exc:  # one bad frame must not kill the node's only worker
                    self._report(exc)
                finally:
                    self._busy_since = None
        except BaseException as exc:
            self._death = f'{type(exc).__name__}: {exc}'
            raise

    def _report(self, exc: Exception) -> None:
        try:
            self._on_error(exc)
        except Exception:  # the report failed too: say it where it cannot fail, and go on
            traceback.print_exc()

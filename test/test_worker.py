"""The latest-wins hand-off: a slow consumer skips to the newest item and never queues."""

import threading
import time

import pytest

from step_ros.ros.worker import LatestSlot, Worker


def test_slow_worker_gets_the_newest_item_and_counts_drops():
    started, processed, errors = threading.Event(), [], []

    def process(item):
        started.set()
        time.sleep(0.2)
        processed.append(item)

    worker = Worker(process=process, on_error=errors.append)
    worker.start()
    assert worker.submit(0) is False
    assert started.wait(5), 'worker never took the first item'
    drops = [worker.submit(i) for i in range(1, 10)]  # while item 0 is being processed
    assert drops == [False] + [True] * 8
    deadline = time.monotonic() + 5
    while len(processed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.stop(timeout=5)
    assert processed == [0, 9] and worker.slot.dropped == 8 and not errors, processed


def test_an_exception_is_reported_and_the_worker_goes_on():
    processed, errors = [], []

    def process(item):
        if item == 'bad':
            raise ValueError('boom')
        processed.append(item)

    worker = Worker(process=process, on_error=errors.append)
    worker.start()
    for item in ('bad', 'good'):
        worker.submit(item)
        deadline = time.monotonic() + 5
        while not (errors if item == 'bad' else processed) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert worker.stop(timeout=5)
    assert [str(e) for e in errors] == ['boom'] and processed == ['good']


def test_take_times_out_and_close_wakes_waiters():
    slot = LatestSlot()
    assert slot.take(timeout=0.05) is None
    threading.Timer(0.05, slot.close).start()
    t0 = time.monotonic()
    assert slot.take(timeout=5) is None and time.monotonic() - t0 < 2


def test_a_failing_error_report_does_not_end_the_worker(capfd):
    """The audit's D01: the error handler itself raised, and the only worker thread died."""
    processed = []

    def process(item):
        if item == 'bad':
            raise ValueError('boom')
        processed.append(item)

    def on_error(exc):
        raise ValueError('Logger severity cannot be changed between calls.')

    worker = Worker(process=process, on_error=on_error)
    worker.start()
    worker.submit('bad')
    time.sleep(0.2)
    worker.submit('good')
    deadline = time.monotonic() + 5
    while not processed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert processed == ['good'] and worker.fault() is None, worker.fault()
    assert worker.stop(timeout=5)
    assert 'Logger severity' in capfd.readouterr().err  # reported where it cannot fail


# The worker thread dies on purpose here; pytest would report its exception as a warning.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_a_dead_or_stuck_worker_is_a_fault():
    release = threading.Event()

    def process(item):
        if item == 'die':
            raise KeyboardInterrupt  # not an Exception: ends the thread
        release.wait(10)

    worker = Worker(process=process, on_error=print, stall_seconds=0.2)
    assert worker.fault() is None  # not started
    worker.start()
    worker.submit('hang')
    time.sleep(0.5)
    assert 'stuck' in (worker.fault() or ''), worker.fault()
    release.set()
    time.sleep(0.1)
    assert worker.fault() is None
    worker.submit('die')
    worker._thread.join(5)
    assert worker.fault() == 'inference worker died: KeyboardInterrupt: ', worker.fault()


def test_each_input_has_its_own_slot_and_waits_its_turn():
    """A flooding input replaces only its own item and cannot jump ahead of another input."""
    slot = LatestSlot()
    slot.put('raw 0', 'image')
    for i in range(100):
        slot.put(f'garbage {i}', 'image/compressed')
    slot.put('raw 1', 'image')
    assert slot.dropped_by == {'image': 1, 'image/compressed': 99} and slot.dropped == 100
    assert slot.take(timeout=0) == 'raw 1'  # waited longest (since 'raw 0')
    assert slot.take(timeout=0) == 'garbage 99'
    assert slot.take(timeout=0) is None and slot.waiting_since() is None

"""The latest-wins hand-off: a slow consumer skips to the newest item and never queues."""

import threading
import time

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

"""BackgroundSpinner: the spin thread is joined before rclpy is torn down, even while a
callback is running, so a process never exits with rclpy still waiting in another thread."""

import threading
import time

import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')

from node_helpers import ros_client, ros_env  # noqa: E402

from step_ros.ros.spinning import BackgroundSpinner  # noqa: E402


def test_stop_joins_the_thread_while_a_callback_runs():
    entered = threading.Event()
    finished = []

    def slow_callback() -> None:
        entered.set()
        time.sleep(0.5)
        finished.append(True)

    with ros_client(ros_env(), 'spinning_test') as (node, executor):
        node.create_timer(0.01, slow_callback)
        spinner = BackgroundSpinner(executor).start()
        assert entered.wait(timeout=30), 'the timer never ran in the spin thread'
        spinner.stop()
        # stop() returned: the callback it was inside has finished and no thread spins on.
        assert finished
        assert not spinner._thread.is_alive()
        spinner.stop()  # a second stop is harmless


def test_stop_before_start_is_harmless():
    with ros_client(ros_env(), 'spinning_idle') as (_, executor):
        spinner = BackgroundSpinner(executor)
        spinner.stop()
        assert not spinner._thread.is_alive()

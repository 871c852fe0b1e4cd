"""perception_node in this process, its worker broken on purpose: a dead or stuck worker turns
/diagnostics to ERROR, a slow model drops frames (counted) and never runs in the callback, and a
window that can never fill is reported."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from node_helpers import ros_client, ros_env, spin_until, tiny_params  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, RESULT_QOS, PerceptionNode  # noqa: E402
from step_ros.stream.config import load_params_file  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T
BASE_NS = 7_000_000_000_000


class Running:
    """An active PerceptionNode and a client in one context, spun by one executor."""

    def __init__(self, client, executor, node: PerceptionNode) -> None:
        self.client, self.executor, self.node = client, executor, node
        self.diagnostics: list[DiagnosticArray] = []
        client.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append,
                                   RESULT_QOS)
        self.camera = client.create_publisher(Image, '/image', IMAGE_QOS['reliable'])
        assert spin_until(executor, lambda: self.camera.get_subscription_count() > 0,
                          timeout=20), 'the node does not subscribe to /image'
        self.frames = 0

    def publish(self, count: int, *, spacing_ns: int = PERIOD_NS, pause: float = 0.05) -> None:
        for _ in range(count):
            frame = np.random.default_rng(self.frames).integers(0, 256, size=(48, 64, 3),
                                                                dtype=np.uint8)
            stamp = ns_to_time(BASE_NS + self.frames * spacing_ns)
            self.camera.publish(rgb_to_image(frame, header=Header(stamp=stamp, frame_id='c')))
            self.frames += 1
            spin_until(self.executor, lambda: False, timeout=pause)

    def status(self, predicate, timeout: float = 15.0) -> DiagnosticStatus:
        """The first status published from now on that satisfies predicate (or the last)."""
        start = len(self.diagnostics)

        def found():
            return [m.status[0] for m in self.diagnostics[start:] if predicate(m.status[0])]

        spin_until(self.executor, found, timeout=timeout)
        matches = found()
        assert matches or len(self.diagnostics) > start, 'no /diagnostics'
        return matches[0] if matches else self.diagnostics[-1].status[0]


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


@pytest.fixture
def running(tmp_path):
    params = load_params_file(tiny_params(tmp_path, num_frames=T, window_seconds=1.0,
                                          image_qos='reliable', diagnostics_period=0.2,
                                          worker_timeout=1.0, autostart=False,
                                          input_timeout_seconds=60.0))
    overrides = [Parameter(name, value=value) for name, value in params.items()]
    with ros_client(ros_env(), 'watchdog_client') as (client, executor):
        node = PerceptionNode(context=client.context, parameter_overrides=overrides)
        executor.add_node(node)
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            yield Running(client, executor, node)
        finally:
            executor.remove_node(node)
            node.destroy_node()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_a_dead_worker_turns_diagnostics_to_error(running):
    r = running
    r.publish(2)
    assert r.status(lambda s: s.level == DiagnosticStatus.OK or 'warming' in s.message).level \
        != DiagnosticStatus.ERROR

    def die(item):
        raise SystemExit('simulated death of the thread')  # not an Exception: ends the thread

    r.node.worker._process = die
    r.publish(1)
    status = r.status(lambda s: s.level == DiagnosticStatus.ERROR)
    assert status.level == DiagnosticStatus.ERROR, (status.level, status.message)
    assert 'inference worker died' in status.message and 'SystemExit' in status.message, \
        status.message
    assert values(status)['state'] == 'worker failed', values(status)


def test_a_stuck_worker_turns_diagnostics_to_error_and_back(running):
    r = running
    release = threading.Event()
    process = r.node.worker._process

    def hang(item):
        release.wait(30)
        process(item)

    r.node.worker._process = hang
    r.publish(1)
    status = r.status(lambda s: s.level == DiagnosticStatus.ERROR)
    assert status.level == DiagnosticStatus.ERROR and 'stuck' in status.message, status.message
    assert 'limit 1 s' in status.message, status.message
    release.set()
    status = r.status(lambda s: s.level != DiagnosticStatus.ERROR)
    assert status.level != DiagnosticStatus.ERROR, status.message


def test_a_slow_model_drops_frames_counts_them_and_never_runs_in_the_callback(running):
    r = running
    threads = []
    push = r.node.engine.push_many

    def slow_push(*args, **kwargs):
        threads.append(threading.current_thread().name)
        time.sleep(0.3)
        return push(*args, **kwargs)

    r.node.engine.push_many = slow_push
    r.publish(20, pause=0.02)
    status = r.status(lambda s: int(values(s)['dropped (worker busy)']) > 0
                      and int(values(s)['processed']) + int(values(s)['dropped (worker busy)'])
                      >= 18)
    counts = values(status)
    assert int(counts['dropped (worker busy)']) >= 5, counts
    assert counts['dropped: image'] == counts['dropped (worker busy)'], counts
    assert int(counts['received']) == 20, counts
    assert threads and set(threads) == {r.node.worker.thread_name}, \
        f'inference ran in threads {sorted(set(threads))}'


def test_frames_farther_apart_than_the_window_are_reported(running):
    r = running
    r.publish(5, spacing_ns=3_000_000_000)  # 3 s apart, window_seconds 1.0
    status = r.status(lambda s: 'window never fills' in s.message)
    assert status.level == DiagnosticStatus.WARN and 'window never fills' in status.message, \
        status.message
    assert values(status)['state'] == f'warming up (1/{T} frames)', values(status)

"""A planner is never left with an open action: a glitched stamp does not end it, a camera that
stops sending ends it after input_timeout_seconds (one camera or several), SIGINT / SIGTERM end
it before the process exits, and zero stamps under use_sim_time without /clock are named."""

import signal
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from node_helpers import NodeProcess, spin_until, tiny_params  # noqa: E402,I001
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import ActionEvent, HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image, stamp_to_ns  # noqa: E402
from step_ros.ros.perception_node import EVENT_QOS, IMAGE_QOS, RESULT_QOS  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T: every published frame is sampled
BASE_NS = 5_000_000_000_000
TIMEOUT_S = 2.0  # input_timeout_seconds: above the time a busy machine takes per frame
# Whatever the random head says becomes the stable action at once (see test_node_events).
EAGER = {'decision.smoothing_seconds': 0.0, 'decision.enter_threshold': 0.01,
         'decision.exit_threshold': 0.005, 'decision.min_dwell_seconds': 0.0,
         'decision.min_confidence': 0.0}
FRAME = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def image(stamp_ns: int) -> Image:
    return rgb_to_image(FRAME, header=Header(stamp=ns_to_time(stamp_ns), frame_id='cam'))


def kinds(events) -> list[str]:
    return [e.kind for e in events]


class Client:
    """The test's side: a camera publisher per input, and what the node publishes."""

    def __init__(self, node, executor, cameras=('',)) -> None:
        self.executor = executor
        self.cameras = {}
        self.actions, self.events = {}, {}
        for name in cameras:
            prefix = f'/{name}' if name else ''
            self.cameras[name] = node.create_publisher(Image, f'{prefix}/image',
                                                       IMAGE_QOS['reliable'])
            self.actions[name], self.events[name] = [], []
            node.create_subscription(HumanAction, f'{prefix}/human_action',
                                     self.actions[name].append, RESULT_QOS)
            node.create_subscription(ActionEvent, f'{prefix}/human_action/events',
                                     self.events[name].append, EVENT_QOS)
        self.diagnostics = []
        node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append,
                                 RESULT_QOS)

    def until(self, predicate, process, timeout: float = 30.0) -> bool:
        return spin_until(self.executor, predicate, timeout=timeout, process=process)

    def up(self, process) -> None:
        assert self.until(lambda: all(c.get_subscription_count() > 0
                                      for c in self.cameras.values()), process, timeout=180), \
            f'node not up:\n{process.output()}'

    def publish(self, process, stamps: list[int], camera: str = '') -> None:
        """Frame by frame, each after the node answered the previous one."""
        for stamp in stamps:
            count = len(self.actions[camera])
            self.cameras[camera].publish(image(stamp))
            assert self.until(lambda: len(self.actions[camera]) > count, process), \
                (camera, stamp, len(self.actions[camera]), process.output())

    def processed(self) -> int:
        if not self.diagnostics:
            return -1
        values = {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values}
        return int(values['processed'])


@pytest.mark.parametrize('stop_signal', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_glitch_silence_and_signal_never_leave_an_action_open(client, env, tmp_path,
                                                              stop_signal):
    node, executor = client
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         input_timeout_seconds=TIMEOUT_S, diagnostics_period=0.1, **EAGER)
    c = Client(node, executor)
    actions, events = c.actions[''], c.events['']
    perception = NodeProcess(['--params-file', str(params)], env=env, log=tmp_path / 'node.log')
    try:
        c.up(perception)
        stamps = [BASE_NS + i * PERIOD_NS for i in range(T + 1)]
        c.publish(perception, stamps)
        assert c.until(lambda: kinds(events) == ['start'], perception, 10), events
        # A planner that subscribes only now still gets that START (transient-local events).
        late = []
        node.create_subscription(ActionEvent, '/human_action/events', late.append, EVENT_QOS)
        assert c.until(lambda: late == events, perception, 10), (late, events)

        # One frame stamped 0 (the node stamps it with its clock, far off the camera's time
        # line), then the stream goes on: a lone outlier, dropped; the action goes on.
        c.cameras[''].publish(image(0))
        assert c.until(lambda: c.processed() == T + 2, perception, 10), \
            (c.processed(), perception.output())
        more = [stamps[-1] + i * PERIOD_NS for i in range(1, 4)]
        c.publish(perception, more)
        assert kinds(events) == ['start'], events
        assert [a.state for a in actions[T - 1:]] == ['active'] * 5, actions[T - 1:]
        assert 'dropped one image on /image stamped' in perception.output()

        # The camera stops: after input_timeout_seconds, END dated at its last frame, and the
        # output says warming_up with an empty window.
        stopped = time.monotonic()
        assert c.until(lambda: kinds(events) == ['start', 'end'], perception, 15), \
            (events, perception.output())
        waited = time.monotonic() - stopped
        assert TIMEOUT_S - 0.5 <= waited, waited
        end = events[1]
        assert stamp_to_ns(end.stamp) == stamp_to_ns(end.header.stamp) == more[-1], end
        assert end.label == events[0].label and end.header.frame_id == 'cam', end
        assert c.until(lambda: actions[-1].state == 'warming_up', perception, 5), actions[-1]
        assert (actions[-1].frames, stamp_to_ns(actions[-1].header.stamp)) == (0, more[-1])

        # Images again: a new window, a new START; then the process is stopped by a signal.
        again = [more[-1] + 10 * 10**9 + i * PERIOD_NS for i in range(T)]
        c.publish(perception, again)
        assert c.until(lambda: len(events) == 3, perception, 10), events
        perception.process.send_signal(stop_signal)
        code = perception.process.wait(timeout=30)
        assert code == 0, (code, perception.output())
    finally:
        perception.stop()
    # The END went out before the process exited (its publisher waited for the ack).
    assert c.until(lambda: len(events) == 4, None, 5), (events, perception.output())
    assert kinds(events) == ['start', 'end', 'start', 'end'], events
    assert stamp_to_ns(events[3].stamp) == again[-1], events[3]


def test_a_silent_camera_ends_its_actions_the_others_go_on(client, env, tmp_path):
    node, executor = client
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         input_timeout_seconds=TIMEOUT_S, cameras=['front', 'wrist'], **EAGER)
    c = Client(node, executor, cameras=('front', 'wrist'))
    perception = NodeProcess(['--params-file', str(params)], env=env, log=tmp_path / 'node.log')
    try:
        c.up(perception)
        stamps = [BASE_NS + i * PERIOD_NS for i in range(T)]
        for camera in ('front', 'wrist'):
            c.publish(perception, stamps, camera)
        assert c.until(lambda: all(kinds(c.events[n]) == ['start'] for n in c.events),
                       perception, 10), c.events
        # front stops; wrist goes on, frame by frame, until front's END (bounded).
        stamp, deadline = stamps[-1], time.monotonic() + 30
        while kinds(c.events['front']) != ['start', 'end'] and time.monotonic() < deadline:
            stamp += PERIOD_NS
            c.publish(perception, [stamp], 'wrist')
        assert kinds(c.events['front']) == ['start', 'end'], (c.events, perception.output())
        assert stamp_to_ns(c.events['front'][1].stamp) == stamps[-1]
        assert kinds(c.events['wrist']) == ['start'], c.events['wrist']
        assert c.actions['wrist'][-1].state == 'active', c.actions['wrist'][-1]
        assert c.until(lambda: c.actions['front'][-1].state == 'warming_up', perception, 5)
    finally:
        perception.stop()


def test_zero_stamps_under_sim_time_without_clock_are_named(client, env, tmp_path):
    node, executor = client
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable')
    c = Client(node, executor)
    perception = NodeProcess(['--params-file', str(params), '-p', 'use_sim_time:=true'],
                             env=env, log=tmp_path / 'node.log')
    try:
        c.up(perception)
        deadline = time.monotonic() + 30
        while '/clock' not in perception.output() and time.monotonic() < deadline:
            c.cameras[''].publish(image(0))
            c.until(lambda: '/clock' in perception.output(), perception, 0.5)
        out = perception.output()
        assert 'use_sim_time is true, but no /clock message has come' in out, out
        assert c.actions[''] == [], c.actions['']  # nothing stamped 0 went through
    finally:
        perception.stop()

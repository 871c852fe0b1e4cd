"""perception_node as a real process: a separate rclpy process publishes frames, gets actions."""

import signal
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from node_helpers import LABELS, REPO, NodeProcess, spin_until, tiny_params  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import ActionLabels, HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image, stamp_to_ns  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, LATCHED_QOS, RESULT_QOS  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T
BASE_NS = 1_000_000_000_000  # header stamps start at t = 1000 s
CAMERA = '/some/camera/image_raw'


@pytest.fixture(scope='module')
def perception(tmp_path_factory, env):
    tmp = tmp_path_factory.mktemp('node')
    params = tiny_params(tmp, num_frames=T, window_seconds=1.0, debug_image=True)
    # use_sim_time without a /clock: sampling and latency must not depend on the node clock.
    process = NodeProcess(['--params-file', str(params), '-r', f'image:={CAMERA}',
                           '-p', 'use_sim_time:=true'], env=env, log=tmp / 'node.log')
    yield process
    process.stop()


def _frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)


def test_actions_from_published_frames(client, perception):
    node, executor = client
    labels, actions, diagnostics, debug = [], [], [], []
    node.create_subscription(Image, '/debug_image', debug.append, RESULT_QOS)
    node.create_subscription(HumanAction, '/human_action', actions.append, RESULT_QOS)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, RESULT_QOS)
    camera = node.create_publisher(Image, CAMERA, IMAGE_QOS['sensor_data'])
    assert spin_until(executor, lambda: camera.get_subscription_count() > 0, timeout=90,
                      process=perception), \
        f'perception_node does not subscribe {CAMERA}:\n{perception.output()}'
    # Subscribed to the camera means activated, after configure published the label list once:
    # this subscriber joins late, and gets the list only because it is latched.
    spin_until(executor, lambda: False, timeout=1.0)
    node.create_subscription(ActionLabels, '/human_action/labels', labels.append, LATCHED_QOS)
    assert spin_until(executor, lambda: labels, timeout=20, process=perception), \
        f'no ActionLabels for a late subscriber; node output:\n{perception.output()}'
    assert len(labels) == 1, f'label list published {len(labels)} times'
    assert tuple(labels[0].labels) == LABELS and labels[0].task == 'action'
    assert labels[0].topic == '/human_action'

    published: list[int] = []

    def publish(i: int) -> None:
        stamp = BASE_NS + i * PERIOD_NS // 2  # 8 Hz of header time: every other one is sampled
        published.append(stamp)
        camera.publish(rgb_to_image(_frame(i), header=Header(stamp=ns_to_time(stamp),
                                                             frame_id='test_cam')))
        spin_until(executor, lambda: False, timeout=0.1)

    def state(text: str) -> bool:
        return any(kv.key == 'state' and kv.value == text
                   for msg in diagnostics for status in msg.status for kv in status.values)

    # 3 sampled frames of 4: the node reports that it warms up, and publishes only that.
    for i in range(5):
        publish(i)
    assert spin_until(executor, lambda: state(f'warming up (3/{T} frames)'), timeout=30), \
        f'diagnostics never said warming up (3/{T}); output:\n{perception.output()}'
    spin_until(executor, lambda: len(actions) >= 3, timeout=5)
    assert [(a.state, a.label, a.frames) for a in actions] == [
        ('warming_up', '', n) for n in range(1, T)], actions
    warming = len(actions)

    i = 5
    while len(actions) < warming + 3 and i < 60 and perception.process.poll() is None:
        publish(i)
        i += 1
    spin_until(executor, lambda: len(actions) >= warming + 3, timeout=10)
    assert len(actions) >= warming + 3, \
        f'{len(actions)} HumanAction for {i} frames:\n{perception.output()}'
    for msg in actions[warming:]:
        assert msg.state in ('idle', 'active', 'uncertain'), msg
        stamp, start = stamp_to_ns(msg.header.stamp), stamp_to_ns(msg.window_start)
        assert stamp in published and start in published, (stamp, start)
        # T - 1 sampling periods; a period longer when a busy worker dropped a sampled frame.
        assert (T - 1) * PERIOD_NS <= stamp - start <= T * PERIOD_NS, (stamp, start)
        assert msg.header.frame_id == 'test_cam' and msg.frames == T and msg.task == 'action'
        assert msg.label in LABELS and msg.label == msg.top_labels[0]
        assert LABELS.index(msg.label) == msg.label_id
        assert len(msg.top_labels) == 3 and list(msg.top_scores) == sorted(msg.top_scores,
                                                                          reverse=True)
        assert abs(msg.confidence - msg.top_scores[0]) < 1e-6
        assert abs(msg.margin - (msg.top_scores[0] - msg.top_scores[1])) < 1e-5
        latency = msg.latency.sec + msg.latency.nanosec * 1e-9
        assert 0 < latency < 10, latency
    assert spin_until(executor, lambda: state('running'), timeout=5), 'diagnostics not running'
    status = diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == 'perception_node: action recognition'
    assert int(values['received']) >= len(actions) and int(values['rejected']) == 0, values
    assert float(values['latency p50 (ms)']) > 0, values
    assert perception.process.poll() is None
    # debug_image: the newest frame of a window with its label written on it.
    assert debug, 'no debug_image while debug_image is true'
    image = debug[0]
    assert (image.encoding, image.height, image.width) == ('rgb8', 60, 80)
    frame_id = published.index(stamp_to_ns(image.header.stamp))
    drawn = np.frombuffer(bytes(image.data), np.uint8).reshape(60, 80, 3)
    assert (drawn != _frame(frame_id)).any(), 'debug image has no annotation'


def test_node_exits_cleanly_on_sigint(perception):
    deadline = time.monotonic() + 120
    while 'ready:' not in perception.output() and time.monotonic() < deadline:
        assert perception.process.poll() is None, perception.output()
        time.sleep(0.2)
    assert 'ready:' in perception.output(), perception.output()
    assert perception.stop() == 0, perception.output()
    assert 'Traceback' not in perception.output(), perception.output()


@pytest.mark.parametrize('args, words', [
    (['--params-file', str(REPO / 'config' / 'perception.yaml')],
     ['heads.checkpoints', '/opt/step_ros/models/heads/action.safetensors']),
    (['-p', 'num_frames:=0'], ['num_frames=0']),
    (['-p', 'num_frame:=8'], ["unknown parameter(s) ['num_frame']"]),  # a typo, not ignored
    (['-p', 'window_seconds:=.inf'], ['window_seconds=inf']),
    (['-p', 'diagnostics_period:=1e-9'], ['diagnostics_period=1e-09']),
    (['-p', "heads.topics:=['bad topic']"], ['heads.topics', "'bad topic'"]),
    ('not yaml', ['parameters file', 'not valid YAML']),
])
def test_bad_configuration_fails_at_start_up_with_one_line(tmp_path, env, args, words):
    if args == 'not yaml':
        bad = tmp_path / 'broken.yaml'
        bad.write_text('/**:\n  ros__parameters:\n    num_frames: [8\n  top_k: }\n')
        args, words = ['--params-file', str(bad)], [*words, str(bad)]
    elif args[0] == '-p':
        args = ['--params-file', str(tiny_params(tmp_path)), *args]
    process = NodeProcess(args, env=env, log=tmp_path / 'node.log')
    code = process.wait_exit(timeout=90)
    output = process.output()
    assert code != 0, f'perception_node exited with 0:\n{output}'
    fatal = [line for line in output.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1 and all(w in fatal[0] for w in words), output
    assert 'Traceback' not in output, output
    assert len([line for line in output.splitlines() if line.strip()]) <= 2, output


def test_a_second_ctrl_c_does_not_abort_the_teardown(tmp_path, env):
    # A terminal's Ctrl-C on `ros2 launch` reaches the node twice: from the terminal and from
    # launch. The second one arrives while the node is tearing down.
    process = NodeProcess(['--params-file', str(tiny_params(tmp_path))], env=env,
                          log=tmp_path / 'node.log')
    try:
        deadline = time.monotonic() + 120
        while 'ready:' not in process.output() and time.monotonic() < deadline:
            assert process.process.poll() is None, process.output()
            time.sleep(0.2)
        assert 'ready:' in process.output(), process.output()
        process.process.send_signal(signal.SIGINT)
        time.sleep(0.1)
        process.process.send_signal(signal.SIGINT)
        assert process.wait_exit(30) == 0, process.output()
        assert 'Traceback' not in process.output(), process.output()
    finally:
        process.stop()

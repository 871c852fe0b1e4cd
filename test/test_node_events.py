"""The node's decided output: warming_up, stable fields, START / END events on
human_action/events, an END when the stream restarts, and the README's planner snippet reacting
to those events."""

import re
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from node_helpers import REPO, ChildProcess, NodeProcess, spin_until, tiny_params  # noqa: E402,I001
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import ActionEvent, HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image, stamp_to_ns  # noqa: E402
from step_ros.ros.perception_node import EVENT_QOS, IMAGE_QOS, RESULT_QOS  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T: every published frame is sampled
BASE_NS = 5_000_000_000_000
# Whatever the random head says becomes the stable action at once: the test is about the
# plumbing (every decision published, events in order, END on a restart), not the thresholds.
EAGER = {'decision.smoothing_seconds': 0.0, 'decision.enter_threshold': 0.01,
         'decision.exit_threshold': 0.005, 'decision.min_dwell_seconds': 0.0,
         'decision.min_confidence': 0.0}


def readme_planner() -> str:
    readme = (REPO / 'README.md').read_text()
    found = re.search(r'A planner reacting to events.*?```python\n(.*?)```', readme, re.S)
    assert found, 'README has no planner snippet after "A planner reacting to events"'
    return found.group(1)


def seconds(t) -> float:
    return t.sec + t.nanosec * 1e-9


def test_events_and_readme_planner(client, env, tmp_path):
    node, executor = client
    planner_file = tmp_path / 'planner.py'
    planner_file.write_text(readme_planner())
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         diagnostics_period=0.1, **EAGER)
    actions, events, diagnostics = [], [], []
    node.create_subscription(HumanAction, '/human_action', actions.append, RESULT_QOS)
    node.create_subscription(ActionEvent, '/human_action/events', events.append, EVENT_QOS)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, RESULT_QOS)
    camera = node.create_publisher(Image, '/image', IMAGE_QOS['reliable'])
    # The planner first, so that it is on the graph before the node's participant starts.
    planner = ChildProcess([sys.executable, str(planner_file)], env=env,
                           log=tmp_path / 'planner.log')
    perception = None
    frame = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)

    def publish(stamps: list[int]) -> None:
        """Frame by frame, each after the node answered the previous one: a busy machine
        must not make the latest-wins worker drop one."""
        for stamp in stamps:
            count = len(actions)
            camera.publish(rgb_to_image(frame, header=Header(stamp=ns_to_time(stamp),
                                                             frame_id='cam')))
            assert spin_until(executor, lambda: len(actions) > count, timeout=30,
                              process=perception), (stamp, len(actions), perception.output())

    def processed() -> int:
        """Frames the node has taken from its input so far (its /diagnostics)."""
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values} \
            if diagnostics else {'processed': -1}
        return int(values['processed'])

    def graph() -> str:
        """What this test's node sees of the domain, for a failure message."""
        publishers = node.get_publishers_info_by_topic('/human_action/events')
        return (f"domain {env['ROS_DOMAIN_ID']}: nodes {node.get_node_names_and_namespaces()}; "
                f'/human_action/events publishers {[i.node_name for i in publishers]}')

    try:
        # The planner itself on the events topic (a count of subscribers could include one of
        # an earlier test that the graph has not forgotten yet), then the node up.
        assert spin_until(executor, lambda: 'planner' in {
                              i.node_name for i in node.get_subscriptions_info_by_topic(
                                  '/human_action/events')}, timeout=60, process=planner), \
            f'planner not up:\n{planner.output()}\n{graph()}'
        perception = NodeProcess(['--params-file', str(params)], env=env,
                                 log=tmp_path / 'node.log')
        assert spin_until(executor, lambda: camera.get_subscription_count() > 0,
                          timeout=180, process=perception), \
            f'node not up:\n{perception.output()}\n{graph()}'
        first = [BASE_NS + i * PERIOD_NS for i in range(T + 3)]
        publish(first)
        assert spin_until(executor, lambda: len(actions) == T + 3, timeout=30,
                          process=perception), (len(actions), perception.output())
        # Stamps jump back 100 s (a bag loop): the open action ends, the window refills. The
        # first frame back is held (it could be a lone glitch) and publishes nothing; the
        # second one confirms the restart.
        second = [BASE_NS - 100_000_000_000 + i * PERIOD_NS for i in range(T + 2)]
        camera.publish(rgb_to_image(frame, header=Header(stamp=ns_to_time(second[0]),
                                                         frame_id='cam')))
        assert spin_until(executor, lambda: processed() == T + 4, timeout=30,
                          process=perception), (processed(), perception.output())
        assert len(events) == 1, events
        publish(second[1:2])
        # The END comes with the restart, not only once a new window has been decided.
        assert spin_until(executor, lambda: len(events) >= 2, timeout=10), events
        publish(second[2:])
        assert spin_until(executor, lambda: len(actions) == 2 * T + 4, timeout=30,
                          process=perception), (len(actions), perception.output())
        assert spin_until(executor, lambda: len(events) == 3, timeout=10), events
        # The planner gets every event, also one published before its subscription matched
        # the node's publisher (transient-local events); its log line follows each.
        assert spin_until(executor, lambda: planner.output().count(' at ') >= 3, timeout=30,
                          process=planner), f'planner log:\n{planner.output()}\n{graph()}'
        seen = graph()
        # Ctrl-C with an action open: its END reaches both subscribers before the node exits.
        assert perception.stop() == 0, perception.output()
        assert spin_until(executor, lambda: len(events) == 4, timeout=10), events
        assert spin_until(executor, lambda: planner.output().count(' at ') >= 4, timeout=10,
                          process=planner), f'planner log:\n{planner.output()}'
    finally:
        if perception is not None:
            perception.stop()
        planner.stop()

    # While the window fills: one warming_up message per sampled frame, no raw result.
    states = [a.state for a in actions]
    assert states == ['warming_up'] * (T - 1) + ['active'] * 4 + \
        ['warming_up'] * (T - 1) + ['active'] * 2, states
    for a in actions[:T - 1]:
        assert (a.label, a.label_id, a.stable_label, a.top_labels) == ('', -1, '', []), a
    assert [a.frames for a in actions[:T - 1]] == list(range(1, T)), actions[:T - 1]
    assert stamp_to_ns(actions[0].window_start) == first[0], actions[0]

    # A constant frame: one stable label, a START, the END at the restart, a START again, the
    # END when the node stops.
    label = actions[T - 1].label
    assert [(e.kind, e.label) for e in events] == [
        (ActionEvent.START, label), (ActionEvent.END, label), (ActionEvent.START, label),
        (ActionEvent.END, label)], events
    start, end, again, _ = events
    for event, newest, stream in ((start, T - 1, first), (again, 2 * T + 2, second)):
        decided = actions[newest]  # the first full window decided it
        assert event.header == decided.header and event.window_start == decided.window_start
        assert event.task == 'action' and 0 < event.confidence <= 1, event
        assert stream[0] <= stamp_to_ns(event.stamp) <= stamp_to_ns(event.header.stamp), event
        assert (event.duration.sec, event.duration.nanosec) == (0, 0), event
    onset = stamp_to_ns(start.stamp)
    for a in actions[T - 1:T + 3]:
        assert (a.stable_label, stamp_to_ns(a.stable_since)) == (label, onset), a
        assert abs(a.stable_confidence - a.confidence) < 1e-5, a  # no smoothing
    # The END: offset no later than the last window of the first stream, duration = offset -
    # onset, header the decision of that last window.
    offset = stamp_to_ns(end.stamp)
    assert onset <= offset <= first[-1], (onset, offset)
    assert abs(seconds(end.duration) - (offset - onset) / 1e9) < 1e-6, end
    assert stamp_to_ns(end.header.stamp) <= first[-1] and end.header.frame_id == 'cam', end

    # The README planner logged each event it received, in order.
    logged = re.findall(r'(START|END) (\w+) at (\d+\.\d{3})', planner.output())
    assert logged == [(e.kind.upper(), e.label, f'{seconds(e.stamp):.3f}') for e in events], \
        f'planner log:\n{planner.output()}\n{seen}\nnode log:\n{perception.output()}'

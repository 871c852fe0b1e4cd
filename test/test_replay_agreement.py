"""`replay` publishes a bag with its stamps and /clock; the live node fed by it under
use_sim_time publishes the same labels for the same windows, and the same START / END events,
as `bag-eval` on the same bag."""

import csv
import os
import sys
import time

import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from node_helpers import REPO, ChildProcess, NodeProcess, make_head, spin_until, write_params  # noqa: E402,I001
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from step_ros_msgs.msg import ActionEvent, HumanAction  # noqa: E402

from step_ros.stream.config import load_params_file, resolve_path  # noqa: E402
from step_ros.data.synth import LABELS, SYMMETRIC_PAIRS  # noqa: E402
from step_ros.tools import bag_eval  # noqa: E402
from step_ros.tools.synth_bag import START_NS, write_synth_bag  # noqa: E402

TOPIC = '/camera/image_raw'
RATE = 0.5  # slow enough that the node's latest-wins worker never has to drop a frame


@pytest.fixture
def replay_factory(env, tmp_path):
    started = []

    def start(*args: str) -> ChildProcess:
        """`python -m step_ros replay` with `args` as a subprocess."""
        started.append(ChildProcess([sys.executable, '-m', 'step_ros', 'replay', *args], env=env,
                                    log=tmp_path / f'replay{len(started)}.log'))
        return started[-1]

    yield start
    for replay in started:
        replay.stop()


def ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_replay_publishes_stamps_and_clock(client, replay_factory, tmp_path):
    node, executor = client
    bag, _ = write_synth_bag(tmp_path / 'bag', seconds=2.0, fps=10.0, size=(48, 64),
                             progress=False)
    images, clocks = [], []
    subscriptions = [
        node.create_subscription(Image, TOPIC, lambda m: images.append(
            (ns(m.header.stamp), m.width, m.encoding, time.monotonic())), 30),
        node.create_subscription(Clock, '/clock', lambda m: clocks.append(ns(m.clock)), 100)]
    try:
        replay = replay_factory('--bag', str(bag), '--rate', '2', '--wait-for-subscribers', '30')
        spin_until(executor, lambda: not replay.running(), timeout=60)
        spin_until(executor, lambda: len(images) == 20, timeout=3)
    finally:  # the next test's replay must wait for the node, not for this subscriber
        for subscription in subscriptions:
            node.destroy_subscription(subscription)
    assert replay.stop() == 0, replay.log.read_text()
    assert "published {'/camera/image_raw': 20}" in replay.log.read_text()
    assert [s - START_NS for s, *_ in images] == [i * 100_000_000 for i in range(20)]
    assert {(w, e) for _, w, e, _ in images} == {(64, 'rgb8')}
    # 1.9 s of bag at x2 cannot arrive in less than 0.95 s.
    assert images[-1][3] - images[0][3] > 0.9
    assert clocks == sorted(clocks) and len(clocks) > 20
    assert clocks[0] >= START_NS and clocks[-1] == START_NS + 1_900_000_000


REAL = REPO.parent / 'shared' / 'testdata' / 'real_bags'


@pytest.mark.skipif(not (REAL / 'compressed.bag').is_file(),
                    reason=f'real camera bags not found in {REAL}')
def test_replay_ros1_bag(client, replay_factory):
    """A ROS 1 bag of a real robot replays as ROS 2 messages, stamps and bytes unchanged."""
    node, executor = client
    topic = '/spot/camera/hand_color/image/compressed'
    got = []
    subscription = node.create_subscription(CompressedImage, topic, got.append, 10)
    try:
        replay = replay_factory('--bag', str(REAL / 'compressed.bag'), '--topic', topic,
                                '--wait-for-subscribers', '30')
        spin_until(executor, lambda: not replay.running() and got, timeout=60)
    finally:
        node.destroy_subscription(subscription)
    assert replay.stop() == 0, replay.log.read_text()
    assert [(m.format, len(m.data), ns(m.header.stamp)) for m in got] == [
        ('rgb8; jpeg compressed bgr8', 91749, 1_648_052_479_616_566_426)]


def test_replay_bad_topic(replay_factory, tmp_path):
    bag, _ = write_synth_bag(tmp_path / 'bag', seconds=0.5, fps=10.0, size=(48, 64),
                             progress=False)
    replay = replay_factory('--bag', str(bag), '--topic', '/camera/depth')
    assert replay.process.wait(timeout=60) == 2
    replay.stop()
    assert replay.log.read_text().strip().splitlines() == [
        f"replay: error: bag '{bag}' has no topic '/camera/depth'; its image topics: "
        "['/camera/image_raw']"]


def demo_like_params(tmp_path):
    """config/demo.yaml with its head (a random one of the same shape if not trained yet) and a
    reliable image QoS: the comparison is about the engine, not about DDS losing images."""
    values = load_params_file(REPO / 'config' / 'demo.yaml')
    head = resolve_path(values['heads.checkpoints'][0])
    if not os.path.isfile(head):  # installed share not rebuilt since the head was trained
        head = str(REPO / 'models' / os.path.basename(head))
    if not os.path.isfile(head):
        head = str(make_head(tmp_path / 'head.safetensors', num_frames=values['num_frames'],
                             labels=LABELS, pairs=SYMMETRIC_PAIRS))
    values.update({'heads.checkpoints': [head], 'image_qos': 'reliable'})
    return write_params(tmp_path / 'params.yaml', values)


def signatures(predictions):
    """(stamp, window_start, stamps of the stream's predictions inside the window) -> label,
    confidence. Windows with equal keys were built from the same sampled frames (as far as the
    stream shows), so a frame the live node dropped cannot pass for agreement."""
    stamps = [p[0] for p in predictions]
    out = {}
    for stamp, start, label, confidence in predictions:
        inside = tuple(s for s in stamps if start <= s <= stamp)
        out[(stamp, start, inside)] = (label, confidence)
    return out


def test_live_node_agrees_with_bag_eval(client, replay_factory, env, tmp_path):
    node, executor = client
    bag, timeline = write_synth_bag(tmp_path / 'bag', seconds=12.0, fps=10.0, progress=False)
    params = demo_like_params(tmp_path)
    assert bag_eval.main(['--bag', str(bag), '--topic', TOPIC, '--labels', str(timeline),
                          '--config', str(params), '--out', str(tmp_path / 'eval'),
                          '--no-progress']) == 0
    offline = [(int(r['stamp'].replace('.', '')), int(r['window_start'].replace('.', '')),
                r['label'], float(r['confidence']))
               for r in csv.DictReader((tmp_path / 'eval' / 'predictions.csv').open())]
    offline_events = [(r['kind'], r['label'], int(r['stamp'].replace('.', '')),
                       int(r['decided'].replace('.', '')))
                      for r in csv.DictReader((tmp_path / 'eval' / 'events.csv').open())]

    live, live_events = [], []
    node.create_subscription(ActionEvent, '/human_action/events', lambda m: live_events.append(
        (m.kind, m.label, ns(m.stamp), ns(m.header.stamp))), 100)
    node.create_subscription(HumanAction, '/human_action', lambda m: live.append(
        (ns(m.header.stamp), ns(m.window_start), m.label, m.confidence))
        if m.state != HumanAction.STATE_WARMING_UP else None, 100)
    perception = NodeProcess(['-p', 'use_sim_time:=true', '--params-file', str(params),
                              '-r', f'image:={TOPIC}'], env=env, log=tmp_path / 'node.log')
    try:
        assert spin_until(executor, lambda: node.count_publishers('/human_action') > 0,
                          timeout=60, process=perception), perception.output()
        # Only the node's subscription is left, so replay waits for the node.
        assert spin_until(executor, lambda: node.count_subscribers(TOPIC) == 1, timeout=30)
        replay = replay_factory('--bag', str(bag), '--rate', str(RATE),
                                '--wait-for-subscribers', '60')
        spin_until(executor, lambda: not replay.running(), timeout=90, process=perception)
        assert replay.stop() == 0, replay.log.read_text()
        spin_until(executor, lambda: len(live) >= len(offline), timeout=5)
        spin_until(executor, lambda: len(live_events) >= len(offline_events), timeout=5)
    finally:
        perception.stop()
    offline_windows, live_windows = signatures(offline), signatures(live)
    matched = sorted(offline_windows.keys() & live_windows.keys())
    # 12 s at 10 fps, 8 frames over 2 s: one frame kept every 0.25 s, first result at 1.75 s.
    assert len(offline) == 41
    assert len(matched) >= 0.9 * len(offline), (len(matched), len(live), perception.output())
    print(f'agreement: {len(matched)} of {len(offline)} bag-eval windows matched by the live '
          f'node ({len(live)} published); max confidence difference ' + str(max(
              abs(offline_windows[k][1] - live_windows[k][1]) for k in matched)))
    for key in matched:
        (label, confidence), (live_label, live_confidence) = offline_windows[key], \
            live_windows[key]
        assert live_label == label, (key, label, live_label)
        assert abs(live_confidence - confidence) < 1e-4, (key, confidence, live_confidence)

    # Decisions: the same START / END events (label, kind, onset / offset stamp, decision
    # window) as bag-eval's. The decision state only depends on the windows seen so far, so up
    # to the first window the live node missed (if any) the events must be identical.
    missed = [stamp for stamp, *_ in offline
              if not any(key[0] == stamp for key in matched)]
    horizon = min(missed, default=None)
    seen = [e for e in live_events if horizon is None or e[3] < horizon]
    expected = [e for e in offline_events if horizon is None or e[3] < horizon]
    print(f'events: {len(offline_events)} from bag-eval, {len(live_events)} from the live node; '
          f'compared up to {horizon or "the end"}')
    # 12 s with idle gaps hold few actions: at least one START and one END to compare.
    assert {kind for kind, *_ in expected} == {'start', 'end'}, (offline_events, horizon)
    assert seen == expected, (seen, expected)

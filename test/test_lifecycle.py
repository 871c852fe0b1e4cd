"""perception_node as a lifecycle node (autostart:=false) driven by its lifecycle services."""

import gc
import time
import weakref

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('lifecycle_msgs.srv', reason='lifecycle_msgs is not installed')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from node_helpers import (  # noqa: E402
    LABELS,
    NodeProcess,
    node_with_client,
    ros_client,
    ros_env,
    spin_until,
    tiny_params,
)
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import ActionEvent, ActionLabels, HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import (  # noqa: E402
    EVENT_QOS,
    IMAGE_QOS,
    LATCHED_QOS,
    RESULT_QOS,
    PerceptionNode,
)
from step_ros.stream.config import load_params_file  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T: every published frame is sampled
BASE_NS = 3_000_000_000_000
# Any prediction of the random head becomes the stable action at once (there is a START to end).
EAGER = {'decision.smoothing_seconds': 0.0, 'decision.enter_threshold': 0.01,
         'decision.exit_threshold': 0.005, 'decision.min_dwell_seconds': 0.0,
         'decision.min_confidence': 0.0}


class Managed:
    """The test's side: lifecycle service clients, a camera and what the node published."""

    def __init__(self, node, executor, process: NodeProcess) -> None:
        self.node, self.executor, self.process = node, executor, process
        self.get_state = node.create_client(GetState, '/perception_node/get_state')
        self.change_state = node.create_client(ChangeState, '/perception_node/change_state')
        self.labels, self.actions, self.diagnostics, self.events = [], [], [], []
        node.create_subscription(ActionEvent, '/human_action/events', self.events.append,
                                 EVENT_QOS)
        node.create_subscription(ActionLabels, '/human_action/labels', self.labels.append,
                                 LATCHED_QOS)
        node.create_subscription(HumanAction, '/human_action', self.actions.append, RESULT_QOS)
        node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append,
                                 RESULT_QOS)
        self.camera = node.create_publisher(Image, '/image', IMAGE_QOS['reliable'])
        self.frames = 0

    def call(self, client, request, timeout: float = 60.0):
        assert spin_until(self.executor, client.service_is_ready, timeout=30,
                          process=self.process), \
            f'{client.srv_name} not available:\n{self.process.output()}'
        future = client.call_async(request)
        assert spin_until(self.executor, future.done, timeout=timeout, process=self.process), \
            f'no answer from {client.srv_name}:\n{self.process.output()}'
        return future.result()

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(self.change_state, request).success

    def publish(self, count: int) -> None:
        """`count` frames 1/T window apart in header time, each of them sampled."""
        for _ in range(count):
            rng = np.random.default_rng(self.frames)
            frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
            stamp = ns_to_time(BASE_NS + self.frames * PERIOD_NS)
            self.camera.publish(rgb_to_image(frame, header=Header(stamp=stamp, frame_id='cam')))
            self.frames += 1
            self.wait(0.1)

    def wait(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, timeout=seconds)

    def subscribed(self, want: bool, timeout: float = 20.0) -> bool:
        return spin_until(self.executor, lambda: (self.camera.get_subscription_count() > 0)
                          == want, timeout=timeout, process=self.process)


@pytest.fixture
def managed(tmp_path):
    env = ros_env()
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         diagnostics_period=0.2, autostart=False, **EAGER)
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='lifecycle_client') as (node, executor, process):
        yield Managed(node, executor, process)


def test_lifecycle_transitions_gate_model_and_outputs(managed):
    m = managed
    log = m.process.output
    assert m.state() == 'unconfigured', log()
    m.wait(1.0)
    assert not m.labels and not m.diagnostics, f'unconfigured node published:\n{log()}'
    assert not m.subscribed(True, timeout=0.5), 'unconfigured node subscribes to images'

    # configure: the model is loaded (its label list is published), no input, no output.
    assert m.transition(Transition.TRANSITION_CONFIGURE), log()
    assert m.state() == 'inactive'
    assert spin_until(m.executor, lambda: m.labels, timeout=10), f'no labels:\n{log()}'
    assert tuple(m.labels[0].labels) == LABELS, m.labels[0]
    assert 'configured: backbone tiny' in log(), log()
    m.publish(T + 2)
    assert not m.subscribed(True, timeout=0.5), 'inactive node subscribes to images'
    assert not m.actions and not m.diagnostics, f'inactive node published:\n{log()}'

    # activate: frames give actions, diagnostics report.
    assert m.transition(Transition.TRANSITION_ACTIVATE), log()
    assert m.state() == 'active'
    assert m.subscribed(True), f'active node does not subscribe to /image:\n{log()}'
    m.publish(T + 2)
    # T - 1 warming up, then 3 windows.
    assert spin_until(m.executor, lambda: len(m.actions) >= T + 2, timeout=20), \
        f'{len(m.actions)} HumanAction for {T + 2} frames while active:\n{log()}'
    assert [a.state for a in m.actions] == ['warming_up'] * (T - 1) + ['active'] * 3, \
        m.actions
    assert all(a.frames == T and a.label in LABELS for a in m.actions[T - 1:]), m.actions
    assert spin_until(m.executor, lambda: m.diagnostics, timeout=5), 'no diagnostics while active'

    # deactivate: input closed and the worker joined; nothing published any more.
    assert m.transition(Transition.TRANSITION_DEACTIVATE), log()
    assert m.state() == 'inactive'
    assert m.subscribed(False), 'deactivated node still subscribes to /image'
    # The action that was going on ends with the deactivation: a planner waits for no END.
    assert spin_until(m.executor, lambda: len(m.events) >= 2, timeout=5), m.events
    label = m.actions[T - 1].stable_label
    assert [(e.kind, e.label) for e in m.events] == [('start', label), ('end', label)], \
        m.events
    m.wait(0.5)
    counts = len(m.actions), len(m.diagnostics)
    m.publish(T + 2)
    m.wait(1.0)
    assert (len(m.actions), len(m.diagnostics)) == counts, \
        f'published while inactive: {counts} -> {len(m.actions), len(m.diagnostics)}'

    # activate again: the window starts afresh, actions flow after T frames.
    assert m.transition(Transition.TRANSITION_ACTIVATE), log()
    assert m.subscribed(True), log()
    before = len(m.actions)
    m.publish(T + 1)
    assert spin_until(m.executor, lambda: len(m.actions) >= before + 2, timeout=20), \
        f'{len(m.actions) - before} HumanAction after re-activation:\n{log()}'

    # deactivate + cleanup: back to unconfigured, the model released.
    assert m.transition(Transition.TRANSITION_DEACTIVATE), log()
    assert m.transition(Transition.TRANSITION_CLEANUP), log()
    assert m.state() == 'unconfigured'
    assert 'unconfigured: model released' in log(), log()

    # shutdown: the process ends by itself, with 0.
    t0 = time.monotonic()
    assert m.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN), log()
    code = m.process.wait_exit(timeout=15)
    assert code == 0, f'exit code {code} after shutdown:\n{log()}'
    assert time.monotonic() - t0 < 15
    assert 'Traceback' not in log() and 'ERROR' not in log(), log()


def test_configure_failure_is_reported_and_the_node_stays_unconfigured(tmp_path):
    env = ros_env()
    params = tiny_params(tmp_path, num_frames=T, autostart=False, top_k=0)
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='lifecycle_failure_client') as (node, executor, process):
        m = Managed(node, executor, process)
        assert not m.transition(Transition.TRANSITION_CONFIGURE), process.output()
        assert m.state() == 'unconfigured'
        assert process.process.poll() is None, process.output()
    code = process.stop()  # stopped already on leaving the block: its exit code
    output = process.output()
    assert code == 0, output
    lines = [line for line in output.splitlines() if 'top_k=0' in line]
    assert len(lines) == 1 and 'ERROR' in lines[0] and 'cannot configure' in lines[0], output
    assert 'FATAL' not in output and 'Traceback' not in output, output


def test_deactivate_keeps_the_model_and_cleanup_frees_it(tmp_path):
    values = load_params_file(tiny_params(tmp_path, num_frames=T, autostart=False))
    overrides = [Parameter(name, value=value) for name, value in values.items()]
    with ros_client(ros_env(), 'lifecycle_in_process') as (client, _):
        node = PerceptionNode(context=client.context, parameter_overrides=overrides)
        try:
            assert node.engine is None, 'the model is loaded before configure'
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            backbone = weakref.ref(node.engine.backbone)
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            worker = node.worker
            assert worker is not None and worker._thread.is_alive()
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.worker is None and not worker._thread.is_alive(), 'worker not joined'
            assert node.engine is not None and node.engine.backbone is backbone()
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            gc.collect()
            referrers = [type(r).__name__ for r in gc.get_referrers(backbone())] \
                if backbone() is not None else []
            freed = backbone() is None
            assert freed, f'backbone still referenced after cleanup, by {referrers}'
            assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
            assert node.finished.done(), 'shutdown did not release main()'
        finally:
            node.destroy_node()

"""perception_node's parameters on a running node (live tuning, restart-only ones), invalid
lifecycle requests answered instead of ending the process, and the head-fit warning."""

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('lifecycle_msgs.srv', reason='lifecycle_msgs is not installed')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from node_helpers import (  # noqa: E402
    NodeProcess,
    make_head,
    node_with_client,
    ros_env,
    spin_until,
    tiny_params,
)
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.srv import (  # noqa: E402
    DescribeParameters,
    GetParameters,
    SetParameters,
    SetParametersAtomically,
)
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import HumanAction  # noqa: E402

from step_ros.model.checkpoint import read_meta  # noqa: E402
from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, RESULT_QOS  # noqa: E402
from step_ros.stream.config import PerceptionConfig, load_params_file  # noqa: E402
from step_ros.stream.runtime import window_mismatch  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T: every frame is sampled
BASE_NS = 5_000_000_000_000
NODE = '/perception_node'


class Client:
    """The test's side: services of the node, a camera and the HumanAction received."""

    def __init__(self, node, executor, process: NodeProcess) -> None:
        self.node, self.executor, self.process = node, executor, process
        self.actions: list[HumanAction] = []
        node.create_subscription(HumanAction, '/human_action', self.actions.append, RESULT_QOS)
        self.camera = node.create_publisher(Image, '/image', IMAGE_QOS['reliable'])
        self.frames = 0

    def call(self, srv_type, service: str, request):
        client = self.node.create_client(srv_type, f'{NODE}/{service}')
        try:
            assert spin_until(self.executor, client.service_is_ready, timeout=60,
                              process=self.process), \
                f'{service} not available:\n{self.process.output()}'
            future = client.call_async(request)
            assert spin_until(self.executor, future.done, timeout=30, process=self.process), \
                f'no answer from {service}:\n{self.process.output()}'
            return future.result()
        finally:
            self.node.destroy_client(client)

    def state(self) -> str:
        return self.call(GetState, 'get_state', GetState.Request()).current_state.label

    def change_state(self, *, id: int = 0, label: str = '') -> bool:
        request = ChangeState.Request(transition=Transition(id=id, label=label))
        return self.call(ChangeState, 'change_state', request).success

    def set(self, **values):
        """SetParameters, one result per value (name '__' stands for '.')."""
        request = SetParameters.Request(parameters=[
            Parameter(name.replace('__', '.'), value=value).to_parameter_msg()
            for name, value in values.items()])
        return self.call(SetParameters, 'set_parameters', request).results

    def set_atomically(self, values: dict):
        request = SetParametersAtomically.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return self.call(SetParametersAtomically, 'set_parameters_atomically', request).result

    def get(self, name: str):
        values = self.call(GetParameters, 'get_parameters',
                           GetParameters.Request(names=[name])).values
        return Parameter.from_parameter_msg(ParameterMsg(name=name, value=values[0])).value

    def publish(self, count: int) -> list[HumanAction]:
        """`count` sampled frames; the HumanAction they gave (one per frame)."""
        before = len(self.actions)
        for _ in range(count):
            rng = np.random.default_rng(self.frames)
            frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
            stamp = ns_to_time(BASE_NS + self.frames * PERIOD_NS)
            self.camera.publish(rgb_to_image(frame, header=Header(stamp=stamp, frame_id='cam')))
            self.frames += 1
            spin_until(self.executor, lambda: False, timeout=0.1)
        assert spin_until(self.executor, lambda: len(self.actions) >= before + count,
                          timeout=30, process=self.process), \
            f'{len(self.actions) - before} HumanAction for {count} frames:\n' \
            f'{self.process.output()}'
        return self.actions[before:]


@pytest.fixture(scope='module')
def running(tmp_path_factory, env, client):
    """An active node whose random head is trained on 2 s windows, run with 1 s windows; its
    decision stage starts nothing (min_confidence 0.99)."""
    tmp = tmp_path_factory.mktemp('node_params')
    params = tiny_params(tmp, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         **{'decision.min_confidence': 0.99})
    process = NodeProcess(['--params-file', str(params)], env=env, log=tmp / 'node.log')
    m = Client(*client, process)
    assert spin_until(m.executor, lambda: m.camera.get_subscription_count() > 0, timeout=90,
                      process=process), f'node never subscribed:\n{process.output()}'
    yield m, params
    process.stop()


def test_a_window_unlike_the_heads_is_one_ros_warning_with_the_fix(running):
    m, params = running
    config = PerceptionConfig.from_params(load_params_file(params))
    meta = read_meta(config.head_checkpoints[0])
    expected = window_mismatch(config, meta, config.head_checkpoints[0])
    assert 'set window_seconds to 2.0' in expected, expected
    lines = [line for line in m.process.output().splitlines() if 'window_seconds=1.0' in line]
    assert len(lines) == 1, m.process.output()
    assert lines[0].startswith('[WARN]') and '[perception_node]' in lines[0], lines
    assert lines[0].endswith(expected), (lines[0], expected)


def test_descriptions_say_which_parameters_are_live(running):
    m, _ = running
    names = ['top_k', 'decision.enter_threshold', 'num_frames', 'backbone.weights']
    descriptors = m.call(DescribeParameters, 'describe_parameters',
                         DescribeParameters.Request(names=names)).descriptors
    text = {d.name: d.description for d in descriptors}
    assert 'Live: `ros2 param set`' in text['top_k'], text
    assert 'Live: `ros2 param set`' in text['decision.enter_threshold'], text
    for name in ('num_frames', 'backbone.weights'):
        assert 'needs a restart: deactivate, cleanup, configure' in text[name], text


def test_live_parameters_apply_to_the_running_node(running):
    m, _ = running
    first = m.publish(T + 1)[T - 1:]
    assert [len(a.top_labels) for a in first] == [3, 3], first
    assert {a.state for a in first} == {'uncertain'}, first

    # A bad value is refused with the rule, and changes nothing.
    result, = m.set(decision__enter_threshold=1.0)
    assert not result.successful
    assert result.reason.startswith('decision.enter_threshold=1.0: must be in [0, 1)'), result
    result, = m.set(top_k=0)
    assert not result.successful and result.reason == 'top_k=0: must be >= 1', result
    result, = m.set(decision__smoothing_seconds='fast')
    assert not result.successful and "decision.smoothing_seconds='fast'" in result.reason
    assert m.get('decision.enter_threshold') == 0.5
    # Parameters that need a new configure are refused on a configured node.
    result, = m.set(num_frames=8)
    assert not result.successful, result
    assert result.reason == ('num_frames needs a restart: deactivate, cleanup, configure (set '
                             'it while unconfigured)'), result
    assert m.get('num_frames') == T

    # top_k and the decision stage change without a restart.
    result, = m.set(top_k=2)
    assert result.successful, result.reason
    eager = {'decision.smoothing_seconds': 0.0, 'decision.enter_threshold': 0.01,
             'decision.exit_threshold': 0.005, 'decision.min_dwell_seconds': 0.0,
             'decision.min_confidence': 0.0}
    result = m.set_atomically(eager)
    assert result.successful, result.reason
    later = m.publish(2)
    assert [len(a.top_labels) for a in later] == [2, 2], later
    assert [a.state for a in later] == ['active', 'active'], later
    assert all(a.frames == T for a in later), 'the window restarted: not applied live'
    output = m.process.output()
    assert 'parameters set: top_k=2' in output and 'Traceback' not in output, output
    assert output.count('[WARN]') >= 4 and 'parameter not set: num_frames needs a restart' in \
        output, output


def test_invalid_transitions_are_answered_and_the_node_goes_on(running):
    m, _ = running
    assert m.state() == 'active'
    requests = [dict(id=Transition.TRANSITION_CLEANUP), dict(id=99),
                dict(id=Transition.TRANSITION_CONFIGURE), dict(label='configure'),
                dict(label='no_such_transition'),
                dict(id=Transition.TRANSITION_CALLBACK_SUCCESS)]
    for request in requests:
        assert not m.change_state(**request), request
        assert m.process.running(), f'{request} ended the node:\n{m.process.output()}'
    assert m.state() == 'active'
    output = m.process.output()
    assert output.count("is not valid from state 'active'; valid: deactivate (id 4), "
                        'shutdown (id 7)') == len(requests), output
    assert "transition 'configure' is not valid" in output and 'transition id 99 is not' \
        in output, output
    assert 'RCLError' not in output and 'Traceback' not in output, output
    # Still working: frames give actions, and valid transitions (label or id) go through.
    assert len(m.publish(2)) == 2
    assert m.change_state(label='deactivate') and m.state() == 'inactive'
    assert not m.change_state(id=Transition.TRANSITION_DEACTIVATE)
    assert m.change_state(id=Transition.TRANSITION_ACTIVATE) and m.state() == 'active'


def test_a_restart_parameter_set_while_unconfigured_applies_at_configure(running):
    m, _ = running
    assert m.change_state(id=Transition.TRANSITION_DEACTIVATE)
    assert m.change_state(id=Transition.TRANSITION_CLEANUP) and m.state() == 'unconfigured'
    result, = m.set(num_frames=8)
    assert result.successful, result.reason
    # The head is trained on T=4: configure refuses it, naming the fix, and the node stays.
    assert not m.change_state(id=Transition.TRANSITION_CONFIGURE)
    assert m.state() == 'unconfigured'
    result, = m.set(num_frames=T)
    assert result.successful, result.reason
    assert m.change_state(id=Transition.TRANSITION_CONFIGURE) and m.state() == 'inactive'
    output = m.process.output()
    assert "cannot configure: num_frames=8 but head 'action' was trained on 4 frames" in \
        output and 'set num_frames to 4' in output, output



@pytest.mark.parametrize('namespace, values, expected', [
    ('/', {'heads.topics': ['/image']},
     "heads.topics=['/image']: '/image' and 'image' are both the topic '/image'; every input "
     'and output topic of the node must be a different one'),
    ('/robot', {'heads.topics': ['/robot/debug_image'], 'debug_image': True},
     "'/robot/debug_image' and 'debug_image' are both the topic '/robot/debug_image'"),
    ('/' + 'n' * 199, {'cameras': ['c' * 50]},  # the node's own services still fit
     f"cameras: '{'c' * 50}' gives the topic '{'c' * 50}/image', which is not a valid topic "
     "name (topic length should not exceed '255U - 8U')"),
    ('/', {'heads.topics': ['actions', 'bad{topic']},
     "heads.topics: 'bad{topic' gives the topic 'bad{topic', which is not a valid topic name"),
], ids=['absolute', 'namespaced', 'too-long', 'invalid'])
def test_topics_are_checked_in_the_nodes_namespace_at_configure(tmp_path, namespace, values,
                                                                 expected):
    from node_helpers import make_head, ros_client, ros_env

    from step_ros.ros.perception_node import PerceptionNode
    from step_ros.stream.config import ConfigError

    params = load_params_file(tiny_params(tmp_path, num_frames=T, autostart=False))
    if len(values.get('heads.topics', ())) == 2:
        params['heads.checkpoints'].append(str(make_head(
            tmp_path / 'object.safetensors', num_frames=T, task='object')))
    overrides = [Parameter(name, value=value) for name, value in {**params, **values}.items()]
    with ros_client(ros_env(), 'topic_check') as (client, _):
        node = PerceptionNode(context=client.context, parameter_overrides=overrides,
                              namespace=namespace)
        try:
            with pytest.raises(ConfigError) as info:
                node._read_config()
        finally:
            node.destroy_node()
    message = str(info.value)
    assert expected in message and '\n' not in message, message



def test_a_heads_fitted_decision_is_used_named_and_retuned_live(tmp_path, env):
    """A head whose checkpoint carries decision values fitted by train, and parameters without
    decision.*: the node decides with the fitted values, says so at start-up, and a live
    change applies to them (checked against the fitted enter_threshold, not the default)."""
    fitted = {'smoothing_seconds': 1.0, 'enter_threshold': 0.8, 'exit_threshold': 0.6,
              'min_dwell_seconds': 0.25, 'min_confidence': 0.0}
    head = make_head(tmp_path / 'fitted.safetensors', num_frames=T, decision=fitted,
                     window_seconds=1.0)
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         **{'heads.checkpoints': [str(head)]})
    # A domain of its own: the module's node (same name) runs on in `env`'s.
    own = ros_env()
    while own['ROS_DOMAIN_ID'] == env['ROS_DOMAIN_ID']:
        own = ros_env()
    with node_with_client(['--params-file', str(params)], env=own, log=tmp_path / 'node.log',
                          name='fitted_decision_test') as (node, executor, process):
        m = Client(node, executor, process)
        assert spin_until(m.executor, lambda: m.camera.get_subscription_count() > 0,
                          timeout=90, process=process), f'no subscription:\n{process.output()}'
        output = process.output()
        assert (f"head 'action' decides with parameters (fitted by train: {head}): "
                'smoothing_seconds 1, enter_threshold 0.8, exit_threshold 0.6, '
                'min_dwell_seconds 0.25, min_confidence 0') in output, output
        # 0.7 is above the default enter_threshold (0.5) but below the fitted one (0.8).
        result, = m.set(decision__exit_threshold=0.7)
        assert result.successful, result.reason
        result, = m.set(decision__exit_threshold=0.85)
        assert not result.successful
        assert result.reason == ('decision.exit_threshold=0.85: must be <= enter_threshold '
                                 '(0.8)'), result.reason

"""A camera that sent no image NO_IMAGES_WARN_S after activation is warned about once per
activation, naming its inputs and the topics that do have image publishers (a camera remapped to
another name shows there); a camera whose images arrive is never warned about."""

import re
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('lifecycle_msgs.srv', reason='lifecycle_msgs is not installed')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from node_helpers import node_with_client, spin_until, tiny_params  # noqa: E402,I001
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, NO_IMAGES_WARN_S, RESULT_QOS  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T: every published frame is sampled
BASE_NS = 7_000_000_000_000
FRAME = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
WARNING = re.compile(r'no images on (.+) (\S+) s after activation; publishers of '
                     r'sensor_msgs/msg/Image or CompressedImage: (.+)$', re.M)


def image(stamp_ns: int) -> Image:
    return rgb_to_image(FRAME, header=Header(stamp=ns_to_time(stamp_ns), frame_id='cam'))


def warnings(output: str) -> list[tuple[str, str]]:
    """(inputs, publishers) of each no-images warning in the node's log."""
    return [(m.group(1), m.group(3)) for m in WARNING.finditer(output)]


def readies(output: str) -> int:
    return output.count('ready: input')


def test_no_images_names_the_image_publishers_once_per_activation(env, tmp_path):
    params = tiny_params(tmp_path, num_frames=T, subscribe_compressed=True)
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='no_images_client') as (node, executor, perception):
        # The camera publishes on names the node does not listen on.
        wrong = node.create_publisher(Image, '/wrong/image_raw', IMAGE_QOS['reliable'])
        wrong_compressed = node.create_publisher(CompressedImage, '/wrong/compressed',
                                                 IMAGE_QOS['reliable'])
        change_state = node.create_client(ChangeState, '/perception_node/change_state')
        stamp = BASE_NS

        def until(predicate, timeout: float) -> bool:
            """Spin, the wrong camera sending every 0.1 s, until predicate() or the timeout."""
            nonlocal stamp
            deadline = time.monotonic() + timeout
            while not predicate() and time.monotonic() < deadline and perception.running():
                stamp += PERIOD_NS
                wrong.publish(image(stamp))
                wrong_compressed.publish(CompressedImage(
                    header=Header(stamp=ns_to_time(stamp)), format='jpeg', data=b'\xff\xd8'))
                executor.spin_once(timeout_sec=0.1)
            return predicate()

        def transition(transition_id: int) -> None:
            assert spin_until(executor, change_state.service_is_ready, timeout=30,
                              process=perception), perception.output()
            future = change_state.call_async(ChangeState.Request(
                transition=Transition(id=transition_id)))
            assert until(future.done, 60) and future.result().success, perception.output()

        assert until(lambda: warnings(perception.output()), 60 + NO_IMAGES_WARN_S), \
            perception.output()
        expected = ('/image or /image/compressed',
                    '/wrong/compressed (compressed), /wrong/image_raw')
        assert warnings(perception.output()) == [expected], perception.output()
        assert WARNING.search(perception.output()).group(2) == f'{NO_IMAGES_WARN_S:g}'

        # A new activation warns again, once.
        transition(Transition.TRANSITION_DEACTIVATE)
        transition(Transition.TRANSITION_ACTIVATE)
        assert until(lambda: len(warnings(perception.output())) == 2, 60 + NO_IMAGES_WARN_S), \
            perception.output()
        out = perception.output()
        assert readies(out) == 2 and out.rindex('ready: input') < out.rindex('no images on'), out
        seen = time.monotonic()
        until(lambda: time.monotonic() > seen + NO_IMAGES_WARN_S + 1.0, 2 * NO_IMAGES_WARN_S)
        assert warnings(perception.output()) == [expected] * 2, perception.output()
        assert perception.running(), perception.output()


class Camera:
    """The test's side of a camera input: frames sent one by one, each after the answer."""

    def __init__(self, node, executor, perception, prefix: str) -> None:
        self.executor, self.perception = executor, perception
        self.publisher = node.create_publisher(Image, f'{prefix}/image', IMAGE_QOS['reliable'])
        self.actions = []
        node.create_subscription(HumanAction, f'{prefix}/human_action', self.actions.append,
                                 RESULT_QOS)

    def until(self, predicate, timeout: float) -> bool:
        return spin_until(self.executor, predicate, timeout=timeout, process=self.perception)

    def stream_past_the_delay(self) -> None:
        """Frames from activation until NO_IMAGES_WARN_S + 1 s after it, each answered."""
        output = self.perception.output
        assert self.until(lambda: readies(output()) == 1 and
                          self.publisher.get_subscription_count() > 0, 180), output()
        active = time.monotonic()  # the node activated before this
        stamp = BASE_NS
        while time.monotonic() < active + NO_IMAGES_WARN_S + 1.0 or len(self.actions) < T:
            count = len(self.actions)
            self.publisher.publish(image(stamp))
            assert self.until(lambda: len(self.actions) > count, 30), (stamp, output())
            stamp += PERIOD_NS


def test_images_on_the_input_are_never_warned_about(env, tmp_path):
    params = tiny_params(tmp_path, num_frames=T, image_qos='reliable')
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='images_client') as (node, executor, perception):
        camera = Camera(node, executor, perception, '')
        camera.stream_past_the_delay()
        assert [a.state for a in camera.actions[:T - 1]] == ['warming_up'] * (T - 1)
        assert 'no images on' not in perception.output(), perception.output()


def test_only_the_silent_camera_is_warned_about(env, tmp_path):
    params = tiny_params(tmp_path, num_frames=T, image_qos='reliable',
                         cameras=['front', 'wrist'])
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='cameras_client') as (node, executor, perception):
        front = Camera(node, executor, perception, '/front')
        front.stream_past_the_delay()
        assert front.until(lambda: warnings(perception.output()), 30), perception.output()
        # The front camera is this test's only image publisher.
        assert warnings(perception.output()) == [('/wrist/image', '/front/image')], \
            perception.output()

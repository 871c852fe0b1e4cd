"""The audit's scenario against the real node process: a window restart (INFO) and a rejected
frame (WARN), in either order, must not stop the results (rclpy raises when one logging call site
sees two severities, which used to kill the inference thread)."""

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from node_helpers import node_with_client, ros_env, spin_until, tiny_params  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import ActionLabels, HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, LATCHED_QOS, RESULT_QOS  # noqa: E402

T = 4
PERIOD_NS = 250_000_000  # window_seconds 1.0 / T: every frame is sampled
BASE_NS = 5_000_000_000_000
LOOP_BACK_NS = 20_000_000_000  # a bag loop: the stamps go back 20 s


@pytest.mark.parametrize('order', ['restart_then_reject', 'reject_then_restart'])
def test_window_restart_and_rejected_frame_keep_results_coming(tmp_path, order):
    env = ros_env()
    params = tiny_params(tmp_path, num_frames=T, window_seconds=1.0, image_qos='reliable',
                         diagnostics_period=0.3)
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='restart_reject_client') as (node, executor, process):
        labels, actions, diagnostics = [], [], []
        node.create_subscription(ActionLabels, '/human_action/labels', labels.append,
                                 LATCHED_QOS)
        node.create_subscription(HumanAction, '/human_action', lambda m: actions.append(m)
                                 if m.state != HumanAction.STATE_WARMING_UP else None, RESULT_QOS)
        node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append,
                                 RESULT_QOS)
        camera = node.create_publisher(Image, '/image', IMAGE_QOS['reliable'])
        assert spin_until(executor, lambda: labels, timeout=60, process=process), \
            process.output()
        assert spin_until(executor, lambda: camera.get_subscription_count() > 0, timeout=20), \
            process.output()

        def publish(stamp_ns: int, *, bad: bool = False) -> None:
            header = Header(stamp=ns_to_time(stamp_ns), frame_id='cam')
            if bad:
                msg = Image(header=header, height=4, width=4, encoding='16UC1', step=8,
                            data=bytes(32))
            else:
                frame = np.random.default_rng(stamp_ns % 1000).integers(
                    0, 256, size=(48, 64, 3), dtype=np.uint8)
                msg = rgb_to_image(frame, header=header)
            camera.publish(msg)
            spin_until(executor, lambda: False, timeout=0.12)

        for i in range(T + 1):
            publish(BASE_NS + i * PERIOD_NS)
        assert spin_until(executor, lambda: actions, timeout=20, process=process), \
            f'no HumanAction before the restart:\n{process.output()}'

        looped = BASE_NS - LOOP_BACK_NS
        if order == 'restart_then_reject':
            publish(looped)  # INFO: window restarted
            publish(looped + PERIOD_NS // 2, bad=True)  # WARN: rejected
        else:
            publish(looped, bad=True)  # WARN: rejected (the stamps of a rejected frame
            publish(looped + PERIOD_NS // 2)  # are not used); then INFO: window restarted
        before = len(actions)
        for i in range(1, T + 3):
            publish(looped + PERIOD_NS // 2 + i * PERIOD_NS)
        assert spin_until(executor, lambda: len(actions) >= before + 2, timeout=20,
                          process=process), \
            f'{len(actions) - before} HumanAction after restart + rejection:\n{process.output()}'
        assert spin_until(executor, lambda: diagnostics, timeout=5), 'no diagnostics'
        status = diagnostics[-1].status[0]
        assert status.level != DiagnosticStatus.ERROR, status.message
        assert process.process.poll() is None, process.output()
    output = process.output()
    assert 'window restarted' in output and 'rejected image' in output, output
    assert 'Traceback' not in output and 'ValueError' not in output, output
    assert 'inference failed' not in output, output

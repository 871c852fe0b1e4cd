"""perception_node fed unusable images: counted, warned about (rate-limited), stays up."""

import struct
import zlib

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from node_helpers import node_with_client, ros_env, spin_until, tiny_params  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import ActionLabels, HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, LATCHED_QOS, RESULT_QOS  # noqa: E402

T = 4
BASE_NS = 2_000_000_000_000
STEP_NS = 125_000_000  # half the sampling period of 1.0 s / T


def _header(i: int) -> Header:
    return Header(stamp=ns_to_time(BASE_NS + i * STEP_NS), frame_id='cam')


def _raw(encoding: str, channels_bytes: int, i: int, *, extra: int = 0) -> Image:
    h, w = 6, 8
    return Image(header=_header(i), height=h, width=w, encoding=encoding,
                 step=w * channels_bytes, data=bytes(h * w * channels_bytes + extra))


def _compressed(fmt: str, data: bytes, i: int) -> CompressedImage:
    return CompressedImage(header=_header(i), format=fmt, data=data)


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + \
            struct.pack('>I', zlib.crc32(kind + body))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + \
        chunk(b'IDAT', zlib.compress(bytes(100_000))) + chunk(b'IEND', b'')


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real 80x60 JPEG whose frame header says width x height."""
    ok, data = cv2.imencode('.jpg', _frame(0))
    data = bytearray(data.tobytes())
    sof = data.find(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)


@pytest.fixture
def setup(tmp_path):
    env = ros_env()
    params = tiny_params(tmp_path, num_frames=T, subscribe_compressed=True,
                         image_qos='reliable', diagnostics_period=0.3)
    with node_with_client(['--params-file', str(params)], env=env, log=tmp_path / 'node.log',
                          name='bad_input_client') as started:
        yield started


def test_rejected_images_are_counted_and_the_node_keeps_working(setup):
    node, executor, process = setup
    labels, actions, diagnostics = [], [], []
    node.create_subscription(ActionLabels, '/human_action/labels', labels.append, LATCHED_QOS)
    node.create_subscription(HumanAction, '/human_action', actions.append, RESULT_QOS)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, RESULT_QOS)
    raw = node.create_publisher(Image, '/image', IMAGE_QOS['reliable'])
    compressed = node.create_publisher(CompressedImage, '/image/compressed',
                                       IMAGE_QOS['reliable'])
    assert spin_until(executor, lambda: labels, timeout=60, process=process), process.output()
    assert spin_until(executor, lambda: raw.get_subscription_count() > 0
                      and compressed.get_subscription_count() > 0, timeout=20), process.output()

    bad = [
        (raw, _raw('16UC1', 2, 0)),  # depth
        (raw, _raw('foo', 3, 1)),  # unknown encoding
        (raw, _raw('rgb8', 3, 2, extra=-5)),  # data shorter than height * step
        (compressed, _compressed('jpeg', b'\xff\xd8 not a jpeg at all', 3)),  # undecodable
        (compressed, _compressed('16UC1; compressedDepth', bytes(64), 4)),  # depth
        (raw, _raw('16UC1', 2, 5)),  # more of the same kind: counted, not warned again
        (raw, _raw('32FC1', 4, 6)),
        # Bombs: a few bytes declaring gigabytes, refused from the header (max_image_pixels).
        (compressed, _compressed('png', _png_declaring(12000, 12000), 7)),
        (compressed, _compressed('jpeg', _jpeg_with_size(30000, 30000), 8)),
        # Less data than the frame declares: libjpeg would fill the rest with grey.
        (compressed, _compressed('jpeg', _jpeg_with_size(640, 480), 9)),
    ]
    for publisher, msg in bad:
        publisher.publish(msg)
        spin_until(executor, lambda: False, timeout=0.15)

    def counts() -> dict:
        if not diagnostics:
            return {}
        return {kv.key: kv.value for kv in diagnostics[-1].status[0].values}

    want = {'rejected: encoding': '5', 'rejected: size': '3', 'rejected: data': '2',
            'rejected': '10'}
    assert spin_until(executor, lambda: want.items() <= counts().items(), timeout=10), \
        f'diagnostics {counts()}, expected {want}; node output:\n{process.output()}'
    assert process.process.poll() is None, process.output()

    # Good raw and jpeg frames after all that still give actions.
    for i in range(10, 10 + 12):
        if i % 2:
            ok, jpeg = cv2.imencode('.jpg', _frame(i)[..., ::-1])
            compressed.publish(_compressed('rgb8; jpeg compressed bgr8', jpeg.tobytes(), i))
        else:
            raw.publish(rgb_to_image(_frame(i), header=_header(i)))
        spin_until(executor, lambda: False, timeout=0.1)
    def decided() -> list:
        return [a for a in actions if a.state != 'warming_up']

    assert spin_until(executor, decided, timeout=20), \
        f'no HumanAction after good frames; diagnostics {counts()}:\n{process.output()}'
    assert decided()[0].frames == T

    assert process.stop() == 0
    warnings = [line for line in process.output().splitlines() if 'rejected image' in line]
    # One warning per kind within the rate limit (5 s), each naming the problem.
    assert len(warnings) == 3, '\n'.join(warnings)
    assert 'WARN' in warnings[0] and '16UC1' in warnings[0] and '(encoding' in warnings[0]
    assert any('(size' in w and 'bytes' in w for w in warnings), warnings
    assert any('(data' in w and 'undecodable' in w for w in warnings), warnings
    # OpenCV's and libjpeg's own lines stay out of the log: the rate-limited warnings are all.
    for words in ('imdecode', 'Corrupt JPEG', 'grfmt_', '[ WARN:', '[ERROR:'):
        assert words not in process.output(), process.output()

"""Images recorded on a real robot (ROS 1 bags, read with `rosbags`), through
step_ros.stream.decode."""

from pathlib import Path

import pytest

from step_ros.stream.decode import ImageRejected, decode_compressed, decode_raw

BAGS = Path(__file__).parents[1].parent / 'shared' / 'testdata' / 'real_bags'
pytestmark = pytest.mark.skipif(not (BAGS / 'raw.bag').is_file(),
                                reason=f'real camera bags not found in {BAGS}')


def _messages(name: str) -> dict:
    """{topic: deserialised message} of one bag (one message per topic)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = {}
    with AnyReader([BAGS / name], default_typestore=get_typestore(Stores.ROS1_NOETIC)) as reader:
        for connection, _, raw in reader.messages():
            out[connection.topic] = reader.deserialize(raw, connection.msgtype)
    return out


def _raw(msg):
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def test_raw_images():
    msgs = _messages('raw.bag')
    expected = {'/spot/camera/hand_color/image': ('rgb8', (480, 640, 3)),
                '/spot/camera/frontleft/image': ('mono8', (480, 640, 3)),
                '/spot/camera/hand_mono/image': ('mono8', (171, 224, 3))}
    for topic, (encoding, shape) in expected.items():
        msg = msgs[topic]
        assert msg.encoding == encoding, (topic, msg.encoding)
        image = _raw(msg)
        assert image.shape == shape and image.dtype.name == 'uint8', (topic, image.shape)
        assert image.std() > 1.0, f'{topic}: decoded to a flat image'
    depth = msgs['/spot/depth/frontleft/image']
    with pytest.raises(ImageRejected) as info:
        _raw(depth)
    assert info.value.kind == 'encoding' and '16UC1' in str(info.value)


def test_compressed_images():
    msgs = _messages('compressed.bag')
    raw = _messages('raw.bag')
    for topic, shape in (('/spot/camera/hand_color/image/compressed', (480, 640, 3)),
                         ('/spot/camera/frontleft/image/compressed', (480, 640, 3)),
                         ('/spot/camera/hand_mono/image/compressed', (171, 224, 3))):
        msg = msgs[topic]
        assert 'jpeg' in msg.format, (topic, msg.format)
        image = decode_compressed(msg.format, msg.data)
        assert image.shape == shape, (topic, image.shape)
        assert image.std() > 1.0, f'{topic}: decoded to a flat image'
    # The jpeg and the raw frame of the colour camera are the same scene in the same channel
    # order (a swapped BGR would move the mean colour a lot).
    jpeg = decode_compressed(msgs['/spot/camera/hand_color/image/compressed'].format,
                             msgs['/spot/camera/hand_color/image/compressed'].data)
    rgb = _raw(raw['/spot/camera/hand_color/image'])
    channel_means = jpeg.reshape(-1, 3).mean(0), rgb.reshape(-1, 3).mean(0)
    assert abs(channel_means[0] - channel_means[1]).max() < 15, channel_means
    depth = msgs['/spot/depth/frontleft/image/compressed']
    with pytest.raises(ImageRejected) as info:
        decode_compressed(depth.format, depth.data)
    assert info.value.kind == 'encoding', info.value


def test_compressed_depth_is_rejected():
    (msg,) = _messages('compressedDepth.bag').values()
    assert 'compressedDepth' in msg.format
    with pytest.raises(ImageRejected) as info:
        decode_compressed(msg.format, msg.data)
    assert info.value.kind == 'encoding' and 'depth' in str(info.value)

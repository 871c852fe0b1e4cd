"""Camera raw encodings (Bayer, 16-bit, nv12 / nv21) against conversions written here from the
formats' definitions, and against cv_bridge where it is importable."""

import numpy as np
import pytest

from step_ros.stream.decode import SUPPORTED_RAW, ImageRejected, check_raw, decode_raw
from step_ros.stream.raw_formats import SUPPORTED

RNG = np.random.default_rng(7)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """A Bayer mosaic by the ROS definition: `pattern` names the 2x2 cell row by row."""
    channel = {'r': 0, 'g': 1, 'b': 2}
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for i, letter in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[letter]]
    return out


def to8(values: np.ndarray) -> np.ndarray:
    """16 -> 8 bit as cv_bridge scales (x 255 / 65535, rounded)."""
    return np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('colour', [(200, 50, 10), (10, 220, 90), (30, 60, 250)])
def test_bayer8_flat_colour_demosaics_to_that_colour(pattern, colour):
    # Bilinear demosaicing of a flat colour gives the colour back at every pixel; a pattern
    # confused with another swaps red and blue or reads green for them.
    rgb = np.broadcast_to(np.array(colour, np.uint8), (6, 8, 3)).copy()
    data = mosaic(rgb, pattern)
    out = decode_raw(f'bayer_{pattern}8', 6, 8, 8, data.tobytes())
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('bigendian', [False, True])
def test_bayer16_flat_colour_scaled_to_8_bit(pattern, bigendian):
    colour = np.array([51400, 12850, 3000], np.uint16)
    rgb = np.broadcast_to(colour, (4, 6, 3)).copy()
    data = mosaic(rgb, pattern).astype('>u2' if bigendian else '<u2')
    out = decode_raw(f'bayer_{pattern}16', 4, 6, 12, data.tobytes(), is_bigendian=bigendian)
    np.testing.assert_array_equal(out, np.broadcast_to(to8(colour), (4, 6, 3)))
    assert tuple(out[0, 0]) == (200, 50, 12)


def test_bayer_gradient_interior_follows_the_scene():
    # A smooth scene: interior pixels of the demosaiced image are within a few levels of it.
    y, x = np.mgrid[0:16, 0:20]
    rgb = np.stack([40 + 8 * x, 200 - 6 * y, 30 + 3 * (x + y)], axis=2).astype(np.uint8)
    for pattern in ('rggb', 'bggr', 'gbrg', 'grbg'):
        out = decode_raw(f'bayer_{pattern}8', 16, 20, 20, mosaic(rgb, pattern).tobytes())
        error = np.abs(out.astype(int) - rgb.astype(int))[2:-2, 2:-2]
        assert error.max() <= 2, (pattern, error.max())


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_scaled_and_replicated(bigendian):
    grey = RNG.integers(0, 65536, size=(3, 5), dtype=np.uint16)
    grey[0, :3] = (0, 65535, 32896)  # 0, 255, 128 exactly
    data = grey.astype('>u2' if bigendian else '<u2')
    out = decode_raw('mono16', 3, 5, 10, data.tobytes(), is_bigendian=bigendian)
    np.testing.assert_array_equal(out, np.repeat(to8(grey)[..., None], 3, axis=2))
    assert tuple(out[0, :3, 0]) == (0, 255, 128)


@pytest.mark.parametrize('encoding, order', [
    ('rgb16', (0, 1, 2)), ('bgr16', (2, 1, 0)), ('rgba16', (0, 1, 2)), ('bgra16', (2, 1, 0))])
@pytest.mark.parametrize('bigendian', [False, True])
def test_colour16_channels_and_scaling(encoding, order, bigendian):
    channels = 4 if 'a' in encoding[3:] else 3
    samples = RNG.integers(0, 65536, size=(2, 3, channels), dtype=np.uint16)
    padded = np.zeros((2, 3 * channels + 2), dtype=np.uint16)  # step with padding
    padded[:, :3 * channels] = samples.reshape(2, -1)
    data = padded.astype('>u2' if bigendian else '<u2')
    step = padded.shape[1] * 2
    out = decode_raw(encoding, 2, 3, step, data.tobytes(), is_bigendian=bigendian)
    np.testing.assert_array_equal(out, to8(samples[..., list(order)]))


def yuv420_reference(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 video-range YUV -> RGB; chroma of each 2x2 block shared by its four pixels."""
    uu = np.repeat(np.repeat(u, 2, 0), 2, 1).astype(float) - 128
    vv = np.repeat(np.repeat(v, 2, 0), 2, 1).astype(float) - 128
    yy = 1.164 * (y.astype(float) - 16)
    rgb = np.stack([yy + 1.596 * vv, yy - 0.813 * vv - 0.391 * uu, yy + 2.018 * uu], axis=2)
    return np.clip(rgb, 0, 255)


@pytest.mark.parametrize('encoding', ['nv12', 'nv21'])
def test_nv12_nv21_against_bt601(encoding):
    h, w = 4, 6
    y = RNG.integers(16, 236, size=(h, w), dtype=np.uint8)
    u = RNG.integers(60, 200, size=(h // 2, w // 2), dtype=np.uint8)
    v = RNG.integers(60, 200, size=(h // 2, w // 2), dtype=np.uint8)
    first, second = (u, v) if encoding == 'nv12' else (v, u)
    chroma = np.stack([first, second], axis=2).reshape(h // 2, w)  # interleaved, half height
    data = np.concatenate([y, chroma])  # (h * 3 / 2, w)
    out = decode_raw(encoding, h, w, w, data.tobytes())
    assert out.shape == (h, w, 3)
    error = np.abs(out.astype(float) - yuv420_reference(y, u, v))
    assert error.max() <= 2, error.max()


@pytest.mark.parametrize('encoding, h, w, step, size, words', [
    ('bayer_rggb8', 4, 4, 4, 15, 'needs 16 bytes'),
    ('bayer_rggb16', 4, 4, 7, 28, 'smaller than'),
    ('bayer_rggb16', 4, 4, 9, 36, 'odd'),
    ('bayer_grbg8', 1, 4, 4, 4, '2x2'),
    ('mono16', 2, 3, 6, 11, 'needs 12 bytes'),
    ('rgba16', 2, 3, 23, 46, 'smaller than'),
    ('nv12', 4, 6, 6, 24, 'height x 1.5'),  # 4 rows, not 6
    ('nv21', 3, 6, 6, 27, 'even'),
    ('nv12', 4, 5, 5, 30, 'even'),
])
def test_size_checks_reject_before_any_pixel(encoding, h, w, step, size, words):
    with pytest.raises(ImageRejected) as info:
        check_raw(encoding, h, w, step, size)  # only the numbers: no data at all
    assert info.value.kind == 'size' and words in str(info.value), str(info.value)
    with pytest.raises(ImageRejected):
        decode_raw(encoding, h, w, step, bytes(size))


def test_every_new_encoding_is_advertised():
    assert set(SUPPORTED) <= set(SUPPORTED_RAW)
    with pytest.raises(ImageRejected) as info:
        check_raw('bayer_xyzw8', 2, 2, 2, 4)
    assert info.value.kind == 'encoding' and 'nv12' in str(info.value)


def _message(encoding: str, h: int, w: int):
    """A sensor_msgs/Image of random samples in `encoding`."""
    from sensor_msgs.msg import Image

    from step_ros.stream import raw_formats
    from step_ros.stream.decode import _RAW

    if encoding in raw_formats.FORMATS:
        fmt = raw_formats.FORMATS[encoding]
        step = w * fmt.channels * fmt.sample_bytes
        size = step * raw_formats.data_rows(fmt, h)
    else:
        step = w * _RAW[encoding][0]
        size = step * h
    data = RNG.integers(0, 256, size=size, dtype=np.uint8)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                 data=data.tobytes())


@pytest.mark.parametrize('encoding', SUPPORTED_RAW)
def test_decode_equals_cv_bridge(encoding):
    cv_bridge = pytest.importorskip(
        'cv_bridge', reason='cv_bridge is not on PyPI; this runs where ROS 2 is installed')
    msg = _message(encoding, 8, 12)
    try:
        reference = cv_bridge.CvBridge().imgmsg_to_cv2(msg, 'rgb8')
    except cv_bridge.CvBridgeError as exc:
        pytest.skip(f'this cv_bridge does not convert {encoding}: {exc}')
    out = decode_raw(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data),
                     is_bigendian=msg.is_bigendian)
    np.testing.assert_array_equal(out, reference)

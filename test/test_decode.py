"""Image decoding: every supported encoding to exact RGB, every rejected case with its kind."""

import cv2
import numpy as np
import pytest

from step_ros.decode import ImageRejected, decode_compressed, decode_raw

RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                [[10, 20, 30], [200, 100, 50], [0, 0, 0]]], dtype=np.uint8)  # (2, 3, 3)


@pytest.mark.parametrize('encoding, pixels', [
    ('rgb8', RGB),
    ('bgr8', RGB[..., ::-1]),
    ('rgba8', np.concatenate([RGB, np.full((2, 3, 1), 7, np.uint8)], axis=2)),
    ('bgra8', np.concatenate([RGB[..., ::-1], np.full((2, 3, 1), 7, np.uint8)], axis=2)),
])
def test_colour_encodings_give_rgb(encoding, pixels):
    h, w, c = pixels.shape
    out = decode_raw(encoding, h, w, w * c, pixels.tobytes())
    assert out.dtype == np.uint8 and out.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(out, RGB, err_msg=encoding)


def test_mono8_is_replicated_to_three_channels():
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    out = decode_raw('mono8', 1, 3, 3, grey.tobytes())
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_yuv422_grey():
    # UYVY: U Y0 V Y1; neutral chroma (128) gives grey, Y in BT.601 video range 16..235.
    data = np.array([128, 60, 128, 200], dtype=np.uint8).tobytes()
    out = decode_raw('yuv422', 1, 2, 4, data)
    assert out.shape == (1, 2, 3)
    expected = np.array([(60 - 16) * 255 / 219, (200 - 16) * 255 / 219])  # 51.2, 214.2
    assert np.abs(out[0].astype(float) - expected[:, None]).max() <= 2, out


def test_row_padding_is_dropped():
    h, w = RGB.shape[:2]
    padded = np.zeros((h, w * 3 + 5), dtype=np.uint8)  # step > width * 3
    padded[:, :w * 3] = RGB.reshape(h, -1)
    np.testing.assert_array_equal(decode_raw('rgb8', h, w, w * 3 + 5, padded.tobytes()), RGB)


@pytest.mark.parametrize('args, kind, words', [
    (('16UC1', 2, 2, 4, bytes(8)), 'encoding', '16UC1'),
    (('32FC1', 2, 2, 8, bytes(16)), 'encoding', '32FC1'),
    (('yuv411', 2, 4, 6, bytes(12)), 'encoding', 'yuv411'),
    (('rgb8', 2, 2, 6, bytes(11)), 'size', '12 bytes, got 11'),
    (('rgb8', 0, 2, 6, b''), 'size', 'empty'),
    (('rgb8', 2, 2, 4, bytes(8)), 'size', 'step 4'),
    (('yuv422', 2, 3, 6, bytes(12)), 'size', 'even width'),  # odd width: chroma pairs broken
    (('yuyv', 1, 5, 10, bytes(10)), 'size', 'even width'),
])
def test_raw_rejections(args, kind, words):
    with pytest.raises(ImageRejected) as info:
        decode_raw(*args)
    assert info.value.kind == kind and words in str(info.value), (info.value.kind, info.value)


@pytest.mark.parametrize('ext, fmt', [('.jpg', 'jpeg'), ('.png', 'png'),
                                      ('.jpg', 'rgb8; jpeg compressed bgr8')])
def test_compressed_colour(ext, fmt):
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    image[:, :16] = (200, 30, 30)  # RGB: red left half
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    out = decode_compressed(fmt, data.tobytes())
    assert out.shape == (24, 32, 3)
    left, right = out[4:-4, 2:12].reshape(-1, 3).mean(0), out[4:-4, 20:30].reshape(-1, 3).mean(0)
    assert np.abs(left - (200, 30, 30)).max() <= 12, f'channel order or values wrong: {left}'
    assert np.abs(right).max() <= 12, right


def test_compressed_mono_is_rgb():
    ok, data = cv2.imencode('.png', np.full((5, 7), 90, dtype=np.uint8))
    out = decode_compressed('mono8; png compressed', data.tobytes())
    assert out.shape == (5, 7, 3) and (out == 90).all()


@pytest.mark.parametrize('fmt, data, kind', [
    ('16UC1; compressedDepth', bytes(64), 'encoding'),
    ('32FC1; compressedDepth png', bytes(64), 'encoding'),
    ('tiff', bytes(64), 'encoding'),
    ('jpeg', b'\xff\xd8 this is not a jpeg', 'data'),
    ('png', b'', 'data'),
])
def test_compressed_rejections(fmt, data, kind):
    with pytest.raises(ImageRejected) as info:
        decode_compressed(fmt, data)
    assert info.value.kind == kind, (fmt, info.value)


def test_sixteen_bit_png_is_rejected():
    ok, data = cv2.imencode('.png', np.full((4, 4), 1000, dtype=np.uint16))
    with pytest.raises(ImageRejected) as info:
        decode_compressed('png', data.tobytes())
    assert info.value.kind == 'encoding' and 'uint16' in str(info.value)

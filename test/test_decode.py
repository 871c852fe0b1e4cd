"""Image decoding: every supported encoding to exact RGB, every rejected case with its kind."""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from step_ros.stream.decode import ImageRejected, decode_compressed, decode_raw

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


def _png_declaring(width: int, height: int, *, rows: bytes = b'') -> bytes:
    """A PNG whose IHDR declares width x height (RGB), with `rows` as its compressed data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + \
            struct.pack('>I', zlib.crc32(kind + body))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', rows) + \
        chunk(b'IEND', b'')


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF) is rewritten to declare width x height."""
    ok, data = cv2.imencode('.jpg', np.random.default_rng(0).integers(0, 256, (48, 64, 3),
                                                                       dtype=np.uint8))
    data = bytearray(data.tobytes())
    sof = data.find(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


@pytest.mark.parametrize('fmt, data, words', [
    ('png', _png_declaring(12000, 12000), 'png declaring 12000x12000'),
    ('jpeg', _jpeg_declaring(30000, 30000), 'jpeg declaring 30000x30000'),
    ('jpeg', _jpeg_declaring(5000, 2401), 'jpeg declaring 5000x2401'),  # 1 pixel over
], ids=['png-12000x12000', 'jpeg-30000x30000', 'jpeg-just-over'])
def test_bombs_are_refused_from_the_declared_size(fmt, data, words):
    with pytest.raises(ImageRejected) as info:
        decode_compressed(fmt, data, max_pixels=12_000_000)
    assert info.value.kind == 'size' and words in str(info.value), info.value
    assert 'max_image_pixels=12000000' in str(info.value), info.value


def test_a_frame_at_the_limit_is_decoded_and_a_raw_one_above_is_refused():
    ok, data = cv2.imencode('.png', np.zeros((20, 30, 3), np.uint8))
    assert decode_compressed('png', data.tobytes(), max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageRejected) as info:
        decode_compressed('png', data.tobytes(), max_pixels=599)
    assert info.value.kind == 'size'
    with pytest.raises(ImageRejected) as info:
        decode_raw('rgb8', 20, 30, 90, bytes(1800), max_pixels=599)
    assert info.value.kind == 'size' and 'max_image_pixels=599' in str(info.value)


def test_a_bomb_does_not_take_memory(tmp_path):
    """In a fresh process, so that its peak RSS is this decode's: a 12000x12000 PNG whose data
    is all there (432 MB of RGB when decoded) is refused before OpenCV allocates it."""
    bomb = tmp_path / 'bomb.png'
    packer = zlib.compressobj(9)
    row = bytes(1 + 12000 * 3)  # filter byte + RGB
    rows = b''.join(packer.compress(row) for _ in range(12000)) + packer.flush()
    bomb.write_bytes(_png_declaring(12000, 12000, rows=rows))
    script = (
        'import resource, sys\n'
        'from step_ros.stream.decode import ImageRejected, decode_compressed\n'
        'data = open(sys.argv[1], "rb").read()\n'
        'before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
        'try:\n'
        '    decode_compressed("png", data)\n'
        '    print("decoded")\n'
        'except ImageRejected as exc:\n'
        '    print("rejected", exc.kind)\n'
        'print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n')
    out = subprocess.run([sys.executable, '-c', script, str(bomb)], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).parents[1])
    verdict, grown_mb = out.stdout.split('\n')[:2]
    assert verdict == 'rejected size', out.stdout + out.stderr
    assert int(grown_mb) < 50, f'peak RSS grew by {grown_mb} MB'


def test_a_jpeg_with_less_data_than_its_frame_declares_is_rejected(capfd):
    """libjpeg fills the missing part with grey and only says so on stderr; OpenCV returns the
    image. It must count as rejected, and the warning must not reach the output."""
    data = _jpeg_declaring(640, 480)  # 48x64 worth of data for 480x640
    with pytest.raises(ImageRejected) as info:
        decode_compressed('jpeg', data)
    assert info.value.kind == 'data' and 'Corrupt JPEG data' in str(info.value), info.value
    captured = capfd.readouterr()
    assert 'Corrupt JPEG' not in captured.err + captured.out, captured


@pytest.mark.parametrize('fmt, data', [
    ('jpeg', b'\xff\xd8 not a jpeg at all'),
    ('png', b'\x89PNG\r\n\x1a\n garbage garbage'),
    ('jpeg', _jpeg_declaring(64, 48)[:700]),  # cut inside the image data
    ('png', _png_declaring(30, 20, rows=zlib.compress(bytes(10 * 91)))),  # rows missing
])
def test_undecodable_data_is_rejected_without_opencv_output(capfd, fmt, data):
    with pytest.raises(ImageRejected) as info:
        decode_compressed(fmt, data)
    assert info.value.kind == 'data', info.value
    captured = capfd.readouterr()
    assert captured.err == '' and captured.out == '', captured


def test_other_output_during_a_decode_is_passed_on(capfd):
    """Only codec messages are held back while a frame decodes; nothing else is lost."""
    import step_ros.stream.decode as decode

    with decode._native_stderr() as lines:
        os.write(2, b'a line of someone else\n')
    assert lines == ['a line of someone else']
    assert capfd.readouterr().err == 'a line of someone else\n'


def test_large_frames_are_resized_before_conversion_to_float():
    """Peak memory of preprocessing follows the model input: no float copy of the whole frame
    (a 2000x2000 crop in float is 48 MB; the largest float tensor allowed here is 6 MB)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from step_ros.model.backbone import FrozenBackbone

    backbone = FrozenBackbone.load('tiny')
    frames = torch.zeros((1, 2000, 2600, 3), dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        pixels = backbone.preprocess(frames)
    assert pixels.shape == (1, 3, 112, 112)
    largest = max(e.cpu_memory_usage for e in prof.events())  # one call each
    assert largest < 6_000_000, f'an op allocated {largest / 1e6:.0f} MB'

"""Camera image decoding without ROS: raw sensor_msgs/Image fields and compressed bytes -> RGB.

Used by the node and by the bag tools alike, so a frame decodes the same live and offline.
Anything that is not a colour or mono camera image raises `ImageRejected` with the reason.

Memory stays bounded whatever a message declares: a frame above `max_pixels` is refused from
its fields (raw) or from the size its PNG / JPEG header declares, before anything is allocated.
OpenCV's own log lines are silenced (the caller reports rejections, rate-limited), and libjpeg's
warnings about corrupt data, which OpenCV ignores, make the frame rejected instead of used.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

import cv2
import numpy as np

from step_ros.stream import raw_formats
from step_ros.stream.image_header import HeaderError, declared_size

# 4K UHD is 8.3 MP and common 12 MP machine-vision sensors fit; a decoded frame of this size is
# 36 MB of RGB.
DEFAULT_MAX_PIXELS = 12_000_000
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class ImageRejected(ValueError):
    """The image cannot be used; `kind` groups reasons for counting and rate-limited warnings."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# encoding -> (channels, conversion to RGB or None)
_RAW = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    'yuv422': (2, cv2.COLOR_YUV2RGB_UYVY),  # ROS 'yuv422' is UYVY byte order
    'uyvy': (2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, cv2.COLOR_YUV2RGB_YUY2),
    'yuyv': (2, cv2.COLOR_YUV2RGB_YUY2),
}
SUPPORTED_RAW = tuple(_RAW) + raw_formats.SUPPORTED  # the camera formats: raw_formats.py


def check_raw(encoding: str, height: int, width: int, step: int, size: int, *,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap checks of sensor_msgs/Image fields (no pixel is touched); raises ImageRejected."""
    enc = encoding.lower()
    if enc not in _RAW and enc not in raw_formats.FORMATS:
        raise ImageRejected('encoding', f'unsupported encoding {encoding!r} (supported: '
                            f"{', '.join(SUPPORTED_RAW)})")
    if height <= 0 or width <= 0:
        raise ImageRejected('size', f'empty image {width}x{height}')
    _check_pixels(width, height, max_pixels, encoding)
    if enc in raw_formats.FORMATS:
        try:
            return raw_formats.check(enc, height, width, step, size)
        except raw_formats.FormatError as exc:
            raise ImageRejected(exc.kind, str(exc)) from exc
    channels = _RAW[enc][0]
    if channels == 2 and width % 2:
        raise ImageRejected('size', f'{encoding} needs an even width (pixel pairs share '
                            f'chroma), got {width}')
    row = width * channels
    if step < row:
        raise ImageRejected('size', f'step {step} is smaller than width*channels {row}')
    if size != step * height:
        raise ImageRejected('size', f'{encoding} {width}x{height} step {step} needs '
                            f'{step * height} bytes, got {size}')


def decode_raw(encoding: str, height: int, width: int, step: int, data, *,
               is_bigendian: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image fields -> contiguous RGB uint8 (H, W, 3)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    check_raw(encoding, height, width, step, buffer.size, max_pixels=max_pixels)
    if encoding.lower() in raw_formats.FORMATS:
        try:
            return raw_formats.decode(encoding, height, width, step, buffer,
                                      is_bigendian=bool(is_bigendian))
        except raw_formats.FormatError as exc:
            raise ImageRejected(exc.kind, str(exc)) from exc
    channels, conversion = _RAW[encoding.lower()]
    image = buffer.reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(image)
    if channels == 1:
        image = image[:, :, 0]
    try:
        return cv2.cvtColor(image, conversion)
    except cv2.error as exc:  # whatever the checks above did not foresee: reject, never crash
        raise ImageRejected('data', f'{encoding} {width}x{height} cannot be converted: '
                            f'{exc.err or exc}') from exc


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise ImageRejected('size', f'{what} {width}x{height} is {width * height} pixels, more '
                            f'than max_image_pixels={max_pixels}')


def check_compressed(fmt: str, data, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap checks of sensor_msgs/CompressedImage: format string, and the size its PNG / JPEG
    header declares (no pixel is decoded); raises ImageRejected."""
    lowered = fmt.lower()
    if 'compresseddepth' in lowered or '16uc1' in lowered or '32fc1' in lowered:
        raise ImageRejected('encoding', f'depth image {fmt!r} is not a camera image')
    if lowered and not any(k in lowered for k in ('jpeg', 'jpg', 'png')):
        raise ImageRejected('encoding', f'unsupported compressed format {fmt!r} (jpeg, png)')
    if len(data) == 0:
        raise ImageRejected('data', 'empty compressed image')
    try:
        kind, width, height = declared_size(bytes(data[:65536]))
    except HeaderError as exc:
        raise ImageRejected('data', f'undecodable {fmt or "compressed"} data ({len(data)} '
                            f'bytes): {exc}') from exc
    if width == 0 or height == 0:
        raise ImageRejected('size', f'{kind} declares an empty image {width}x{height}')
    _check_pixels(width, height, max_pixels, f'{kind} declaring')


def decode_compressed(fmt: str, data, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (format, data) -> RGB uint8 (H, W, 3)."""
    check_compressed(fmt, data, max_pixels=max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    with _native_stderr() as captured:
        try:
            image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            image = None
    corrupt = [line for line in captured if _is_codec_message(line)]
    if image is None or corrupt:
        reason = f': {corrupt[0]}' if corrupt else ''
        raise ImageRejected('data', f'undecodable {fmt or "compressed"} data '
                            f'({buffer.size} bytes){reason}')
    if image.dtype != np.uint8:
        raise ImageRejected('encoding', f'{fmt!r} decodes to {image.dtype}, not 8-bit colour')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_message(msg, *, compressed: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap checks of a sensor_msgs Image / CompressedImage (rclpy or rosbags object)."""
    if compressed:
        check_compressed(msg.format, msg.data, max_pixels=max_pixels)
    else:
        check_raw(msg.encoding, msg.height, msg.width, msg.step, len(msg.data),
                  max_pixels=max_pixels)


def decode_message(msg, *, compressed: bool, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> np.ndarray:
    """A sensor_msgs Image / CompressedImage (rclpy or rosbags object) -> RGB uint8 (H, W, 3)."""
    if compressed:
        return decode_compressed(msg.format, msg.data, max_pixels=max_pixels)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                      is_bigendian=bool(getattr(msg, 'is_bigendian', 0)), max_pixels=max_pixels)


# libjpeg reports corrupt data (e.g. 'Corrupt JPEG data: premature end of data segment' when the
# data ends before the frame its header declares) as a warning printed on the process's stderr,
# and OpenCV returns the partly decoded image as if it were whole. The only way to hear of it is
# that stderr: while a frame decodes, file descriptor 2 goes to a scratch file; codec lines mark
# the frame as corrupt, anything else (another thread's output) is passed on to the real stderr.
_CODEC_PREFIXES = ('Corrupt JPEG data', 'Premature end of JPEG', 'Invalid JPEG', 'Bogus ',
                   'libpng ', '[ WARN:', '[ERROR:')
_stderr_lock = threading.Lock()
_scratch = None  # one scratch file for the process, reused under the lock


def _is_codec_message(line: str) -> bool:
    return line.startswith(_CODEC_PREFIXES)


@contextlib.contextmanager
def _native_stderr():
    """Yield a list that receives, on exit, the lines codecs printed meanwhile on fd 2."""
    global _scratch
    lines: list[str] = []
    with _stderr_lock:
        if _scratch is None:
            _scratch = tempfile.TemporaryFile()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(_scratch.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            size = os.lseek(_scratch.fileno(), 0, os.SEEK_END)
            text = os.pread(_scratch.fileno(), size, 0).decode(errors='replace') if size else ''
            os.ftruncate(_scratch.fileno(), 0)
            os.lseek(_scratch.fileno(), 0, os.SEEK_SET)
            lines.extend(line for line in text.splitlines() if line)
            others = [line for line in lines if not _is_codec_message(line)]
            if others:
                os.write(2, ('\n'.join(others) + '\n').encode())

"""Camera image decoding without ROS: raw sensor_msgs/Image fields and compressed bytes -> RGB.

Used by the node and by the bag tools alike, so a frame decodes the same live and offline.
Anything that is not a colour or mono camera image raises `ImageRejected` with the reason.
"""

from __future__ import annotations

import cv2
import numpy as np

from step_ros import raw_formats


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


def check_raw(encoding: str, height: int, width: int, step: int, size: int) -> None:
    """Cheap checks of sensor_msgs/Image fields (no pixel is touched); raises ImageRejected."""
    enc = encoding.lower()
    if enc not in _RAW and enc not in raw_formats.FORMATS:
        raise ImageRejected('encoding', f'unsupported encoding {encoding!r} (supported: '
                            f"{', '.join(SUPPORTED_RAW)})")
    if height <= 0 or width <= 0:
        raise ImageRejected('size', f'empty image {width}x{height}')
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
               is_bigendian: bool = False) -> np.ndarray:
    """sensor_msgs/Image fields -> contiguous RGB uint8 (H, W, 3)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    check_raw(encoding, height, width, step, buffer.size)
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


def check_compressed(fmt: str, size: int) -> None:
    """Cheap checks of sensor_msgs/CompressedImage (format string, size); raises ImageRejected."""
    lowered = fmt.lower()
    if 'compresseddepth' in lowered or '16uc1' in lowered or '32fc1' in lowered:
        raise ImageRejected('encoding', f'depth image {fmt!r} is not a camera image')
    if lowered and not any(k in lowered for k in ('jpeg', 'jpg', 'png')):
        raise ImageRejected('encoding', f'unsupported compressed format {fmt!r} (jpeg, png)')
    if size == 0:
        raise ImageRejected('data', 'empty compressed image')


def decode_compressed(fmt: str, data) -> np.ndarray:
    """sensor_msgs/CompressedImage (format, data) -> RGB uint8 (H, W, 3)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    check_compressed(fmt, buffer.size)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        raise ImageRejected('data', f'undecodable {fmt or "compressed"} data '
                            f'({buffer.size} bytes)')
    if image.dtype != np.uint8:
        raise ImageRejected('encoding', f'{fmt!r} decodes to {image.dtype}, not 8-bit colour')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_message(msg, *, compressed: bool) -> None:
    """Cheap checks of a sensor_msgs Image / CompressedImage (rclpy or rosbags object)."""
    if compressed:
        check_compressed(msg.format, len(msg.data))
    else:
        check_raw(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))


def decode_message(msg, *, compressed: bool) -> np.ndarray:
    """A sensor_msgs Image / CompressedImage (rclpy or rosbags object) -> RGB uint8 (H, W, 3)."""
    if compressed:
        return decode_compressed(msg.format, msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                      is_bigendian=bool(getattr(msg, 'is_bigendian', 0)))

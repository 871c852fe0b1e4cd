"""The raw encodings industrial cameras publish, converted to RGB uint8 as cv_bridge does.

Bayer mosaics (8 and 16 bit), 16-bit mono / colour (scaled to 8 bits with 255 / 65535, as
`cv_bridge.imgmsg_to_cv2(msg, 'rgb8')` scales) and the semi-planar YUV 4:2:0 layouts nv12 /
nv21, whose data holds `height * 3 / 2` rows: the luma plane, then interleaved chroma at half
resolution. `step_ros.stream.decode` dispatches here for these encodings; the cheap checks
(`check`) look at the message fields only and run before any pixel is touched.

OpenCV names a Bayer pattern by the second row's first two pixels, so ROS `bayer_rggb8` (first
row R G, second row G B) is OpenCV's `BayerBG`: the table below is cv_bridge's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class FormatError(ValueError):
    """The fields do not describe a valid image of this encoding; `kind` is 'size' or 'data'."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class RawFormat:
    channels: int  # samples per pixel in a data row (1 for Bayer and the luma plane of nv12)
    sample_bytes: int  # 1 or 2
    conversion: int | None  # OpenCV code to RGB, None: the samples are RGB already
    planar_420: bool = False  # nv12 / nv21: height * 3 / 2 rows, even width and height
    bayer: bool = False  # a colour mosaic: demosaicing needs at least one 2x2 cell


def _bayer(code: int, sample_bytes: int) -> RawFormat:
    return RawFormat(1, sample_bytes, code, bayer=True)


FORMATS: dict[str, RawFormat] = {
    # ROS pattern -> OpenCV code (cv_bridge's getConversionCodes table)
    **{f'bayer_rggb{b}': _bayer(cv2.COLOR_BayerBG2RGB, b // 8) for b in (8, 16)},
    **{f'bayer_bggr{b}': _bayer(cv2.COLOR_BayerRG2RGB, b // 8) for b in (8, 16)},
    **{f'bayer_gbrg{b}': _bayer(cv2.COLOR_BayerGR2RGB, b // 8) for b in (8, 16)},
    **{f'bayer_grbg{b}': _bayer(cv2.COLOR_BayerGB2RGB, b // 8) for b in (8, 16)},
    'mono16': RawFormat(1, 2, cv2.COLOR_GRAY2RGB),
    'rgb16': RawFormat(3, 2, None),
    'bgr16': RawFormat(3, 2, cv2.COLOR_BGR2RGB),
    'rgba16': RawFormat(4, 2, cv2.COLOR_RGBA2RGB),
    'bgra16': RawFormat(4, 2, cv2.COLOR_BGRA2RGB),
    'nv12': RawFormat(1, 1, cv2.COLOR_YUV2RGB_NV12, planar_420=True),
    'nv21': RawFormat(1, 1, cv2.COLOR_YUV2RGB_NV21, planar_420=True),
}
SUPPORTED = tuple(FORMATS)


def data_rows(fmt: RawFormat, height: int) -> int:
    """Rows of `step` bytes the data holds for an image `height` pixels high."""
    return height * 3 // 2 if fmt.planar_420 else height


def check(encoding: str, height: int, width: int, step: int, size: int) -> None:
    """Field checks of one of FORMATS (no pixel is touched); raises FormatError."""
    fmt = FORMATS[encoding.lower()]
    if fmt.planar_420 and (width % 2 or height % 2):
        raise FormatError('size', f'{encoding} needs an even width and height (2x2 pixels share '
                          f'chroma), got {width}x{height}')
    if fmt.bayer and (width < 2 or height < 2):
        raise FormatError('size', f'{encoding} needs at least 2x2 pixels (one Bayer cell), got '
                          f'{width}x{height}')
    row = width * fmt.channels * fmt.sample_bytes
    if step < row:
        raise FormatError('size', f'step {step} is smaller than width*channels*bytes {row}')
    if fmt.sample_bytes == 2 and step % 2:
        raise FormatError('size', f'{encoding} step {step} is odd: rows of 16-bit samples')
    rows = data_rows(fmt, height)
    if size != step * rows:
        what = f'{rows} rows (height x 1.5)' if fmt.planar_420 else f'{rows} rows'
        raise FormatError('size', f'{encoding} {width}x{height} step {step} needs '
                          f'{step * rows} bytes ({what}), got {size}')


def decode(encoding: str, height: int, width: int, step: int, buffer: np.ndarray, *,
           is_bigendian: bool = False) -> np.ndarray:
    """uint8 data of a checked image -> contiguous RGB uint8 (H, W, 3)."""
    fmt = FORMATS[encoding.lower()]
    check(encoding, height, width, step, buffer.size)
    rows = buffer.reshape(data_rows(fmt, height), step)
    row = width * fmt.channels * fmt.sample_bytes
    samples = rows[:, :row]
    if fmt.sample_bytes == 2:
        # The message's byte order -> native uint16 (OpenCV works on native samples only).
        samples = np.ascontiguousarray(samples).view('>u2' if is_bigendian else '<u2')
        samples = samples.astype(np.uint16)
    image = samples.reshape(samples.shape[0], width, fmt.channels)
    if fmt.channels == 1:
        image = image[:, :, 0]
    image = np.ascontiguousarray(image)
    try:
        rgb = image if fmt.conversion is None else cv2.cvtColor(image, fmt.conversion)
    except cv2.error as exc:  # whatever the checks did not foresee: reject, never crash
        raise FormatError('data', f'{encoding} {width}x{height} cannot be converted: '
                          f'{exc.err or exc}') from exc
    if rgb.dtype == np.uint16:
        # cv_bridge's 16 -> 8 bit scaling: round(v * 255 / 65535) = round(v / 257)
        rgb = np.rint(rgb * np.float32(255.0 / 65535.0)).astype(np.uint8)
    return np.ascontiguousarray(rgb)

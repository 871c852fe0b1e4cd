"""The size a PNG or JPEG declares, read from its header without decoding any pixel.

A decoder allocates the declared width x height before it looks at the data, so a few kilobytes
can declare gigabytes: the caller compares this size with its limit first.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
JPEG_SOI = b'\xff\xd8'
# Start-of-frame markers (baseline, progressive, lossless, arithmetic): all but DHT (C4),
# JPG (C8) and DAC (CC) in C0..CF.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field
_SOS = 0xDA


class HeaderError(ValueError):
    """The data is not a PNG or JPEG, or its header is cut or malformed."""


def kind_of(data: bytes) -> str | None:
    """'png', 'jpeg', or None for anything else (by the magic bytes)."""
    if data[:8] == PNG_SIGNATURE:
        return 'png'
    if data[:2] == JPEG_SOI:
        return 'jpeg'
    return None


def declared_size(data: bytes) -> tuple[str, int, int]:
    """(kind, width, height) a PNG or JPEG declares; raises HeaderError."""
    kind = kind_of(data)
    if kind == 'png':
        return kind, *_png_size(data)
    if kind == 'jpeg':
        return kind, *_jpeg_size(data)
    raise HeaderError(f'neither PNG nor JPEG (starts with {bytes(data[:8])!r})')


def _png_size(data: bytes) -> tuple[int, int]:
    # signature, then the IHDR chunk: length (4), b'IHDR', width (4), height (4), ...
    if len(data) < 24 or data[12:16] != b'IHDR':
        raise HeaderError('PNG without an IHDR chunk first')
    width, height = struct.unpack('>II', data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments from SOI to the first SOF (before any entropy-coded data)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise HeaderError(f'JPEG marker expected at byte {i}')
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == _SOS or marker == 0xD9:
            break  # scan data or end of image before any frame header
        (length,) = struct.unpack('>H', data[i + 2:i + 4])
        if length < 2:
            raise HeaderError(f'JPEG segment of length {length} at byte {i}')
        if marker in _SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack('>HH', data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise HeaderError('JPEG without a frame header (SOF) before its image data')

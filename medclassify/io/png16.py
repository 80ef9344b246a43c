"""A small PNG decoder for the 16-bit colour PNGs that Pillow reduces to 8 bits.

Pillow opens 16-bit RGB, RGBA and grey+alpha PNGs as 8-bit images, which would silently lose
the depth that the readers promise to keep. This decoder handles exactly those (non-interlaced)
files: it inflates the IDAT stream and undoes the per-row filters of the PNG specification
(W3C PNG, 2nd ed., section 9 "Filtering"). Rows with the None, Sub and Up filters are undone with
NumPy; Average and Paeth depend on the previous pixel and run byte by byte.
"""

import struct
import zlib

import numpy as np

from .base import ReadError, read_bytes

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def read_png_chunks(data):
    """IHDR fields and the concatenated IDAT payload of a PNG byte string."""
    if not data.startswith(_SIGNATURE):
        raise ReadError("undecodable", "not a PNG file")
    position, header, idat = len(_SIGNATURE), None, []
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        payload = data[position + 8:position + 8 + length]
        if len(payload) < length:
            raise ReadError("undecodable", f"PNG chunk {kind.decode('latin-1')} is truncated")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        position += 12 + length
    if header is None or not idat:
        raise ReadError("undecodable", "PNG without IHDR or image data")
    return header, b"".join(idat)


def decode_png16(source):
    """Decode a 16-bit, non-interlaced PNG of any colour type into a native uint16 array.

    ``source`` is a path or a binary file (see :func:`medclassify.io.base.read_bytes`).
    """
    data = read_bytes(source)
    (width, height, bit_depth, colour_type, _, _, interlace), compressed = read_png_chunks(data)
    if bit_depth != 16 or colour_type not in _CHANNELS:
        raise ReadError("unsupported_image", f"decode_png16 reads 16-bit PNGs, not bit depth {bit_depth}")
    if interlace:
        raise ReadError("unsupported_image", "interlaced 16-bit colour PNG; save it without interlacing or as TIFF")
    if not width or not height:  # and a max_length of 0 would inflate without limit
        raise ReadError("undecodable", f"PNG header gives a size of {width}×{height} pixels")
    channels = _CHANNELS[colour_type]
    bytes_per_pixel = 2 * channels
    stride = width * bytes_per_pixel
    try:
        # No more than the image needs: a small file can inflate to gigabytes.
        raw = zlib.decompressobj().decompress(compressed, height * (stride + 1))
    except zlib.error as error:
        raise ReadError("undecodable", f"PNG image data is corrupt ({error})") from None
    if len(raw) < height * (stride + 1):
        raise ReadError("undecodable", "PNG image data is shorter than the image (truncated)")
    pixels = unfilter(raw, height, stride, bytes_per_pixel)
    array = pixels.view(">u2").reshape(height, width, channels).astype(np.uint16)
    return array[:, :, 0] if channels == 1 else array


def unfilter(raw, height, stride, bytes_per_pixel):
    """Undo PNG row filters; return (height, stride) uint8 reconstructed bytes."""
    rows = np.frombuffer(raw, dtype=np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            current = line.copy()
        elif kind == 1:  # Sub: running sum (mod 256) over pixels, per byte lane
            current = np.cumsum(line.reshape(-1, bytes_per_pixel), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            current = line + previous
        elif kind in (3, 4):
            current = _unfilter_sequential(kind, line, previous, bytes_per_pixel)
        else:
            raise ReadError("undecodable", f"PNG row {y} has an unknown filter type {kind}")
        out[y] = current
        previous = current
    return out


def _unfilter_sequential(kind, line, previous, bpp):
    """Average (3) and Paeth (4): each byte depends on the reconstructed byte bpp to its left."""
    current = bytearray(line.tobytes())
    up = previous.tobytes()
    for i in range(len(current)):
        left = current[i - bpp] if i >= bpp else 0
        if kind == 3:
            current[i] = (current[i] + ((left + up[i]) >> 1)) & 0xFF
        else:
            upper_left = up[i - bpp] if i >= bpp else 0
            estimate = left + up[i] - upper_left
            d_left, d_up, d_ul = abs(estimate - left), abs(estimate - up[i]), abs(estimate - upper_left)
            if d_left <= d_up and d_left <= d_ul:
                predictor = left
            elif d_up <= d_ul:
                predictor = up[i]
            else:
                predictor = upper_left
            current[i] = (current[i] + predictor) & 0xFF
    return np.frombuffer(bytes(current), dtype=np.uint8)

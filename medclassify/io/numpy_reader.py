"""NumPy ``.npy`` files holding one 2D image: (H, W) or (H, W, C) with C 1 or 3."""

import numpy as np

from .base import ReadError, bilevel_as_grey, check_pixel_count


def read_npy(file, max_pixels):
    """Load a ``.npy`` image (no pickles) from ``file``, an open binary file at its start; return (array, meta)."""
    try:
        # The header first, so the shape is checked before any pixel is read.
        dtype, shape = _header(file)
    except (ValueError, OSError) as error:
        raise ReadError("undecodable", f"not a loadable .npy array ({error})") from None
    if dtype.kind not in "biuf":
        raise ReadError("unsupported_image", f".npy of dtype {dtype} is not a numeric image")
    if 0 in shape:
        raise ReadError("unsupported_image", f".npy of shape {shape} holds no image: axis {shape.index(0)} has length 0")
    if len(shape) not in (2, 3):
        raise ReadError("unsupported_image", f".npy of shape {shape} is not an (H, W) or (H, W, C) image")
    if len(shape) == 3 and shape[2] not in (1, 3):
        # An array has no alpha channel to drop, as a PNG's 2nd or 4th would be: its channels are
        # data (MR sequences, energies), and a model takes grey or RGB.
        raise ReadError("unsupported_image", f".npy of shape {shape} has {shape[2]} channels; an image has 1 "
                                             "(grey) or 3 (RGB): save one channel, or three, per file")
    check_pixel_count(shape[0], shape[1], max_pixels)
    try:
        file.seek(0)
        array = np.lib.format.read_array(file, allow_pickle=False)
    except (ValueError, OSError) as error:  # e.g. the file ends before its pixels do
        raise ReadError("undecodable", f"not a loadable .npy array ({error})") from None
    if array.dtype.kind == "b":
        array = bilevel_as_grey(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    meta = {"format": "npy", "bits": array.dtype.itemsize * 8, "photometric": None,
            "original_shape": list(array.shape)}
    return array, meta


def _header(file):
    """``(dtype, shape)`` from a ``.npy`` header. Version 3.0 only adds UTF-8 field names of
    structured dtypes, which are not images."""
    version = np.lib.format.read_magic(file)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"format version {version[0]}.{version[1]}, not 1.0 or 2.0")
    shape, _, dtype = readers[version](file)
    return dtype, shape

"""NumPy ``.npy`` files holding one 2D image: (H, W) or (H, W, C) with C in 1..4."""

import numpy as np

from .base import ReadError, check_pixel_count


def read_npy(path, max_pixels):
    """Load a ``.npy`` image (no pickles); return (array, meta)."""
    try:
        # mmap reads the header only, so the shape is checked before any pixel is loaded.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise ReadError("undecodable", f"not a loadable .npy array ({error})") from None
    except OSError as error:
        raise ReadError("undecodable", f"not a loadable .npy array ({error})") from None
    if mapped.dtype.kind not in "biuf":
        raise ReadError("unsupported_image", f".npy of dtype {mapped.dtype} is not a numeric image")
    shape = mapped.shape
    if len(shape) not in (2, 3) or (len(shape) == 3 and not 1 <= shape[2] <= 4):
        raise ReadError("unsupported_image", f".npy of shape {shape} is not an (H, W) or (H, W, C<=4) image")
    check_pixel_count(shape[0], shape[1], max_pixels)
    array = np.array(mapped)
    del mapped
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    meta = {"format": "npy", "bits": array.dtype.itemsize * 8, "photometric": None,
            "original_shape": list(array.shape)}
    return array, meta

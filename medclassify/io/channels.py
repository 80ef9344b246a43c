"""The io channel policy: how many channels a decoded image has."""

import numpy as np

CHANNEL_POLICIES = ("keep_grey", "rgb_to_grey", "grey_to_rgb")

# ITU-R BT.601 luma weights, the ones Pillow uses for its "RGB" -> "L" conversion.
_LUMA = np.array([0.299, 0.587, 0.114])


def to_hwc(pixels):
    """Return ``pixels`` as (H, W, C): grey gets a channel axis; an alpha channel is dropped.

    Alpha is dropped rather than composited because medical images carry no meaningful
    transparency; grey+alpha becomes grey and RGBA becomes RGB.
    """
    array = np.asarray(pixels)
    if array.ndim == 2:
        return array[:, :, np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image, got an array of shape {array.shape}")
    channels = array.shape[2]
    if channels == 2:
        return array[:, :, :1]
    if channels == 4:
        return array[:, :, :3]
    if channels in (1, 3):
        return array
    raise ValueError(f"an image has 1 to 4 channels, got {channels}")


def rgb_to_grey(pixels):
    """Luma of an (H, W, 3) image as (H, W, 1), in the input dtype (integers are rounded)."""
    grey = np.tensordot(pixels.astype(np.float64), _LUMA, axes=([2], [0]))[:, :, np.newaxis]
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        return np.clip(np.rint(grey), info.min, info.max).astype(pixels.dtype)
    return grey.astype(pixels.dtype)


def apply_channel_policy(pixels, policy):
    """Apply ``policy`` (keep_grey, rgb_to_grey, grey_to_rgb) to an (H, W[, C]) image."""
    if policy not in CHANNEL_POLICIES:
        raise ValueError(f"unknown channel policy {policy!r}; expected one of {CHANNEL_POLICIES}")
    array = to_hwc(pixels)
    if policy == "rgb_to_grey" and array.shape[2] == 3:
        return rgb_to_grey(array)
    if policy == "grey_to_rgb" and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def is_grey(rgb):
    """True when the three channels of an (H, W, 3) image are identical."""
    return bool(np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]))

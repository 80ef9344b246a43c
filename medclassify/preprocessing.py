"""Turn one decoded image into the fixed-size, [0, 1]-scaled array that the cache stores.

``preprocess_image`` is a pure function of ``(pixels, preprocess_options)``: the preprocess stage
and ``predict`` both call it, so a model sees the same values at training and at prediction time.
It uses NumPy and Pillow only (this layer never imports TensorFlow).

Order of operations, and why:

1. The intensity range [low, high] is found at the image's native resolution (min–max,
   percentiles, a fixed window, or the dtype's range), so percentiles and windows see the pixels
   the scanner produced, not interpolated ones. Pixels are clipped to that range.
2. Aspect policy (pad or crop to the target's aspect ratio, which is square for a square target,
   or stretch), padding with the image's minimum so the border looks like background.
3. Resize with the configured interpolation, channel by channel in Pillow's float mode ``F`` (no
   8-bit rounding before the cache's own quantisation).
4. Scale ``(x - low) / (high - low)`` and clip to [0, 1] (bicubic and Lanczos overshoot).

Scaling after the resize gives the same values as scaling before it, because every Pillow
filter is a normalised linear combination of pixels; it is done on the small image because
that is several times cheaper (the stage's speed is bounded by decoding, see bench/preprocess.py).

``intensity: zscore`` stores min-max scaled values; training applies the z-score with statistics
of its training split at load time, so a new split never forces a new cache.

``PREPROCESSING_VERSION`` enters the cache's parameter hash: bump it whenever a change here
alters output values, so that stale caches are rebuilt instead of silently reused, and so that
``predict`` refuses models trained on the old values (model.json records the version).
"""

import bisect
import itertools
import math

import numpy as np
from PIL import Image

from .preprocess_options import check_preprocess_options

# 2: NIfTI slices shown as DICOM shows them (radiological), bilevel images as 0 and 255. The
# readers' output is what this preprocesses, and a model trained on the old pictures must not
# predict on the new ones.
PREPROCESSING_VERSION = 2

# How far beyond [0, 1] intensity "none" lets floating-point pixels go (clipped) before refusing them.
NONE_TOLERANCE = 0.01

# Pillow filters for the configured names. "area" is box averaging, the anti-aliased choice for
# downsampling.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def preprocess_image(pixels, preprocess_options):
    """Return ``pixels`` resized and normalised as configured: float32 (H', W', C) in [0, 1].

    ``pixels`` is a 2D (H, W) or 3D (H, W, C) array of any real dtype, as returned by
    ``medclassify.io.read_sample``. ``preprocess_options`` is the ``preprocess`` config section
    (keys ``size``, ``resize``, ``aspect``, ``intensity``, ``percentiles``, ``window``).
    """
    check_preprocess_options(preprocess_options)
    image = _as_hwc(pixels)
    if np.issubdtype(image.dtype, np.floating):
        image = _finite_float(image)
    low, high = intensity_range(image, preprocess_options)
    if preprocess_options["intensity"] in ("minmax", "zscore"):
        clipped = image.astype(np.float32)  # already inside [low, high]
    else:
        clipped = np.clip(image, np.float32(low), np.float32(high), out=np.empty(image.shape, np.float32),
                          dtype=np.float32)
    height, width = preprocess_options["size"]
    shaped = apply_aspect(clipped, height / width, preprocess_options["aspect"])
    resized = resize_image(shaped, (height, width), preprocess_options["resize"])
    return _rescale(resized, low, high)


def intensity_input_problem(pixels, meta, preprocess_options, io_options):
    """``(code, message)`` when the configured intensity mode cannot take these pixels; else None.

    A fixed window takes modality units (CT: HU), so a DICOM that ``io.dicom_window`` windowed
    into [0, 1] first would come out one grey level (``windowed_twice``), and a MONOCHROME1 one
    that it did not window is mirrored out of those units (``mirrored_units``). ``none`` takes floats
    as already in [0, 1] and integers from 0 up, so it would clip HU, scanner units or negative
    values away (``outside_intensity_range``). Both cases are a silent loss, so they are refused.
    """
    mode = preprocess_options["intensity"]
    if mode == "window" and meta.get("window") is None and meta.get("photometric") == "MONOCHROME1":
        return "mirrored_units", (
            "this DICOM is MONOCHROME1 (its lowest value white), which the reader shows mirrored when it applies "
            "no window: its values are no longer modality units, and preprocess.intensity 'window' would map them "
            "wrong; give the window as io.dicom_window {center, width} (applied before the mirroring) and use "
            "another preprocess.intensity")
    if mode == "window" and meta.get("window") is not None:
        return "windowed_twice", (
            f"io.dicom_window {io_options['dicom_window']!r} windowed this DICOM into [0, 1] before "
            "preprocess.intensity 'window', which takes modality units (CT: HU): set io.dicom_window: none, "
            "or use another preprocess.intensity")
    if mode != "none":
        return None
    values = np.asarray(pixels)
    if np.issubdtype(values.dtype, np.floating):
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        # A hair beyond [0, 1] (interpolation, float rounding) is clipped harmlessly.
        if low < -NONE_TOLERANCE or high > 1 + NONE_TOLERANCE:
            return "outside_intensity_range", (
                f"preprocess.intensity 'none' takes floating-point pixels as already in [0, 1]; these span "
                f"{low:g} to {high:g} (modality or scanner units?), which it would clip: use minmax, percentile "
                "or window (or io.dicom_window for DICOM)")
    elif np.issubdtype(values.dtype, np.signedinteger) and values.size and int(values.min()) < 0:
        return "outside_intensity_range", (
            f"preprocess.intensity 'none' scales integers from 0 to their type's maximum; these reach "
            f"{int(values.min())}, which it would clip to 0: use minmax, percentile or window")
    return None


def _as_hwc(pixels):
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"expected a 2D image (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"expected real-valued pixels, got dtype {array.dtype}")
    return array


def intensity_range(image, options):
    """The [low, high] range that the configured intensity mode maps to [0, 1].

    min–max (and zscore, whose cache keeps min–max values), percentiles, a fixed window, or for
    ``none`` the dtype's range: integers [0, dtype max], floats [0, 1] (e.g. DICOM after a window).
    All channels share one range, so colour ratios survive.
    """
    mode = options["intensity"]
    if mode in ("minmax", "zscore"):
        return float(image.min()), float(image.max())
    if mode == "percentile":
        return intensity_percentiles(image, options["percentiles"])
    if mode == "window":
        center, width = float(options["window"]["center"]), float(options["window"]["width"])
        return center - width / 2.0, center + width / 2.0
    if np.issubdtype(image.dtype, np.integer):
        return 0.0, float(np.iinfo(image.dtype).max)
    return 0.0, 1.0


def _finite_float(image):
    finite = np.isfinite(image)
    if finite.all():
        return image
    if not finite.any():
        return np.zeros_like(image)
    return np.where(finite, image, image[finite].min())


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _rescale(values, low, high):
    out = np.asarray(values, dtype=np.float32).copy()
    if high <= low:
        return np.zeros_like(out)
    if 1.0 / (float(high) - float(low)) > FLOAT32_MAX / 2:
        # A range so narrow (below about 3e-39) that its reciprocal overflows float32: 0 * inf
        # made NaN pixels. Rare enough to take float64 throughout.
        out = ((out.astype(np.float64) - low) / (high - low)).astype(np.float32)
        return np.clip(out, 0.0, 1.0, out=out)
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def intensity_percentiles(values, percentiles):
    """Return the ``percentiles`` (0..100) of ``values``, equal to ``np.percentile`` (linear).

    Unsigned 8- and 16-bit images take a histogram path (one counting pass, no sort), several
    times faster than ``np.percentile`` on a 256×256 image, with identical values. Floats (DICOM
    after its window, NIfTI) select only the order statistics they need (:func:`_float_percentiles`):
    equal bit for bit, 7× faster on a windowed CT slice and 3× on noise.
    """
    flat = np.asarray(values).ravel()
    n = flat.size
    if flat.dtype == np.uint8:
        # Pillow's histogram of an 8-bit image is one C pass; the 256 bins are then searched in
        # plain Python, cheaper than a dozen small NumPy calls per image.
        cumulative = list(itertools.accumulate(Image.fromarray(flat.reshape(1, -1)).histogram()))
    elif flat.dtype == np.uint16:
        cumulative = np.cumsum(np.bincount(flat)).tolist()
    elif np.issubdtype(flat.dtype, np.floating) and n:
        return _float_percentiles(flat, percentiles)
    else:
        return tuple(float(v) for v in np.percentile(flat, percentiles))
    result = []
    for q in percentiles:
        rank = q / 100.0 * (n - 1)
        below = math.floor(rank)
        above = min(below + 1, n - 1)
        # the value of order statistic k is the first intensity whose cumulative count exceeds k
        v_below = bisect.bisect_right(cumulative, below)
        v_above = bisect.bisect_right(cumulative, above)
        result.append(v_below + (rank - below) * (v_above - v_below))
    return tuple(float(v) for v in result)


def _float_percentiles(flat, percentiles):
    """``np.percentile(flat, percentiles)`` (linear) of floats, bit for bit, without its full partition.

    The few order statistics needed come from :func:`_order_statistics`; they are then combined
    with NumPy's own interpolation arithmetic (``numpy.lib._function_base_impl._lerp``, in the
    same dtypes), which tests compare against ``np.percentile`` for equality. NaN, infinities and
    spans beyond the dtype's range go to ``np.percentile`` itself.
    """
    low, high = flat.min(), flat.max()
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(high - low):
            return tuple(float(v) for v in np.percentile(flat, percentiles))
    n = flat.size
    virtual = (n - 1) * np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    previous = np.floor(virtual)
    gamma = virtual - previous
    previous = np.minimum(previous.astype(np.intp), n - 1)
    following = np.minimum(previous + 1, n - 1)
    stats = _order_statistics(flat, sorted(set(previous.tolist()) | set(following.tolist())), low, high)
    a = np.array([stats[k] for k in previous.tolist()], dtype=flat.dtype)
    b = np.array([stats[k] for k in following.tolist()], dtype=flat.dtype)
    difference = b - a
    result = a + difference * gamma
    upper = gamma >= 0.5
    result[upper] = (b - difference * (1 - gamma))[upper]
    return tuple(float(v) for v in result)


def _order_statistics(flat, ranks, low, high, buckets=1024):
    """``{k: the k-th smallest value of flat}`` for each rank k, exactly, in a few linear passes.

    ``low`` and ``high`` are the minimum and maximum of ``flat``, whose difference is finite.

    The values are binned by a monotone map onto ``buckets`` bins, so the k-th smallest lies in
    the bin where the cumulative count passes k, and only that bin is partitioned. The minimum
    and the maximum are settled first: a windowed CT slice holds most of its pixels there.
    """
    n = flat.size
    n_low, n_high = int(np.count_nonzero(flat == low)), int(np.count_nonzero(flat == high))
    stats = {k: low for k in ranks if k < n_low}
    stats.update({k: high for k in ranks if k >= n - n_high})
    inner = [k for k in ranks if k not in stats]
    if not inner:
        return stats
    with np.errstate(over="ignore"):
        scale = flat.dtype.type(buckets / (float(high) - float(low)))
    if not np.isfinite(scale):  # a span of ~1e-35 (float32): too narrow to bin
        partitioned = np.partition(flat, inner)
        return {**stats, **{k: partitioned[k] for k in inner}}
    scaled = flat - low
    scaled *= scale
    bins = scaled.astype(np.int32)  # int32: NumPy converts floats to int64 several times slower
    np.minimum(bins, buckets - 1, out=bins)
    cumulative = np.cumsum(np.bincount(bins, minlength=buckets))
    for k in inner:
        bin_index = int(np.searchsorted(cumulative, k, side="right"))
        before = int(cumulative[bin_index - 1]) if bin_index else 0
        stats[k] = np.partition(flat[bins == bin_index], k - before)[k - before]
    return stats


def apply_aspect(image, target_ratio, policy):
    """Pad or center-crop ``image`` to ``target_ratio`` (height / width), or leave it (stretch).

    Padding is split evenly (the odd pixel goes to the bottom/right) and uses the image's
    minimum, i.e. the background after normalisation.
    """
    if policy == "stretch":
        return image
    height, width = image.shape[:2]
    if policy == "pad":
        new_h = max(height, int(round(width * target_ratio)))
        new_w = max(width, int(round(height / target_ratio)))
        if (new_h, new_w) == (height, width):
            return image
        top, left = (new_h - height) // 2, (new_w - width) // 2
        out = np.full((new_h, new_w, image.shape[2]), image.min(), dtype=image.dtype)
        out[top:top + height, left:left + width] = image
        return out
    new_h = min(height, max(1, int(round(width * target_ratio))))
    new_w = min(width, max(1, int(round(height / target_ratio))))
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return image[top:top + new_h, left:left + new_w]


def resize_image(image, size, method):
    """Resize float32 ``image`` (H, W, C) to ``size`` (height, width) with the named filter."""
    height, width = size
    if image.shape[:2] == (height, width):
        return np.array(image, dtype=np.float32, copy=True)
    resample = RESAMPLING[method]
    factor_h, factor_w = image.shape[0] // height, image.shape[1] // width
    # Box filtering by a whole factor is Pillow's reduce(): the same block means, twice as fast.
    whole_factor = (method == "area" and image.shape[0] == factor_h * height
                    and image.shape[1] == factor_w * width and min(factor_h, factor_w) >= 1)
    out = np.empty((height, width, image.shape[2]), dtype=np.float32)
    for channel in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, channel], dtype=np.float32))
        plane = plane.reduce((factor_w, factor_h)) if whole_factor else plane.resize((width, height), resample=resample)
        out[:, :, channel] = np.asarray(plane)
    return out


def to_storage(image, dtype):
    """Convert float images in [0, 1] to the cache's storage dtype (``uint8`` or ``float16``).

    uint8 rounds to the nearest of 256 levels (0..255 ↔ 0..1), so it is exact to ±1/510.
    """
    if dtype == "uint8":
        return np.rint(np.asarray(image, dtype=np.float32) * np.float32(255.0)).astype(np.uint8)
    if dtype == "float16":
        return np.asarray(image).astype(np.float16)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def from_storage(stored):
    """Inverse of :func:`to_storage`: float32 in [0, 1]."""
    if stored.dtype == np.uint8:
        out = stored.astype(np.float32)
        out *= np.float32(1.0 / 255.0)
        return out
    return stored.astype(np.float32)

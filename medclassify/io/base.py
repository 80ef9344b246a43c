"""Types shared by every reader: the decoded sample, the read error and the content hash."""

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from ..content import CONSTANT_CONTENT

# Mirrors the defaults of the ``io`` section of workflow/schemas/config.schema.yaml. This layer may
# not import medclassify.config; tests/test_io_readers.py checks that the two stay equal.
DEFAULT_IO_OPTIONS = {
    "channels": "keep_grey",
    "dicom_window": "file",
    "dicom_frame": "middle",
    "nifti_axis": 2,
    "nifti_slice": "middle",
    "nifti_volume": None,
    "max_pixels": 178956970,
}

# Stable problem codes that a reader may raise. Validation reports them unchanged.
READ_ERROR_CODES = (
    "empty_file",              # zero bytes
    "unreadable_file",         # the file cannot be opened (permissions, an I/O error)
    "undecodable",             # not a valid image of its format (truncated, corrupt, wrong content)
    "unsupported_format",      # no reader for this kind of file
    "unsupported_image",       # a readable file whose layout we cannot turn into a 2D image
    "no_pixel_data",           # DICOM without (0x7FE0, 0x0010) Pixel Data
    "compressed_unsupported",  # a DICOM transfer syntax without an installed decoder
    "too_many_pixels",         # over io.max_pixels (decompression-bomb limit), checked before decoding
    "needs_slice_choice",      # 4D NIfTI without io.nifti_volume
    "index_out_of_range",      # a configured frame/slice/volume index beyond the file's size
)


_OBJECT_AT_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


class ReadError(Exception):
    """An image that cannot be read. ``code`` is one of READ_ERROR_CODES; ``message`` says why.

    Messages never contain identifying DICOM values (see medclassify.privacy), nor the memory
    address of an object that a library named ("cannot identify image file <_io.BytesIO object
    at 0x7f...>"), which made two reports of the same files differ.
    """

    def __init__(self, code, message):
        message = _OBJECT_AT_ADDRESS.sub(r"<\1>", message)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):
        # Keep (code, message) when the error crosses a process boundary.
        return (type(self), (self.code, self.message))


@dataclass
class Sample:
    """One decoded 2D image.

    ``pixels`` is (H, W, C) with the io channel policy applied; ``meta`` holds non-identifying
    facts only: format, modality, bits, photometric, spacing, original shape and the like.
    """

    pixels: np.ndarray
    meta: dict = field(default_factory=dict)


def resolve_io_options(io_options=None):
    """Return ``io_options`` with every missing key set to its default (a new, shallow dict)."""
    resolved = dict(DEFAULT_IO_OPTIONS)
    if io_options:
        unknown = set(io_options) - set(DEFAULT_IO_OPTIONS)
        if unknown:
            raise ValueError(f"unknown io options: {sorted(unknown)}")
        resolved.update(io_options)
    _check_io_options(resolved)
    return resolved


_WINDOW_NAMES = ("file", "none", "ct_lung", "ct_mediastinum", "ct_bone", "ct_brain", "ct_abdomen")


def _check_io_options(options):
    """Reject option values that the config schema would reject (for direct library callers)."""
    problems = []
    if options["channels"] not in ("keep_grey", "rgb_to_grey", "grey_to_rgb"):
        problems.append(f"channels={options['channels']!r}")
    window = options["dicom_window"]
    if isinstance(window, dict):
        if set(window) != {"center", "width"} or not float(window["width"]) >= 1:
            problems.append(f"dicom_window={window!r} (needs center and a width of at least 1, as DICOM's LINEAR "
                            "window function does)")
    elif window not in _WINDOW_NAMES:
        problems.append(f"dicom_window={window!r}")
    for name in ("dicom_frame", "nifti_slice"):
        value = options[name]
        if not (value in ("middle", "all") or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)):
            problems.append(f"{name}={value!r}")
    if options["nifti_axis"] not in (0, 1, 2):
        problems.append(f"nifti_axis={options['nifti_axis']!r}")
    volume = options["nifti_volume"]
    if volume is not None and not (isinstance(volume, int) and volume >= 0):
        problems.append(f"nifti_volume={volume!r}")
    if not (isinstance(options["max_pixels"], int) and options["max_pixels"] >= 1):
        problems.append(f"max_pixels={options['max_pixels']!r}")
    if problems:
        raise ValueError(f"invalid io options: {', '.join(problems)} (see the io section of the config schema)")


def content_hash(pixels, blank=None):
    """sha256 (hex, first 32 characters) of an array's dtype, shape and bytes.

    Byte order is part of the dtype string, so the same values in another byte order hash
    differently; readers always return native-order arrays. An array whose values are all
    equal gets ``CONSTANT_CONTENT`` and the digest's first 23 characters (32 in all):
    see ``is_constant_content``. ``blank``: ``is_blank(pixels)`` where the caller has it (a
    reader's ``meta["constant"]``), so that an image is not scanned twice.
    """
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{array.shape}|".encode("ascii"))
    flat = array.reshape(-1)
    digest.update(flat.view(np.uint8) if array.size else b"")  # the bytes, without a copy
    if is_blank(flat) if blank is None else blank:
        return CONSTANT_CONTENT + digest.hexdigest()[:32 - len(CONSTANT_CONTENT)]
    return digest.hexdigest()[:32]


def is_blank(pixels):
    """Whether every finite value of ``pixels`` is the same (NaN and infinities left out: the NaN
    background of a masked volume is blank). The readers' ``meta["constant"]`` and the content
    hash's mark both say this of the pixels after the channel policy."""
    flat = np.ascontiguousarray(pixels).reshape(-1)
    if not flat.size:
        return False
    # A few pixels first: most images differ there, and the preprocess stage hashes every image.
    probe = flat[:: max(1, flat.size // 16)]  # a view: no index array to build
    if flat.dtype.kind not in "fc":
        return bool((probe == probe[0]).all()) and bool((flat == flat[0]).all())
    finite_probe = probe[np.isfinite(probe)]
    if finite_probe.size > 1 and (finite_probe != finite_probe[0]).any():
        return False
    finite = np.isfinite(flat)
    if not finite.any():
        return True
    first = flat[np.argmax(finite)]
    return bool(((flat == first) | ~finite).all())


def bilevel_as_grey(mask, inverted=False):
    """A bilevel (boolean) image as uint8 0 and 255, the grey levels a 1-bit PNG decodes to.

    As 0 and 1 it would be almost black to ``intensity: none``, which scales uint8 by 255.
    ``inverted`` (a MINISWHITE TIFF): a set bit is black.
    """
    return np.where(np.asarray(mask) != inverted, np.uint8(255), np.uint8(0))


def read_bytes(source, n_bytes=-1):
    """The first ``n_bytes`` of ``source`` (all of it by default).

    ``source`` is a path, or a binary file, which is read from its start and left where it was.
    """
    if not hasattr(source, "read"):
        with open(source, "rb") as f:
            return f.read(n_bytes)
    position = source.tell()
    source.seek(0)
    data = source.read(n_bytes)
    source.seek(position)
    return data


def check_pixel_count(height, width, max_pixels, what="image"):
    """Raise ``too_many_pixels`` when ``height * width`` exceeds ``max_pixels`` (before decoding)."""
    count = int(height) * int(width)
    if count > max_pixels:
        raise ReadError(
            "too_many_pixels",
            f"{what} of {int(width)}x{int(height)} = {count:,} pixels exceeds io.max_pixels = "
            f"{max_pixels:,} (decompression-bomb limit); raise io.max_pixels if the image is genuine",
        )


def choose_index(choice, count, what, option_name):
    """Indices that a ``middle`` / integer / ``all`` choice selects among ``count`` frames or slices."""
    if choice == "all":
        return list(range(count))
    if choice == "middle":
        return [count // 2]
    index = int(choice)
    if not 0 <= index < count:
        raise ReadError(
            "index_out_of_range",
            f"{option_name} = {index}, but the file has {count} {what} (0..{count - 1})",
        )
    return [index]

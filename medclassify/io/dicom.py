"""DICOM through pydicom: Modality LUT, then a VOI window, MONOCHROME1 inverted, multi-frame.

Output is float32: in [0, 1] after a window or VOI LUT, otherwise in modality units (HU for CT),
except MONOCHROME1, whose values are then mirrored within their range (``meta["units"]`` ends
", mirrored"; ``preprocess.intensity: window`` refuses them as ``mirrored_units``).
Colour images (RGB, YBR converted to RGB, PALETTE COLOR expanded) are scaled to [0, 1].
No identifying attribute (medclassify.privacy.IDENTIFYING_DICOM_KEYWORDS) is ever copied into
metadata or a message.
"""

import collections.abc
import functools
import logging
import math
import warnings

import numpy as np

from ..privacy import IDENTIFYING_DICOM_KEYWORDS
from .base import ReadError, check_pixel_count, choose_index

# Standard CT windows as (center, width) in HU, from Radiopaedia, "Windowing (CT)",
# https://radiopaedia.org/articles/windowing-ct (brain W:80 L:40, lungs W:1500 L:-600,
# mediastinum W:350 L:50, bone W:1800 L:400, soft tissue/abdomen W:400 L:40).
WINDOW_PRESETS = {
    "ct_lung": (-600.0, 1500.0),
    "ct_mediastinum": (50.0, 350.0),
    "ct_bone": (400.0, 1800.0),
    "ct_brain": (40.0, 80.0),
    "ct_abdomen": (40.0, 400.0),
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Attributes of the Modality LUT and VOI LUT modules that a frame's functional groups may override.
_LUT_KEYWORDS = ("Modality", "PhotometricInterpretation", "BitsStored", "BitsAllocated", "PixelRepresentation",
                 "ModalityLUTSequence", "RescaleSlope", "RescaleIntercept", "RescaleType",
                 "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction")


# The modules whose warnings are silenced: pydicom's, and this one's, where a warning of pydicom
# may be attributed to the call into it.
_PYDICOM_MODULES = r"pydicom|medclassify\.io\.dicom"


def _silencing_value_warnings(function):
    """Run ``function`` with pydicom's warnings and log messages silenced.

    pydicom converts an element's value when it is first read, after ``dcmread``, and warns (and
    logs) about an invalid one with the value in the message ("Invalid value for VR UI:
    '1.2.3...'"). Those messages go to the rule's log, and the values can be identifying (UIDs,
    names, dates). They are silenced for the whole process by one lasting filter, not by
    ``catch_warnings`` around each read: that swaps the process's filters, and another thread
    leaving its own ``catch_warnings`` (nibabel's, around a scaled NIfTI) restored them in the
    middle of a read, which then warned with the values.
    """
    @functools.wraps(function)
    def silenced(*args, **kwargs):
        # Checked at every read: a catch_warnings entered before the first one restores the filters without it.
        if not any(f[0] == "ignore" and f[3] is not None and f[3].pattern == _PYDICOM_MODULES
                   for f in warnings.filters):
            warnings.filterwarnings("ignore", module=_PYDICOM_MODULES)
            logging.getLogger("pydicom").propagate = False  # it logs each warning too
        return function(*args, **kwargs)
    return silenced


def _dcmread(source, stop_before_pixels):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:  # no catch_warnings here: every caller runs under _silencing_value_warnings
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise ReadError("undecodable", "not a DICOM file (no 'DICM' prefix / file meta information)") from None
    except Exception as error:
        raise ReadError("undecodable", f"DICOM parsing failed: {type(error).__name__}") from None


def frame_count(ds):
    """Number of frames (1 for single-frame files)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


@_silencing_value_warnings
def sample_indices(source, io_options):
    """``[None]`` for a single-frame file, otherwise the frames that ``dicom_frame`` selects.

    ``source``, here and below, is a path or a binary file at its start.
    """
    return _selected_frames(_dcmread(source, stop_before_pixels=True), io_options)


def _selected_frames(ds, io_options):
    count = frame_count(ds)
    if count == 1:
        return [None]
    return choose_index(io_options["dicom_frame"], count, "frames", "io.dicom_frame")


@_silencing_value_warnings
def read_dicom(source, indices, io_options):
    """Decode the frames ``indices`` (None = the single frame); return [(array, meta), ...]."""
    return _decode(_dcmread(source, stop_before_pixels=False), indices, io_options)


@_silencing_value_warnings
def read_dicom_selected(source, io_options):
    """The frames that ``dicom_frame`` selects, parsing the file once: ``(indices, [(array, meta), ...])``."""
    ds = _dcmread(source, stop_before_pixels=False)
    indices = _selected_frames(ds, io_options)
    return indices, _decode(ds, indices, io_options)


def _decode(ds, indices, io_options):
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ReadError("no_pixel_data", "DICOM file has no Pixel Data element (not an image)")
    _check_transfer_syntax(ds)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ReadError("undecodable", "DICOM image without valid Rows/Columns") from None
    check_pixel_count(rows, columns, io_options["max_pixels"], what="DICOM frame")
    count = frame_count(ds)
    for index in indices:
        if index is not None and not 0 <= index < count:
            raise ReadError("index_out_of_range", f"frame {index} requested, the file has {count} frames")
    frames = _decode_frames(ds, indices, count)
    results = []
    for index, raw in zip(indices, frames):
        pixels, details = _to_float(raw, ds, _frame_view(ds, index or 0), io_options["dicom_window"])
        results.append((pixels, _meta(ds, raw, count, details)))
    return results


def _check_transfer_syntax(ds):
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise ReadError("undecodable", "DICOM file meta information has no Transfer Syntax UID")
    if not syntax.is_transfer_syntax:  # pydicom cannot tell how the pixels are encoded
        what = "a vendor's private syntax" if syntax.is_private else "one this pydicom does not know"
        raise ReadError("compressed_unsupported", f"transfer syntax {syntax} is {what}; export the file with a "
                        "transfer syntax pydicom decodes")
    if not syntax.is_compressed:
        return
    name = f"{syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ReadError("compressed_unsupported", f"no decoder exists for transfer syntax {name}") from None
    if not decoder.is_available:
        missing = "; ".join(f"{plugin}: {', '.join(deps)}" for plugin, deps in decoder.missing_dependencies.items()) \
            if isinstance(decoder.missing_dependencies, dict) else ", ".join(decoder.missing_dependencies)
        raise ReadError(
            "compressed_unsupported",
            f"transfer syntax {name} needs a decoder that is not installed ({missing})",
        )


def _decode_frames(ds, indices, count):
    from pydicom.pixels import pixel_array

    try:
        if count == 1:
            return [np.asarray(ds.pixel_array)] * len(indices)
        if len(indices) == 1:
            return [np.asarray(pixel_array(ds, index=indices[0]))]
        every = np.asarray(ds.pixel_array)
        return [every[index] for index in indices]
    except Exception as error:  # pydicom and its plugins raise ValueError, RuntimeError, …
        # One line: plugins list each decoder's failure on a line of its own.
        reason = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()).replace(":;", ":")
        raise ReadError("undecodable", f"DICOM pixel data could not be decoded: {_scrub(reason, ds)}") from None


def _frame_view(ds, index):
    """A dataset with the LUT attributes that apply to frame ``index`` (enhanced multi-frame aware)."""
    from pydicom.dataset import Dataset

    shared, per_frame = ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")
    if not shared and not per_frame:
        return ds  # the common case: the file's own attributes apply, no copy needed
    view = Dataset()
    # LUT data of VR OW is raw bytes: pydicom reads their byte order from the transfer syntax.
    view.file_meta = ds.file_meta
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    groups = []
    if shared:
        groups.append(shared[0])
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(sequence)
            if items:
                for keyword in _LUT_KEYWORDS:
                    if keyword in items[0]:
                        setattr(view, keyword, items[0][keyword].value)
    return view


def _to_float(raw, ds, view, window_option):
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

    photometric = str(view.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    details = {"photometric": photometric, "window": None, "units": None}
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(raw, ds)
        except (AttributeError, ValueError) as error:
            raise ReadError("undecodable", f"PALETTE COLOR image with unusable lookup tables ({type(error).__name__})") from None
        return rgb.astype(np.float32) / float(np.iinfo(rgb.dtype).max), details
    if raw.ndim == 3:  # RGB, or YBR that pydicom already converted to RGB
        bits = int(view.get("BitsStored", raw.dtype.itemsize * 8))
        return raw.astype(np.float32) / float(2 ** bits - 1), details
    _check_rescale(view)
    modality_values = apply_modality_lut(raw, view)
    values = modality_values.astype(np.float64)
    low, high = _output_range(view)
    window = _window(view, window_option)
    if window == "lut":
        # A VOI LUT is indexed by the Modality LUT output as it is (integers unless rescaled).
        lut_bits = int(view.VOILUTSequence[0].LUTDescriptor[2])
        values = apply_voi(modality_values, view).astype(np.float64) / float(2 ** lut_bits - 1)
        low, high = 0.0, 1.0
        details["window"] = "voi_lut"
    elif window is not None:
        center, width, function = window
        values = _apply_window(values, center, width, function)
        low, high = 0.0, 1.0
        details["window"] = {"center": center, "width": width, "function": function}
    else:
        is_ct = str(view.get("Modality", "")).upper() == "CT" and "RescaleSlope" in view
        details["units"] = "HU" if is_ct or str(view.get("RescaleType", "")).upper() == "HU" else "modality"
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows the lowest value as white: mirror the values within their range.
        values = low + high - values
        if details["units"]:
            details["units"] = f"{details['units']}, mirrored"
    return values.astype(np.float32), details


def _check_rescale(view):
    """Make Rescale Slope and Intercept numbers before pydicom multiplies by them as stored.

    An empty one (DICOM lets an exporter write an attribute with no value) is taken as not given:
    its identity value, 1 or 0, which _output_range already assumed, so the other still applies.
    One that is not a number is an error naming it, not a numpy TypeError. ``view`` is our own
    parse of the file (or a copy of its attributes), so setting the value changes nothing outside.
    """
    if view.get("ModalityLUTSequence"):
        return  # pydicom applies the LUT and ignores the rescale attributes
    for keyword, identity in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        if keyword in view:
            number = _number(view[keyword].value, keyword)
            setattr(view, keyword, identity if number is None else number)


def _output_range(view):
    """The range of Modality-LUT output values that the stored bits allow (for MONOCHROME1)."""
    if view.get("ModalityLUTSequence"):
        bits = int(view.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    bits = int(view.get("BitsStored", 16))
    if int(view.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = float(view.get("RescaleSlope", 1) or 1)
    intercept = float(view.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _window(view, option):
    """``"lut"``, ``(center, width, function)`` or None for the io.dicom_window option."""
    if option == "none":
        return None
    if isinstance(option, dict):
        return float(option["center"]), float(option["width"]), "LINEAR"
    if option in WINDOW_PRESETS:
        center, width = WINDOW_PRESETS[option]
        return center, width, "LINEAR"
    if option != "file":
        raise ValueError(f"unknown dicom_window {option!r}")
    center = _window_number(view, "WindowCenter")
    if center is None and view.get("VOILUTSequence"):
        return "lut"
    width = _window_number(view, "WindowWidth") if center is not None else None
    if center is not None and width is not None:
        function = str(view.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return center, width, function
    if view.get("VOILUTSequence"):
        return "lut"
    return None


def _window_number(view, keyword):
    """The (first) value of WindowCenter or WindowWidth; None where absent or empty.

    pydicom's apply_voi_lut skips a window whose value is empty, and so do we.
    """
    return _number(_first(view.get(keyword)), keyword)


def _first(value):
    """The first of several values (a window may list alternatives), or the single value.

    pydicom keeps a value it cannot read as a number as text ('40,25'): that is one value, to be
    rejected whole, not indexed into its first character ('4').
    """
    if isinstance(value, str):
        return value
    try:
        return value[0]
    except (TypeError, IndexError):
        return value


def _number(value, keyword):
    """``value`` of attribute ``keyword`` as a float; None where it is empty.

    pydicom keeps a value it cannot read as a number as text: that is an error naming the
    attribute (its value too, as no identifying attribute passes here).
    """
    if _is_empty(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ReadError("undecodable", f"invalid {keyword} value {str(value)[:40]!r}: not a finite number")
    return number


def _is_empty(value):
    """Present without a value: pydicom reads a zero-length number as None, text as ''."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, collections.abc.Sequence) and len(value) == 0)


def _apply_window(values, center, width, function):
    """Window float64 ``values`` onto [0, 1] by PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID).

    The same arithmetic as pydicom's ``apply_windowing`` with a [0, 1] output range, so the values
    are bit for bit equal (tests compare them), in a few whole-array passes instead of its boolean
    indexing: three times faster on a 256×256 CT slice.
    """
    if function in ("LINEAR", "LINEAR_EXACT"):
        if function == "LINEAR":
            if width < 1:
                raise _window_error(center, width, "a LINEAR window needs a width of at least 1")
            center, width = center - 0.5, width - 1
        elif width <= 0:
            raise _window_error(center, width, "a LINEAR_EXACT window needs a width greater than 0")
        below, above = values <= center - width / 2, values > center + width / 2
        if width == 0:  # LINEAR of width 1: a step, every value is below or above
            return above.astype(np.float64)
        out = (values - center) / width + 0.5
        out[below] = 0.0
        out[above] = 1.0
        return out
    if function == "SIGMOID":
        if width <= 0:
            raise _window_error(center, width, "a SIGMOID window needs a width greater than 0")
        return 1.0 / (1 + np.exp(-4 * (values - center) / width))
    raise _window_error(center, width, f"unsupported VOI LUT Function {function!r}")


def _window_error(center, width, problem):
    return ReadError("undecodable", f"invalid DICOM window (center {center}, width {width}): {problem}")


def _meta(ds, raw, count, details):
    syntax = ds.file_meta.get("TransferSyntaxUID")
    return {
        "format": "dicom",
        "modality": str(ds.get("Modality", "") or "") or None,
        "bits": int(ds.get("BitsStored", raw.dtype.itemsize * 8)),
        "photometric": details["photometric"],
        "spacing": _spacing(ds),
        "original_shape": list(raw.shape),
        "frames": count,
        "transfer_syntax": syntax.name if syntax is not None else None,
        "window": details["window"],
        "units": details["units"],
    }


def _spacing(ds):
    """Pixel (or Imager Pixel) Spacing as floats; None where absent or not numbers.

    Spacing is metadata that nothing here needs to decode the image: a malformed value
    ('0.5\\abcd') leaves it unknown rather than costing a readable image.
    """
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        return [float(v) for v in spacing] if spacing else None
    except (TypeError, ValueError):  # text pydicom could not parse, or a single value
        return None


def _scrub(message, ds):
    """Remove the values of identifying attributes from a (library) message."""
    for keyword in IDENTIFYING_DICOM_KEYWORDS:
        value = ds.get(keyword) if ds is not None else None
        text = str(value) if value is not None else ""
        if len(text) >= 2 and text in message:
            message = message.replace(text, "<redacted>")
    return message

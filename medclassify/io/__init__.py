"""Image readers: PNG, JPEG, BMP, TIFF, DICOM, NIfTI and NumPy ``.npy``.

Public API (other modules code against it):

- :func:`sample_indices` — which samples one file gives (``[None]`` for a 2D image).
- :func:`read_sample` — one decoded sample, channel policy applied.
- :func:`read_file_samples` — every configured sample of a file, decoding it once.
- :func:`content_hash`, :class:`Sample`, :class:`ReadError`.

The format is recognised from the file's content (its magic bytes), not from its name alone;
a file whose name promises one format but whose content is another format is read by its
content, and ``meta["extension_mismatch"]`` says so.
"""

import contextlib
import os

import numpy as np

from .base import (DEFAULT_IO_OPTIONS, READ_ERROR_CODES, ReadError, Sample, content_hash, is_blank,
                   resolve_io_options)
from .channels import apply_channel_policy, is_grey

__all__ = ["DEFAULT_IO_OPTIONS", "READ_ERROR_CODES", "ReadError", "Sample", "content_hash",
           "detect_format", "read_file_samples", "read_sample", "resolve_io_options",
           "sample_indices", "SUPPORTED_EXTENSIONS"]

_EXTENSIONS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff",
    ".tiff": "tiff", ".dcm": "dicom", ".dicom": "dicom", ".nii": "nifti", ".nii.gz": "nifti",
    ".npy": "npy",
}
SUPPORTED_EXTENSIONS = tuple(sorted(_EXTENSIONS))


def _format_from_name(path):
    name = os.path.basename(path).lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def _format_from_content(head):
    # DICOM first: a DICOM preamble may itself hold a TIFF header (dual-format files).
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return None


def _looks_like_text(head):
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def detect_format(path):
    """Return ``(format, extension_mismatch)`` for an image file; raise ReadError if unknown.

    format is one of png, jpeg, bmp, tiff, dicom, nifti, npy.
    """
    with _opened(path) as (fmt, mismatch, _):
        return fmt, mismatch


@contextlib.contextmanager
def _opened(path):
    """Open ``path``, recognise its format and yield ``(format, extension_mismatch, file)``.

    The file is positioned at its start. Raises ReadError for a folder, an unreadable file, an
    empty file or an unrecognised format.

    Every reader decodes from this file, so that each image is opened once, not two to four
    times (detection, a header check, the decoder; nibabel and NumPy's memory map open by name):
    on a network file system (NFS, Lustre) every open is a round trip to the server, and images
    are many and small.
    """
    path = os.fspath(path)
    file = None
    try:
        file = open(path, "rb")
        head = file.read(352)
    except IsADirectoryError:
        raise ReadError("undecodable", "is a folder, not a file") from None
    except OSError as error:
        if file is not None:
            file.close()
        raise ReadError("unreadable_file", f"cannot be opened ({error.strerror})") from None
    with file:
        fmt, mismatch = _format_of(path, head)
        file.seek(0)
        yield fmt, mismatch, file


def _format_of(path, head):
    if not head:
        raise ReadError("empty_file", "file is empty (0 bytes)")
    by_name = _format_from_name(path)
    by_content = _format_from_content(head)
    if by_content == "gzip":
        by_content = "nifti" if by_name == "nifti" else None
    if by_content is not None:
        return by_content, by_name is not None and by_name != by_content
    # DICOM without preamble and NIfTI with unusual headers are left to their readers' checks.
    if by_name in ("dicom", "nifti"):
        return by_name, False
    if by_name is not None:
        kind = "text" if _looks_like_text(head) else "unrecognised binary data"
        suffix = os.path.splitext(path)[1]
        raise ReadError("undecodable", f"file named {suffix} is not a {by_name.upper()} image (content is {kind})")
    raise ReadError(
        "unsupported_format",
        f"unrecognised image format (extension {os.path.splitext(path)[1] or 'none'}); "
        f"supported: {', '.join(SUPPORTED_EXTENSIONS)}",
    )


def sample_indices(path, io_options=None):
    """The samples that one file gives under ``io_options``.

    ``[None]`` for a 2D image (and single-frame DICOM), ``[k]`` for the chosen DICOM frame or
    NIfTI slice, every index for ``"all"``.
    """
    options = resolve_io_options(io_options)
    with _opened(path) as (fmt, _, file):
        if fmt == "dicom":
            from . import dicom
            return dicom.sample_indices(file, options)
        if fmt == "nifti":
            from . import nifti
            return nifti.sample_indices(file, options)
    return [None]


def read_sample(path, index=None, io_options=None):
    """Decode one sample of ``path``: a 2D image, or frame/slice ``index`` of a multi-sample file.

    With ``index=None`` a multi-frame DICOM or a 3D NIfTI gives the frame/slice that the io
    options choose; if they choose ``"all"``, an explicit index is required.
    """
    options = resolve_io_options(io_options)
    with _opened(path) as (fmt, mismatch, file):
        if index is None and fmt in ("dicom", "nifti"):
            _, samples = _read_selected(file, fmt, mismatch, options)
            if len(samples) != 1:
                raise ValueError(f"{path}: the io options select {len(samples)} samples; pass index=")
            return samples[0]
        return _read(file, fmt, mismatch, [index], options)[0]


def read_file_samples(path, io_options=None):
    """Every sample that ``path`` gives under ``io_options``, decoding the file once.

    Returns a list of ``(index, Sample)``.
    """
    options = resolve_io_options(io_options)
    with _opened(path) as (fmt, mismatch, file):
        return list(zip(*_read_selected(file, fmt, mismatch, options)))


def _read_selected(file, fmt, mismatch, options):
    """``(indices, samples)`` for the samples that the io options select."""
    # One parse for choosing the samples and decoding them: a DICOM header costs as much as its
    # pixels, and a second dcmread doubled it.
    if fmt == "dicom":
        from .dicom import read_dicom_selected
        indices, decoded = read_dicom_selected(file, options)
        return indices, _samples(decoded, mismatch, options)
    if fmt == "nifti":
        from .nifti import read_nifti_selected
        indices, decoded = read_nifti_selected(file, options)
        return indices, _samples(decoded, mismatch, options)
    return [None], _read(file, fmt, mismatch, [None], options)


def _read(file, fmt, mismatch, indices, options):
    """Decode ``indices`` of the image in ``file`` (its open handle, at its start)."""
    if fmt in ("png", "jpeg", "bmp"):
        from .raster import read_pillow
        decoded = [read_pillow(file, fmt, options["max_pixels"])]
    elif fmt == "tiff":
        from .raster import read_tiff
        decoded = [read_tiff(file, options["max_pixels"])]
    elif fmt == "npy":
        from .numpy_reader import read_npy
        decoded = [read_npy(file, options["max_pixels"])]
    elif fmt == "dicom":
        from .dicom import read_dicom
        decoded = read_dicom(file, indices, options)
    elif fmt == "nifti":
        from .nifti import read_nifti
        decoded = read_nifti(file, indices, options)
    else:  # pragma: no cover - detect_format returns only the formats above
        raise ReadError("unsupported_format", f"no reader for format {fmt}")
    return _samples(decoded, mismatch, options)


def _non_finite_count(array):
    """How many values are NaN or infinite (floats only: NIfTI, float TIFF, .npy)."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _samples(decoded, mismatch, options):
    """Samples from a reader's ``[(array, meta), ...]``: channel policy applied, content facts added."""
    samples = []
    for array, meta in decoded:
        try:
            pixels = apply_channel_policy(array, options["channels"])
        except ValueError as error:
            raise ReadError("unsupported_image", str(error)) from None
        meta = dict(meta)
        # Facts about the decoded content that validation checks (before the channel policy).
        meta["colour"] = bool(array.ndim == 3 and array.shape[2] >= 3 and not is_grey(array[:, :, :3]))
        meta["non_finite"] = _non_finite_count(array)
        meta["constant"] = is_blank(pixels)  # as the content hash marks it: after the channel policy
        meta.setdefault("modality", None)
        meta.setdefault("spacing", None)
        if mismatch:
            meta["extension_mismatch"] = True
        samples.append(Sample(pixels=pixels, meta=meta))
    return samples

"""NIfTI through nibabel: 2D slices of the canonical (RAS+) volume along a configured axis.

The volume is first reoriented with ``nibabel.as_closest_canonical``. A slice is shown as DICOM
shows it (radiological convention): rows run along the second remaining axis with anterior or
superior at the top, columns along the first with the patient's right, or anterior, on the left
(``slice.T[::-1, ::-1]``). So a NIfTI converted from DICOM (dcm2niix) gives the DICOM's picture,
and a model trained on one format sees the other as it saw its training images. A 2D image is
reoriented as a volume of one slice, and a volume one voxel thick along an axis is that one slice
(across that axis, whatever ``io.nifti_axis`` says). 4D volumes need ``io.nifti_volume``; a 4D file with a
single volume is treated as 3D.
"""

import gzip

import numpy as np

from .base import ReadError, check_pixel_count, choose_index


_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_SIZES = {348: "Nifti1Image", 540: "Nifti2Image"}


def _load(file):
    """The NIfTI image in ``file`` (an open binary file at its start), read through that handle.

    ``nib.load(path)`` would open the file three more times (to sniff the format, for the header,
    for the voxels): on a network file system each open is a round trip. Compression is told by
    the gzip magic bytes, not the name, and the header's size tells NIfTI-1 from NIfTI-2.
    """
    import nibabel as nib

    try:
        compressed = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
        sizeof_hdr = stream.read(4)
        stream.seek(0)
        if len(sizeof_hdr) < 4:
            raise ValueError("shorter than a NIfTI header")
        sizes = {int.from_bytes(sizeof_hdr, "little"), int.from_bytes(sizeof_hdr, "big")}
        kinds = [_HEADER_SIZES[size] for size in sizes if size in _HEADER_SIZES]
        if not kinds:
            raise ValueError(f"header size field is {min(sizes)}, not 348 (NIfTI-1) or 540 (NIfTI-2)")
        return getattr(nib, kinds[0]).from_stream(stream)
    except Exception as error:  # nibabel raises HeaderDataError, OSError, EOFError, zlib errors…
        raise ReadError("undecodable", f"not a readable NIfTI file ({type(error).__name__}: {error})") from None


def _volume_shape(image, io_options):
    """Spatial shape (3 axes, or 2) after dropping singleton 4th and higher axes."""
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        # RGB24/RGBA32 voxels (a structured dtype) or complex ones: not one real value a voxel.
        raise ReadError("unsupported_image", f"NIfTI of voxel type {dtype} ({image.header.get_value_label('datatype')}): "
                                             "only single-channel real-valued volumes are read")
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if 0 in shape[:3]:
        # Else "all" slices selects none (and validation had no sample to look at), or every
        # slice is an empty image.
        raise ReadError("unsupported_image",
                        f"NIfTI of shape {shape} holds no image: axis {shape.index(0)} has 0 slices")
    if len(shape) > 4:
        raise ReadError("unsupported_image", f"NIfTI of shape {shape}: only 2D, 3D and 4D volumes are read")
    if len(shape) == 4:
        volume = io_options["nifti_volume"]
        if volume is None:
            raise ReadError(
                "needs_slice_choice",
                f"4D NIfTI of shape {shape} ({shape[3]} volumes): set io.nifti_volume to the volume "
                "index to read (e.g. 0)",
            )
        if not 0 <= volume < shape[3]:
            raise ReadError("index_out_of_range", f"io.nifti_volume = {volume}, the file has {shape[3]} volumes")
    return shape


def sample_indices(file, io_options):
    """``[None]`` for a 2D image, otherwise the slices that ``nifti_slice`` selects."""
    return _selected_slices(_load(file), io_options)


def _selected_slices(image, io_options):
    shape = _volume_shape(image, io_options)
    if len(shape) < 3:
        return [None]
    count = _canonical_shape(image, shape)[_slice_axis(image, shape, io_options)]
    if count == 1:
        return [None]
    return choose_index(io_options["nifti_slice"], count, "slices", "io.nifti_slice")


def _canonical_shape(image, shape):
    import nibabel as nib

    # as_closest_canonical moves input axis i to output axis orientation[i, 0]; the affine alone
    # gives that permutation, so the header suffices (no voxel is read).
    orientation = nib.orientations.io_orientation(image.affine)
    if np.isnan(orientation).any():
        return shape[:3]
    canonical = [0, 0, 0]
    for axis_in in range(3):
        canonical[int(orientation[axis_in, 0])] = shape[axis_in]
    return tuple(canonical)


def read_nifti(file, indices, io_options):
    """Decode slices ``indices`` (None = the only slice); return [(array float32 (H, W), meta), ...]."""
    return _decode(_load(file), indices, io_options)


def read_nifti_selected(file, io_options):
    """The slices that ``nifti_slice`` selects, loading the file once: ``(indices, [(array, meta), ...])``."""
    image = _load(file)
    indices = _selected_slices(image, io_options)
    return indices, _decode(image, indices, io_options)


def _decode(image, indices, io_options):
    import nibabel as nib

    shape = _volume_shape(image, io_options)
    if len(shape) == 2:
        # On the header, before _as_3d reads the pixels.
        check_pixel_count(shape[0], shape[1], io_options["max_pixels"], what="NIfTI image")
    axis = _slice_axis(image, shape, io_options)
    try:
        canonical = nib.as_closest_canonical(_as_3d(image, shape, io_options))
        canonical_shape = canonical.shape[:3]
        in_plane = [a for a in range(3) if a != axis]
        check_pixel_count(canonical_shape[in_plane[0]], canonical_shape[in_plane[1]],
                          io_options["max_pixels"], what="NIfTI slice")
        # Several slices: read the volume once (a .nii.gz proxy would decompress per slice).
        volume = np.asarray(canonical.dataobj, dtype=np.float32) if len(indices) > 1 else canonical.dataobj
        slices = []
        for index in indices:
            position = 0 if index is None else index
            if not 0 <= position < canonical_shape[axis]:
                raise ReadError("index_out_of_range",
                                f"slice {position} requested, axis {axis} has {canonical_shape[axis]} slices")
            slicer = [slice(None)] * 3
            slicer[axis] = position
            plane = np.asarray(volume[tuple(slicer)], dtype=np.float32)
            slices.append(np.ascontiguousarray(plane.T[::-1, ::-1]))
        zooms = canonical.header.get_zooms()
        # The file's own header: the 3D image made of a 2D or 4D file has a new one, of no unit.
        to_mm = _MM_PER_UNIT.get(image.header.get_xyzt_units()[0], 1.0)
        spacing = [float(zooms[in_plane[1]]) * to_mm, float(zooms[in_plane[0]]) * to_mm]  # (row, column), mm
        original = list(shape)
    except ReadError:
        raise
    except Exception as error:  # truncated data, bad gzip stream, unsupported dtype…
        raise ReadError("undecodable", f"NIfTI data could not be read ({type(error).__name__}: {error})") from None
    meta = {"format": "nifti", "modality": None, "bits": 32, "photometric": None,
            "spacing": spacing, "original_shape": original, "axis": axis}
    return [(plane, dict(meta)) for plane in slices]


# The header's spatial unit (xyzt_units), as millimetres: DICOM's PixelSpacing is in mm, and a
# volume in micrometres or metres pooled 800, 0.8 and 0.0008 as one spacing (helper-89). An
# unknown unit is taken as mm, as most tools do.
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}


def _slice_axis(image, shape, io_options):
    """The canonical axis that slices are taken across: io.nifti_axis, except for an image of one
    slice, 2D or 3D with one voxel along an axis, whose slice lies across that axis (the axis
    option would cut it into strips one voxel wide)."""
    if len(shape) == 2:
        return _plane_axis(image)
    thin = [axis for axis, size in enumerate(_canonical_shape(image, shape)) if size == 1]
    return thin[0] if len(thin) == 1 else io_options["nifti_axis"]


def _plane_axis(image):
    """The canonical axis that a 2D image's (missing) third voxel axis becomes.

    A 2D image is read as a volume of one slice, reoriented like any other so that the same
    pixels and affine give the same picture whether stored (X, Y) or (X, Y, 1); its one slice
    lies across this axis, whatever io.nifti_axis says.
    """
    import nibabel as nib

    orientation = nib.orientations.io_orientation(image.affine)
    return 2 if np.isnan(orientation[2, 0]) else int(orientation[2, 0])


def _as_3d(image, shape, io_options):
    """The 3D image to slice: the chosen volume of a 4D file, a 2D image as one slice, or the file itself."""
    import nibabel as nib

    if len(shape) == 3 and len(image.shape) == 3:
        return image
    if len(shape) == 2:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape + (1,))
    elif len(shape) == 3:  # trailing singleton axes
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    else:
        # The volume axis is the 4th: a 5D file's trailing singleton axes (dropped from ``shape``)
        # are indexed at 0, where ``[..., volume]`` would pick from the last of them.
        volume = io_options["nifti_volume"]
        index = (slice(None),) * 3 + (volume,) + (0,) * (len(image.shape) - 4)
        data = np.asarray(image.dataobj[index], dtype=np.float32)
    return nib.Nifti1Image(data, image.affine)

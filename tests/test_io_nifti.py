"""NIfTI reader against nibabel's own files: slices of the canonical volume, as nibabel reports them."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medclassify.io import ReadError, read_file_samples, read_sample, sample_indices

ANATOMICAL = Path(data_path) / "anatomical.nii"
EXAMPLE_4D = Path(data_path) / "example4d.nii.gz"


def expected_slice(path, axis, index, volume=None):
    """The slice as nibabel gives it, in the reader's documented display orientation."""
    data = nib.as_closest_canonical(nib.load(path)).get_fdata()
    if volume is not None:
        data = data[..., volume]
    return np.take(data, index, axis=axis).T[::-1, ::-1]


def test_file_is_loaded_once_per_read(monkeypatch):
    # Choosing the slices and decoding them share one parse of the header.
    import medclassify.io.nifti as nifti_reader
    calls = []
    load = nifti_reader._load
    monkeypatch.setattr(nifti_reader, "_load", lambda path: calls.append(path) or load(path))
    read_sample(ANATOMICAL)
    read_file_samples(EXAMPLE_4D, {"nifti_volume": 0, "nifti_slice": "all"})
    assert len(calls) == 2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_anatomical_middle_slice_along_each_axis(axis):
    canonical_shape = nib.as_closest_canonical(nib.load(ANATOMICAL)).shape
    middle = canonical_shape[axis] // 2
    options = {"nifti_axis": axis}
    assert sample_indices(ANATOMICAL, options) == [middle]
    sample = read_sample(ANATOMICAL, io_options=options)
    assert sample.pixels.dtype == np.float32
    np.testing.assert_allclose(sample.pixels[:, :, 0], expected_slice(ANATOMICAL, axis, middle), rtol=1e-6)


def test_anatomical_is_reoriented_to_canonical():
    # anatomical.nii is stored LAS; the canonical volume is RAS, so the first axis is flipped.
    assert nib.aff2axcodes(nib.load(ANATOMICAL).affine) == ("L", "A", "S")
    raw = np.asarray(nib.load(ANATOMICAL).dataobj, dtype=np.float64)
    sample = read_sample(ANATOMICAL, 5)
    np.testing.assert_allclose(sample.pixels[:, :, 0], raw[::-1, :, 5].T[::-1, ::-1], rtol=1e-6)


def test_a_nifti_converted_from_dicom_gives_the_dicom_picture(tmp_path):
    # A marker at the top left of an axial DICOM (the patient's right, anterior) came out at the top
    # right: the slice was shown in the neurological convention, the DICOM in the radiological one.
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.zeros((6, 8), np.int16)
    pixels[0, 0], pixels[1, 5] = 100, 50
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicom = pydicom.Dataset()
    dicom.file_meta = meta
    dicom.SOPClassUID, dicom.SOPInstanceUID, dicom.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "MR"
    dicom.ImageOrientationPatient, dicom.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 0]
    dicom.Rows, dicom.Columns, dicom.PixelSpacing = 6, 8, [1, 1]
    dicom.SamplesPerPixel, dicom.PhotometricInterpretation = 1, "MONOCHROME2"
    dicom.BitsAllocated, dicom.BitsStored, dicom.HighBit, dicom.PixelRepresentation = 16, 16, 15, 1
    dicom.PixelData = pixels.tobytes()
    dicom.save_as(tmp_path / "axial.dcm", enforce_file_format=True)
    # dcm2niix's layout: voxel (i, j) = DICOM column i, row j, in LPS turned RAS (x and y negated).
    nib.save(nib.Nifti1Image(pixels.T[:, :, None].astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])),
             tmp_path / "axial.nii")
    from_dicom = read_sample(tmp_path / "axial.dcm", io_options={"dicom_window": "none"}).pixels[:, :, 0]
    np.testing.assert_array_equal(from_dicom, pixels)
    np.testing.assert_array_equal(read_sample(tmp_path / "axial.nii").pixels[:, :, 0], from_dicom)


def test_every_slice_and_an_index():
    samples = read_file_samples(ANATOMICAL, {"nifti_slice": "all"})
    depth = nib.load(ANATOMICAL).shape[2]
    assert [i for i, _ in samples] == list(range(depth))
    for index in (0, depth - 1):
        np.testing.assert_allclose(samples[index][1].pixels[:, :, 0], expected_slice(ANATOMICAL, 2, index), rtol=1e-6)
    assert sample_indices(ANATOMICAL, {"nifti_slice": 3}) == [3]
    with pytest.raises(ReadError) as error:
        sample_indices(ANATOMICAL, {"nifti_slice": depth})
    assert error.value.code == "index_out_of_range"


def test_4d_needs_a_volume_choice():
    with pytest.raises(ReadError) as error:
        sample_indices(EXAMPLE_4D, {})
    assert error.value.code == "needs_slice_choice" and "io.nifti_volume" in error.value.message
    options = {"nifti_volume": 1, "nifti_slice": 4}
    sample = read_sample(EXAMPLE_4D, io_options=options)
    np.testing.assert_allclose(sample.pixels[:, :, 0], expected_slice(EXAMPLE_4D, 2, 4, volume=1), rtol=1e-5)
    with pytest.raises(ReadError) as error:
        read_sample(EXAMPLE_4D, io_options={"nifti_volume": 2})
    assert error.value.code == "index_out_of_range"


def test_volume_of_5d_file_with_trailing_singleton_axis(tmp_path):
    # Shape (6, 5, 4, 3, 1): the volumes are the 4th axis, the 5th is a singleton to drop.
    data = np.arange(6 * 5 * 4 * 3, dtype=np.float32).reshape(6, 5, 4, 3, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "five.nii")
    for volume in range(3):
        sample = read_sample(tmp_path / "five.nii", io_options={"nifti_volume": volume})
        np.testing.assert_array_equal(sample.pixels[:, :, 0], data[:, :, 2, volume, 0].T[::-1, ::-1])


def test_two_dimensional_nifti(tmp_path):
    plane = np.arange(30, dtype=np.int16).reshape(5, 6)
    nib.save(nib.Nifti1Image(plane, np.eye(4)), tmp_path / "plane.nii.gz")
    assert sample_indices(tmp_path / "plane.nii.gz", {}) == [None]
    np.testing.assert_array_equal(read_sample(tmp_path / "plane.nii.gz").pixels[:, :, 0], plane.T[::-1, ::-1])


def test_two_dimensional_nifti_is_reoriented_like_a_volume_of_one_slice(tmp_path):
    # LAS, the common radiological storage order, with a row spacing of 3 and a column spacing of 2.
    plane = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    affine = np.diag([-2.0, 3.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(plane, affine), tmp_path / "plane.nii")
    nib.save(nib.Nifti1Image(plane[:, :, None], affine), tmp_path / "slice.nii")
    flat, volume = read_sample(tmp_path / "plane.nii"), read_sample(tmp_path / "slice.nii")
    np.testing.assert_array_equal(flat.pixels, volume.pixels)
    np.testing.assert_array_equal(flat.pixels[:, :, 0], plane.T[::-1, :])  # LAS: displayed as stored, rows flipped
    assert flat.meta["spacing"] == volume.meta["spacing"] == [3.0, 2.0]


@pytest.mark.parametrize("shape", [(10, 12, 1), (10, 12), (10, 12, 3, 2)])  # 3D, 2D and 4D (helper-91)
@pytest.mark.parametrize("unit, scale", [("mm", 1.0), ("micron", 1000.0), ("meter", 0.001), ("unknown", 1.0)])
def test_spacing_is_in_millimetres_whatever_unit_the_header_states(tmp_path, unit, scale, shape):
    # Zooms were taken as they are: the same 0.5 x 0.8 mm pixels read as 800 and 500 in
    # micrometres, pooled with millimetres in the fingerprint (helper-89).
    image = nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([0.8 * scale, 0.5 * scale, 1.0 * scale, 1.0]))
    image.header.set_xyzt_units(xyz=unit)
    nib.save(image, tmp_path / "a.nii")
    sample = read_sample(tmp_path / "a.nii", None, {"nifti_volume": 0} if len(shape) == 4 else None)
    np.testing.assert_allclose(sample.meta["spacing"], [0.5, 0.8], rtol=1e-6)


@pytest.mark.parametrize("stored, affine, io_options", [
    ((64, 48, 1), [[-0.5, 0, 0, 0], [0, 0, 1, 0], [0, -0.5, 0, 0], [0, 0, 0, 1]], {}),  # a coronal plane
    ((64, 1, 48), np.eye(4), {}),
    ((64, 48, 1), np.eye(4), {"nifti_axis": 0}),
])
def test_a_volume_of_one_slice_is_that_slice_whatever_its_plane(tmp_path, stored, affine, io_options):
    # nifti_axis cut a coronal (X, Y, 1) file into one strip a voxel wide, with a warning only (helper-76).
    plane = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    affine = np.asarray(affine, dtype=float)
    nib.save(nib.Nifti1Image(plane.reshape(stored), affine), tmp_path / "slice.nii")
    flat_affine = affine if stored[2] == 1 else affine[:, [0, 2, 1, 3]]  # the one-voxel axis last
    nib.save(nib.Nifti1Image(plane, flat_affine), tmp_path / "plane.nii")
    assert sample_indices(tmp_path / "slice.nii", io_options) == [None]
    volume = read_sample(tmp_path / "slice.nii", io_options=io_options)
    assert volume.pixels.shape[:2] in ((48, 64), (64, 48))
    np.testing.assert_array_equal(volume.pixels, read_sample(tmp_path / "plane.nii").pixels)


@pytest.mark.parametrize("shape, axis", [((16, 16, 0), 2), ((0, 16, 16), 0), ((16, 0), 1), ((16, 0, 16, 2, 1), 1)])
def test_zero_length_axis_is_an_error(tmp_path, shape, axis):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), tmp_path / "empty.nii")
    with pytest.raises(ReadError) as error:
        read_file_samples(tmp_path / "empty.nii", {"nifti_slice": "all", "nifti_volume": 0})
    assert error.value.code == "unsupported_image"
    assert error.value.message == f"NIfTI of shape {shape[:4]} holds no image: axis {axis} has 0 slices"


def test_scaling_is_applied(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header.set_slope_inter(2.0, -10.0)
    nib.save(image, tmp_path / "scaled.nii")
    sample = read_sample(tmp_path / "scaled.nii", 1)
    np.testing.assert_allclose(sample.pixels[:, :, 0], (volume[:, :, 1] * 2.0 - 10.0).T[::-1, ::-1])


def test_truncated_gzip_is_undecodable(tmp_path):
    data = gzip.compress(ANATOMICAL.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "cut.nii.gz")
    assert error.value.code == "undecodable"


def test_nifti2_and_compression_are_told_by_content(tmp_path):
    # NIfTI-2 by its 540-byte header, gzip by its magic bytes, whatever the name says.
    nifti2 = Path(data_path) / "example_nifti2.nii.gz"
    assert nib.load(nifti2).header.sizeof_hdr == 540
    middle = nib.as_closest_canonical(nib.load(nifti2)).shape[2] // 2
    np.testing.assert_allclose(read_sample(nifti2, io_options={"nifti_volume": 1}).pixels[:, :, 0],
                               expected_slice(nifti2, 2, middle, volume=1), rtol=1e-6)
    misnamed = tmp_path / "compressed.nii"
    misnamed.write_bytes(gzip.compress(ANATOMICAL.read_bytes()))
    np.testing.assert_array_equal(read_sample(misnamed, 5).pixels, read_sample(ANATOMICAL, 5).pixels)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:200], "NIfTI"),
    (lambda data: (999).to_bytes(4, "little") + data[4:], "header size field is 999"),
    (lambda data: data[: len(data) // 2], "NIfTI"),
], ids=["short_header", "bad_header_size", "truncated_voxels"])
def test_damaged_uncompressed_file_is_undecodable(tmp_path, damage, message):
    path = tmp_path / "damaged.nii"
    path.write_bytes(damage(ANATOMICAL.read_bytes()))
    with pytest.raises(ReadError) as error:
        read_sample(path)
    assert error.value.code == "undecodable" and message in error.value.message


@pytest.mark.parametrize("dtype", [np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), np.dtype(np.complex64)])
def test_colour_or_complex_voxels_are_an_unsupported_image(tmp_path, dtype):
    # An RGB24 volume (which nibabel loads) was "undecodable" after a cast error deep in the reader.
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), dtype=dtype), np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "v.nii")
    assert error.value.code == "unsupported_image" and "single-channel real-valued" in error.value.message

"""DICOM reader against the files pydicom ships: values must equal what pydicom itself computes."""

import threading
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from medclassify.io import ReadError, read_file_samples, read_sample, sample_indices
from medclassify.io.dicom import WINDOW_PRESETS, _apply_window
from medclassify.manifest import decode_files, inspect_image_file, validate_manifest, write_validation_outputs
from medclassify.privacy import IDENTIFYING_DICOM_KEYWORDS
from tests.badinput_corpus import DICOM_SECRETS, write_identified_dicom_dataset

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def shipped(name):
    return TEST_FILES / name


def linear_window(values, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto [0, 1], written out independently of pydicom."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_ct_small_in_hounsfield_units():
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    expected = apply_modality_lut(ds.pixel_array, ds)
    sample = read_sample(shipped("CT_small.dcm"), io_options={"dicom_window": "none"})
    assert sample.pixels.dtype == np.float32 and sample.pixels.shape == (128, 128, 1)
    np.testing.assert_allclose(sample.pixels[:, :, 0], expected, rtol=0, atol=1e-3)
    assert sample.meta["units"] == "HU" and sample.meta["modality"] == "CT"
    assert sample.pixels.min() == pytest.approx(expected.min()) and sample.pixels.max() == pytest.approx(expected.max())
    # CT_small holds no window, so "file" keeps modality units too.
    np.testing.assert_array_equal(read_sample(shipped("CT_small.dcm")).pixels, sample.pixels)


def test_mr_small_file_window_matches_pydicom():
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    # pydicom maps the window onto the stored signed 16-bit range; rescale that to [0, 1].
    low, high = -(2 ** 15), 2 ** 15 - 1
    expected = (voi - low) / (high - low)
    sample = read_sample(shipped("MR_small.dcm"))
    np.testing.assert_allclose(sample.pixels[:, :, 0], expected, atol=1e-6)
    assert sample.meta["window"] == {"center": 600.0, "width": 1600.0, "function": "LINEAR"}
    np.testing.assert_allclose(sample.pixels[:, :, 0], linear_window(ds.pixel_array.astype(float), 600, 1600), atol=1e-6)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_compressed_and_other_encodings_of_mr_small_decode_identically(name):
    reference = read_sample(shipped("MR_small.dcm"), io_options={"dicom_window": "none"}).pixels
    sample = read_sample(shipped(name), io_options={"dicom_window": "none"})
    np.testing.assert_array_equal(sample.pixels, reference)


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_ct_window_presets(preset):
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    center, width = WINDOW_PRESETS[preset]
    sample = read_sample(shipped("CT_small.dcm"), io_options={"dicom_window": preset})
    np.testing.assert_allclose(sample.pixels[:, :, 0], linear_window(hu, center, width), atol=1e-6)
    assert 0.0 <= sample.pixels.min() and sample.pixels.max() <= 1.0


def test_explicit_window():
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    sample = read_sample(shipped("CT_small.dcm"), io_options={"dicom_window": {"center": 100, "width": 700}})
    np.testing.assert_allclose(sample.pixels[:, :, 0], linear_window(hu, 100, 700), atol=1e-6)


def _pydicom_window(values, center, width, function):
    unit = pydicom.Dataset()
    unit.PhotometricInterpretation, unit.BitsStored, unit.PixelRepresentation = "MONOCHROME2", 1, 0
    unit.WindowCenter, unit.WindowWidth, unit.VOILUTFunction = center, width, function
    return apply_windowing(values, unit)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center, width", [(40.0, 400.0), (-600.0, 1500.0), (0.5, 1.0), (100.0, 2.0), (7.25, 0.5)])
def test_window_is_bit_for_bit_pydicom(function, center, width):
    # The values straddle each window's thresholds: the edges of LINEAR and LINEAR_EXACT, exactly.
    rng = np.random.default_rng(0)
    edges = [center + k * width / 2 + offset for k in (-1, 0, 1) for offset in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    values = np.concatenate([rng.normal(center, width, 5000), edges, np.round(rng.normal(center, width, 500))])
    if width < 1 and function == "LINEAR":
        with pytest.raises(ReadError, match="width of at least 1"):
            _apply_window(values, center, width, function)
        return
    np.testing.assert_array_equal(_apply_window(values.copy(), center, width, function),
                                  _pydicom_window(values.copy(), center, width, function))


def test_window_leaves_its_input_unchanged():
    values = np.linspace(-1000.0, 1000.0, 101)
    _apply_window(values, 40.0, 400.0, "LINEAR")
    np.testing.assert_array_equal(values, np.linspace(-1000.0, 1000.0, 101))


def test_single_frame_file_is_parsed_once(monkeypatch):
    import medclassify.io.dicom as dicom_reader
    calls = []
    parse = dicom_reader._dcmread
    monkeypatch.setattr(dicom_reader, "_dcmread", lambda path, stop_before_pixels: calls.append(path) or
                        parse(path, stop_before_pixels))
    read_sample(shipped("CT_small.dcm"))
    read_file_samples(shipped("MR_small.dcm"))
    assert len(calls) == 2


def test_a_fixed_window_on_an_unwindowed_monochrome1_is_refused_and_the_io_window_is_the_way(tmp_path):
    # Mirrored, its values are no modality units: preprocess.intensity window made CT_small all black (helper-74).
    from medclassify.preprocessing import intensity_input_problem, preprocess_image

    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    preprocess = {"size": [32, 32], "resize": "area", "aspect": "stretch", "intensity": "window",
                  "percentiles": [0.5, 99.5], "window": {"center": 40, "width": 400}}
    unwindowed = {"dicom_window": "none"}
    sample = read_sample(tmp_path / "mono1.dcm", io_options=unwindowed)
    code, message = intensity_input_problem(sample.pixels, sample.meta, preprocess, unwindowed)
    assert code == "mirrored_units" and "io.dicom_window {center, width}" in message
    assert sample.meta["units"] == "HU, mirrored"
    plain = read_sample(shipped("CT_small.dcm"), io_options=unwindowed)
    assert intensity_input_problem(plain.pixels, plain.meta, preprocess, unwindowed) is None
    windowed = {"dicom_window": {"center": 40, "width": 400}}
    mono1 = read_sample(tmp_path / "mono1.dcm", io_options=windowed)
    np.testing.assert_allclose(np.squeeze(mono1.pixels), 1 - preprocess_image(plain.pixels, {**preprocess, "size": [128, 128]})[..., 0],
                               atol=3e-3)  # DICOM LINEAR (c - 0.5, w - 1) against the exact window


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    windowed = read_sample(shipped("MR_small.dcm")).pixels
    np.testing.assert_allclose(read_sample(tmp_path / "mono1.dcm").pixels, 1.0 - windowed, atol=1e-6)
    raw = read_sample(shipped("MR_small.dcm"), io_options={"dicom_window": "none"}).pixels
    inverted = read_sample(tmp_path / "mono1.dcm", io_options={"dicom_window": "none"}).pixels
    np.testing.assert_array_equal(inverted, (-(2 ** 15)) + (2 ** 15 - 1) - raw)


def test_multi_frame_middle_index_and_all():
    ds = pydicom.dcmread(shipped("rtdose.dcm"))
    frames = ds.pixel_array
    assert frames.shape[0] == 15
    assert sample_indices(shipped("rtdose.dcm"), {}) == [7]
    assert sample_indices(shipped("rtdose.dcm"), {"dicom_frame": 3}) == [3]
    samples = read_file_samples(shipped("rtdose.dcm"), {"dicom_frame": "all"})
    assert [index for index, _ in samples] == list(range(15))
    for index, sample in samples:
        np.testing.assert_array_equal(sample.pixels[:, :, 0], apply_modality_lut(frames[index], ds).astype(np.float32))
    np.testing.assert_array_equal(read_sample(shipped("rtdose.dcm"), 4).pixels, samples[4][1].pixels)
    with pytest.raises(ReadError) as error:
        sample_indices(shipped("rtdose.dcm"), {"dicom_frame": 15})
    assert error.value.code == "index_out_of_range"


def test_colour_multi_frame_and_palette():
    ds = pydicom.dcmread(shipped("examples_ybr_color.dcm"))
    sample = read_sample(shipped("examples_ybr_color.dcm"), 0)
    np.testing.assert_allclose(sample.pixels, ds.pixel_array[0] / 255.0, atol=1e-6)
    palette = read_sample(shipped("examples_palette.dcm"))
    assert palette.pixels.shape == (350, 800, 3) and 0 <= palette.pixels.min() and palette.pixels.max() <= 1
    grey = read_sample(shipped("examples_ybr_color.dcm"), 0, {"channels": "rgb_to_grey"})
    assert grey.pixels.shape[2] == 1


@pytest.mark.parametrize("name, code", [("MR_truncated.dcm", "undecodable"), ("rtplan.dcm", "no_pixel_data"),
                                         ("no_meta.dcm", "undecodable")])
def test_broken_dicom_files(name, code):
    with pytest.raises(ReadError) as error:
        read_sample(shipped(name))
    assert error.value.code == code


def test_a_private_transfer_syntax_is_named(tmp_path):
    # GE's private syntax was reported as "unexpected ValueError while decoding".
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.113619.5.2"
    ds.save_as(tmp_path / "private.dcm")
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "private.dcm")
    assert error.value.code == "compressed_unsupported"
    assert "transfer syntax 1.2.840.113619.5.2 is a vendor's private syntax" in str(error.value)


def test_missing_decoder_names_the_transfer_syntax(monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-rle (not installed)"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ReadError) as error:
        read_sample(shipped("MR_small_RLE.dcm"))
    assert error.value.code == "compressed_unsupported"
    assert "RLE Lossless" in error.value.message and "1.2.840.10008.1.2.5" in error.value.message


SECRETS = DICOM_SECRETS


def identified_dicom(path, source="CT_small.dcm", truncate=False):
    ds = pydicom.dcmread(shipped(source))
    for keyword, value in SECRETS.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    if truncate:
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) - 500])
    return path


def test_no_identifying_value_reaches_metadata_or_messages(tmp_path):
    assert set(SECRETS) <= set(IDENTIFYING_DICOM_KEYWORDS)
    sample = read_sample(identified_dicom(tmp_path / "id.dcm"))
    text = repr(sample.meta)
    for value in SECRETS.values():
        assert value not in text
    with pytest.raises(ReadError) as error:
        read_sample(identified_dicom(tmp_path / "id_truncated.dcm", truncate=True))
    for value in SECRETS.values():
        assert value not in str(error.value)


def test_invalid_identifying_values_are_not_echoed_in_warnings(tmp_path):
    # pydicom checks a value when it is first read and warns with the value in the message
    # ("Invalid value for VR UI: '1.2.3.SECRETUID'"); the rule's log would keep it.
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    invalid = {"StudyInstanceUID": "1.2.3.SECRETUID", "PatientBirthDate": "SECRETDAY"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns, with the value, as it is set
        for keyword, value in invalid.items():
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / "id.dcm")
    data = (tmp_path / "id.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 500])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_sample(tmp_path / "id.dcm")
        with pytest.raises(ReadError) as error:
            read_sample(tmp_path / "cut.dcm")
    said = " ".join(str(w.message) for w in caught) + str(error.value)
    assert not any(value in said for value in invalid.values()), said


def test_invalid_identifying_values_are_not_echoed_when_threads_decode_at_once(tmp_path):
    # With another thread alive, decoding runs in a thread pool, and each read's catch_warnings
    # swapped the process's filters under the others: a helper's run leaked about one value in three.
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    invalid = {"StudyInstanceUID": "1.2.3.THREADSECRET", "PatientBirthDate": "THREADDAY"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in invalid.items():
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / "id.dcm")
    data = (tmp_path / "id.dcm").read_bytes()
    paths = []
    for k in range(60):
        paths.append(tmp_path / f"cut{k}.dcm")
        paths[-1].write_bytes(data[: len(data) - 500 - k])
        # Read alongside: Pillow's reader silenced a warning of its own the same way (helper-42), and
        # nibabel does around a scaled NIfTI (helper-45).
        paths.append(tmp_path / f"image{k}.jpg")
        Image.fromarray(np.full((8, 8), k, dtype=np.uint8)).save(paths[-1])
        paths.append(tmp_path / f"scaled{k}.nii")
        scaled = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(8, 8, 1), np.eye(4))
        scaled.header.set_slope_inter(0.5, 10)
        nib.save(scaled, paths[-1])
    idle = threading.Event()
    other = threading.Thread(target=idle.wait, daemon=True)
    other.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                decode_files(paths, None, threads=8)
    finally:
        idle.set()
    said = " ".join(str(w.message) for w in caught)
    assert not any(value in said for value in invalid.values()), said


def test_validation_outputs_carry_no_identifying_value(tmp_path):
    manifest, secrets = write_identified_dicom_dataset(tmp_path / "data", n_patients=4, images_per_patient=1)
    out = tmp_path / "results"
    for drop in (False, True):
        result = validate_manifest(manifest, tmp_path / "data", io_options={}, salt="s",
                                   validation_options={"drop_invalid": drop, "min_images_per_class": 1})
        write_validation_outputs(result, out / "m.csv", out / "r.json", out / "r.md")
        written = "".join(p.read_text() for p in out.iterdir())
        assert "undecodable" in written
        for secret in secrets:
            assert secret not in written
    assert (out / "m.csv").exists()


def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi

    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    del ds.WindowCenter
    del ds.WindowWidth
    item = Dataset()
    first, entries = 0, 4096
    item.LUTDescriptor = [entries, first, 16]
    curve = (np.sqrt(np.linspace(0, 1, entries)) * 65535).astype("<u2")  # a non-linear VOI LUT
    item.add_new("LUTData", "OW", curve.tobytes())
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "voilut.dcm")
    reread = pydicom.dcmread(tmp_path / "voilut.dcm")
    expected = apply_voi(apply_modality_lut(reread.pixel_array, reread), reread) / 65535.0
    sample = read_sample(tmp_path / "voilut.dcm")
    assert sample.meta["window"] == "voi_lut"
    np.testing.assert_allclose(sample.pixels[:, :, 0], expected, atol=1e-6)


def test_per_frame_rescale_of_enhanced_multi_frame(tmp_path):
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(shipped("rtdose.dcm"))
    groups = []
    for k in range(int(ds.NumberOfFrames)):
        transform = Dataset()
        transform.RescaleSlope = k + 1
        transform.RescaleIntercept = -k
        transform.RescaleType = "US"
        group = Dataset()
        group.PixelValueTransformationSequence = [transform]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.save_as(tmp_path / "enhanced.dcm")
    frames = ds.pixel_array.astype(np.float64)
    for k in (0, 5, 14):
        sample = read_sample(tmp_path / "enhanced.dcm", k, {"dicom_window": "none"})
        np.testing.assert_allclose(sample.pixels[:, :, 0], frames[k] * (k + 1) - k, rtol=1e-6)


def ct_small_with(path, stored=None, **values):
    """CT_small.dcm saved to ``path`` with attributes set to ``values`` (None: present, empty).

    ``stored`` maps a keyword to (placeholder, text): for a value pydicom refuses to set, the
    keyword gets the valid placeholder, whose bytes the saved file then has replaced by ``text``.
    """
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    for keyword, (placeholder, _) in (stored or {}).items():
        setattr(ds, keyword, placeholder)
    ds.save_as(path)
    data = Path(path).read_bytes()
    for placeholder, text in (stored or {}).values():
        assert len(placeholder) == len(text) and data.count(placeholder.encode()) == 1
        data = data.replace(placeholder.encode(), text.encode())
    Path(path).write_bytes(data)
    return path


@pytest.mark.parametrize("empty", ["WindowCenter", "WindowWidth"])
def test_empty_window_attribute_reads_as_no_window(tmp_path, empty):
    path = ct_small_with(tmp_path / "w.dcm", **dict({"WindowCenter": 40, "WindowWidth": 400}, **{empty: None}))
    reread = pydicom.dcmread(path)
    hu = apply_modality_lut(reread.pixel_array, reread)
    np.testing.assert_array_equal(apply_voi_lut(hu, reread), hu)  # pydicom skips the window too
    sample = read_sample(path)
    assert sample.meta["window"] is None and sample.meta["units"] == "HU"
    np.testing.assert_array_equal(sample.pixels, read_sample(shipped("CT_small.dcm")).pixels)


def test_malformed_pixel_spacing_leaves_spacing_unknown(tmp_path):
    path = ct_small_with(tmp_path / "s.dcm", stored={"PixelSpacing": ("0.5\\0.77", "0.5\\abcd")})
    sample = read_sample(path)
    assert sample.meta["spacing"] is None
    np.testing.assert_array_equal(sample.pixels, read_sample(shipped("CT_small.dcm")).pixels)


def test_empty_rescale_attribute_is_its_identity_value(tmp_path):
    # An empty slope is 1, so CT_small's intercept of -1024 still gives Hounsfield units.
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    no_slope = read_sample(ct_small_with(tmp_path / "slope.dcm", RescaleSlope=None), io_options={"dicom_window": "none"})
    np.testing.assert_array_equal(no_slope.pixels[:, :, 0], ds.pixel_array.astype(np.float32) - 1024)
    # An empty intercept is 0, and the slope still applies.
    no_intercept = read_sample(ct_small_with(tmp_path / "intercept.dcm", RescaleSlope=2, RescaleIntercept=None),
                               io_options={"dicom_window": "none"})
    np.testing.assert_array_equal(no_intercept.pixels[:, :, 0], ds.pixel_array.astype(np.float32) * 2)


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
def test_rescale_attribute_that_is_not_a_number_is_an_error_naming_it(tmp_path, keyword):
    path = ct_small_with(tmp_path / "r.dcm", stored={keyword: ("1.2345", "xyzabc")})
    with pytest.raises(ReadError) as error:
        read_sample(path, io_options={"dicom_window": "none"})
    assert error.value.code == "undecodable"
    assert error.value.message == f"invalid {keyword} value 'xyzabc': not a finite number"
    # Validation reports that message, not "unexpected TypeError while decoding".
    assert inspect_image_file(path, {})["message"] == error.value.message


@pytest.mark.parametrize("keyword, placeholder, text", [("WindowCenter", "40.25", "40,25"),
                                                        ("WindowWidth", "400.5", "400,5")])
def test_window_stored_as_invalid_text_is_an_error_naming_it(tmp_path, keyword, placeholder, text):
    # A decimal comma: pydicom keeps the text, whose first character is a valid number.
    path = ct_small_with(tmp_path / "w.dcm", stored={keyword: (placeholder, text)},
                         **{"WindowCenter": 40, "WindowWidth": 400})
    assert pydicom.dcmread(path)[keyword].value == text
    with pytest.raises(ReadError) as error:
        read_sample(path)
    assert error.value.code == "undecodable"
    assert error.value.message == f"invalid {keyword} value {text!r}: not a finite number"


def test_a_decoder_failure_is_told_on_one_line():
    # The plugins' failures came one a line, three lines of one problem in validate's output (helper-74).
    try:
        read_sample(shipped("JPEG-lossy.dcm"))  # 12-bit JPEG Extended: no installed plugin decodes it
    except ReadError as error:
        assert "\n" not in str(error) and "plugins: pylibjpeg" in str(error)
    else:
        pytest.skip("a decoder for 12-bit JPEG Extended is installed")

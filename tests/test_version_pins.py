"""The version numbers that let caches be reused are pinned to the outputs they stand for.

Two caches reuse earlier work by a version number instead of recomputing it:

- validation's decode cache keeps each file's decoded summary (content hash, shape, spacing…) under
  ``medclassify.manifest.DECODE_CACHE_VERSION``; the HDF5 cache then reuses the stored images of
  files by that content hash;
- the HDF5 cache reuses image blocks whose values hash (which holds
  ``medclassify.preprocessing.PREPROCESSING_VERSION``) matches, and ``predict`` refuses a model
  trained under another preprocessing version.

A change to a reader or to the preprocessing that alters their output without bumping the
version would leave both caches serving the old output, silently. These tests record the outputs
over a fixed, generated corpus under the version they belong to, so such a change fails here.
After a deliberate change: bump the version, then replace the file in ``tests/golden/`` with the
record that the failure message prints.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medclassify.config import load_config
from medclassify.manifest import DECODE_CACHE_VERSION, inspect_image_file
from medclassify.preprocessing import PREPROCESSING_VERSION, preprocess_image, to_storage

GOLDEN = Path(__file__).parent / "golden"
DEFAULTS = load_config()
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                 "SC_rgb_small_odd.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm", "examples_palette.dcm",
                 "examples_ybr_color.dcm")
NIBABEL_FILES = ("anatomical.nii", "example4d.nii.gz", "standard.nii.gz")


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _mismatch_message(name, version_name, record):
    return (f"the {name} output differs from tests/golden/{name}.json. If the change is deliberate, bump "
            f"{version_name} (caches built under the old version must not be reused) and write this record "
            f"to that file:\n{json.dumps(record, indent=1, sort_keys=True)}")


def _reader_corpus(folder):
    """Files of every format and layout the readers take, written deterministically; name -> path."""
    import nibabel
    import pydicom
    import tifffile

    rng = np.random.default_rng(20261206)
    grey8 = rng.integers(0, 256, (23, 31), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (19, 27), dtype=np.uint16)
    rgb8 = rng.integers(0, 256, (17, 21, 3), dtype=np.uint8)
    files = {}

    def write(name, save):
        files[name] = folder / name
        save(files[name])

    write("grey8.png", lambda p: Image.fromarray(grey8).save(p))
    write("grey16.png", lambda p: Image.fromarray(grey16).save(p))
    write("rgb8.png", lambda p: Image.fromarray(rgb8).save(p))
    write("rgba8.png", lambda p: Image.fromarray(np.dstack([rgb8, rgb8[..., :1]])).save(p))
    write("palette.png", lambda p: Image.fromarray(rgb8).convert("P").save(p))
    write("grey.jpg", lambda p: Image.fromarray(grey8).save(p, quality=90))
    write("rgb.jpg", lambda p: Image.fromarray(rgb8).save(p, quality=90))
    write("rgb.bmp", lambda p: Image.fromarray(rgb8).save(p))
    write("grey16.tif", lambda p: tifffile.imwrite(p, grey16))
    write("float32.tif", lambda p: tifffile.imwrite(p, grey16.astype(np.float32) / 7 - 1000))
    write("planar.tif", lambda p: tifffile.imwrite(p, np.moveaxis(rgb8, -1, 0), photometric="rgb", planarconfig="separate"))
    write("miniswhite.tif", lambda p: tifffile.imwrite(p, grey8, photometric="miniswhite"))
    write("pages.tif", lambda p: tifffile.imwrite(p, np.stack([grey8, grey8[::-1]])))
    write("bilevel.tif", lambda p: tifffile.imwrite(p, grey8 > 127, photometric="minisblack"))
    write("bool.npy", lambda p: np.save(p, grey8 > 127))
    write("float64.npy", lambda p: np.save(p, grey16.astype(np.float64) * 0.25))
    write("uint16.npy", lambda p: np.save(p, grey16))
    dicom_data = Path(pydicom.__file__).parent / "data" / "test_files"
    files.update({name: dicom_data / name for name in PYDICOM_FILES})
    nibabel_data = Path(nibabel.__file__).parent / "tests" / "data"
    files.update({name: nibabel_data / name for name in NIBABEL_FILES})
    return files


READER_OPTIONS = {
    "default": {},
    "rgb_to_grey, frame 0, axis 0, slice 3, volume 1": {"channels": "rgb_to_grey", "dicom_frame": 0, "nifti_axis": 0,
                                                       "nifti_slice": 3, "nifti_volume": 1},
    "grey_to_rgb, every frame and slice, no window, volume 0": {"channels": "grey_to_rgb", "dicom_frame": "all",
                                                               "nifti_slice": "all", "dicom_window": "none",
                                                               "nifti_volume": 0},
    "CT lung window, volume 1": {"dicom_window": "ct_lung", "nifti_volume": 1},
}


def test_decoded_files_are_those_recorded_for_this_decode_cache_version(tmp_path):
    files = _reader_corpus(tmp_path)
    summaries = {}
    for label, options in READER_OPTIONS.items():
        io_options = {**DEFAULTS["io"], **options}
        for name, path in sorted(files.items()):
            summary = inspect_image_file(str(path), io_options)
            summaries[f"{label}: {name}"] = summary
    unreadable = {key: summary for key, summary in summaries.items() if not summary["ok"]}
    assert len(unreadable) <= 1, unreadable  # a corpus of decoded images, not of errors: a 4D NIfTI read by default
    record = {"decode_cache_version": DECODE_CACHE_VERSION,
              "files": {key: _digest(summary) for key, summary in summaries.items()}}
    recorded = json.loads((GOLDEN / "decoded_files.json").read_text())
    assert record == recorded, _mismatch_message("decoded_files", "medclassify.manifest.DECODE_CACHE_VERSION", record)


def _preprocessing_inputs():
    rng = np.random.default_rng(7)
    return {
        "uint8 grey 40x30": rng.integers(0, 256, (40, 30), dtype=np.uint8),
        "uint16 grey 37x53": rng.integers(0, 4096, (37, 53), dtype=np.uint16),
        "float32 HU 50x50 with NaN": np.where(rng.random((50, 50)) < 0.01, np.nan,
                                              rng.normal(0, 400, (50, 50))).astype(np.float32),
        "uint8 RGB 20x33": rng.integers(0, 256, (20, 33, 3), dtype=np.uint8),
        "constant 9x9": np.full((9, 9), 17, dtype=np.uint8),
    }


PREPROCESS_OPTIONS = {
    "default": {},
    "minmax, stretch, bilinear": {"intensity": "minmax", "aspect": "stretch", "resize": "bilinear"},
    "window, crop, bicubic, float16": {"intensity": "window", "window": {"center": 40, "width": 400},
                                       "aspect": "crop", "resize": "bicubic", "dtype": "float16"},
    "zscore, pad, lanczos, 24x40": {"intensity": "zscore", "resize": "lanczos", "size": [24, 40]},
    "none, nearest, 16x16": {"intensity": "none", "resize": "nearest", "size": [16, 16]},
    "percentile 2-98, stretch, area, 33x17": {"percentiles": [2, 98], "aspect": "stretch", "size": [33, 17]},
}


def test_preprocessed_images_are_those_recorded_for_this_preprocessing_version():
    digests = {}
    for label, options in PREPROCESS_OPTIONS.items():
        preprocess = {**DEFAULTS["preprocess"], **options}
        for name, pixels in _preprocessing_inputs().items():
            stored = to_storage(preprocess_image(pixels, preprocess), preprocess["dtype"])
            digests[f"{label}: {name}"] = hashlib.sha256(
                f"{stored.dtype.str}|{stored.shape}|".encode() + stored.tobytes()).hexdigest()[:16]
    record = {"preprocessing_version": PREPROCESSING_VERSION, "images": digests}
    recorded = json.loads((GOLDEN / "preprocessed_images.json").read_text())
    assert record == recorded, _mismatch_message("preprocessed_images", "medclassify.preprocessing.PREPROCESSING_VERSION",
                                                 record)

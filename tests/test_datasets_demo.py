"""The synthetic demo dataset: formats, manifest, determinism and difficulty."""

import hashlib
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.pixels import apply_modality_lut
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medclassify.datasets.demo import (
    CLASSES,
    DEMO_IDENTIFYING_VALUES,
    MANIFEST_COLUMNS,
    generate_demo_dataset,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    started = time.perf_counter()
    manifest_path = generate_demo_dataset(out, n_patients=60, seed=0)
    elapsed = time.perf_counter() - started
    return out, manifest_path, pd.read_csv(manifest_path, dtype=str), elapsed


def _load_grey(path):
    """Read a demo image as float (modality units for DICOM, the middle slice for NIfTI)."""
    name = str(path)
    if name.endswith(".dcm"):
        ds = pydicom.dcmread(path)
        return apply_modality_lut(ds.pixel_array, ds).astype(float)
    if name.endswith(".nii.gz"):
        volume = np.asarray(nib.load(path).dataobj)
        return volume[:, :, volume.shape[2] // 2].astype(float)
    if name.endswith(".tif"):
        return tifffile.imread(path).astype(float)
    return np.asarray(Image.open(path)).astype(float)


def _file_digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_manifest_columns_and_paths(demo):
    out, manifest_path, manifest, elapsed = demo
    assert manifest_path == out / "manifest.csv"
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert 180 <= len(manifest) <= 300  # about four images per patient
    assert manifest["patient"].nunique() == 60
    assert not manifest.isna().any().any()
    for relative in manifest["path"]:
        assert not relative.startswith("/")
        assert (out / relative).is_file(), relative
    assert manifest["path"].is_unique
    assert elapsed < 20, f"generation took {elapsed:.1f} s"


def test_label_is_per_patient_and_classes_are_balanced(demo):
    _, _, manifest, _ = demo
    per_patient = manifest.groupby("patient")[["label", "modality", "site", "sex"]].nunique()
    assert (per_patient == 1).all().all()
    images_per_patient = manifest.groupby("patient").size()
    assert images_per_patient.min() >= 2
    patients_per_class = manifest.drop_duplicates("patient")["label"].value_counts()
    assert set(patients_per_class.index) == set(CLASSES)
    assert patients_per_class.max() - patients_per_class.min() <= 1
    # Every modality sees every class, so per-modality metrics are defined.
    assert (manifest.groupby("modality")["label"].nunique() == len(CLASSES)).all()
    assert set(manifest["modality"]) == {"US", "XR", "CT", "MR"}
    assert set(manifest["sex"]) == {"F", "M"}
    assert manifest["site"].nunique() >= 2


def test_formats_are_real_and_mixed(demo):
    out, _, manifest, _ = demo
    suffixes = manifest["path"].str.extract(r"(\.png|\.tif|\.dcm|\.nii\.gz)$")[0]
    assert set(suffixes) == {".png", ".tif", ".dcm", ".nii.gz"}

    png_modes = {Image.open(out / p).mode for p in manifest["path"] if p.endswith(".png")}
    assert "L" in png_modes  # 8-bit
    assert png_modes & {"I;16", "I"}  # 16-bit
    xr_png = next(p for p in manifest["path"] if p.endswith(".png") and "/XR/" in p)
    assert np.asarray(Image.open(out / xr_png)).max() > 255

    tif = tifffile.imread(out / next(p for p in manifest["path"] if p.endswith(".tif")))
    assert tif.dtype == np.uint16 and tif.ndim == 2 and tif.max() > 255

    nifti = nib.load(out / next(p for p in manifest["path"] if p.endswith(".nii.gz")))
    assert nifti.shape == (64, 64, 5)
    assert nib.aff2axcodes(nifti.affine) == ("R", "A", "S")
    assert nifti.header.get_zooms() == (1.0, 1.0, 3.0)


def test_dicom_has_modality_lut_window_meta_and_fake_identifiers(demo):
    out, _, manifest, _ = demo
    slopes = set()
    for relative in manifest.loc[manifest["path"].str.endswith(".dcm"), "path"]:
        ds = pydicom.dcmread(out / relative)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
        assert ds.Modality == "CT"
        assert float(ds.RescaleIntercept) == -1024.0
        assert float(ds.WindowCenter) == 40 and float(ds.WindowWidth) == 400
        for keyword, value in DEMO_IDENTIFYING_VALUES.items():
            assert str(ds.data_element(keyword).value) == value
        slopes.add(float(ds.RescaleSlope))
        hounsfield = apply_modality_lut(ds.pixel_array, ds)
        # Soft-tissue background: a reader that ignores slope or intercept lands far from this.
        assert -200 < np.median(hounsfield) < 250
    assert slopes == {0.5, 1.0}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, demo):
    out, _, _, _ = demo
    again = generate_demo_dataset(tmp_path / "again", n_patients=60, seed=0).parent
    assert _file_digests(again) == _file_digests(out)
    other = generate_demo_dataset(tmp_path / "other", n_patients=60, seed=1).parent
    assert _file_digests(other) != _file_digests(out)


def test_regenerating_replaces_images_and_leaves_no_temporary_folders(tmp_path):
    out = tmp_path / "demo"
    generate_demo_dataset(out, n_patients=12, seed=3)
    manifest_path = generate_demo_dataset(out, n_patients=6, seed=3)
    manifest = pd.read_csv(manifest_path, dtype=str)
    written = {str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file()}
    assert written == set(manifest["path"])
    assert sorted(p.name for p in out.iterdir()) == [".written-by-medclassify", "images", "manifest.csv"]


def test_too_few_patients_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        generate_demo_dataset(tmp_path, n_patients=2)


def test_intensity_statistics_do_not_reveal_the_class(demo):
    # The class lives in the lesion's outline and texture, not in the image's intensity
    # histogram: a classifier of per-image intensity statistics stays near chance.
    out, _, manifest, _ = demo
    features = []
    for relative in manifest["path"]:
        image = _load_grey(out / relative)
        low, high = np.percentile(image, [0.5, 99.5])
        image = (image - low) / (high - low)
        features.append([image.mean(), image.std(), *np.percentile(image, [10, 50, 90])])
    scores = cross_val_score(
        LogisticRegression(max_iter=2000),
        np.array(features),
        manifest["label"],
        groups=manifest["patient"],
        cv=GroupKFold(n_splits=5),
    )
    assert scores.mean() < 0.5, scores


def _square_64(image):
    """Percentile-normalise, pad to square and resize to 64×64, as the default preprocessing does."""
    low, high = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - low) / (high - low), 0, 1)
    side = max(image.shape)
    padded = np.zeros((side, side))
    top, left = (side - image.shape[0]) // 2, (side - image.shape[1]) // 2
    padded[top:top + image.shape[0], left:left + image.shape[1]] = image
    return np.asarray(Image.fromarray((padded * 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR), dtype=float)


def test_the_class_is_learnable_from_image_structure(demo):
    # A crude rotation-invariant description of the image (its radial power spectrum) already
    # separates the margins above chance (1/3) across patients; a CNN has more to work with.
    out, _, manifest, _ = demo
    features = []
    for relative in manifest["path"]:
        image = _square_64(_load_grey(out / relative))
        power = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
        radius = np.hypot(*(np.indices(power.shape) - 32)).astype(int).ravel()
        profile = np.bincount(radius, power.ravel())[:32] / np.bincount(radius)[:32]
        features.append(np.log(profile + 1e-6))
    scores = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.3)),
        np.array(features),
        manifest["label"],
        groups=manifest["patient"],
        cv=GroupKFold(n_splits=5),
    )
    assert 0.45 < scores.mean() < 0.9, scores

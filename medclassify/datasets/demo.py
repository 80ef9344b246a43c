"""A deterministic synthetic dataset that exercises every reader and every stage of the workflow.

Each synthetic patient has one lesion, seen in about four images of one modality. The class is
the lesion's margin, named after the BI-RADS margin descriptors:

- ``circumscribed``: a smooth outline with at most a faint low-frequency wobble;
- ``lobulated``: a few broad bumps (3 or 4 lobes);
- ``spiculated``: 6 to 9 narrow spikes, and a finer-grained interior.

Only the outline separates the classes, and not cleanly: the bump amplitudes of neighbouring
classes overlap, every lesion also carries a small random wobble, and size, contrast,
elongation, background texture and noise are drawn from the same distributions for every class.
A small CNN at 32–64 px therefore learns the task well above chance but not perfectly, and the
images of one patient share their lesion, so a split by image instead of by patient leaks.

The files use the real formats that users bring, written with the real libraries:

======  ===========================  ==============================================
 US      8-bit PNG (Pillow)           80×96, speckle noise
 XR      16-bit PNG / 16-bit TIFF     128×128, alternating per patient
 CT      DICOM (pydicom)              96×96 int HU through RescaleSlope/Intercept,
                                      WindowCenter/Width, full file meta
 MR      NIfTI-1 (nibabel)            64×64×5 volume whose middle slice is the image
======  ===========================  ==============================================

The DICOM files carry identifying attributes filled with the known fake values of
:data:`DEMO_IDENTIFYING_VALUES`, so that tests can check none of them reaches ``results/``.
"""

import csv
import gzip
import hashlib
import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..atomic import atomic_write_text
from . import DEMO_MANIFEST_COLUMNS
from ._output import staged_folder

__all__ = ["CLASSES", "DEMO_IDENTIFYING_VALUES", "MANIFEST_COLUMNS", "generate_demo_dataset"]

CLASSES = ("circumscribed", "lobulated", "spiculated")
MODALITIES = ("US", "XR", "CT", "MR")
SITES = ("site_A", "site_B", "site_C")
MANIFEST_COLUMNS = DEMO_MANIFEST_COLUMNS

# Fake identifying values written into every demo DICOM file. Each is distinctive enough that
# finding it anywhere under results/ means a reader leaked DICOM metadata.
DEMO_IDENTIFYING_VALUES = {
    "PatientName": "Zzfakename^Demopatient",
    "PatientID": "ZZFAKE-PID-4711",
    "PatientBirthDate": "19010203",
    "StudyDate": "19020304",
    "AccessionNumber": "ZZFAKEACC0815",
    "InstitutionName": "Zzfake Demo Institution",
}

# Deterministic DICOM UIDs: derived from the seed and the file, never from time or host.
_UID_PREFIX = "1.2.826.0.1.3680043.10.1234."

# Native image shapes (rows, columns) per modality; MR is a (rows, columns, slices) volume.
_SHAPES = {"US": (80, 96), "XR": (128, 128), "CT": (96, 96), "MR": (64, 64, 5)}


def generate_demo_dataset(out_dir, n_patients=60, seed=0):
    """Write the synthetic demo dataset under ``out_dir`` and return the manifest's path.

    ``out_dir/manifest.csv`` has the columns ``path, label, patient, modality, site, sex``
    (paths relative to ``out_dir``); the images are under ``out_dir/images/``. The same
    ``n_patients`` and ``seed`` give byte-identical files. Classes are balanced per patient
    (patient ``i`` has class ``i mod 3`` before a seeded shuffle) and every modality gets
    patients of every class once ``n_patients >= 12``.

    The images are written into a temporary folder that replaces ``out_dir/images`` only when
    all are written, and the manifest is written last, atomically: an interrupted run leaves
    no manifest that points at missing or stale images.
    """
    if n_patients < 3:
        raise ValueError(f"n_patients must be at least 3 (one per class), got {n_patients}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.csv"
    manifest_path.unlink(missing_ok=True)

    rng = np.random.default_rng(seed)
    patients = _draw_patients(rng, n_patients)
    rows = []
    with staged_folder(out_dir / "images") as staging:
        for patient in patients:
            for view in range(patient["n_images"]):
                relative = _write_view(staging, patient, view, rng, seed)
                rows.append({
                    "path": f"images/{relative}",
                    "label": patient["label"],
                    "patient": patient["id"],
                    "modality": patient["modality"],
                    "site": patient["site"],
                    "sex": patient["sex"],
                })

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(manifest_path, text.getvalue())
    return manifest_path


def _draw_patients(rng, n_patients):
    """Per-patient attributes: class, modality, site, sex, lesion shape and image count."""
    labels = np.arange(n_patients) % len(CLASSES)
    rng.shuffle(labels)
    # Modalities cycle within each class so that every modality sees every class.
    class_rank = np.zeros(n_patients, dtype=int)
    seen = {}
    for i, label in enumerate(labels):
        class_rank[i] = seen.get(label, 0)
        seen[label] = class_rank[i] + 1
    patients = []
    for i in range(n_patients):
        label = CLASSES[labels[i]]
        modality = MODALITIES[class_rank[i] % len(MODALITIES)]
        patients.append({
            "id": f"demo-{i + 1:04d}",
            "index": i,
            "label": label,
            "modality": modality,
            # The XR format alternates between 16-bit PNG and 16-bit TIFF by patient.
            "xr_format": "tif" if (class_rank[i] // len(MODALITIES)) % 2 else "png",
            "site": SITES[int(rng.integers(len(SITES)))],
            "sex": "F" if rng.random() < 0.5 else "M",
            "n_images": int(rng.choice([3, 4, 4, 4, 5])),
            "lesion": _draw_lesion(rng, label),
        })
    return patients


def _draw_lesion(rng, label):
    """The patient's lesion: outline harmonics by class, everything else class-independent."""
    if label == "circumscribed":
        lobes, amplitude, spike_power = int(rng.integers(2, 4)), rng.uniform(0.0, 0.1), 0
        texture, grain = rng.uniform(0.0, 0.2), 3.0
    elif label == "lobulated":
        lobes, amplitude, spike_power = int(rng.integers(3, 5)), rng.uniform(0.14, 0.34), 0
        texture, grain = rng.uniform(0.1, 0.35), 3.0
    else:
        lobes, amplitude, spike_power = int(rng.integers(6, 10)), rng.uniform(0.2, 0.5), 8
        texture, grain = rng.uniform(0.1, 0.35), 1.0
    # A random wobble of every class blurs the boundaries between them.
    wobble = [(int(k), rng.uniform(0.0, 0.03), rng.uniform(0, 2 * np.pi)) for k in rng.integers(2, 9, size=3)]
    return {
        "lobes": lobes,
        "amplitude": amplitude,
        "spike_power": spike_power,
        "wobble": wobble,
        # Fraction of the smaller image side: large enough that margins survive 32 px.
        "radius": rng.uniform(0.2, 0.3),
        "elongation": rng.uniform(1.0, 1.5),
        "contrast": rng.uniform(0.3, 0.6) * (1 if rng.random() < 0.85 else -1),
        "texture": texture,
        "grain": grain,
        "phase": rng.uniform(0, 2 * np.pi),
    }


def _draw_pose(shape, rng):
    """How one view sees the lesion: centre, rotation, scale and edge blur."""
    rows, cols = shape[:2]
    return {
        "cy": rows / 2 + rng.normal(0, 0.08) * rows,
        "cx": cols / 2 + rng.normal(0, 0.08) * cols,
        "rotation": rng.uniform(0, 2 * np.pi),
        "scale": rng.uniform(0.9, 1.1),
        "edge": rng.uniform(0.6, 1.2),
    }


def _render(shape, lesion, pose, rng, depth_factor=1.0):
    """Render ``lesion`` seen in ``pose`` as a float image of about [0, 1] on a textured background."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    dy, dx = y - pose["cy"], x - pose["cx"]
    rotation = pose["rotation"]
    u = (dx * np.cos(rotation) + dy * np.sin(rotation)) / lesion["elongation"]
    v = -dx * np.sin(rotation) + dy * np.cos(rotation)
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    outline = 1 + lesion["amplitude"] * _bumps(lesion["lobes"] * theta + lesion["phase"], lesion["spike_power"])
    for k, amplitude, phase in lesion["wobble"]:
        outline += amplitude * np.cos(k * theta + phase)
    boundary = lesion["radius"] * min(rows, cols) * pose["scale"] * depth_factor * outline
    mask = 1 / (1 + np.exp(-(boundary - r) / pose["edge"]))

    background = 0.45 + 0.08 * _smooth_noise(shape, rng, 6) + 0.04 * _smooth_noise(shape, rng, 2)
    inside = 1 + lesion["texture"] * _smooth_noise(shape, rng, lesion["grain"])
    image = background + lesion["contrast"] * mask * inside
    return image + rng.normal(0, 0.06, size=shape)


def _bumps(angle, spike_power):
    """Zero-mean outline bumps: smooth lobes (cosine) or, with ``spike_power``, narrow spikes."""
    if not spike_power:
        return np.cos(angle)
    spikes = np.abs(np.cos(angle / 2)) ** spike_power
    # Mean of |cos|^p over a period, so spiky outlines enclose about the same area as smooth ones.
    mean = math.gamma((spike_power + 1) / 2) / (math.sqrt(math.pi) * math.gamma(spike_power / 2 + 1))
    return spikes - mean


def _smooth_noise(shape, rng, correlation):
    """Zero-mean, unit-scale noise smoothed over about ``correlation`` pixels (FFT Gaussian)."""
    noise = rng.normal(size=shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * correlation) ** 2 * (fy**2 + fx**2))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    return smooth / (smooth.std() + 1e-12)


def _write_view(folder, patient, view, rng, seed):
    """Render and write one image of ``patient``; return its path relative to ``folder``."""
    modality = patient["modality"]
    # File names carry no patient id: a path reaches every output as the sample id.
    stem = hashlib.sha256(f"{seed}/{patient['index']}/{view}".encode()).hexdigest()[:12]
    subfolder = folder / modality
    subfolder.mkdir(exist_ok=True)
    lesion = patient["lesion"]
    if modality == "US":
        image = _render(_SHAPES["US"], lesion, _draw_pose(_SHAPES["US"], rng), rng)
        # Multiplicative speckle, as in ultrasound.
        image = image * rng.gamma(12.0, 1 / 12.0, size=image.shape)
        pixels = np.clip(image * 200, 0, 255).astype(np.uint8)
        name = f"{stem}.png"
        Image.fromarray(pixels).save(subfolder / name)
    elif modality == "XR":
        image = _render(_SHAPES["XR"], lesion, _draw_pose(_SHAPES["XR"], rng), rng)
        # 12-bit detector values stored in 16 bits, as most radiographs are.
        pixels = np.clip(image * 3000 + 500, 0, 4095).astype(np.uint16)
        if patient["xr_format"] == "tif":
            name = f"{stem}.tif"
            tifffile.imwrite(subfolder / name, pixels)
        else:
            name = f"{stem}.png"
            Image.fromarray(pixels).save(subfolder / name)
    elif modality == "CT":
        image = _render(_SHAPES["CT"], lesion, _draw_pose(_SHAPES["CT"], rng), rng)
        hounsfield = image * 250 - 60  # soft tissue around 50 HU, lesions from about -150 to 200
        name = f"{stem}.dcm"
        _write_ct_dicom(subfolder / name, hounsfield, patient, view, seed)
    else:
        name = f"{stem}.nii.gz"
        _write_mr_nifti(subfolder / name, lesion, rng)
    return f"{modality}/{name}"


def _write_ct_dicom(path, hounsfield, patient, view, seed):
    """Write a CT slice in HU as an unsigned 16-bit DICOM with a Modality LUT and a window."""
    # Half of the patients use a rescale slope of 0.5, so a reader that ignores the slope fails.
    slope = 0.5 if patient["index"] % 2 else 1.0
    intercept = -1024.0
    stored = np.round((hounsfield - intercept) / slope)
    stored = np.clip(stored, 0, 4095).astype(np.uint16)

    def uid(part):
        return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(seed), patient["id"], part])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid(f"sop-{view}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _UID_PREFIX + "1"

    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = "CT"
    for keyword, value in DEMO_IDENTIFYING_VALUES.items():
        setattr(ds, keyword, value)
    ds.PatientSex = patient["sex"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = view + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_mr_nifti(path, lesion, rng):
    """Write a 64×64×5 MR volume whose middle slice is the view; outer slices cut the lesion smaller."""
    rows, cols, slices = _SHAPES["MR"]
    middle = slices // 2
    volume = np.empty((rows, cols, slices), dtype=np.int16)
    pose = _draw_pose((rows, cols), rng)
    for k in range(slices):
        # The lesion is roughly spherical: slices away from the middle show a smaller cut.
        depth_factor = np.sqrt(max(0.05, 1 - (abs(k - middle) / (middle + 1)) ** 2))
        image = _render((rows, cols), lesion, pose, rng, depth_factor=depth_factor)
        volume[:, :, k] = np.clip(image * 1200 + 100, 0, 32767).astype(np.int16)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])  # 1 mm in-plane, 3 mm slices, RAS+ already
    nifti = nib.Nifti1Image(volume, affine)
    nifti.header.set_xyzt_units("mm")
    # nibabel's own .nii.gz carries the current time in the gzip header; compress ourselves
    # with mtime 0 so that the same seed gives byte-identical files.
    data = nifti.to_bytes()
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)

"""A corpus of bad (and tricky but valid) manifests and images, built on demand in a folder.

Every case starts from a small valid dataset (8 PNG images, two classes, 8 patients) and adds one
defect. :func:`build_case` writes it and returns a :class:`Case` saying which problem code, on
which row and with which severity, validation must report, and whether a validated manifest may
be written. Used by tests/test_manifest_corpus.py; nothing here is committed data.
"""

import csv
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_ROWS = 8
LABELS = ("benign", "malignant")
COLUMNS = ("path", "label", "patient", "modality")
BAD_ROW = GOOD_ROWS + 1  # the defective row is appended after the good ones


@dataclass
class Case:
    """One corpus entry: where its manifest and root are and what validation must say."""

    name: str
    code: str
    severity: str = "error"
    row: int | None = BAD_ROW  # None: a problem of the manifest as a whole
    writes_manifest: bool = False
    labels: list | None = None
    io_options: dict = field(default_factory=dict)
    validation_options: dict = field(default_factory=dict)
    manifest: Path = None
    root: Path = None


def write_png(path, seed, size=16, dtype=np.uint8):
    """A random grey PNG that no other seed reproduces."""
    rng = np.random.default_rng(seed)
    high = 255 if dtype == np.uint8 else 65535
    pixels = rng.integers(0, high, (size, size), dtype=dtype)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def png_claiming_size(path, width, height):
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def good_rows(root):
    """Write the valid base images; return their manifest rows."""
    rows = []
    for i in range(GOOD_ROWS):
        write_png(root / "images" / f"img_{i}.png", seed=1000 + i)
        rows.append({"path": f"images/img_{i}.png", "label": LABELS[i % 2], "patient": f"P{i:03d}", "modality": "XR"})
    return rows


def write_manifest(path, rows, columns=COLUMNS, delimiter=",", encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])


def _pydicom_file(name):
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    assert path.exists(), f"pydicom test file {name} missing"
    return path


def _nibabel_file(name):
    from nibabel.testing import data_path

    return Path(data_path) / name


def _bad(root, rows, path, label="benign", patient="P900", modality="XR"):
    rows.append({"path": path, "label": label, "patient": patient, "modality": modality})


# Each builder gets (root, rows, case) and appends its defective row(s) or rewrites the manifest.

def _truncated_png(root, rows, case):
    write_png(root / "bad.png", seed=1)
    data = (root / "bad.png").read_bytes()
    (root / "bad.png").write_bytes(data[: len(data) // 2])
    _bad(root, rows, "bad.png")


def _zero_byte(root, rows, case):
    (root / "empty.png").write_bytes(b"")
    _bad(root, rows, "empty.png")


def _text_as_png(root, rows, case):
    (root / "notes.png").write_text("this is not an image\n", encoding="utf-8")
    _bad(root, rows, "notes.png")


def _truncated_dicom(root, rows, case):
    shutil.copy(_pydicom_file("MR_truncated.dcm"), root / "truncated.dcm")
    _bad(root, rows, "truncated.dcm", modality="MR")


def _dicom_without_pixels(root, rows, case):
    shutil.copy(_pydicom_file("rtplan.dcm"), root / "plan.dcm")
    _bad(root, rows, "plan.dcm", modality="RTPLAN")


def _nifti_4d_without_choice(root, rows, case):
    shutil.copy(_nibabel_file("example4d.nii.gz"), root / "fmri.nii.gz")
    _bad(root, rows, "fmri.nii.gz", modality="MR")


def _nifti_slice_out_of_range(root, rows, case):
    shutil.copy(_nibabel_file("anatomical.nii"), root / "anat.nii")
    case.io_options = {"nifti_slice": 500}
    _bad(root, rows, "anat.nii", modality="MR")


def _nifti_without_slices(root, rows, case):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 0), np.float32), np.eye(4)), root / "empty.nii")
    case.io_options = {"nifti_slice": "all"}  # selected no slice, and validation crashed on it
    _bad(root, rows, "empty.nii", modality="MR")


def _png_bomb(root, rows, case):
    png_claiming_size(root / "bomb.png", 100000, 100000)
    _bad(root, rows, "bomb.png")


def _missing_file(root, rows, case):
    _bad(root, rows, "images/not_there.png")


def _folder_as_path(root, rows, case):
    (root / "a_folder").mkdir()
    _bad(root, rows, "a_folder")


def _dotdot_path(root, rows, case):
    write_png(root.parent / "outside.png", seed=2)
    _bad(root, rows, "../outside.png")


def _absolute_path(root, rows, case):
    write_png(root.parent / "outside_abs.png", seed=3)
    _bad(root, rows, str((root.parent / "outside_abs.png").resolve()))


def _symlink_outside(root, rows, case):
    write_png(root.parent / "secret.png", seed=4)
    os.symlink(root.parent / "secret.png", root / "link.png")
    _bad(root, rows, "link.png")


def _unsupported_format(root, rows, case):
    (root / "scan.xyz").write_bytes(b"\x00\x01\x02binary")
    _bad(root, rows, "scan.xyz")


def _compressed_unsupported(root, rows, case):
    import pydicom

    ds = pydicom.dcmread(_pydicom_file("MR_small_jp2klossless.dcm"))
    # A transfer syntax that no pydicom plugin decodes: JPEG 2000 Part 2 Multi-component Lossless.
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    ds.save_as(root / "jpegxl.dcm", enforce_file_format=True)
    _bad(root, rows, "jpegxl.dcm", modality="MR")


def _label_typo(root, rows, case):
    case.labels = list(LABELS)
    write_png(root / "typo.png", seed=5)
    _bad(root, rows, "typo.png", label="malignnat")


def _label_case_variant(root, rows, case):
    write_png(root / "capital.png", seed=14)
    _bad(root, rows, "capital.png", label="Benign")  # without configured labels a third class


def _file_named_like_a_frame(root, rows, case):
    case.io_options = {"dicom_frame": "all"}
    shutil.copy(_pydicom_file("SC_rgb_rle_2frame.dcm"), root / "two_frames.dcm")
    shutil.copy(_pydicom_file("CT_small.dcm"), root / "two_frames.dcm#1")
    _bad(root, rows, "two_frames.dcm", modality="OT")
    _bad(root, rows, "two_frames.dcm#1", patient="P901", modality="CT")
    case.row = BAD_ROW + 1


def _patient_id_in_path(root, rows, case):
    write_png(root / "P900" / "view1.png", seed=15)  # a folder per patient, named by the raw id
    _bad(root, rows, "P900/view1.png", patient="P900")


def _nan_label(root, rows, case):
    write_png(root / "nolabel.png", seed=6)
    _bad(root, rows, "nolabel.png", label="NaN")


def _empty_patient(root, rows, case):
    write_png(root / "nopatient.png", seed=7)
    _bad(root, rows, "nopatient.png", patient="")


def _control_character(root, rows, case):
    write_png(root / "nul.png", seed=8)
    _bad(root, rows, "nul.png", modality="X\x00R")  # csv.writer quotes it; the field holds a NUL


def _duplicate_row(root, rows, case):
    rows.append(dict(rows[0]))


def _same_pixels_two_labels(root, rows, case):
    shutil.copy(root / "images" / "img_0.png", root / "copy_other_label.png")
    _bad(root, rows, "copy_other_label.png", label="malignant", patient=rows[0]["patient"])
    case.row = BAD_ROW  # row 1 is reported too (checked in the test)


def _same_pixels_two_patients(root, rows, case):
    shutil.copy(root / "images" / "img_0.png", root / "copy_other_patient.png")
    _bad(root, rows, "copy_other_patient.png", label=rows[0]["label"], patient="P777")


def _mixed_label_patient(root, rows, case):
    case.validation_options = {"mixed_label_patients": "error"}
    write_png(root / "mixed.png", seed=8)
    _bad(root, rows, "mixed.png", label="malignant", patient=rows[0]["patient"])  # row 1 is benign


def _invalid_split(root, rows, case):
    for i, row in enumerate(rows):
        row["split"] = ("train", "val", "test")[i % 3]
    write_png(root / "split.png", seed=9)
    _bad(root, rows, "split.png")
    rows[-1]["split"] = "validation"
    case.columns = COLUMNS + ("split",)


def _malformed_row(root, rows, case):
    write_png(root / "comma.png", seed=10)
    case.raw_lines = ["comma.png,benign,P901,XR,extra,fields"]


def _bom(root, rows, case):
    case.encoding = "utf-8-sig"


def _bom_strict(root, rows, case):
    case.encoding = "utf-8-sig"
    case.validation_options = {"strict": True}


def _latin1(root, rows, case):
    write_png(root / "latin.png", seed=11)
    _bad(root, rows, "latin.png", patient="Müller")
    case.encoding = "latin-1"


def _semicolon(root, rows, case):
    case.delimiter = ";"


def _wrong_columns(root, rows, case):
    case.columns = ("Path", "class", "patient", "modality")
    for row in rows:
        row["Path"], row["class"] = row.pop("path"), row.pop("label")


def _empty_manifest(root, rows, case):
    case.raw_text = ""


def _header_only(root, rows, case):
    rows.clear()


def _single_class(root, rows, case):
    for row in rows:
        row["label"] = LABELS[0]


def _too_few_images(root, rows, case):
    case.validation_options = {"min_images_per_class": 5}  # each class has 4


def _sixteen_bit_tiff(root, rows, case):
    import tifffile

    pixels = np.random.default_rng(12).integers(0, 65535, (32, 32), dtype=np.uint16)
    tifffile.imwrite(root / "deep.tif", pixels)
    _bad(root, rows, "deep.tif")


def _unicode_and_spaces(root, rows, case):
    write_png(root / "Bilder mit Lücke" / "Röntgen ñ 1.png", seed=13)
    _bad(root, rows, "Bilder mit Lücke/Röntgen ñ 1.png")


# name: (builder, expected code, severity, row, writes_manifest)
CASES = {
    "truncated_png": (_truncated_png, "undecodable", "error", BAD_ROW, False),
    "zero_byte_file": (_zero_byte, "empty_file", "error", BAD_ROW, False),
    "text_named_png": (_text_as_png, "undecodable", "error", BAD_ROW, False),
    "truncated_dicom": (_truncated_dicom, "undecodable", "error", BAD_ROW, False),
    "dicom_without_pixel_data": (_dicom_without_pixels, "no_pixel_data", "error", BAD_ROW, False),
    "dicom_compressed_unsupported": (_compressed_unsupported, "compressed_unsupported", "error", BAD_ROW, False),
    "nifti_4d_without_slice_choice": (_nifti_4d_without_choice, "needs_slice_choice", "error", BAD_ROW, False),
    "nifti_slice_out_of_range": (_nifti_slice_out_of_range, "index_out_of_range", "error", BAD_ROW, False),
    "nifti_without_slices": (_nifti_without_slices, "unsupported_image", "error", BAD_ROW, False),
    "png_header_100000x100000": (_png_bomb, "too_many_pixels", "error", BAD_ROW, False),
    "unsupported_format": (_unsupported_format, "unsupported_format", "error", BAD_ROW, False),
    "missing_file": (_missing_file, "missing_file", "error", BAD_ROW, False),
    "folder_instead_of_file": (_folder_as_path, "not_a_file", "error", BAD_ROW, False),
    "dotdot_path": (_dotdot_path, "path_outside_root", "error", BAD_ROW, False),
    "absolute_path": (_absolute_path, "path_outside_root", "error", BAD_ROW, False),
    "symlink_outside_root": (_symlink_outside, "path_outside_root", "error", BAD_ROW, False),
    "label_typo": (_label_typo, "unknown_label", "error", BAD_ROW, False),
    "nan_label": (_nan_label, "empty_field", "error", BAD_ROW, False),
    "patient_id_in_path": (_patient_id_in_path, "patient_id_in_path", "warning", None, True),
    "label_differing_only_in_case": (_label_case_variant, "label_case_variants", "error", None, False),
    "file_named_like_a_frame_of_another": (_file_named_like_a_frame, "duplicate_sample_id", "error", BAD_ROW, False),
    "empty_patient": (_empty_patient, "empty_field", "error", BAD_ROW, False),
    "control_character_in_field": (_control_character, "control_character", "error", BAD_ROW, False),
    "duplicate_row": (_duplicate_row, "duplicate_row", "error", BAD_ROW, False),
    "same_pixels_two_labels": (_same_pixels_two_labels, "duplicate_content_conflicting_labels", "error", BAD_ROW, False),
    "same_pixels_two_patients": (_same_pixels_two_patients, "duplicate_content_across_patients", "warning", BAD_ROW, True),
    "mixed_label_patient": (_mixed_label_patient, "mixed_label_patient", "error", BAD_ROW, False),
    "invalid_split_value": (_invalid_split, "invalid_split", "error", BAD_ROW, False),
    "malformed_row": (_malformed_row, "malformed_row", "error", BAD_ROW, False),
    "bom": (_bom, "manifest_bom", "warning", None, True),
    "bom_strict": (_bom_strict, "manifest_bom", "error", None, False),
    "latin1_manifest": (_latin1, "manifest_encoding", "error", None, False),
    "semicolon_delimiter": (_semicolon, "manifest_delimiter", "error", None, False),
    "wrong_column_names": (_wrong_columns, "missing_column", "error", None, False),
    "empty_manifest": (_empty_manifest, "manifest_empty", "error", None, False),
    "header_only_manifest": (_header_only, "manifest_empty", "error", None, False),
    "single_class": (_single_class, "too_few_classes", "error", None, False),
    "too_few_images_per_class": (_too_few_images, "too_few_images", "error", None, False),
}
# Tricky but valid inputs: validation must accept them without any problem.
VALID_CASES = {
    "sixteen_bit_tiff": _sixteen_bit_tiff,
    "unicode_and_spaces_in_path": _unicode_and_spaces,
}


def _write(case, root, rows):
    manifest = root / "manifest.csv"
    if getattr(case, "raw_text", None) is not None:
        manifest.write_text(case.raw_text, encoding="utf-8")
        return manifest
    columns = getattr(case, "columns", COLUMNS)
    write_manifest(manifest, rows, columns=columns, delimiter=getattr(case, "delimiter", ","),
                   encoding=getattr(case, "encoding", "utf-8"))
    for line in getattr(case, "raw_lines", []):
        with open(manifest, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return manifest


def build_case(name, folder):
    """Build corpus case ``name`` under ``folder`` (root = folder/data); return its Case."""
    root = Path(folder) / "data"
    root.mkdir(parents=True)
    rows = good_rows(root)
    if name in VALID_CASES:
        case = Case(name=name, code="", severity="", row=None, writes_manifest=True)
        VALID_CASES[name](root, rows, case)
    else:
        builder, code, severity, row, writes = CASES[name]
        case = Case(name=name, code=code, severity=severity, row=row, writes_manifest=writes)
        builder(root, rows, case)
    case.root = root
    case.manifest = _write(case, root, rows)
    return case


# --------------------------------------------------------------------------------------------
# Privacy: DICOM files whose identifying attributes hold known strings
# --------------------------------------------------------------------------------------------

# Known values for identifying DICOM attributes and raw manifest patient ids. None of them may
# appear in any file under results/ after a workflow run on write_identified_dicom_dataset's data.
DICOM_SECRETS = {
    "PatientName": "Secretname^Jane", "PatientID": "SECRET-ID-4711", "PatientBirthDate": "19230405",
    "StudyDate": "20011231", "AccessionNumber": "ACC98765", "InstitutionName": "Secret General Hospital",
    "ReferringPhysicianName": "Drsecret^Hans", "StationName": "SECRETSTATION",
    "OperatorsName": "Opsecret^Olga", "InstitutionAddress": "1 Secret Road, Hiddenville",
}
RAW_PATIENT_PREFIX = "Raw-Patient-Secret-"


def write_identified_dicom_dataset(root, n_patients=12, images_per_patient=2, truncated=1):
    """Write grey DICOM images (from pydicom's CT_small.dcm, each with different pixels) whose
    identifying attributes hold DICOM_SECRETS, plus ``truncated`` broken copies, and a manifest
    with raw patient ids ``RAW_PATIENT_PREFIX + n``. Returns (manifest path, list of secret strings).
    """
    import pydicom

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(_pydicom_file("CT_small.dcm"))
    base = source.pixel_array.astype(np.int16)
    rng = np.random.default_rng(0)
    lines = ["path,label,patient,modality"]
    for patient in range(n_patients):
        for image in range(images_per_patient):
            ds = source.copy()
            shift = rng.integers(-200, 200, base.shape).astype(np.int16)
            ds.PixelData = (base + shift + (200 if patient % 2 else 0)).astype(np.int16).tobytes()
            for keyword, value in DICOM_SECRETS.items():
                setattr(ds, keyword, value)
            name = f"dicom/p{patient:03d}_{image}.dcm"
            (root / "dicom").mkdir(exist_ok=True)
            ds.save_as(root / name)
            lines.append(f"{name},{LABELS[patient % 2]},{RAW_PATIENT_PREFIX}{patient},CT")
    for k in range(truncated):
        name = f"dicom/broken_{k}.dcm"
        data = (root / "dicom" / "p000_0.dcm").read_bytes()
        (root / name).write_bytes(data[: len(data) - 700])
        lines.append(f"{name},{LABELS[0]},{RAW_PATIENT_PREFIX}broken{k},CT")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    secrets = list(DICOM_SECRETS.values()) + [RAW_PATIENT_PREFIX]
    return manifest, secrets

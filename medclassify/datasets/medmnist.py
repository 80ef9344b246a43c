"""Import a MedMNIST 2D dataset: its ``.npz`` file becomes PNG images plus a manifest.

The manifest keeps MedMNIST's official split in a ``split`` column, which the split stage
honours with ``split.method: predefined`` — the only way to compare with published results.

MedMNIST publishes no patient ids. Each image therefore gets its own synthetic patient
(``<name>-<split>-<index>``): the importer cannot know which images share a patient, so a
patient-grouped re-split of a MedMNIST set (``grouped_stratified`` or ``kfold``) is only as
leak-free as the source dataset's own split was. Keep ``predefined`` for MedMNIST.

Download URLs and MD5 checksums are MedMNIST v3.0.2's ``medmnist/info.py`` (Zenodo record
10519652; the 28-pixel files are the same files as MedMNIST v2's). Label names are its
``INFO[...]["label"]`` names made file- and column-friendly (lower case, runs of other
characters replaced by ``_``), e.g. breastmnist ``{0: malignant, 1: normal_benign}``.
"""

import csv
import io
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path, atomic_write_text
from ..content import file_digest
from ..errors import InputError
from . import MEDMNIST_MANIFEST_COLUMNS
from ._output import staged_folder
from .medmnist_info import DATASETS, SIZES, check_name, check_size, label_names, medmnist_memory_mb

__all__ = ["DATASETS", "SIZES", "download_medmnist", "import_medmnist", "label_names", "medmnist_memory_mb",
           "npz_file_name"]

MANIFEST_COLUMNS = MEDMNIST_MANIFEST_COLUMNS
SPLITS = ("train", "val", "test")
_ZENODO = "https://zenodo.org/records/10519652/files/"



def npz_file_name(name, size=28):
    """The official file name: ``breastmnist.npz`` at 28 px, ``breastmnist_64.npz`` otherwise."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def official_url(name, size=28):
    """Zenodo download URL of a MedMNIST file."""
    return f"{_ZENODO}{npz_file_name(name, size)}?download=1"


def import_medmnist(name, out_dir, npz=None, size=28):
    """Write the MedMNIST dataset ``name`` as PNG files and a manifest; return the manifest's path.

    ``out_dir/manifest.csv`` has the columns ``path, label, patient, modality, split`` (paths
    relative to ``out_dir``; images under ``out_dir/images/<split>/``), rows in the file's order
    (train, val, test). MedMNIST has no patient ids: every image is its own synthetic patient.

    Without ``npz`` the official file is downloaded from Zenodo into ``out_dir`` (reused when
    already there with the right MD5) and its published MD5 is checked. A local ``npz`` is
    checked for the expected arrays, shapes, image size and label range; labels of shape
    (N,) and (N, 1) are both accepted, and an MD5 differing from the official file's only warns
    (re-saved copies differ). Problems raise :class:`InputError`, all listed at once.
    """
    name = check_name(name)
    size = check_size(size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.csv"
    manifest_path.unlink(missing_ok=True)
    if npz is None:
        npz = download_medmnist(name, out_dir, size=size)
    else:
        npz = Path(npz)
        if not npz.is_file():
            raise InputError(f"MedMNIST file not found: {npz}", [f"datasets.<name>.npz points at {npz}, which does not exist"])
    actual = file_digest(npz, "md5")
    official = [(other, other_size) for other, info in DATASETS.items() for other_size, md5 in info["md5"].items()
                if md5 == actual]
    if official and official[0] != (name, size):
        other, other_size = official[0]
        raise InputError(f"{npz} is not the {npz_file_name(name, size)} file",
                         [f"its MD5 {actual} is the official {npz_file_name(other, other_size)}'s"])
    arrays = read_medmnist_npz(npz, name, size)
    if actual != DATASETS[name]["md5"][size]:
        # Re-saved copies (e.g. labels stored as (N,)) differ; the arrays were checked above.
        warnings.warn(
            f"{npz}: MD5 {actual} differs from the official {npz_file_name(name, size)} "
            f"({DATASETS[name]['md5'][size]}); its arrays are valid, importing it",
            stacklevel=2,
        )
    classes = label_names(name)
    modality = DATASETS[name]["modality"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    with staged_folder(out_dir / "images") as staging:
        for split in SPLITS:
            images, labels = arrays[split]
            (staging / split).mkdir()
            for index, (image, label) in enumerate(zip(images, labels)):
                relative = f"images/{split}/{split}_{index:06d}.png"
                Image.fromarray(image).save(staging / split / f"{split}_{index:06d}.png", compress_level=1)
                patient = f"{name}-{split}-{index:06d}"
                writer.writerow((relative, classes[label], patient, modality, split))
    atomic_write_text(manifest_path, text.getvalue())
    return manifest_path


def read_medmnist_npz(path, name, size):
    """``{split: (images uint8 (N,H,W[,3]), labels int (N,))}``, after checking every array.

    Raises :class:`InputError` listing every missing array, wrong shape, size or label value.
    """
    info = DATASETS[name]
    n_classes = len(info["labels"])
    problems = []
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise InputError(f"{path}: not a readable .npz file", [str(error)]) from None
    with data:
        arrays = {}
        for split in SPLITS:
            image_key, label_key = f"{split}_images", f"{split}_labels"
            missing = [key for key in (image_key, label_key) if key not in data.files]
            if missing:
                problems += [f"{path}: missing array {key!r} (has {', '.join(data.files) or 'none'})" for key in missing]
                continue
            try:  # np.load reads each array when it is first asked for
                images, labels = data[image_key], data[label_key]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
                problems.append(f"{path}: {image_key} or {label_key} cannot be read ({error})")
                continue
            expected = (size, size) if info["channels"] == 1 else (size, size, 3)
            if images.ndim != 1 + len(expected) or images.shape[1:] != expected:
                problems.append(f"{path}: {image_key} has shape {images.shape}, expected (N, {', '.join(map(str, expected))}) "
                                f"for {name} at size {size}")
            if images.dtype != np.uint8:
                problems.append(f"{path}: {image_key} has dtype {images.dtype}, expected uint8")
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                problems.append(f"{path}: {label_key} has shape {labels.shape}, expected (N,) or (N, 1)")
            elif len(labels) != len(images):
                problems.append(f"{path}: {label_key} has {len(labels)} labels for {len(images)} images")
            elif not np.issubdtype(labels.dtype, np.integer):
                problems.append(f"{path}: {label_key} has dtype {labels.dtype}, expected integers")
            elif len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
                bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
                problems.append(f"{path}: {label_key} has values outside 0..{n_classes - 1} "
                                f"at rows {', '.join(map(str, bad[:10]))}{' …' if len(bad) > 10 else ''}")
            arrays[split] = (images, labels.astype(np.int64) if labels.ndim == 1 else labels)
    if problems:
        raise InputError(f"{path} is not a valid {name} file", problems)
    counts = {split: len(arrays[split][0]) for split in SPLITS}
    if counts != info["n_samples"]:
        others = [other for other, other_info in DATASETS.items() if other_info["n_samples"] == counts]
        if others:
            raise InputError(f"{path} is not a {name} file", [
                f"its {counts} images per split are the official {others[0]}'s; {name} has {info['n_samples']}"])
        warnings.warn(f"{path}: {counts} images per split, the official {name} has {info['n_samples']}", stacklevel=3)
    return arrays


def download_medmnist(name, dest_dir, size=28):
    """Download the official ``.npz`` into ``dest_dir``, check its MD5, return its path.

    A file already there with the right MD5 is reused. The download goes to a temporary file
    that is renamed only after the checksum matches.
    """
    name = check_name(name)
    size = check_size(size)
    target = Path(dest_dir) / npz_file_name(name, size)
    expected = DATASETS[name]["md5"][size]
    if target.is_file() and file_digest(target, "md5") == expected:
        return target
    url = official_url(name, size)
    with atomic_path(target) as tmp:
        try:
            with _open_url(url) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as error:
            raise InputError(
                f"could not download {name} from {url}",
                [str(getattr(error, "reason", error)),
                 "without internet, give a local file: datasets.<name>.npz: <path> or MEDCLASSIFY_<NAME>_NPZ in the "
                 "workflow, --npz <path> to medclassify import-medmnist"],
            ) from None
        actual = file_digest(tmp, "md5")
        if actual != expected:
            raise InputError(f"downloaded {npz_file_name(name, size)} is corrupt",
                             [f"MD5 {actual}, published {expected} ({url})"])
    return target


def _open_url(url):
    # The one network access of the package; tests replace it.
    return urllib.request.urlopen(url, timeout=120)

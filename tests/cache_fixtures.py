"""Small generated datasets for the preprocessing and cache tests (PNG files + validated manifest).

The validated manifest is written as validation writes it: ``content_hash`` comes from
``medclassify.io.content_hash`` of the pixels that ``medclassify.io.read_sample`` decodes, and
``source_spacing`` from the spacing it reports.
"""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medclassify.config import load_config
from medclassify.io import content_hash, read_sample
from medclassify.manifest import VALIDATED_COLUMNS, spacing_text

_DEFAULTS = load_config()
CLASSES = ["benign", "malignant"]


def options(**preprocess_overrides):
    """(preprocess_options, io_options) with defaults filled and the given preprocess overrides."""
    preprocess = copy.deepcopy(_DEFAULTS["preprocess"])
    preprocess.update(preprocess_overrides)
    return preprocess, copy.deepcopy(_DEFAULTS["io"])


def write_png(path, pixels):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def random_image(rng, height=40, width=52, dtype=np.uint8):
    """A noisy blob image whose intensity range differs from image to image."""
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.2 * min(height, width)) ** 2))
    values = rng.uniform(0.1, 0.5) * top * blob + rng.normal(0, 0.05 * top, (height, width)) + 0.2 * top
    return np.clip(values, 0, top).astype(dtype)


def manifest_row(root, relative, label, patient, modality="US"):
    """One validated-manifest row for an existing 2D image file."""
    sample = read_sample(Path(root) / relative, None, _DEFAULTS["io"])
    return {"sample_id": relative, "path": relative, "index": "", "label": label, "patient": patient,
            "modality": modality, "content_hash": content_hash(sample.pixels),
            "source_spacing": spacing_text(sample.meta["spacing"])}


def make_dataset(root, n, *, seed=0, start=0, sizes=((40, 52), (48, 48), (30, 60))):
    """Write ``n`` PNGs under ``root`` (names from ``start``) and return their manifest rows."""
    rng = np.random.default_rng(seed + start)
    rows = []
    for i in range(start, start + n):
        height, width = sizes[i % len(sizes)]
        relative = f"img/{i:05d}.png"
        write_png(Path(root) / relative, random_image(rng, height, width))
        rows.append(manifest_row(root, relative, CLASSES[i % 2], f"p_{i // 3:016x}"))
    return rows


def write_manifest(rows, path):
    """Write rows as ``manifest.validated.csv``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(VALIDATED_COLUMNS)).to_csv(path, index=False)
    return path

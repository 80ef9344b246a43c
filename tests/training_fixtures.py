"""A tiny learnable dataset as a real HDF5 cache (via medclassify.cache) plus its splits.csv.

Images are 16x16 grey PNGs: class ``c`` has a bright blob in quadrant ``c`` on a noisy
background, so a small network separates the classes within a few epochs. The cache is built
by the real preprocessing stage (``build_cache_part``), so the training tests read exactly what
the workflow would give them.
"""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medclassify.cache import build_cache_part
from medclassify.config import load_config
from medclassify.io import content_hash, read_sample

DEFAULTS = load_config()
QUADRANTS = ((0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.7, 0.3))


def quadrant_image(rng, label, size=16):
    """A noisy grey image with a blob in the quadrant of ``label``."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    cy, cx = QUADRANTS[label % len(QUADRANTS)]
    cy, cx = cy + rng.normal(0, 0.05), cx + rng.normal(0, 0.05)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.12 ** 2))
    values = 60 + 140 * blob + rng.normal(0, 25, (size, size))
    return np.clip(values, 0, 255).astype(np.uint8)


def make_training_cache(root, *, n=96, n_classes=2, size=16, seed=0, intensity="minmax", split_fractions=(0.6, 0.2, 0.2),
                        kfold=None):
    """Write PNGs, a validated manifest, ``cache.h5`` and ``splits.csv`` under ``root``.

    Returns ``(cache_path, splits_path)``. Labels cycle through the classes; splits take
    consecutive patients (two images each). With ``kfold`` k the splits carry a ``fold`` column.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = [f"class_{c}" for c in range(n_classes)]
    rows = []
    for i in range(n):
        label = i % n_classes
        relative = f"img/{i:04d}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(quadrant_image(rng, label, size)).save(root / relative)
        pixels = read_sample(root / relative, None, DEFAULTS["io"]).pixels
        rows.append({"sample_id": relative, "path": relative, "index": "", "label": classes[label],
                     "patient": f"p_{i // 2:016x}", "modality": "US", "content_hash": content_hash(pixels),
                     "source_spacing": ""})  # PNG files have no spacing
    manifest = root / "manifest.validated.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    preprocess = copy.deepcopy(DEFAULTS["preprocess"])
    preprocess.update(size=[size, size], intensity=intensity)
    cache_path = root / "cache.h5"
    build_cache_part(manifest, root, cache_path, preprocess_options=preprocess, io_options=DEFAULTS["io"],
                     classes=classes)
    splits = pd.DataFrame({"sample_id": [r["sample_id"] for r in rows]})
    n_train, n_val = int(split_fractions[0] * n), int(split_fractions[1] * n)
    splits["split"] = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    if kfold:
        splits["fold"] = [-1 if s == "test" else (i // 2) % kfold for i, s in enumerate(splits["split"])]
        splits["split"] = ["test" if s == "test" else "trainval" for s in splits["split"]]
    splits_path = root / "splits.csv"
    splits.to_csv(splits_path, index=False)
    return cache_path, splits_path


def tiny_options(**train_overrides):
    """run_config-shaped options for a small, fast model (ResNet-18 at width 8, one model)."""
    train = {"resnet_width": 8, "batch_size": 16, "ensemble": 1, **train_overrides}
    config = load_config(overrides={"train": train,
                                    "head": {"epochs": 1}, "finetune": {"epochs": 2, "warmup_epochs": 0.5}})
    from medclassify.config import run_config

    return run_config(config, "baseline")

"""BreastMNIST as the workflow sees it: PNG files, validated manifest, HDF5 cache, splits.csv.

Used by bench/accuracy.py. It drives the library functions directly (the MedMNIST importer when it
is available, else the same steps written out here): images keep the official split, the cache
is built by the real preprocessing stage (28x28, intensity none, as config/breastmnist.yaml).
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medclassify.cache import build_cache_part, default_blocks_dir, merge_cache_parts  # noqa: E402
from medclassify.config import load_config  # noqa: E402
from medclassify.io import content_hash, read_sample  # noqa: E402

NPZ = ROOT.parent / "shared" / "data" / "breastmnist.npz"
CLASSES = ["0", "1"]  # 0 = malignant, 1 = normal or benign (MedMNIST's label indices)


def prepare_breastmnist(out_dir, npz=NPZ, overrides=None):
    """Write images, cache.h5 and splits.csv for BreastMNIST under ``out_dir``; return their paths.

    ``overrides``: config overrides (only ``preprocess`` and ``io`` matter here).
    """
    out_dir = Path(out_dir)
    cache_path, splits_path = out_dir / "cache.h5", out_dir / "splits.csv"
    if cache_path.exists() and splits_path.exists():
        return cache_path, splits_path
    config = load_config(ROOT / "config" / "breastmnist.yaml", overrides or {})
    io_options = config["io"]
    preprocess = copy.deepcopy(config["preprocess"])
    data = np.load(npz)
    rows = []
    for split in ("train", "val", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        for i, (image, label) in enumerate(zip(images, labels)):
            relative = f"images/{split}/{i:04d}.png"
            (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out_dir / relative)
            pixels = read_sample(out_dir / relative, None, io_options).pixels
            # One image per patient: MedMNIST publishes no patient ids.
            rows.append({"sample_id": relative, "path": relative, "index": "", "label": str(int(label)),
                         "patient": f"{split}_{i:04d}", "modality": "US", "content_hash": content_hash(pixels),
                         "source_spacing": "", "split": split})  # PNG files have no spacing
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "manifest.validated.csv", index=False)
    # The workflow's layout: one part, its pixels in a block, merged into cache.h5.
    part = out_dir / "cache" / "part-0-of-1.h5"
    build_cache_part(out_dir / "manifest.validated.csv", out_dir, part, preprocess_options=preprocess,
                     io_options=io_options, classes=CLASSES, blocks=default_blocks_dir(part))
    merge_cache_parts([part], cache_path, out_dir / "fingerprint.json", blocks=default_blocks_dir(part))
    table[["sample_id", "split"]].to_csv(splits_path, index=False)
    return cache_path, splits_path

"""Synthetic validated manifests for the split tests."""

import numpy as np
import pandas as pd


def make_manifest(patient_sizes, patient_labels, *, modalities=("CT", "MR"), seed=0):
    """A validated-manifest-like frame: one row per image, labels per patient, unique content.

    ``patient_sizes[i]`` images of ``patient_labels[i]`` for patient ``i``. Sample ids embed the
    patient so that failures are readable; content hashes are unique per image.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for patient, (size, label) in enumerate(zip(patient_sizes, patient_labels)):
        for image in range(size):
            rows.append({
                "sample_id": f"images/pt{patient:04d}/img{image}.png",
                "path": f"images/pt{patient:04d}/img{image}.png",
                "index": "",
                "label": str(label),
                "patient": f"p_{patient:016x}",
                "modality": modalities[int(rng.integers(len(modalities)))],
                "content_hash": f"{patient:08x}{image:08x}" + "0" * 16,
            })
    return pd.DataFrame(rows)


def random_manifest(n_patients, *, classes=("benign", "malignant", "normal"), weights=None, max_images=6, seed=0):
    """Patients with 1..``max_images`` images and labels drawn with ``weights``."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_images + 1, size=n_patients)
    labels = rng.choice(classes, size=n_patients, p=weights)
    # Every class present at least once, so class counts are well defined.
    labels[: len(classes)] = classes
    return make_manifest(sizes, labels, seed=seed)


def options(method="grouped_stratified", *, train=0.7, val=0.15, test=0.15, folds=5, seed=42, drop_duplicates=False):
    """A ``split`` config section with every key filled, as the workflow passes it."""
    return {
        "method": method,
        "fractions": {"train": train, "val": val, "test": test},
        "folds": folds,
        "seed": seed,
        "drop_duplicates": drop_duplicates,
    }


def split_of(splits_df):
    """``{sample_id: split}`` (k-fold rows: ``"fold k"`` for trainval rows)."""
    if "fold" in splits_df.columns:
        names = np.where(splits_df["fold"] >= 0, "fold " + splits_df["fold"].astype(str), splits_df["split"])
        return dict(zip(splits_df["sample_id"], names))
    return dict(zip(splits_df["sample_id"], splits_df["split"]))


def patients_per_unit(manifest, splits_df):
    """``{patient: set of splits (or folds)}``."""
    where = split_of(splits_df)
    result = {}
    for sample_id, patient in zip(manifest["sample_id"], manifest["patient"]):
        if sample_id in where:
            result.setdefault(patient, set()).add(where[sample_id])
    return result

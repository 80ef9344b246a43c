"""Fixtures shared by the evaluation, predict and run-card tests: a tiny dataset on disk.

The cache is written with h5py exactly as docs/architecture.md describes, so these tests do not
depend on how the preprocessing stage builds it.
"""

import json

import h5py
import numpy as np
import pandas as pd

from medclassify.config import config_hash
from medclassify.privacy import hash_patient


def synthetic_dataset(n_patients=24, images_per_patient=3, size=16, classes=("benign", "malignant"), seed=0):
    """Images whose class is visible (a bright square for the second class), grouped by patient."""
    rng = np.random.default_rng(seed)
    rows = []
    images = []
    for p in range(n_patients):
        label = p % len(classes)
        patient = hash_patient(f"patient-{p}", "test-salt")
        for i in range(images_per_patient):
            image = rng.uniform(0, 0.4, size=(size, size, 1))
            if label:
                image[4:4 + 4 * label, 4:12] += 0.5
            images.append(np.clip(image, 0, 1))
            rows.append({"sample_id": f"p{p:03d}/img{i}.png", "path": f"p{p:03d}/img{i}.png", "index": "",
                         "label": classes[label], "patient": patient,
                         "modality": "US" if p % 3 else "MG", "site": "A" if p < n_patients // 2 else "B",
                         "content_hash": f"{p:04d}{i:04d}"})
    manifest = pd.DataFrame(rows)
    return manifest, np.stack(images).astype(np.float32), list(classes)


def write_cache(path, manifest, images, classes):
    """An HDF5 cache per the contract: uint8 images, int64 labels, string columns, attributes."""
    labels = manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.round(images * 255).astype(np.uint8))
        f.create_dataset("labels", data=labels)
        for column in ("sample_id", "patient", "content_hash", "modality"):
            f.create_dataset(column, data=manifest[column].to_numpy(dtype=object), dtype=string)
        f.attrs["params"] = json.dumps({})
        f.attrs["params_hash"] = config_hash({})  # open_cache checks the one against the other
        f.attrs["classes"] = json.dumps(classes)
        f.attrs["library_version"] = "test"
        f.attrs["manifest_hash"] = "test"
        f.attrs["created"] = "2026-01-01T00:00:00Z"
        _add_integrity_attributes(f, manifest)
    return path


def _add_integrity_attributes(f, manifest):
    # medclassify.cache checks a format version and a digest of the row metadata beyond the
    # documented contract; record them the way it computes them so that open_cache accepts the file.
    from medclassify import cache

    f.attrs["cache_format"] = cache.CACHE_FORMAT_VERSION
    f.attrs["part_digest"] = cache._part_digest(f.attrs["params_hash"], json.loads(f.attrs["classes"]), f["labels"][:],
                                                [list(manifest[name]) for name in cache.STRING_DATASETS])


def write_splits(path, manifest, folds=None):
    """splits.csv with whole patients per split: 50% train, 25% val, 25% test (or k folds).

    Patients come in class order (0, 1, 0, 1…), so assigning them in consecutive pairs puts both
    classes into every split.
    """
    patients = list(dict.fromkeys(manifest["patient"]))
    split_of = {p: ("train", "train", "val", "test")[(k // 2) % 4] for k, p in enumerate(patients)}
    frame = pd.DataFrame({"sample_id": manifest["sample_id"], "split": manifest["patient"].map(split_of)})
    if folds:
        frame["split"] = np.where(frame["split"] == "test", "test", "trainval")
        trainval = [p for p in patients if split_of[p] != "test"]
        fold_of = {p: (k // 2) % folds for k, p in enumerate(trainval)}
        frame["fold"] = [-1 if s == "test" else fold_of[p] for s, p in zip(frame["split"], manifest["patient"])]
    frame.to_csv(path, index=False)
    return path


def tiny_model(input_shape, n_classes, nested=False, seed=0):
    """A small convolutional Keras model (optionally with a nested backbone model), trained briefly
    by the caller if needed. Softmax output, inputs in [0, 1]."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    if nested:
        b_in = keras.Input(input_shape)
        b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(b_in)
        b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(b)
        backbone = keras.Model(b_in, b, name="backbone")
        x = backbone(inputs)
    else:
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def trained_model(images, labels, n_classes, nested=False, epochs=30):
    """tiny_model fitted on the given images so that its predictions carry signal."""
    import keras

    model = tiny_model(images.shape[1:], n_classes, nested=nested)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    return model

"""Reading the ``model.json`` that the training stage writes beside every ``model.keras``, and
telling one model's weights from another's.

Training, evaluation and predict each read it; one reader here gives them the same answer for a
missing file and the same InputError, naming the file, for a damaged one. No TensorFlow.
"""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError


def model_json_path(model_path):
    """Where the description of ``model_path`` lies: ``model.json`` in the same folder."""
    return Path(model_path).with_name("model.json")


def model_json_beside(model_path):
    """The model.json beside ``model_path``, or {} for a model without one.

    Raises InputError naming the file when it is not a JSON object (a cut copy, a hand edit).
    """
    path = model_json_path(model_path)
    if not path.exists():
        return {}
    return read_json_object(path, f"the description of {model_path}")


def read_json_object(path, what):
    """The JSON object in ``path``; InputError naming the file when it is not one.

    ``what`` says what the file is to the reader of the message.
    """
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot be read as JSON", [f"{what}: {error}"]) from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: not a JSON object", [f"{what} must be a JSON object, not {type(content).__name__}"])
    return content


def weights_digest(model):
    """sha256 (hex, first 32 characters) of a model's weights: each array's dtype, shape and bytes, in order.

    Identical trainings give identical weights and so one digest, where the ``.keras`` files' bytes
    differ (the zip records when it was written). Evaluation records it so that predict knows
    whether the model it loads is the one evaluated; fine-tuning, whether a head model saved again
    is the one its members started from.
    """
    return _arrays_digest(("", array) for array in model.get_weights())


def _arrays_digest(labelled_arrays):
    """sha256 (first 32 hex characters) of ``(label, array)`` pairs: each label, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for label, array in labelled_arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{label}{array.dtype.str}|{array.shape}|".encode("utf-8"))
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()[:32]


def saved_weights_digest(model_path):
    """sha256 (first 32 hex characters) of the weights stored in a ``.keras`` file: each array's
    name, dtype, shape and bytes, read from the zip's weights file without building the model.

    Building it (Keras's load_model) only to digest it was a third model made in a fine-tuning
    process, after which TensorFlow's oneDNN kernels corrupted the heap in the first epoch
    (``free(): invalid next size``) on this project's CPU build, for an ensemble from a trained
    head (helper-90).
    """
    try:
        with zipfile.ZipFile(model_path) as archive, archive.open("model.weights.h5") as stored:
            with h5py.File(io.BytesIO(stored.read()), "r") as weights:
                arrays = []
                # The model's weights, not the optimizer's state, which a model saved uncompiled
                # lacks and fine-tuning does not start from (as weights_digest of the loaded model).
                weights.visititems(lambda name, item: arrays.append((name, item[()]))
                                   if isinstance(item, h5py.Dataset) and not name.startswith("optimizer/") else None)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise InputError(f"{model_path}: not a readable Keras model", [str(error)]) from None
    return _arrays_digest((f"{name}|", array) for name, array in arrays)

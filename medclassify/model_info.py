"""Reading the ``model.json`` that the training stage writes beside every ``model.keras``, and
telling one model's weights from another's.

Training, evaluation and predict each read it; one reader here gives them the same answer for a
missing file and the same InputError, naming the file, for a damaged one; likewise
:func:`load_model` for the model itself. TensorFlow is imported only by that function.
"""

import hashlib
import json
from pathlib import Path

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
    digest = hashlib.sha256()
    for array in model.get_weights():
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode("ascii"))
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()[:32]


def load_model(model_path):
    """Load a saved model safely, with medclassify's custom layers registered."""
    import importlib

    import keras

    # Imported for its side effect, registering the custom layers for deserialisation; pyflakes
    # reads `from .. import models` as an unused import whatever its noqa comment says.
    importlib.import_module(".models", __package__)

    if not Path(model_path).is_file():
        raise InputError(f"{model_path}: not found", ["the training stage writes it; check the path"])
    try:
        return keras.models.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:  # Keras reports a damaged zip as "File not found", among others
        raise InputError(f"{model_path}: not a readable Keras model (truncated or corrupted?)",
                         [f"{type(error).__name__}: {str(error)[:500]}", "rerun the training stage that writes it"]) from None

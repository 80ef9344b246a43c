"""Reading the ``model.json`` that the training stage writes beside every ``model.keras``, and
telling one model's weights from another's.

Training, evaluation and predict each read it; one reader here gives them the same answer for a
missing file and the same InputError, naming the file, for a damaged one. No TensorFlow.
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

"""Reading the ``model.json`` that the training stage writes beside every ``model.keras``.

Training, evaluation and predict each read it; one reader here gives them the same answer for a
missing file and the same InputError, naming the file, for a damaged one. No TensorFlow.
"""

import json
from pathlib import Path

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

"""Models: the built-in ResNet-18, keras.applications backbones, the classifier head, weights."""

import importlib
from pathlib import Path

from ..errors import InputError

from .backbones import available_backbones, backbone_blocks, build_backbone, set_trainable_blocks
from .ensemble import build_ensemble, ensemble_members
from .heads import backbone_of, build_classifier, log_prior_bias, set_backbone_inference_mode
from .layers import BackboneRunner, ImageNetNormalization, PadToSize, RepeatChannels
from .resnet import build_resnet18

__all__ = [
    "BackboneRunner", "ImageNetNormalization", "PadToSize", "RepeatChannels", "available_backbones",
    "backbone_blocks", "backbone_of", "build_backbone", "build_classifier", "build_ensemble", "build_resnet18",
    "ensemble_members", "load_model", "log_prior_bias", "set_backbone_inference_mode", "set_trainable_blocks",
]

# A fine-tuned model's compile config names its learning-rate schedule: registered here with the
# layers, it loads wherever they do. (pyflakes reads a plain import of it as unused.)
importlib.import_module("..schedules", __package__)
# So does its loss, where it is ours (train.imbalance focal_loss): a saved model then loads with
# keras.models.load_model, compiled, wherever medclassify.models is imported.
importlib.import_module("..fitting", __package__)


def load_model(model_path):
    """Load a saved model safely (``safe_mode``, no Lambda layers), with this package's custom
    layers registered; InputError naming the file when it is missing or not a readable model."""
    import keras

    if not Path(model_path).is_file():
        raise InputError(f"{model_path}: not found", ["the training stage writes it; check the path"])
    try:
        return keras.models.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:  # Keras reports a damaged zip as "File not found", among others
        raise InputError(f"{model_path}: not a readable Keras model (truncated or corrupted?)",
                         [f"{type(error).__name__}: {str(error)[:500]}", "rerun the training stage that writes it"]) from None

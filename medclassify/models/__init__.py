"""Models: the built-in ResNet-18, keras.applications backbones, the classifier head, weights."""

import importlib

from .backbones import available_backbones, backbone_blocks, build_backbone, set_trainable_blocks
from .ensemble import build_ensemble, ensemble_members
from .heads import backbone_of, build_classifier, log_prior_bias, set_backbone_inference_mode
from .layers import BackboneRunner, ImageNetNormalization, PadToSize, RepeatChannels
from .resnet import build_resnet18

__all__ = [
    "BackboneRunner", "ImageNetNormalization", "PadToSize", "RepeatChannels", "available_backbones",
    "backbone_blocks", "backbone_of", "build_backbone", "build_classifier", "build_ensemble", "build_resnet18",
    "ensemble_members", "log_prior_bias", "set_backbone_inference_mode", "set_trainable_blocks",
]

# A fine-tuned model's compile config names its learning-rate schedule: registered here with the
# layers, it loads wherever they do. (pyflakes reads a plain import of it as unused.)
importlib.import_module("..schedules", __package__)

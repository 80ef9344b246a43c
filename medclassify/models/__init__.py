"""Models: the built-in ResNet-18, keras.applications backbones, the classifier head, weights."""

from .backbones import available_backbones, backbone_blocks, build_backbone, set_trainable_blocks
from .ensemble import build_ensemble, ensemble_members
from .heads import backbone_of, build_classifier, log_prior_bias, set_backbone_inference_mode
from .layers import BackboneRunner, ImageNetNormalization, PadToSize, RepeatChannels
from .resnet import build_resnet18
# A fine-tuned model's compile config names the schedule: registered with the layers, it loads with them.
from ..schedules import WarmupCosineDecay  # noqa: F401

__all__ = [
    "BackboneRunner", "ImageNetNormalization", "PadToSize", "RepeatChannels", "available_backbones",
    "backbone_blocks", "backbone_of", "build_backbone", "build_classifier", "build_ensemble", "build_resnet18",
    "ensemble_members", "log_prior_bias", "set_backbone_inference_mode", "set_trainable_blocks",
]

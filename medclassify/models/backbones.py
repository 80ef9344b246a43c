"""Backbones by name: the built-in ResNet-18 or any keras.applications model.

A backbone here is a Keras Model from images to feature maps (no classifier). This module also
knows what each family expects of its input (minimum size, normalisation) and how its layers
group into blocks, so that fine-tuning can unfreeze "the top N blocks" of any backbone.
"""

import re

import keras

from ..errors import InputError
from .resnet import build_resnet18

BUILTIN = ("resnet18",)
DEFAULT_MIN_SIZE = 32
# keras.applications models that need more than 32 px (their own input validation says so).
MIN_SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}

# How keras.applications' preprocess_input scales each family (ImageNetNormalization modes).
_NORMALISATION_BY_PREFIX = (
    ("ResNet50V2", "tf"), ("ResNet101V2", "tf"), ("ResNet152V2", "tf"),
    ("ResNet", "caffe"), ("VGG", "caffe"),
    ("DenseNet", "torch"),
    ("EfficientNet", "raw255"), ("ConvNeXt", "raw255"), ("MobileNetV3", "raw255"),
    ("Inception", "tf"), ("Xception", "tf"), ("MobileNet", "tf"), ("NASNet", "tf"),
)


def available_backbones():
    """Names accepted as ``train.backbone``: the built-ins and every keras.applications model."""
    names = [n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n))]
    return list(BUILTIN) + sorted(names)


def normalisation_mode(backbone, pretrained):
    """ImageNetNormalization mode for ``backbone``: its ImageNet preprocessing, or none.

    A randomly initialised built-in ResNet-18 takes [0, 1] images as they are (its first
    BatchNorm standardises them); keras.applications models always get their family's scaling,
    since some (EfficientNet) normalise inside and assume 0..255 input.
    """
    if backbone in BUILTIN:
        return "torch" if pretrained else "none"
    for prefix, mode in _NORMALISATION_BY_PREFIX:
        if backbone.startswith(prefix):
            return mode
    return "torch"


def min_input_size(backbone):
    """Smallest height/width the backbone accepts."""
    return 1 if backbone in BUILTIN else MIN_SIZES.get(backbone, DEFAULT_MIN_SIZE)


def build_backbone(name, input_shape, *, width=64):
    """Return an uninitialised (random) backbone Model for images of ``input_shape`` (H, W, C).

    ImageNet weights are loaded afterwards with :func:`load_backbone_weights`; keras.applications
    models are built with ``weights=None`` so that nothing is downloaded behind our back.
    """
    if name == "resnet18":
        return build_resnet18(input_shape, width=width, name="backbone")
    constructor = getattr(keras.applications, name, None)
    if constructor is None or not name[:1].isupper():
        raise InputError(f"unknown backbone {name!r}", [
            "train.backbone must be resnet18 or a keras.applications model, e.g. "
            "ResNet50, DenseNet121, EfficientNetB0, MobileNetV2"])
    try:
        model = constructor(include_top=False, weights=None, input_shape=tuple(input_shape))
    except ValueError as error:
        raise InputError(f"backbone {name} cannot take images of shape {tuple(input_shape)}", [str(error)]) from error
    # A stable name: the classifier finds its backbone by it, whatever the family.
    return keras.Model(model.inputs[0], model.outputs[0], name="backbone")


def load_backbone_weights(backbone, path):
    """Load weights from ``path`` into ``backbone``: keras.applications .h5 or Keras .weights.h5."""
    try:
        backbone.load_weights(str(path))
    except (ValueError, OSError, KeyError) as error:
        raise InputError(f"cannot load backbone weights from {path}", [
            f"{type(error).__name__}: {error}",
            "the file must hold weights of exactly this backbone, without its classifier (no top)"]) from error


_BLOCK = re.compile(r"^(stem|stage\d+_block\d+|conv\d+_block\d+|block_?\d+[a-z]?|conv\d+|mixed\d+|stage_\d+)")


def backbone_blocks(backbone):
    """Group the backbone's layers into blocks, in order from input to output.

    Returns a list of (block name, [layers]). A layer's block comes from its name (``stem``,
    ``stage3_block2`` for ResNet-18, ``conv4_block5`` for ResNet/DenseNet, ``block6a`` for
    EfficientNet, ``block_12`` for MobileNetV2, ``mixed7`` for Inception); layers whose names
    name no block (input, final norm/activation) belong to the block before them.
    """
    blocks = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        match = _BLOCK.match(layer.name)
        key = match.group(1) if match else None
        if not blocks or (key is not None and key != blocks[-1][0]):
            blocks.append((key or layer.name, []))
        blocks[-1][1].append(layer)
    return blocks


def set_trainable_blocks(backbone, unfreeze, *, freeze_batchnorm):
    """Make the top ``unfreeze`` blocks trainable ("all": every layer), the rest frozen.

    With ``freeze_batchnorm`` every BatchNormalization layer stays frozen; a frozen BatchNorm in
    Keras 3 also runs in inference mode, keeping the pretrained statistics. Returns the names of
    the trainable blocks.
    """
    backbone.trainable = True
    blocks = backbone_blocks(backbone)
    n = len(blocks) if unfreeze == "all" else min(int(unfreeze), len(blocks))
    trainable_names = []
    for index, (name, members) in enumerate(blocks):
        trainable = index >= len(blocks) - n
        if trainable:
            trainable_names.append(name)
        for layer in members:
            layer.trainable = trainable
            if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return trainable_names

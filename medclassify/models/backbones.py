"""Backbones by name: the built-in ResNet-18 or any keras.applications model.

A backbone here is a Keras Model from images to feature maps (no classifier). This module also
knows what each family expects of its input (minimum size, normalisation) and how its layers
group into blocks, so that fine-tuning can unfreeze "the top N blocks" of any backbone.
"""

import re

import keras

from ..backbone_names import BUILTIN
from ..errors import InputError
from .resnet import build_resnet18

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


def build_backbone(name, input_shape, *, width=32):
    """Return an uninitialised (random) backbone Model for images of ``input_shape`` (H, W, C).

    ``width``: the built-in resnet18's train.resnet_width (its schema default by default).

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


# Block names in layer names, tried in order: (pattern, block name, takes the loose layers before it).
# A layer whose name matches no pattern is "loose" (Keras's automatic names conv2d_17, add_3, a
# transition, the final norm). Most families name every layer of a block after it, so loose
# layers belong to the block before them. Inception-type nets name a block only by its output
# (mixed7, block17_3_ac) and leave the branches that feed it auto-named, and NASNet's cells start
# with auto-named activations: there loose layers belong to the block they feed, the next one.
_BLOCK_NAMES = tuple((re.compile(pattern), name, takes_loose) for pattern, name, takes_loose in (
    (r"^(mixed\d+|mixed_\d+[a-z])$", r"\1", True),  # InceptionV3; InceptionResNetV2's reductions
    (r"^(block\d+_\d+)(?=_|$)", r"\1", True),  # InceptionResNetV2: block35_4_mixed
    # NASNet: the cell's id ends each name. adjust_relu_1_<id> acts on the output of the cell two
    # back and comes early in layer order, so it is left loose rather than split the cell before.
    (r"^(?!adjust_relu)(?:normal|reduction|adjust|separable_conv)_\w*?_((?:stem_|reduce_)?\d+)$", r"cell_\1", True),
    # conv\d+ must not take Keras's conv2d / conv2d_17 for a block "conv2".
    (r"^(stem|stage\d+_block\d+|conv\d+_block\d+|block_?\d+[a-z]?|conv\d+(?=_|$)|stage_\d+)", r"\1", False),
    (r"^(expanded_conv_\d+)(?=_|$)", r"\1", False),  # MobileNetV3 (block 0 stays with the stem, as in V2)
    (r"_(stage_\d+_block_\d+)_", r"\1", False),  # ConvNeXt: convnext_tiny_stage_2_block_4_...
    (r"^conv_(?:dw|pw|pad)_(\d+)(?=_|$)", r"conv_block_\1", False),  # MobileNet
))


def _block_name(layer_name):
    """(block name, whether the block takes the loose layers before it), or (None, False)."""
    for pattern, name, takes_loose in _BLOCK_NAMES:
        match = pattern.search(layer_name)
        if match:
            return match.expand(name), takes_loose
    return None, False


def backbone_blocks(backbone):
    """Group the backbone's layers into blocks, in order from input to output.

    Returns a list of (block name, [layers]). A layer's block comes from its name (``stem``,
    ``stage3_block2`` for ResNet-18, ``conv4_block5`` for ResNet/DenseNet, ``block6a`` for
    EfficientNet, ``block_12`` for MobileNetV2, ``mixed7`` for InceptionV3, ``block17_3`` for
    InceptionResNetV2, ``stage_2_block_4`` for ConvNeXt, ``cell_7`` for NASNet); layers whose
    names name no block (input, transitions, final norm/activation) belong to the block before
    them, or in Inception-type nets and NASNet to the block they feed (see ``_BLOCK_NAMES``).
    Loose layers before the first block form a block named after the first of them (a stem).
    """
    blocks, loose = [], []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        name, takes_loose = _block_name(layer.name)
        if name is None:
            loose.append(layer)
            continue
        if loose and not takes_loose:
            _add_to_last_block(blocks, loose)
            loose = []
        if not blocks or name != blocks[-1][0]:
            blocks.append((name, []))
        blocks[-1][1].extend(loose + [layer])
        loose = []
    if loose:
        _add_to_last_block(blocks, loose)
    return blocks


def _add_to_last_block(blocks, layers):
    """Append ``layers`` to the last block, or make them the first block if there is none."""
    if not blocks:
        blocks.append((layers[0].name, []))
    blocks[-1][1].extend(layers)


def _blocks_with_weights(blocks):
    """How many of ``blocks`` hold weights (a bare concatenation or pooling holds none)."""
    return sum(1 for _, members in blocks if any(layer.weights for layer in members))


def set_trainable_blocks(backbone, unfreeze, *, freeze_batchnorm):
    """Make the top ``unfreeze`` blocks trainable ("all": every layer), the rest frozen.

    With ``freeze_batchnorm`` every BatchNormalization layer stays frozen; a frozen BatchNorm in
    Keras 3 also runs in inference mode, keeping the pretrained statistics. Returns the names of
    the trainable blocks. Raises InputError for a number of blocks (other than 0) when the
    backbone's layer names give fewer than two blocks with weights: the number would then train
    all or nothing, silently.
    """
    blocks = backbone_blocks(backbone)
    weighted = _blocks_with_weights(blocks)
    if unfreeze not in ("all", 0) and weighted < 2:
        raise InputError(f"finetune.unfreeze: {unfreeze}: the blocks of this backbone could not be identified", [
            f"its layers group into {len(blocks)} block(s) by name, {weighted} with weights",
            "use finetune.unfreeze: all to fine-tune the whole backbone"])
    backbone.trainable = True
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

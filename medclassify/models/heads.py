"""The classifier: input handling, backbone, and a new head, as one saveable Keras model.

Layout (layer names are part of the contract between the training stages)::

    image [0,1] (H,W,C) -> zscore? -> to_rgb? -> fit_size? -> imagenet_norm -> backbone_runner
        -> pool -> dropout -> classifier (Dense, bias = log class priors) -> probabilities (float32)
"""

import math

import keras
import numpy as np

from .backbones import build_backbone, min_input_size, normalisation_mode
from .layers import BackboneRunner, ImageNetNormalization, PadToSize, RepeatChannels

BACKBONE_LAYER = "backbone_runner"


def log_prior_bias(class_counts):
    """Initial output bias: the log class priors, so the untrained model predicts the priors.

    Softmax of log priors gives the priors; the loss then starts at the label entropy instead of
    spending the first steps learning the class balance. Empty classes get a small floor.
    """
    counts = np.asarray(class_counts, dtype="float64")
    priors = np.maximum(counts, 0.5) / np.maximum(counts, 0.5).sum()
    return np.log(priors).astype("float32")


def input_layers(input_shape, backbone, *, pretrained, small_input, zscore=None, min_size=0):
    """Layers mapping a [0, 1] image of ``input_shape`` to what ``backbone`` expects, in order.

    Images smaller than the backbone's minimum input, or than ``min_size`` (``train.min_input_size``),
    are resized (bilinear, keeping the aspect ratio) or padded up to it, per ``small_input``.
    """
    height, width, channels = input_shape
    result = []
    if zscore is not None:
        mean, std = float(zscore["mean"]), float(zscore["std"])
        result.append(keras.layers.Normalization(mean=mean, variance=std ** 2, name="zscore"))
    if pretrained and channels == 1:
        result.append(RepeatChannels(3, name="to_rgb"))
    min_size = max(min_input_size(backbone), int(min_size))
    if min(height, width) < min_size:
        target_h, target_w = max(height, min_size), max(width, min_size)
        if small_input == "pad":
            result.append(PadToSize(target_h, target_w, name="fit_size"))
        else:
            # Keep the aspect ratio: scale the smaller side up to the minimum.
            scale = min_size / min(height, width)
            result.append(keras.layers.Resizing(math.ceil(height * scale), math.ceil(width * scale),
                                                interpolation="bilinear", name="fit_size"))
    result.append(ImageNetNormalization(normalisation_mode(backbone, pretrained),
                                        standardized=zscore is not None, name="imagenet_norm"))
    return result


def backbone_input_shape(input_shape, layers_before):
    """Shape of the images that reach the backbone after ``layers_before``."""
    shape = (None, *input_shape)
    for layer in layers_before:
        shape = layer.compute_output_shape(shape)
    return tuple(shape[1:])


def assemble_classifier(input_shape, pre_layers, runner, head_layers, name="classifier"):
    """Connect existing layers into a functional model taking (H, W, C) float32 images."""
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="image")
    x = inputs
    for layer in [*pre_layers, runner, *head_layers]:
        x = layer(x)
    return keras.Model(inputs, x, name=name)


def head_layers(n_classes, *, dropout, class_counts, seed):
    """Global average pooling, dropout, dense classifier at log priors, float32 softmax."""

    return [
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dropout(dropout, seed=seed, name="dropout"),
        # Zero kernel: the untrained model outputs exactly the priors, whatever its features.
        keras.layers.Dense(n_classes, name="classifier", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(log_prior_bias(class_counts))),
        # float32 even under mixed precision: probabilities must sum to 1 and compare exactly.
        keras.layers.Activation("softmax", dtype="float32", name="probabilities"),
    ]


def build_classifier(input_shape, n_classes, *, backbone, class_counts, dropout=0.2, small_input="resize",
                     weights_path=None, zscore=None, resnet_width=32, seed=0, min_size=0):
    """Build the full classifier with a new head; the backbone runs in inference mode.

    The keywords are the train options of the same names (``min_size``: train.min_input_size;
    ``dropout``: head.dropout), and default to the schema's defaults.
    ``weights_path``: backbone weights to load (ImageNet or a user file), or None for random.
    Returns the Keras model; its backbone is reachable with :func:`backbone_of`.
    """
    from .backbones import load_backbone_weights

    pretrained = weights_path is not None
    pre = input_layers(input_shape, backbone, pretrained=pretrained, small_input=small_input, zscore=zscore,
                       min_size=min_size)
    net = build_backbone(backbone, backbone_input_shape(input_shape, pre), width=resnet_width)
    if weights_path is not None:
        load_backbone_weights(net, weights_path)
    runner = BackboneRunner(net, inference_mode=True, name=BACKBONE_LAYER)
    head = head_layers(n_classes, dropout=dropout, class_counts=class_counts, seed=seed)
    return assemble_classifier(input_shape, pre, runner, head)


def backbone_of(model):
    """The backbone Model inside a classifier built by :func:`build_classifier`."""
    return model.get_layer(BACKBONE_LAYER).layer


def set_backbone_inference_mode(model, inference_mode):
    """Switch how the backbone runs in training: frozen inference (head) or trainable (fine-tune)."""
    model.get_layer(BACKBONE_LAYER).inference_mode = bool(inference_mode)

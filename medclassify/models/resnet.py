"""ResNet-18 (He et al., 2016), built in because keras.applications has no ResNet-18.

Two stems: the ImageNet stem (7x7 stride-2 convolution and 3x3 max pooling) and, for images of
64 px or less, the CIFAR-style 3x3 stride-1 stem without pooling. The ImageNet stem would shrink
a 28 px image to 7 px before the first residual block and leave almost nothing for the four
stages; the small stem keeps the spatial detail (this is the variant MedMNIST reports at 28 px).

Layer names carry their block (``stem_``, ``stage{s}_block{b}_``), so that fine-tuning can
unfreeze the top N blocks by name (see :func:`medclassify.models.backbones.backbone_blocks`).
"""

import keras
from keras import layers

SMALL_STEM_MAX_SIZE = 64
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def uses_small_stem(image_size):
    """True when the 3x3 stride-1 stem suits images of ``image_size`` (height, width) pixels."""
    return max(image_size) <= SMALL_STEM_MAX_SIZE


def _conv_bn(x, filters, kernel, stride, name, activation=True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    if activation:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _basic_block(x, filters, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        # Projection shortcut (option B of the paper) when the shape changes.
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_proj", activation=False)
    y = _conv_bn(x, filters, 3, stride, f"{name}_1")
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", activation=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def build_resnet18(input_shape, small_stem=None, width=64, name="resnet18"):
    """Return a ResNet-18 feature extractor: a Keras Model from images to (h, w, 8*width) maps.

    ``input_shape`` is (H, W, C) with any C. ``small_stem`` None chooses the 3x3 stride-1 stem
    when the image is at most 64 px. ``width`` is the number of filters of the first stage
    (64 in the paper); the later stages double it.
    """
    if small_stem is None:
        small_stem = uses_small_stem(input_shape[:2])
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
    if small_stem:
        x = _conv_bn(inputs, width, 3, 1, "stem")
    else:
        x = _conv_bn(inputs, width, 7, 2, "stem")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (multiplier, n_blocks) in enumerate(zip((1, 2, 4, 8), BLOCKS_PER_STAGE), start=1):
        for block in range(1, n_blocks + 1):
            stride = 2 if (stage > 1 and block == 1) else 1
            x = _basic_block(x, width * multiplier, stride, f"stage{stage}_block{block}")
    return keras.Model(inputs, x, name=name)

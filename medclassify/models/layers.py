"""Serialisable layers that put all input handling inside the saved model.

The saved model takes float32 images in [0, 1] of the cache's shape; everything a backbone
expects beyond that (3 channels, a minimum size, ImageNet normalisation, the running mode of the
backbone) is one of these layers, so evaluation and predict need no preprocessing code of their
own and ``keras.models.load_model(..., safe_mode=True)`` loads the model (no Lambda layers).
"""

import keras
from keras import ops

PACKAGE = "medclassify"

# ImageNet statistics in RGB order, on the [0, 1] scale (torchvision's, used by keras "torch" mode).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras "caffe" mode subtracts these per-channel means, in BGR order, on the 0..255 scale.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORMALISATION_MODES = ("none", "tf", "torch", "caffe", "raw255")


def _per_channel(values, channels):
    """The three ImageNet constants for RGB input; their average for any other channel count."""
    return list(values) if channels == 3 else [sum(values) / len(values)] * channels


@keras.saving.register_keras_serializable(package=PACKAGE)
class RepeatChannels(keras.layers.Layer):
    """Repeat a one-channel image into ``channels`` channels (grey into an RGB backbone)."""

    def __init__(self, channels=3, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, inputs):
        return ops.repeat(inputs, self.channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageNetNormalization(keras.layers.Layer):
    """Map [0, 1] images to what a keras.applications backbone expects (its preprocess_input).

    ``mode``: ``tf`` scales to [-1, 1]; ``torch`` subtracts the ImageNet mean and divides by its
    std; ``caffe`` scales to 0..255, flips RGB to BGR and subtracts the ImageNet mean; ``raw255``
    scales to 0..255 (EfficientNet and ConvNeXt normalise inside the model); ``none`` passes
    through. With ``standardized=True`` the input is already z-scored (intensity ``zscore``) and
    is mapped onto the same scale with ImageNet's average mean and std, keeping its zero mean.
    """

    def __init__(self, mode="torch", standardized=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALISATION_MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; one of {NORMALISATION_MODES}")
        self.mode = mode
        self.standardized = bool(standardized)

    def call(self, inputs):
        x = inputs
        if self.mode == "none":
            return x
        if self.standardized:
            std = sum(IMAGENET_STD) / 3
            mean = sum(IMAGENET_MEAN) / 3
            scale = {"tf": 2 * std, "torch": 1.0, "caffe": 255 * std, "raw255": 255 * std}[self.mode]
            offset = 255 * mean if self.mode == "raw255" else 0.0
            return x * scale + offset
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "raw255":
            return x * 255.0
        channels = x.shape[-1]
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_per_channel(IMAGENET_MEAN, channels), dtype=x.dtype)
            std = ops.convert_to_tensor(_per_channel(IMAGENET_STD, channels), dtype=x.dtype)
            return (x - mean) / std
        bgr = (ops.flip(x, axis=-1) if channels == 3 else x) * 255.0
        return bgr - ops.convert_to_tensor(_per_channel(CAFFE_MEAN_BGR, channels), dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "standardized": self.standardized}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PadToSize(keras.layers.Layer):
    """Centre-pad images with zeros (black) up to at least ``height`` x ``width``."""

    def __init__(self, height, width, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def _padding(self, input_shape):
        pad_h = max(self.height - input_shape[1], 0)
        pad_w = max(self.width - input_shape[2], 0)
        return ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))

    def call(self, inputs):
        (top, bottom), (left, right) = self._padding(inputs.shape)
        return ops.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self._padding(input_shape)
        return (input_shape[0], input_shape[1] + top + bottom, input_shape[2] + left + right, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BackboneRunner(keras.layers.Wrapper):
    """Run the wrapped backbone, in inference mode while ``inference_mode`` is True.

    Keras 3 functional models overwrite a nested call's ``training=False`` with the outer
    model's training flag, so a frozen backbone's BatchNorm and dropout would run in training
    mode during head training. This wrapper fixes the mode where it is decided: the head stage
    sets ``inference_mode=True`` (the frozen backbone is called with ``training=False``);
    fine-tuning sets it to False and freezes BatchNorm layers individually instead.
    """

    def __init__(self, layer, inference_mode=True, **kwargs):
        super().__init__(layer, **kwargs)
        self.inference_mode = bool(inference_mode)

    def call(self, inputs, training=None):
        return self.layer(inputs, training=False if self.inference_mode else training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "inference_mode": self.inference_mode}

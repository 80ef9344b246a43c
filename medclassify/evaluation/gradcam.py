"""Grad-CAM (Selvaraju et al. 2017) for Keras models, including nested backbones.

The feature map used is the output of the last layer with a rank-4 (batch, height, width,
channels) output, found by walking the model's layers in topological order and descending into
nested models (a ``keras.applications`` backbone used as one layer). The gradient of the class's
probability with respect to that map, averaged over space, weights its channels.
"""

import numpy as np
import tensorflow as tf

import keras

from ..models.ensemble import ensemble_members


def _inner_model(layer):
    """The model a layer is or wraps (a nested backbone, or a Wrapper around one), else None."""
    if isinstance(layer, keras.Model):
        return layer
    wrapped = getattr(layer, "layer", None)
    if isinstance(layer, keras.layers.Wrapper) and isinstance(wrapped, keras.Model):
        return wrapped
    return None


def _rank4_output(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4 and shape[1] is not None and shape[1] > 1


def find_last_conv_layer(model):
    """Return the chain ``[model, …, layer]`` leading to the last spatial feature map.

    Nested models are searched as well, also when a wrapper layer (``keras.layers.Wrapper``, as
    medclassify's ``BackboneRunner``) holds them: for ``Input → backbone → pooling → Dense`` the
    chain is ``[model, backbone, <backbone's last conv-like layer>]``. Raises ValueError when the
    model has no layer with a spatial rank-4 output.
    """
    for layer in reversed(model.layers):
        inner = _inner_model(layer)
        if inner is not None:
            try:
                return [model, layer] + find_last_conv_layer(inner)[1:]
            except ValueError:
                pass
        if _rank4_output(layer):
            return [model, layer]
    raise ValueError(f"model {model.name!r} has no layer with a spatial (rank-4) output")


def _single(tensors):
    if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
        return tensors[0]
    return tensors


def _feature_and_output_fn(chain):
    """A function ``x -> (feature_map, model_output)`` for a chain from find_last_conv_layer."""
    model, child = chain[0], chain[1]
    if len(chain) == 2:
        both = keras.Model(_single(model.inputs), [child.output, _single(model.outputs)])
        return lambda x: tuple(both(x, training=False))
    # The conv layer lives inside ``child`` (a nested model or a wrapper of one): run the outer
    # graph up to the child, the inner model with its feature map exposed, then the outer graph
    # after the child. Everything runs with training=False, so a wrapper that only fixes the
    # inner model's training flag is equivalent to calling the inner model directly.
    node = child._inbound_nodes[-1]
    before = keras.Model(_single(model.inputs), _single(node.input_tensors))
    after = keras.Model(_single(node.output_tensors), _single(model.outputs))
    inner = _feature_and_output_fn([_inner_model(child), *chain[2:]])

    def run(x):
        feature, child_output = inner(before(x, training=False))
        return feature, after(child_output, training=False)

    return run


def explained_model(model):
    """The model whose feature map Grad-CAM uses: ``model``, or an ensemble's first member."""
    members = ensemble_members(model)
    return members[0] if members else model


def gradcam_heatmaps(model, images, class_indices):
    """Grad-CAM heat maps (n, h, w) in [0, 1] at the feature map's resolution.

    ``images`` are the model's inputs (float32, n×H×W×C); ``class_indices`` the class explained
    for each image. A map whose gradients vanish (a saturated prediction) is all zeros. For an
    ensemble (:func:`medclassify.models.build_ensemble`) the members' maps are averaged: the
    ensemble's output is the mean of theirs, and their feature maps are not shared.
    """
    members = ensemble_members(model)
    if members:
        cam = np.mean([gradcam_heatmaps(member, images, class_indices) for member in members], axis=0)
        peak = cam.reshape(len(cam), -1).max(axis=1)
        return cam / np.where(peak > 0, peak, 1.0)[:, None, None]
    chain = find_last_conv_layer(model)
    forward = _feature_and_output_fn(chain)
    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    class_indices = np.asarray(class_indices, dtype=int)
    with tf.GradientTape() as tape:
        # Watching the input records every op downstream of it, so the gradient with respect to
        # the intermediate feature map exists even when the backbone's weights are frozen.
        tape.watch(images)
        feature, output = forward(images)
        score = tf.gather(output, class_indices, axis=1, batch_dims=1)
    # float32 for the weighting: under a mixed-precision policy the map is float16.
    gradients = tf.cast(tape.gradient(score, feature), tf.float32)
    feature = tf.cast(feature, tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feature, axis=-1)).numpy().astype(np.float64)
    peak = cam.reshape(len(cam), -1).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)
    return cam / peak[:, None, None]


def upsample(heatmaps, size):
    """Resize heat maps (n, h, w) to ``size`` (height, width) bilinearly."""
    resized = tf.image.resize(np.asarray(heatmaps, dtype=np.float32)[..., None], size, method="bilinear")
    return np.clip(resized.numpy()[..., 0], 0.0, 1.0)

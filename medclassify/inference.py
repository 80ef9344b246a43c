"""A model's class probabilities over many images, read in bounded chunks.

Shared by the fine-tune stage (an ensemble's validation AUC) and evaluation, so both score
exactly the same way. NumPy only: the caller brings the Keras model.
"""

import numpy as np

PREDICT_CHUNK = 512  # images read from the cache at once; bounds memory on large test sets


def flip_views(images, flips):
    """The images and each requested flip of them (NHWC)."""
    views = [images]
    if "horizontal_flip" in flips:
        views.append(images[:, :, ::-1, :])
    if "vertical_flip" in flips:
        views.append(images[:, ::-1, :, :])
    return views


def predict_probabilities(model, read_images, n, *, flips=(), batch_size=64):
    """Softmax probabilities (n, n_classes) of the images ``read_images(chunk_positions)`` returns.

    With ``flips`` (test-time augmentation) the probabilities are averaged over the image and
    its flipped copies.
    """
    outputs = []
    for start in range(0, n, PREDICT_CHUNK):
        positions = np.arange(start, min(n, start + PREDICT_CHUNK))
        images = np.asarray(read_images(positions), dtype=np.float32)
        views = flip_views(images, flips)
        probs = [np.asarray(model.predict(np.ascontiguousarray(v), batch_size=batch_size, verbose=0), dtype=np.float64)
                 for v in views]
        outputs.append(np.mean(probs, axis=0))
    if not outputs:
        return np.empty((0, model.output_shape[-1]))
    return np.concatenate(outputs)


def cache_reader(cache, indices):
    """A ``read_images(positions)`` for :func:`predict_probabilities`: rows ``indices[positions]`` of ``cache``."""
    indices = np.asarray(indices, dtype=int)
    return lambda positions: cache.read(indices[positions])  # Cache.read takes any order

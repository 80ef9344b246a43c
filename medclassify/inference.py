"""A model's class probabilities over many images, read in bounded chunks.

Shared by the fine-tune stage (an ensemble's validation AUC), evaluation and ``predict``, so all
three score exactly the same way. The caller brings the Keras model.

Test-time augmentation averages the probabilities over *views* of each image. A view is
``"identity"``, ``"horizontal_flip"``, ``"vertical_flip"`` or ``{"affine": {...}}`` (the
keyword arguments of :func:`medclassify.data.affine_view`). Evaluation records the views it used
in ``metrics.json``, and ``predict`` applies the same ones, so the decision threshold chosen on
validation is applied to probabilities computed the same way.
"""

import numpy as np

from .errors import InputError

PREDICT_CHUNK = 512  # images read from the cache at once; bounds memory on large test sets
IDENTITY = "identity"
FLIPS = ("horizontal_flip", "vertical_flip")
AFFINE_PARAMETERS = ("rotation_degrees", "scale", "shift_x", "shift_y")  # of data.affine_view


def is_view(view):
    """Whether ``view`` is a test-time view that :func:`view_of` knows."""
    if isinstance(view, str):
        return view in (IDENTITY, *FLIPS)
    if not (isinstance(view, dict) and set(view) == {"affine"} and isinstance(view["affine"], dict)):
        return False
    parameters = view["affine"]
    return set(parameters) <= set(AFFINE_PARAMETERS) and all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in parameters.values())


def view_of(images, view):
    """``images`` (NHWC) seen through one test-time ``view``."""
    if not is_view(view):
        raise ValueError(f"unknown test-time view {view!r}")
    if view == IDENTITY:
        return images
    if view == "horizontal_flip":
        return images[:, :, ::-1, :]
    if view == "vertical_flip":
        return images[:, ::-1, :, :]
    from .data import affine_view

    return affine_view(images, **view["affine"])


def affine_views(augment, n_views, seed=0):
    """``n_views`` fixed affine views drawn (seeded) from training augmentation's ranges.

    ``augment`` is the model's ``train.augment``: each view's rotation, zoom and shift are drawn
    uniformly from ``rotation_degrees``, ``zoom`` and ``translate`` as training draws them per
    image. Empty when training augmented none of them, or warped no image (``warp_probability``
    0): a view would then be an unseen distortion. Views are drawn in sequence, so the first k of
    ``n_views`` are the views of ``k``.
    """
    rotation, zoom, translate = (float(augment.get(k, 0.0)) for k in ("rotation_degrees", "zoom", "translate"))
    warped = float(augment.get("warp_probability", 1.0)) > 0
    if n_views <= 0 or not warped or not (rotation > 0 or zoom > 0 or translate > 0):
        return []
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n_views):
        angle, scale, shift_x, shift_y = rng.uniform([-rotation, 1 - zoom, -translate, -translate],
                                                     [rotation, 1 + zoom, translate, translate])
        views.append({"affine": {"rotation_degrees": round(float(angle), 6), "scale": round(float(scale), 6),
                                 "shift_x": round(float(shift_x), 6), "shift_y": round(float(shift_y), 6)}})
    return views


def predict_probabilities(model, read_images, n, *, views=(IDENTITY,), batch_size=64):
    """Softmax probabilities (n, n_classes) of the images ``read_images(chunk_positions)`` returns.

    With several ``views`` (test-time augmentation) the probabilities are averaged over them.
    """
    outputs = []
    for start in range(0, n, PREDICT_CHUNK):
        positions = np.arange(start, min(n, start + PREDICT_CHUNK))
        images = np.asarray(read_images(positions), dtype=np.float32)
        outputs.append(mean_probabilities(model, images, views, batch_size=batch_size))
    if not outputs:
        return np.empty((0, model.output_shape[-1]))
    return np.concatenate(outputs)


def mean_probabilities(model, images, views=(IDENTITY,), *, batch_size=64):
    """Probabilities of ``images`` (float32 NHWC) averaged over ``views``."""
    probs = [np.asarray(model.predict(np.ascontiguousarray(view_of(images, view)), batch_size=batch_size, verbose=0),
                        dtype=np.float64) for view in views]
    return np.mean(probs, axis=0)


def check_finite_probabilities(model, **images_by_name):
    """Raise InputError naming ``model`` when any of its probabilities is NaN or infinite.

    ``images_by_name`` maps a description of the images ("val", "test") to their probabilities.
    Such a model diverged in training; scoring or thresholding its output would fail deep inside
    scikit-learn, or quietly call every image the first class.
    """
    problems = [f"{bad} of {len(probabilities)} {name} images"
                for name, probabilities in images_by_name.items()
                if (bad := int((~np.isfinite(probabilities)).any(axis=1).sum()))]
    if problems:
        raise InputError(f"{model}: the model gives NaN or infinite probabilities",
                         problems + ["its training diverged (see the loss in its history.csv): retrain it, "
                                     "for example with a lower learning rate"])


def cache_reader(cache, indices):
    """A ``read_images(positions)`` for :func:`predict_probabilities`: rows ``indices[positions]`` of ``cache``."""
    indices = np.asarray(indices, dtype=int)
    return lambda positions: cache.read(indices[positions])  # Cache.read takes any order

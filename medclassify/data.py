"""tf.data input for training: from the HDF5 cache to shuffled, augmented, prefetched batches.

Every random choice of an epoch (its order, its augmentation, its mixup pairs) is a pure function
of ``(seed, epoch)``: the epoch's dataset is built from seeds, never from a random state carried
over from earlier epochs. A run resumed at epoch k therefore sees exactly the batches that an
uninterrupted run would have seen, and two runs with the same seed see the same batches.

The training images are held in memory when they fit under ``train.cache_in_memory_max_gb``
(gathered by index inside the tf.data graph); otherwise each batch is read from the HDF5 file with
one sorted read while earlier batches train (prefetch), so the cache never has to fit in memory.
Augmentation runs inside the tf.data map on whole batches, never inside the saved model.
"""

import contextlib
import math

import numpy as np
import tensorflow as tf

from .errors import InputError
from .splits import read_splits_file, split_sample_ids

AUTOTUNE = tf.data.AUTOTUNE
# The map functions below branch only on Python values, so they need no AutoGraph conversion.
# Skipping it also means TensorFlow never re-reads this file's source while training runs.
plain_graph = tf.autograph.experimental.do_not_convert
# Separate stream ids so that order, augmentation and mixup draw independent random numbers.
_ORDER_STREAM, _AUGMENT_STREAM, _MIXUP_STREAM = 1, 2, 3


# --- which samples ------------------------------------------------------------------------------
def split_indices(cache_sample_ids, splits_path, fold=None):
    """Cache row indices (sorted) of each split; InputError if the files disagree."""
    splits_df = read_splits_file(splits_path)
    position = {sample_id: i for i, sample_id in enumerate(cache_sample_ids)}
    result, problems = {}, []
    for name, ids in split_sample_ids(splits_df, fold, splits_path).items():
        missing = [sample_id for sample_id in ids if sample_id not in position]
        if missing:
            problems.append(f"{splits_path}: {len(missing)} {name} sample(s) not in the cache, "
                            f"e.g. {', '.join(missing[:3])}")
        result[name] = np.sort(np.array([position[s] for s in ids if s in position], dtype="int64"))
    for name in ("train", "val"):
        if len(result[name]) == 0:
            problems.append(f"{splits_path}: the {name} split is empty" + (f" for fold {fold}" if fold is not None else ""))
    if problems:
        raise InputError("the splits file does not match the cache (rerun the split stage)", problems)
    return result


# --- where images come from ---------------------------------------------------------------------
class ImageSource:
    """Images of some cache rows, either held in memory or read from the cache per batch."""

    def __init__(self, cache, indices, *, in_memory):
        self.cache = cache
        self.indices = np.asarray(indices, dtype="int64")
        self.image_shape = tuple(cache.image_shape)
        self.in_memory = in_memory
        self.images = read_in_chunks(cache, self.indices) if in_memory else None
        self.failure = None  # the InputError of a read inside TensorFlow, which wraps it

    def __len__(self):
        return len(self.indices)

    def read(self, positions):
        """float32 images of the given positions (into ``indices``), in the given order."""
        positions = np.asarray(positions, dtype="int64")
        if self.images is not None:
            return self.images[positions]
        try:
            # Cache.read makes one sorted, de-duplicated read per part and returns the given order.
            return self.cache.read(self.indices[positions])
        except InputError as error:
            self.failure = error
            raise


@contextlib.contextmanager
def read_errors_unwrapped(*sources):
    """Raise the InputError of a source read from disk (a damaged block, naming it) as itself.

    Inside a tf.data pipeline the read runs in ``tf.numpy_function``, and TensorFlow reports its
    failure as an UnknownError with a traceback of its own around the message.
    """
    try:
        yield
    except tf.errors.OpError:
        for source in sources:
            if source.failure is not None:
                raise source.failure from None
        raise


def fits_in_memory(n_images, image_shape, max_gb):
    """True when ``n_images`` float32 images of ``image_shape`` take at most ``max_gb`` GB."""
    return n_images * int(np.prod(image_shape)) * 4 <= max_gb * 1e9


def read_in_chunks(cache, indices, chunk=4096):
    """Read the given cache rows as one float32 array, a chunk at a time."""
    indices = np.asarray(indices, dtype="int64")
    out = np.empty((len(indices), *cache.image_shape), dtype="float32")
    for start in range(0, len(indices), chunk):
        out[start:start + chunk] = cache.read(indices[start:start + chunk])
    return out


def zscore_statistics(source, chunk=4096):
    """Mean and standard deviation of every pixel of the source's images (training split)."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(source), chunk):
        images = source.read(np.arange(start, min(start + chunk, len(source)))).astype("float64")
        total += images.sum()
        total_sq += np.square(images).sum()
        count += images.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean ** 2, 0.0))
    return {"mean": mean, "std": max(std, 1e-6)}


# --- per-epoch order ------------------------------------------------------------------------------
def epoch_rng(seed, epoch, stream):
    """NumPy generator for one (seed, epoch, stream): independent of every other epoch."""
    return np.random.default_rng([int(seed), int(epoch), int(stream)])


def epoch_order(labels, epoch, *, seed, balanced=False):
    """Positions of the training samples in the order of ``epoch``.

    Plain: a permutation. ``balanced`` (imbalance: balanced_sampling): as many draws as samples,
    with replacement, each class equally likely.
    """
    labels = np.asarray(labels)
    rng = epoch_rng(seed, epoch, _ORDER_STREAM)
    if not balanced:
        return rng.permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    weight_of_class = dict(zip(classes, 1.0 / (len(classes) * counts)))
    p = np.array([weight_of_class[label] for label in labels])
    return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())


def class_weights(labels, n_classes):
    """Weights n / (k * count_c) ("balanced"), so that each class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype("float64")
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return np.where(counts > 0, weights, 0.0).astype("float32")


# --- augmentation (batched, stateless) ------------------------------------------------------------
def _uniform(shape, seed, low, high):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def affine_matrices(angle, scale, shift_x, shift_y, height, width):
    """Projective transforms (output -> input coordinates) of ImageProjectiveTransformV3, one row
    per image: rotation by ``angle`` (radians) and zoom by ``scale`` about the centre, then a shift
    of ``shift_x``, ``shift_y`` pixels. All four are float32 tensors of shape (batch,)."""
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = cx - a0 * cx - a1 * cy + shift_x
    b2 = cy - b0 * cx - b1 * cy + shift_y
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _affine_transforms(batch, height, width, seeds, rotation_degrees, zoom, translate):
    """Random rotation, zoom and shift of each image of a batch, drawn from ``seeds``."""
    angle = _uniform([batch], seeds[0], -1.0, 1.0) * (rotation_degrees * math.pi / 180.0)
    scale = _uniform([batch], seeds[1], 1.0 - zoom, 1.0 + zoom)
    shift_x = _uniform([batch], seeds[2], -translate, translate) * width
    shift_y = _uniform([batch], seeds[3], -translate, translate) * height
    return affine_matrices(angle, scale, shift_x, shift_y, height, width)


def _warp(images, transforms):
    """Bilinear warp with reflected borders, as training augmentation does."""
    height, width = images.shape[1], images.shape[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([height, width], dtype=tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")


def affine_view(images, *, rotation_degrees=0.0, scale=1.0, shift_x=0.0, shift_y=0.0):
    """Every image of ``images`` (b, H, W, C), float32, warped by one fixed affine transform.

    The transform is training augmentation's (rotation and zoom about the centre, bilinear, with
    reflected borders); ``shift_x`` and ``shift_y`` are fractions of the width and height. Used
    for test-time augmentation: the same view of every image, so a prediction does not depend on
    which images share its batch.
    """
    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    batch, height, width = int(images.shape[0]), images.shape[1], images.shape[2]

    def repeated(value):
        return tf.fill([batch], tf.constant(value, tf.float32))

    transforms = affine_matrices(repeated(rotation_degrees * math.pi / 180.0), repeated(scale),
                                 repeated(shift_x * width), repeated(shift_y * height), height, width)
    return _warp(images, transforms).numpy()


@plain_graph
def augment_batch(images, seed, options):
    """Randomly augment a batch (b, H, W, C) in [0, 1]; ``seed`` is a (2,) int64 tensor.

    ``options`` is ``train.augment`` with every key (the schema's defaults filled in): flips,
    rotation, zoom, translation (one affine warp with reflected borders, applied to each image
    with probability ``warp_probability``), brightness, contrast, Gaussian noise; the result is
    clipped to [0, 1].
    """
    seeds = [tf.stack([seed[0], seed[1] * 16 + k]) for k in range(10)]
    shape = tf.shape(images)
    batch, height, width = shape[0], images.shape[1], images.shape[2]
    x = images
    if options["horizontal_flip"]:
        flip = _uniform([batch, 1, 1, 1], seeds[0], 0.0, 1.0) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    if options["vertical_flip"]:
        flip = _uniform([batch, 1, 1, 1], seeds[1], 0.0, 1.0) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[1]), x)
    rotation, zoom, translate = (float(options[k]) for k in ("rotation_degrees", "zoom", "translate"))
    if (rotation > 0 or zoom > 0 or translate > 0) and float(options["warp_probability"]) > 0:
        transforms = _affine_transforms(batch, height, width, seeds[2:6], rotation, zoom, translate)
        warped = _warp(x, transforms)
        probability = float(options["warp_probability"])
        if probability < 1:
            # Every warp resamples bilinearly, which blurs a 28-pixel image; images left unwarped
            # keep the sharpness that evaluation images have.
            x = tf.where(_uniform([batch, 1, 1, 1], seeds[9], 0.0, 1.0) < probability, warped, x)
        else:
            x = warped
    brightness, contrast, noise = (float(options[k]) for k in ("brightness", "contrast", "noise_std"))
    if contrast > 0:
        factor = _uniform([batch, 1, 1, 1], seeds[6], 1.0 - contrast, 1.0 + contrast)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * factor + mean
    if brightness > 0:
        x = x + _uniform([batch, 1, 1, 1], seeds[7], -brightness, brightness)
    if noise > 0:
        x = x + tf.random.stateless_normal(tf.shape(x), seed=seeds[8], stddev=noise)
    return tf.clip_by_value(x, 0.0, 1.0)


@plain_graph
def mixup_batch(images, targets, weights, seed, alpha):
    """Mixup (Zhang et al., 2018): blend each sample with another of the batch, λ ~ Beta(α, α).

    The targets are blended in proportion to each sample's share of the blended weight, so that a
    class's weight in the loss stays λ·w_a·y_a + (1 - λ)·w_b·y_b: the plain blend of targets under
    the blended weight gave a majority class part of a minority partner's class weight (under
    class_weight, mixup 0.2 tilted the classes' loss 1.3 to 1).
    """
    batch = tf.shape(images)[0]
    seed_a, seed_b, seed_p = (tf.stack([seed[0], seed[1] * 16 + 10 + k]) for k in range(3))
    gamma_a = tf.random.stateless_gamma([batch], seed=seed_a, alpha=alpha)
    gamma_b = tf.random.stateless_gamma([batch], seed=seed_b, alpha=alpha)
    lam = gamma_a / (gamma_a + gamma_b)
    partner = tf.argsort(tf.random.stateless_uniform([batch], seed=seed_p))
    lam_x = tf.reshape(lam, [-1, 1, 1, 1])
    images = lam_x * images + (1.0 - lam_x) * tf.gather(images, partner)
    partner_weights = tf.gather(weights, partner)
    mixed_weights = lam * weights + (1.0 - lam) * partner_weights
    # Equal weights (no class weights): the share is λ itself, not λ over a sum rounded near 1.
    share = tf.where(tf.equal(weights, partner_weights), lam, tf.math.divide_no_nan(lam * weights, mixed_weights))
    share = tf.reshape(share, [-1, 1])
    targets = share * targets + (1.0 - share) * tf.gather(targets, partner)
    return images, targets, mixed_weights


# --- datasets -------------------------------------------------------------------------------------
_POSITIONS = tf.TensorSpec((None,), tf.int64)  # a batch's positions into its source
_SCALAR = tf.TensorSpec((), tf.int64)


def _image_reader(source):
    """A traced function from positions (into the source) to their float32 images.

    In memory: a gather inside the graph. From disk: one sorted read of the HDF5 file per batch
    (``ImageSource.read``), the only step that needs Python and its GIL.
    """
    if source.images is not None:
        images = tf.constant(source.images)  # once per run, not per epoch

        @tf.function(input_signature=[_POSITIONS], autograph=False)
        def read(positions):
            return tf.gather(images, positions)
        return read

    @tf.function(input_signature=[_POSITIONS], autograph=False)
    def read(positions):
        batch = tf.numpy_function(source.read, [positions], tf.float32)
        batch.set_shape((None, *source.image_shape))
        return batch
    return read


def without_autotune(dataset):
    """``dataset`` with tf.data's autotuning off: parallel maps use one call per core.

    Ending a pass waits for the autotuning thread; on a 2-core machine that held up 3 of 5
    BreastMNIST epochs by 2-4 s each (7-8 s of training). There is nothing here to tune: the
    batches are gathered in memory or read one at a time.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _batched_positions(order, batch_size):
    """Dataset of consecutive slices of ``order`` of ``batch_size`` (the last may be shorter)."""
    return tf.data.Dataset.from_tensor_slices(np.asarray(order, dtype="int64")).batch(batch_size)


class TrainingBatches:
    """The training batches of every epoch: (images, one-hot targets, sample weights), prefetched.

    ``for_epoch(k)`` returns epoch k's pipeline for one pass. ``labels`` are the class indices of
    the source's images; mixup makes the targets soft; sample weights are ``weights_per_class`` of
    each label (1 without).

    The per-batch work (read or gather, augmentation, mixup) is traced once per run; an epoch's
    pipeline only slices that epoch's order, computed in NumPy, into batches and maps those traced
    functions over them. The order enters as a tensor, not through a Python generator: a
    ``from_generator`` pipeline slowed BreastMNIST training steps by about a fifth on 2 cores (its
    generator runs on a tf.data thread and takes the GIL), though iterating it alone cost 35 ms
    an epoch.
    """

    def __init__(self, source, labels, *, n_classes, batch_size, seed, augment=None, mixup=0.0, balanced=False,
                 weights_per_class=None):
        self.labels = np.asarray(labels, dtype="int64")
        self.batch_size, self.seed, self.balanced = int(batch_size), int(seed), balanced
        one_hot = tf.constant(np.eye(n_classes, dtype="float32")[self.labels])
        per_class = tf.constant(weights_per_class if weights_per_class is not None
                                else np.ones(n_classes, dtype="float32"))
        label_tensor = tf.constant(self.labels)
        read = _image_reader(source)

        @tf.function(input_signature=[_POSITIONS, _SCALAR, _SCALAR], autograph=False)
        def with_images(positions, batch_index, epoch_seed):
            return read(positions), positions, batch_index, epoch_seed

        @tf.function(input_signature=[tf.TensorSpec((None, *source.image_shape), tf.float32),
                                      _POSITIONS, _SCALAR, _SCALAR], autograph=False)
        def prepare(images, positions, batch_index, epoch_seed):
            batch_seed = tf.stack([epoch_seed, batch_index])
            targets = tf.gather(one_hot, positions)
            weights = tf.gather(per_class, tf.gather(label_tensor, positions))
            if augment:
                images = augment_batch(images, batch_seed, augment)
            if mixup > 0:
                images, targets, weights = mixup_batch(images, targets, weights, batch_seed, float(mixup))
            return images, targets, weights

        self._with_images, self._prepare = with_images, prepare

    def __len__(self):
        """Batches per epoch (balanced sampling draws as many samples as there are)."""
        return math.ceil(len(self.labels) / self.batch_size)

    def for_epoch(self, epoch):
        """The dataset of ``epoch``'s batches, for one pass."""
        order = epoch_order(self.labels, epoch, seed=self.seed, balanced=self.balanced)
        epoch_seed = np.int64(self.seed * 1_000_003 + int(epoch))
        n_batches = len(self)
        positions = _batched_positions(order, self.batch_size)
        extras = (tf.data.Dataset.range(n_batches), tf.data.Dataset.from_tensors(epoch_seed).repeat(n_batches))
        # Reads stay in order on one thread (one HDF5 handle); augmentation runs in parallel.
        return (tf.data.Dataset.zip(positions, *extras)
                .map(self._with_images)
                .map(self._prepare, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
                .apply(without_autotune))


def training_dataset(source, labels, epoch, **options):
    """The batches of one training epoch (:class:`TrainingBatches` for a single epoch)."""
    return TrainingBatches(source, labels, **options).for_epoch(epoch)


def evaluation_dataset(source, batch_size):
    """The source's images in order, batched and prefetched (validation and prediction)."""
    read = _image_reader(source)
    positions = _batched_positions(np.arange(len(source)), batch_size)
    return positions.map(read).prefetch(AUTOTUNE).apply(without_autotune)

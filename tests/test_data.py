"""tf.data input: splits, per-epoch order, augmentation, mixup, in-memory and from-disk sources."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from medclassify.cache import open_cache
from medclassify.data import (ImageSource, TrainingBatches, augment_batch, class_weights, epoch_order,
                              evaluation_dataset, fits_in_memory, mixup_batch, split_indices, split_sample_ids,
                              training_dataset, zscore_statistics)
from medclassify.errors import InputError
from training_fixtures import make_training_cache

AUGMENT = {"horizontal_flip": True, "vertical_flip": True, "rotation_degrees": 15, "zoom": 0.1, "translate": 0.1,
           "warp_probability": 1.0, "brightness": 0.1, "contrast": 0.1, "noise_std": 0.02}
NO_AUGMENT = {"horizontal_flip": False, "vertical_flip": False, "rotation_degrees": 0, "zoom": 0, "translate": 0,
              "warp_probability": 1.0, "brightness": 0, "contrast": 0, "noise_std": 0}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return make_training_cache(tmp_path_factory.mktemp("cache"), n=40, n_classes=2)


def test_split_sample_ids_with_and_without_folds():
    table = pd.DataFrame({"sample_id": list("abcdef"), "split": ["train", "train", "val", "test", "train", "val"]})
    assert split_sample_ids(table) == {"train": ["a", "b", "e"], "val": ["c", "f"], "test": ["d"]}
    kfold = pd.DataFrame({"sample_id": list("abcde"), "split": ["trainval"] * 4 + ["test"], "fold": [0, 1, 2, 1, -1]})
    assert split_sample_ids(kfold, fold=1) == {"train": ["a", "c"], "val": ["b", "d"], "test": ["e"]}
    with pytest.raises(InputError, match="no fold column"):
        split_sample_ids(table, fold=0)
    # -1 marks the test rows: as a fold it would validate (choose epochs) on the test set.
    for fold, message in ((-1, "fold -1 is not among this split's folds"), (None, "k-fold splits need a fold")):
        with pytest.raises(InputError, match=message):
            split_sample_ids(kfold, fold=fold)


def test_split_indices_report_samples_missing_from_the_cache(tmp_path):
    path = tmp_path / "splits.csv"
    pd.DataFrame({"sample_id": ["a", "b", "x"], "split": ["train", "val", "train"]}).to_csv(path, index=False)
    assert split_indices(["b", "a", "x"], path)["train"].tolist() == [1, 2]
    with pytest.raises(InputError) as error:
        split_indices(["a", "b"], path)
    assert "not in the cache" in str(error.value) and "x" in str(error.value)


def test_epoch_order_depends_only_on_seed_and_epoch():
    labels = np.array([0] * 90 + [1] * 10)
    first = epoch_order(labels, 3, seed=7)
    np.testing.assert_array_equal(first, epoch_order(labels, 3, seed=7))
    assert sorted(first) == list(range(100))
    assert not np.array_equal(first, epoch_order(labels, 4, seed=7))
    assert not np.array_equal(first, epoch_order(labels, 3, seed=8))


def test_balanced_sampling_draws_classes_equally():
    labels = np.array([0] * 900 + [1] * 100)
    drawn = labels[np.concatenate([epoch_order(labels, e, seed=0, balanced=True) for e in range(5)])]
    assert abs(np.mean(drawn == 1) - 0.5) < 0.03


def test_class_weights_balance_the_loss():
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(weights, [4 / 9, 4 / 3, 0.0])


def test_augmentation_is_seeded_in_range_and_changes_images():
    images = tf.constant(np.random.default_rng(0).random((8, 16, 16, 1), dtype="float32"))
    seed = tf.constant([1, 2], tf.int64)
    a = augment_batch(images, seed, AUGMENT).numpy()
    np.testing.assert_array_equal(a, augment_batch(images, seed, AUGMENT).numpy())
    assert not np.array_equal(a, augment_batch(images, tf.constant([1, 3], tf.int64), AUGMENT).numpy())
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.shape == images.shape
    assert np.abs(a - images.numpy()).mean() > 0.01
    np.testing.assert_allclose(augment_batch(images, seed, NO_AUGMENT).numpy(), images.numpy(), atol=1e-6)


def test_rotation_turns_an_image_about_its_centre():
    image = np.zeros((1, 17, 17, 1), dtype="float32")
    image[0, 8, 12, 0] = 1.0  # right of the centre
    rotated = augment_batch(tf.constant(image), tf.constant([0, 0], tf.int64),
                            {**NO_AUGMENT, "rotation_degrees": 90}).numpy()[0, :, :, 0]
    # A random angle in [-90, 90]: the bright spot stays at distance 4 from the centre.
    y, x = np.unravel_index(rotated.argmax(), rotated.shape)
    assert abs(np.hypot(y - 8, x - 8) - 4) <= 1.0


def test_warp_probability_leaves_some_images_unwarped():
    images = tf.constant(np.random.default_rng(1).random((64, 16, 16, 1), dtype="float32"))
    seed = tf.constant([4, 2], tf.int64)
    warp_only = {**NO_AUGMENT, "rotation_degrees": 10, "zoom": 0.1, "translate": 0.1}
    always = augment_batch(images, seed, warp_only).numpy()
    # 1.0 is the former behaviour, bit for bit; 0 warps nothing.
    np.testing.assert_array_equal(always, augment_batch(images, seed, {**warp_only, "warp_probability": 1.0}).numpy())
    np.testing.assert_allclose(augment_batch(images, seed, {**warp_only, "warp_probability": 0.0}).numpy(),
                               images.numpy(), atol=1e-6)
    half = augment_batch(images, seed, {**warp_only, "warp_probability": 0.5}).numpy()
    kept = np.all(np.abs(half - images.numpy()) < 1e-6, axis=(1, 2, 3))
    warped = np.all(half == always, axis=(1, 2, 3))
    assert np.all(kept | warped) and 16 <= kept.sum() <= 48

def test_mixup_blends_images_and_targets_alike():
    images = tf.constant(np.stack([np.zeros((4, 4, 1)), np.ones((4, 4, 1))]).astype("float32"))
    targets = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    mixed, mixed_targets, weights = mixup_batch(images, targets, tf.ones([2]), tf.constant([0, 5], tf.int64), 0.4)
    np.testing.assert_allclose(mixed_targets.numpy().sum(axis=1), 1.0, rtol=1e-6)
    # Image 1 is all ones, image 0 all zeros: each mixed image's value is its class-1 share.
    np.testing.assert_allclose(mixed.numpy().mean(axis=(1, 2, 3)), mixed_targets.numpy()[:, 1], rtol=1e-5)
    np.testing.assert_allclose(weights.numpy(), 1.0)


def test_mixup_keeps_each_class_s_weight_in_the_loss():
    # The blended weight times the blended target gave the majority class part of a minority
    # partner's class weight: under class_weight, mixup tilted the classes 1.3 to 1 (helper-78).
    images = tf.constant(np.stack([np.zeros((4, 4, 1)), np.ones((4, 4, 1))] * 4).astype("float32"))
    targets = tf.constant([[1.0, 0.0], [0.0, 1.0]] * 4)
    class_weights = tf.constant([1.0, 9.0] * 4)
    mixed, mixed_targets, weights = mixup_batch(images, targets, class_weights, tf.constant([0, 7], tf.int64), 0.4)
    ones = mixed.numpy().mean(axis=(1, 2, 3))  # each mixed image's share of a class-1 image
    in_loss = weights.numpy()[:, None] * mixed_targets.numpy()
    np.testing.assert_allclose(in_loss, np.stack([1.0 * (1 - ones), 9.0 * ones], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed_targets.numpy().sum(axis=1), 1.0, rtol=1e-6)
    assert ((0.05 < ones) & (ones < 0.95)).sum() >= 3  # partners of the other class, well blended


def test_in_memory_and_from_disk_sources_give_identical_batches(tiny_cache):
    cache_path, splits_path = tiny_cache
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path)["train"]
        labels = cache.labels[indices]
        memory, disk = ImageSource(cache, indices, in_memory=True), ImageSource(cache, indices, in_memory=False)
        assert memory.images is not None and disk.images is None
        kwargs = dict(n_classes=2, batch_size=5, seed=3, augment=AUGMENT, mixup=0.2,
                      weights_per_class=class_weights(labels, 2))
        from_memory = list(training_dataset(memory, labels, 2, **kwargs).as_numpy_iterator())
        from_disk = list(training_dataset(disk, labels, 2, **kwargs).as_numpy_iterator())
        assert len(from_memory) == len(from_disk) == int(np.ceil(len(indices) / 5))
        for a, b in zip(from_memory, from_disk):
            for x, y in zip(a, b):
                np.testing.assert_allclose(x, y, atol=1e-6)
        # Every training image appears once per epoch.
        plain = list(training_dataset(disk, labels, 0, n_classes=2, batch_size=7, seed=0).as_numpy_iterator())
        seen = np.concatenate([x for x, _, _ in plain])
        expected = cache.read(indices)
        assert sorted(map(bytes, seen)) == sorted(map(bytes, expected))
        ordered = np.concatenate(list(evaluation_dataset(disk, 6).as_numpy_iterator()))
        np.testing.assert_array_equal(ordered, expected)


@pytest.mark.parametrize("in_memory", [True, False])
def test_one_pipeline_serves_every_epoch_as_a_fresh_one_would(tiny_cache, in_memory):
    cache_path, splits_path = tiny_cache
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path)["train"]
        labels = cache.labels[indices]
        source = ImageSource(cache, indices, in_memory=in_memory)
        kwargs = dict(n_classes=2, batch_size=5, seed=3, augment=AUGMENT, mixup=0.2, balanced=True)
        batches = TrainingBatches(source, labels, **kwargs)
        for epoch in (2, 0, 2, 5):  # out of order and repeated, as a resumed run may ask
            reused = list(batches.for_epoch(epoch).as_numpy_iterator())
            fresh = list(training_dataset(source, labels, epoch, **kwargs).as_numpy_iterator())
            assert len(reused) == len(fresh) == len(batches) == int(np.ceil(len(indices) / 5))
            assert batches.for_epoch(epoch).cardinality() == len(batches)  # Keras knows the steps
            for a, b in zip(reused, fresh):
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y)
        epoch_2, epoch_5 = (np.concatenate([x for x, _, _ in batches.for_epoch(e).as_numpy_iterator()]) for e in (2, 5))
        assert not np.array_equal(epoch_2, epoch_5)


def test_in_memory_batches_need_no_python_and_no_autotuning(tiny_cache):
    # A generator-fed pipeline takes the GIL for every batch on a tf.data thread: BreastMNIST's
    # training steps ran about a fifth slower with it on 2 cores. tf.data's autotuning thread
    # delayed the end of many epochs by 2-4 s on the same machine.
    cache_path, splits_path = tiny_cache
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path)
        train = ImageSource(cache, indices["train"], in_memory=True)
        val = ImageSource(cache, indices["val"], in_memory=True)
        batches = TrainingBatches(train, cache.labels[indices["train"]], n_classes=2, batch_size=4, seed=0,
                                  augment=AUGMENT, mixup=0.2)
        for dataset in (batches.for_epoch(1), evaluation_dataset(val, 4)):
            graph = dataset._as_serialized_graph().numpy()
            assert b"PyFunc" not in graph and b"Generator" not in graph
            assert dataset.options().autotune.enabled is False


def test_training_batches_and_checkpoints_work_under_a_mirrored_strategy(tiny_cache, tmp_path):
    # Two logical CPUs stand in for two GPUs; they must be set before TensorFlow starts, so in a
    # subprocess. Keras rebatches the pipeline across the replicas.
    cache_path, splits_path = tiny_cache
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from medclassify.cache import open_cache
        from medclassify.data import ImageSource, TrainingBatches, split_indices
        from medclassify.checkpoints import StageCheckpoint
        from medclassify.training import WeightAverage
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with open_cache({str(cache_path)!r}) as cache:
            indices = split_indices(cache.sample_ids, {str(splits_path)!r})["train"]
            for in_memory in (True, False):
                source = ImageSource(cache, indices, in_memory=in_memory)
                batches = TrainingBatches(source, cache.labels[indices], n_classes=2, batch_size=8, seed=0,
                                          augment={{**{NO_AUGMENT!r}, "rotation_degrees": 10}})
                with strategy.scope():
                    model = keras.Sequential([keras.Input(source.image_shape), keras.layers.Flatten(),
                                              keras.layers.BatchNormalization(),
                                              keras.layers.Dense(2, activation="softmax")])
                    model.compile("adam", "categorical_crossentropy")
                # Weight averaging reads and swaps the replicas' variables from its callback.
                average = WeightAverage(model, 2, len(batches.for_epoch(0)))
                for epoch in range(2):
                    history = model.fit(batches.for_epoch(epoch), epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                                        callbacks=[average])
                    assert np.isfinite(history.history["loss"][-1])
                assert average.swapped and average.updates == 2 * len(batches.for_epoch(0))
                averaged = [v.numpy() for v in model.weights]
                assert not all(np.array_equal(a, t) for a, t in zip(averaged, average.training_weights()))
                assert np.isfinite(model.predict(source.read(np.arange(4)), verbose=0)).all()
                # A checkpoint of the replicas' variables goes back into a new mirrored model.
                checkpoint, state = StageCheckpoint({str(tmp_path)!r} + f"/{{in_memory}}"), {{"epoch": 2}}
                checkpoint.save(model, state, best_improved=False)
                with strategy.scope():
                    fresh = keras.Sequential([keras.Input(source.image_shape), keras.layers.Flatten(),
                                              keras.layers.BatchNormalization(),
                                              keras.layers.Dense(2, activation="softmax")])
                    fresh.compile("adam", "categorical_crossentropy")
                    fresh.optimizer.build(fresh.trainable_variables)
                assert checkpoint.restore(fresh, state) == []
                for got, want in zip([*fresh.weights, *fresh.optimizer.variables],
                                     [*model.weights, *model.optimizer.variables], strict=True):
                    assert np.array_equal(np.asarray(got.numpy()), np.asarray(want.numpy()))
        print("mirrored ok")
    """)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "mirrored ok" in done.stdout, done.stderr[-3000:]


def test_source_reads_repeated_and_unsorted_positions(tiny_cache):
    cache_path, splits_path = tiny_cache
    with open_cache(cache_path) as cache:
        source = ImageSource(cache, [3, 10, 20], in_memory=False)
        np.testing.assert_array_equal(source.read([2, 0, 2]), cache.read([20, 3, 20]))


def test_memory_budget_and_zscore_statistics(tiny_cache):
    assert fits_in_memory(1000, (28, 28, 1), 0.01)
    assert not fits_in_memory(10**6, (224, 224, 3), 4)
    cache_path, _ = tiny_cache
    with open_cache(cache_path) as cache:
        source = ImageSource(cache, np.arange(len(cache)), in_memory=False)
        stats = zscore_statistics(source, chunk=7)
        images = cache.read(np.arange(len(cache)))
    assert stats["mean"] == pytest.approx(images.mean(), rel=1e-5)
    assert stats["std"] == pytest.approx(images.std(), rel=1e-4)


def test_affine_view_is_trainings_warp_with_one_transform_for_every_image():
    from medclassify.data import affine_view

    images = np.random.default_rng(0).random((3, 12, 10, 1), dtype=np.float32)
    assert np.allclose(affine_view(images), images, atol=1e-6)
    shifted = affine_view(images, shift_x=1 / 10, shift_y=-2 / 12)
    # Output pixel (y, x) samples input (y - 2, x + 1); the borders are reflected.
    assert np.allclose(shifted[:, 2:, :-1], images[:, :-2, 1:], atol=1e-6)
    square = images[:, :10]
    assert np.allclose(affine_view(square, rotation_degrees=90.0), np.rot90(square, k=1, axes=(1, 2)), atol=1e-5)
    assert affine_view(images, scale=1.1).dtype == np.float32

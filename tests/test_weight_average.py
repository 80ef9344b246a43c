"""Weight averaging (finetune.average_epochs): the average's arithmetic, the swap, and training with it."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from medclassify.cache import open_cache
from medclassify.data import split_indices
from medclassify.training import WeightAverage, classification_auc, train_stage
from training_fixtures import make_training_cache, tiny_options


def small_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(0.5, seed=1)(hidden)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def float_variables(model):
    return [v for v in model.weights if "float" in str(v.dtype)]


def float_weights(model):
    return [keras.ops.convert_to_numpy(v.value) for v in float_variables(model)]


def set_float_weights(model, values):
    for variable, value in zip(float_variables(model), values, strict=True):
        variable.assign(value)


def test_the_average_is_the_bias_corrected_exponential_mean_and_includes_batchnorm_statistics():
    model = small_model()
    average = WeightAverage(model, epochs=2, steps_per_epoch=5)
    assert average.decay == pytest.approx(0.9)
    names = [v.path for v in average.variables]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
    assert all("seed" not in n for n in names), "the dropout's integer seed state is not averaged"
    rng = np.random.default_rng(0)
    seen = []
    for step in range(30):
        seen.append([rng.normal(size=w.shape).astype("float32") for w in float_weights(model)])
        set_float_weights(model, seen[-1])
        average.on_train_batch_end(step)
    assert average.updates == 30
    # Weight 0.9 ** age for the weights after each step, normalised; none for the initial model.
    ages = 0.9 ** np.arange(29, -1, -1)
    for k, got in enumerate(average.averages):
        want = sum(a * values[k] for a, values in zip(ages, seen)) / ages.sum()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_epoch_end_swaps_the_average_in_and_the_next_epoch_swaps_it_out():
    model = small_model()
    average = WeightAverage(model, epochs=2, steps_per_epoch=5)
    average.on_train_batch_end(0)
    set_float_weights(model, [w + 1.0 for w in float_weights(model)])
    average.on_train_batch_end(1)
    training, averaged = float_weights(model), [a.numpy() for a in average.averages]
    assert not all(np.array_equal(t, a) for t, a in zip(training, averaged))
    average.on_epoch_end(0)
    assert all(np.array_equal(w, a) for w, a in zip(float_weights(model), averaged))
    assert all(np.array_equal(w, t) for w, t in zip(average.training_weights(), training))
    average.on_epoch_begin(1)
    assert all(np.array_equal(w, t) for w, t in zip(float_weights(model), training))
    assert all(np.array_equal(w, t) for w, t in zip(average.training_weights(), training))


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    return make_training_cache(tmp_path_factory.mktemp("cache"), n=64, n_classes=2)


def averaged_options(**finetune):
    options = tiny_options()
    options["finetune"].update(average_epochs=1, early_stopping_patience=0, **finetune)
    return options


def test_validation_and_the_saved_model_use_the_average(small_cache, tmp_path):
    cache_path, splits_path = small_cache
    train_stage("finetune", cache_path, splits_path, tmp_path, options=averaged_options(), threads=1)
    checkpoints = tmp_path / "checkpoints"
    state = json.loads((checkpoints / "state.json").read_text())
    assert state["checkpoint_file"] == "epoch-0002.npz" and state["average_updates"] == 2 * 3
    assert sorted(p.name for p in checkpoints.glob("epoch-*")) == ["epoch-0002.npz"]
    # The checkpoint's model weights are the average; training continues from other weights.
    with np.load(checkpoints / "epoch-0002.npz") as saved:
        averaged = [saved[name] for name in sorted(saved.files) if name.startswith("model_")]
        training = [saved[name] for name in sorted(saved.files) if name.startswith("training_")]
    averaged = [a for a in averaged if a.dtype.kind == "f"]
    assert len(training) == len(averaged) > 0
    assert not all(np.array_equal(a, t) for a, t in zip(averaged, training))
    # The saved model is the kept epoch's average: its validation AUC is the one the history shows.
    model = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    meta = json.loads((tmp_path / "model.json").read_text())
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path, None)["val"]
        probabilities = model.predict(cache.read(indices), verbose=0)
        auc = classification_auc(np.asarray(cache.labels)[indices], probabilities)
    history = pd.read_csv(tmp_path / "history.csv")
    assert auc == pytest.approx(history["val_auc"][meta["selected_epoch"] - 1], abs=1e-9)
    assert meta["settings"]["average_epochs"] == 1.0

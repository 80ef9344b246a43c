"""Which epoch a stage keeps: the replay functions, the stage's own callback, and the saved model."""

import json
import math

import keras
import numpy as np
import pandas as pd
import pytest

from medclassify.epoch_selection import SELECT_EPOCH_RULES, crossentropy, selected_epoch, stopping_epoch
from medclassify.training import EpochEnd, train_stage
from training_fixtures import make_training_cache, tiny_options

NAN = float("nan")


def test_stopping_waits_patience_epochs_without_a_strictly_higher_auc():
    aucs = [0.5, 0.6, 0.6, 0.55, 0.7, 0.9]
    assert stopping_epoch(aucs, 2) == 4  # 0.6 again is no improvement
    assert stopping_epoch(aucs, 3) == 6
    assert stopping_epoch(aucs, 0) == 6
    assert stopping_epoch([NAN, NAN, 0.5], 2) == 2


def test_each_rule_picks_its_epoch_among_those_trained():
    aucs = [0.5, 0.8, 0.7, 0.8, 0.6, 0.9]
    losses = [0.9, 0.5, 0.4, 0.4, 0.6, 0.1]
    assert selected_epoch("best_auc", aucs, losses, 0) == 6
    assert selected_epoch("best_auc", aucs, losses, 3) == 2  # stops after epoch 5; the first 0.8 is kept
    assert selected_epoch("lowest_val_loss", aucs, losses, 3) == 3
    assert selected_epoch("last", aucs, losses, 3) == 5
    assert selected_epoch("best_auc", [NAN, NAN], [NAN, NAN], 0) is None
    with pytest.raises(ValueError, match="select_epoch must be one of"):
        selected_epoch("best_loss", aucs, losses, 0)


def test_crossentropy_is_keras_categorical_crossentropy():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([0.3, 0.3, 0.3], size=50)
    probabilities[0] = [1.0, 0.0, 0.0]
    labels = rng.integers(0, 3, size=50)
    labels[0] = 1  # a probability of 0 for the true class: clipped, not infinite
    expected = keras.losses.CategoricalCrossentropy()(np.eye(3)[labels], probabilities)
    assert crossentropy(labels, probabilities) == pytest.approx(float(expected), rel=1e-6)


class RecordingCheckpoint:
    def __init__(self):
        self.saved_best = []

    def save(self, model, state, best_improved, training_weights=None):
        if best_improved:
            self.saved_best.append(state["epoch"])


@pytest.mark.parametrize("rule", SELECT_EPOCH_RULES)
@pytest.mark.parametrize("patience", [0, 3])
def test_the_stage_callback_decides_as_the_replay_does(rule, patience):
    rng = np.random.default_rng(patience)
    for _ in range(20):
        # Rounded scores repeat (ties) and the odd NaN (a split with one class) occurs.
        aucs = [NAN if rng.random() < 0.05 else round(rng.uniform(0.5, 1.0), 1) for _ in range(15)]
        losses = [round(rng.uniform(0.1, 1.0), 1) for _ in range(15)]
        state = {"epoch": 0, "history": [], "best_auc": None, "best_epoch": None, "wait": 0, "stopped": False,
                 "best_loss": None, "selected_epoch": None}
        checkpoint = RecordingCheckpoint()
        callback = EpochEnd(checkpoint, state, patience, rule)
        callback.set_model(keras.Sequential())
        for epoch, (auc, loss) in enumerate(zip(aucs, losses)):
            if state["stopped"]:
                break
            callback.on_epoch_end(epoch, {"val_auc": auc, "val_loss": loss})
        assert state["epoch"] == stopping_epoch(aucs, patience)
        expected = selected_epoch(rule, aucs, losses, patience)
        assert state["selected_epoch"] == expected
        # best-<n>.npz is written whenever the kept epoch changes, never for "last" (the model is that epoch).
        assert checkpoint.saved_best[-1:] == ([] if rule == "last" or expected is None else [expected])


@pytest.mark.parametrize("epochs, stopped", [(5, True), (4, False)])
def test_patience_that_runs_out_at_the_schedules_last_epoch_is_no_early_stop(epochs, stopped):
    # Best at epoch 2, patience 2: out at epoch 4. With 4 epochs the whole schedule was trained, yet
    # model.json said stopped_early and the log "early stopping after epoch 4".
    state = {"epoch": 0, "history": [], "best_auc": None, "best_epoch": None, "wait": 0, "stopped": False,
             "best_loss": None, "selected_epoch": None}
    callback = EpochEnd(RecordingCheckpoint(), state, 2, "best_auc", epochs=epochs)
    callback.set_model(keras.Sequential())
    for epoch, auc in enumerate([0.6, 0.8, 0.7, 0.7]):
        callback.on_epoch_end(epoch, {"val_auc": auc, "val_loss": 0.5})
    assert state["stopped"] is stopped and state["epoch"] == 4


def test_an_unknown_rule_is_refused_before_training():
    with pytest.raises(ValueError, match="select_epoch must be one of best_auc, lowest_val_loss, last"):
        EpochEnd(RecordingCheckpoint(), {}, 0, "best")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    return make_training_cache(tmp_path_factory.mktemp("cache"), n=64, n_classes=2)


def test_the_logged_val_loss_is_the_crossentropy_the_replay_uses_whatever_the_training_loss(small_cache, tmp_path):
    # Smoothing 0.1 scores a right answer given 0.99 at 0.24 where plain cross-entropy gives 0.01:
    # logged so, lowest_val_loss picked other epochs online than the replay did.
    cache_path, splits_path = small_cache
    options = tiny_options(label_smoothing=0.1)
    options["finetune"].update(record_val_predictions=True)
    train_stage("finetune", cache_path, splits_path, tmp_path, options=options, threads=1)
    history = pd.read_csv(tmp_path / "history.csv")
    labels = np.load(tmp_path / "val_predictions" / "labels.npy")
    replayed = [crossentropy(labels, np.load(tmp_path / "val_predictions" / f"epoch_{e:03d}.npy"))
                for e in history["epoch"]]
    np.testing.assert_allclose(history["val_loss"], replayed, rtol=1e-6)


@pytest.mark.parametrize("rule", ["last", "lowest_val_loss"])
def test_the_saved_model_is_the_recorded_epoch_that_the_rule_selects(small_cache, tmp_path, rule):
    cache_path, splits_path = small_cache
    options = tiny_options()
    options["finetune"].update(epochs=3, select_epoch=rule, record_val_predictions=True)
    final = train_stage("finetune", cache_path, splits_path, tmp_path, options=options, threads=1)
    meta = json.loads((tmp_path / "model.json").read_text())
    recorded = sorted(p.name for p in (tmp_path / "val_predictions").iterdir())
    assert recorded == ["epoch_001.npy", "epoch_002.npy", "epoch_003.npy", "labels.npy"]
    labels = np.load(tmp_path / "val_predictions" / "labels.npy")
    trajectory = [np.load(tmp_path / "val_predictions" / f"epoch_{e:03d}.npy") for e in (1, 2, 3)]
    losses = [crossentropy(labels, p) for p in trajectory]
    expected = 3 if rule == "last" else int(np.argmin(losses)) + 1
    assert meta["selected_epoch"] == expected and meta["settings"]["select_epoch"] == rule
    from medclassify.cache import open_cache
    from medclassify.data import split_indices

    with open_cache(cache_path) as cache:
        val = split_indices(cache.sample_ids, splits_path, None)["val"]
        np.testing.assert_array_equal(cache.labels[val], labels)
        images = cache.read(val)
    model = keras.models.load_model(final, safe_mode=True)
    np.testing.assert_allclose(model.predict(images, verbose=0), trajectory[expected - 1], atol=1e-5)
    assert not math.isnan(losses[expected - 1])

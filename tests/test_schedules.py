"""The learning-rate schedules: a constant head rate; linear warm-up then cosine decay to 0."""

import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from medclassify.schedules import WarmupCosineDecay, learning_rate_schedule


def _rates(settings, steps_per_epoch):
    schedule = learning_rate_schedule("finetune", settings, steps_per_epoch)
    total = settings["epochs"] * steps_per_epoch
    return np.array([float(schedule(step)) for step in range(total + 3)])  # past the end too


def test_head_rate_is_constant():
    assert learning_rate_schedule("head", {"learning_rate": 1e-3}, steps_per_epoch=4) == 1e-3


@pytest.mark.parametrize("warmup_epochs, warmup_steps", [(0, 0), (0.5, 2), (2, 8)])
def test_warmup_rises_linearly_then_cosine_decays_to_zero(warmup_epochs, warmup_steps):
    rates = _rates({"learning_rate": 3e-3, "epochs": 5, "warmup_epochs": warmup_epochs}, steps_per_epoch=4)
    expected = [3e-3 * step / warmup_steps if step < warmup_steps else
                3e-3 * 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, 20 - warmup_steps) / (20 - warmup_steps)))
                for step in range(23)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-9)
    assert rates.argmax() == warmup_steps and rates[20:].max() == pytest.approx(0.0, abs=1e-9)


def test_warmup_longer_than_training_still_leaves_one_step_of_decay():
    rates = _rates({"learning_rate": 3e-3, "epochs": 1, "warmup_epochs": 3}, steps_per_epoch=4)
    assert rates.argmax() == 3 and rates[3] == pytest.approx(3e-3) and rates[4] == pytest.approx(0.0, abs=1e-9)


def _finetune_schedule():
    return learning_rate_schedule("finetune", {"learning_rate": 3e-3, "epochs": 5, "warmup_epochs": 0.5},
                                  steps_per_epoch=4)


@pytest.mark.parametrize("peak, warmup_steps, decay_steps", [(3e-3, 2, 18), (1e-4, 37, 263), (0.1, 1, 1)])
def test_warmup_schedule_gives_keras_cosine_decay_rates_exactly(peak, warmup_steps, decay_steps):
    schedule = WarmupCosineDecay(peak, warmup_steps, decay_steps)
    keras_schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps, warmup_target=peak,
                                                            warmup_steps=warmup_steps)
    # One step at a time and eagerly: vectorised, cos may round an element differently, and in a
    # traced graph Grappler regroups the constant arithmetic (1-2 ulp; see the class docstring).
    for step in range(warmup_steps + decay_steps + 3):
        assert float(schedule(step)) == float(keras_schedule(step)), step


def test_warmup_schedule_has_no_branches_to_trace():
    # AdamW evaluates the schedule once per weight-decayed variable while tracing its train step.
    graph = tf.function(_finetune_schedule()).get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    assert not [op.type for op in graph.get_operations() if "If" in op.type or "Switch" in op.type]


def test_warmup_schedule_survives_serialisation():
    schedule = _finetune_schedule()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()


def test_a_model_compiled_with_the_schedule_loads_where_medclassify_models_is_imported(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=_finetune_schedule()), loss="categorical_crossentropy")
    model.save(tmp_path / "m.keras")
    load = ("import keras, medclassify.models; "
            f"model = keras.models.load_model({str(tmp_path / 'm.keras')!r}, safe_mode=True); "
            "print(type(model.optimizer._learning_rate).__name__)")
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split()[-1] == "WarmupCosineDecay", result.stderr[-2000:]

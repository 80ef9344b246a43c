"""The fine-tuning schedule: Keras's CosineDecay values, built without a cond, saved with the model."""

import keras
import numpy as np
import pytest

from medclassify.schedules import WarmupCosineDecay, learning_rate_schedule


@pytest.mark.parametrize("warmup_epochs", [0, 0.5, 2])
def test_fine_tuning_rates_are_keras_cosine_decay_with_warmup(warmup_epochs):
    settings = {"learning_rate": 3e-3, "epochs": 5, "warmup_epochs": warmup_epochs}
    schedule = learning_rate_schedule("finetune", settings, steps_per_epoch=4)
    warmup = int(round(warmup_epochs * 4))
    reference = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else 3e-3, decay_steps=20 - warmup, warmup_target=3e-3 if warmup else None,
        warmup_steps=warmup)
    steps = np.arange(0, 26)  # past the end too: the rate stays at 0
    rates = np.array([float(schedule(step)) for step in steps])
    np.testing.assert_allclose(rates, [float(reference(step)) for step in steps], rtol=1e-6, atol=1e-12)
    assert rates[0] == (0.0 if warmup else pytest.approx(3e-3))
    assert rates.max() == pytest.approx(3e-3) and rates[20:].max() == pytest.approx(0.0, abs=1e-12)


def test_head_rate_is_constant():
    assert learning_rate_schedule("head", {"learning_rate": 1e-3}, steps_per_epoch=4) == 1e-3


def test_warmup_schedule_is_a_registered_serialisable_object():
    schedule = WarmupCosineDecay(0.0, decay_steps=18, warmup_target=3e-3, warmup_steps=2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is WarmupCosineDecay and restored.get_config() == schedule.get_config()


def test_a_model_compiled_with_it_loads_with_its_optimizer_in_safe_mode(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    schedule = WarmupCosineDecay(0.0, decay_steps=18, warmup_target=3e-3, warmup_steps=2)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4),
                  loss="categorical_crossentropy")
    model.fit(np.ones((4, 3)), np.eye(2)[[0, 1, 0, 1]], epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert loaded.optimizer.get_config()["learning_rate"]["registered_name"] == "medclassify>WarmupCosineDecay"
    assert int(loaded.optimizer.iterations) == 1
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(schedule(1)))


def test_the_warmup_schedule_traces_without_a_conditional():
    import tensorflow as tf

    schedule = learning_rate_schedule("finetune", {"learning_rate": 3e-3, "epochs": 5, "warmup_epochs": 1}, 4)
    graph = tf.function(schedule).get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    assert not {op.type for op in graph.get_operations()} & {"If", "StatelessIf"}

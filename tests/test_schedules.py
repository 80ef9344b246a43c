"""The learning-rate schedules: a constant head rate; linear warm-up then cosine decay to 0."""

import math

import numpy as np
import pytest

from medclassify.schedules import learning_rate_schedule


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

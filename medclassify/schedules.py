"""Learning-rate schedules of the training stages.

Keras only, no TensorFlow: benchmarks run them under any Keras backend.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="medclassify")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras's CosineDecay with warm-up, the same rates, chosen by ``where`` instead of ``cond``.

    AdamW reads the learning rate once for every weight-decayed variable, so the schedule is
    traced once per variable: with CosineDecay's ``cond`` (two branch graphs each time) that was
    about 3 s of every fine-tuning's start on a ResNet-18, a quarter of a short test run.
    """

    def __call__(self, step):
        with keras.name_scope(self.name):
            initial_learning_rate = ops.convert_to_tensor(self.initial_learning_rate)
            dtype = initial_learning_rate.dtype
            decay_steps = ops.cast(self.decay_steps, dtype)
            warmup_target = ops.cast(self.warmup_target, dtype)
            warmup_steps = ops.cast(self.warmup_steps, dtype)
            step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
            warming = self._warmup_function(step, warmup_steps, warmup_target, initial_learning_rate)
            decaying = self._decay_function(step - warmup_steps, decay_steps, warmup_target, dtype)
            return ops.where(step < warmup_steps, warming, decaying)


def learning_rate_schedule(stage, settings, steps_per_epoch):
    """Constant rate for the head; linear warm-up then cosine decay to 0 for fine-tuning."""
    if stage == "head":
        return settings["learning_rate"]
    total = max(1, settings["epochs"] * steps_per_epoch)
    warmup = min(int(round(settings["warmup_epochs"] * steps_per_epoch)), total - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(settings["learning_rate"], decay_steps=total)
    return WarmupCosineDecay(0.0, decay_steps=total - warmup, warmup_target=settings["learning_rate"],
                             warmup_steps=warmup)

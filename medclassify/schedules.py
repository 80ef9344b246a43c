"""Learning-rate schedules of the training stages.

Keras only, no TensorFlow: benchmarks run them under any Keras backend.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="medclassify")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras's ``CosineDecay`` with a warm-up, whose two phases are chosen by ``where``, not ``cond``.

    The values are Keras's own. AdamW's weight decay reads the learning rate once per variable,
    so the graph of the schedule is built once per variable at every tracing: a ``cond`` builds
    two sub-graphs each time, and for ResNet-18 that cost about 5 of the 26 s that fine-tuning
    a 48-image set for 2 epochs took on 2 cores; ``where`` builds a handful of ops.
    """

    def __init__(self, initial_learning_rate, decay_steps, *, warmup_target, warmup_steps, alpha=0.0,
                 name="WarmupCosineDecay"):
        super().__init__(initial_learning_rate, decay_steps, alpha=alpha, name=name, warmup_target=warmup_target,
                         warmup_steps=warmup_steps)

    def __call__(self, step):
        initial = ops.convert_to_tensor(self.initial_learning_rate)
        dtype = initial.dtype
        decay_steps = ops.cast(self.decay_steps, dtype)
        warmup_steps = ops.cast(self.warmup_steps, dtype)
        target = ops.cast(self.warmup_target, dtype)
        step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
        return ops.where(step < warmup_steps, self._warmup_function(step, warmup_steps, target, initial),
                         self._decay_function(step - warmup_steps, decay_steps, target, dtype))


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

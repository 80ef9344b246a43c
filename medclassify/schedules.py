"""Learning-rate schedules of the training stages.

Keras only, no TensorFlow: benchmarks run them under any Keras backend.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="medclassify")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0 over ``decay_steps``.

    The rates of Keras's CosineDecay(0, decay_steps, warmup_target=peak, warmup_steps) with a
    smaller graph: AdamW reads the learning rate once for every weight-decayed variable, so the
    schedule is traced once per variable (64 times for a ResNet-18), and with CosineDecay's
    ``cond`` (a graph for each branch) and name scopes that took 1.4-1.8 s of each fine-tuning's
    start, against 0.7 s here. Evaluated eagerly the rates are Keras's bit for bit; in a traced
    train step Grappler's constant folding regroups the arithmetic, so 2-24% of 20,000 steps
    (depending on the graph around it) differ from Keras's by 1-2 ulp, where CosineDecay's
    branches are left alone. Runs with this schedule are reproducible among themselves, not
    bit-identical to runs with CosineDecay.
    """

    def __init__(self, peak, warmup_steps, decay_steps):
        self.peak, self.warmup_steps, self.decay_steps = float(peak), int(warmup_steps), int(decay_steps)

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.warmup_steps + self.decay_steps))
        warming = self.peak * (step / float(self.warmup_steps))
        progress = (step - float(self.warmup_steps)) / float(self.decay_steps)
        decaying = self.peak * (0.5 * (1.0 + ops.cos(math.pi * progress)))
        return ops.where(step < float(self.warmup_steps), warming, decaying)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps}


def learning_rate_schedule(stage, settings, steps_per_epoch):
    """Constant rate for the head; linear warm-up then cosine decay to 0 for fine-tuning."""
    if stage == "head":
        return settings["learning_rate"]
    total = max(1, settings["epochs"] * steps_per_epoch)
    warmup = min(int(round(settings["warmup_epochs"] * steps_per_epoch)), total - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(settings["learning_rate"], decay_steps=total)
    return WarmupCosineDecay(settings["learning_rate"], warmup_steps=warmup, decay_steps=total - warmup)

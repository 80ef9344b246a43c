"""Learning-rate schedules of the training stages.

Keras only, no TensorFlow: benchmarks run them under any Keras backend.
"""

import keras


def learning_rate_schedule(stage, settings, steps_per_epoch):
    """Constant rate for the head; linear warm-up then cosine decay to 0 for fine-tuning."""
    if stage == "head":
        return settings["learning_rate"]
    total = max(1, settings["epochs"] * steps_per_epoch)
    warmup = min(int(round(settings["warmup_epochs"] * steps_per_epoch)), total - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(settings["learning_rate"], decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warmup, warmup_target=settings["learning_rate"],
                                                  warmup_steps=warmup)

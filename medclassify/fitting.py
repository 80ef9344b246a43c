"""What a Keras ``fit`` of the classifier needs besides its data: stage settings, loss, compile, dropout seeds.

Keras and NumPy only, no TensorFlow, like :mod:`medclassify.schedules`: bench/mixed_precision.py
compiles and checkpoints its models with these functions under any Keras backend, so that a GPU
without TensorFlow still checks the code the stages run.
"""

import json

import keras
import numpy as np

from .errors import InputError

from .schedules import learning_rate_schedule


def stage_options(options, stage):
    """The settings one stage trains with: epochs, optimiser, early stopping, as a flat dict.

    options is a run's config with the schema's defaults filled in (medclassify.config.run_config):
    the defaults live in the schema only. The head stage always keeps its best-AUC epoch and
    never stops early, and averages no weights. ``dropout`` is head.dropout in both stages: the
    fine-tune stage builds its model with it when no head model is given (an ensemble's members,
    each from its own seed's initial weights).
    """
    section = options[stage]
    batch_size = int(options["train"]["batch_size"])
    if stage == "head":
        return {"epochs": int(section["epochs"]), "learning_rate": float(section["learning_rate"]),
                "weight_decay": 0.0, "warmup_epochs": 0.0, "patience": 0, "select_epoch": "best_auc",
                "record_val_predictions": False, "dropout": float(section["dropout"]), "average_epochs": 0.0,
                "batch_size": batch_size}
    return {"epochs": int(section["epochs"]), "learning_rate": float(section["learning_rate"]),
            "weight_decay": float(section["weight_decay"]),
            "warmup_epochs": float(section["warmup_epochs"]),
            "patience": int(section["early_stopping_patience"]),
            "select_epoch": str(section["select_epoch"]),
            "record_val_predictions": bool(section["record_val_predictions"]),
            "unfreeze": section["unfreeze"],
            "freeze_batchnorm": bool(section["freeze_batchnorm"]),
            "average_epochs": float(section["average_epochs"]),
            "dropout": float(options["head"]["dropout"]),
            "batch_size": batch_size}


def check_trained_with(model_path, options, remedy):
    """Raise InputError when the ``model.json`` beside ``model_path`` records other training
    options than the run's ``options`` (``config.run_config``) state: its ``train`` section and
    the settings of the stage that made the model.

    A run card states the config's options; a model trained with others (by hand, or results
    copied without Snakemake's records) would be reported under them. Not compared: options a
    model's record lacks (an older version's), those that only choose how images are read,
    ``weights`` (the workflow gives the head stage the fetched file's path and the fine-tune
    stage ``none``, as it continues from the head) and, for a head model, ``ensemble`` (a
    fine-tune option the head stage is not given).
    """
    from .config import LOADING_TRAIN_OPTIONS
    from .model_info import model_json_beside

    record = model_json_beside(model_path)
    stage = record.get("stage")
    if not isinstance(record.get("train_options"), dict):
        return
    pairs = [("train", record["train_options"], options["train"])]
    if stage in ("head", "finetune") and isinstance(record.get("settings"), dict):
        pairs.append((stage, record["settings"], stage_options(options, stage)))
    ignored = {*LOADING_TRAIN_OPTIONS, "weights", *(("ensemble",) if stage == "head" else ())}
    differing = []
    for section, recorded, stated in pairs:
        recorded, stated = (json.loads(json.dumps(values)) for values in (recorded, stated))
        differing += [f"{section}.{key}: trained with {recorded[key]!r}, the config states {stated[key]!r}"
                      for key in sorted(recorded.keys() & stated.keys())
                      if not (section == "train" and key in ignored) and recorded[key] != stated[key]]
    if differing:
        raise InputError(f"{model_path}: the model was trained with other options than the config's",
                         [*differing, remedy])


def make_loss(train_options):
    """Cross-entropy on one-hot targets (label smoothing), or focal loss for imbalance: focal_loss."""
    smoothing = float(train_options["label_smoothing"])
    if train_options["imbalance"] == "focal_loss":
        return FocalLoss(alpha=0.25, gamma=2.0, label_smoothing=smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)


@keras.saving.register_keras_serializable(package="medclassify")
class FocalLoss(keras.losses.Loss):
    """Focal loss (Lin et al. 2017), ``-alpha (1 - p)^gamma log p`` summed over the (smoothed)
    one-hot targets, as Keras's CategoricalFocalCrossentropy defines it, but taken from the logits
    behind the softmax output where Keras keeps them, as its plain cross-entropy does: Keras's
    focal loss clips the probabilities at 1e-7, which left an image the model was confidently
    wrong about (a hard or mislabelled one) without any gradient."""

    def __init__(self, alpha=0.25, gamma=2.0, label_smoothing=0.0, name="focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.gamma, self.label_smoothing = float(alpha), float(gamma), float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.label_smoothing:
            classes = ops.cast(ops.shape(y_true)[-1], y_pred.dtype)
            y_true = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        log_p = _log_probabilities(y_pred)
        weight = self.alpha * ops.power(1.0 - ops.exp(log_p), self.gamma)
        return ops.sum(-weight * y_true * log_p, axis=-1)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "label_smoothing": self.label_smoothing}


def _log_probabilities(y_pred):
    """log of softmax probabilities: from the logits Keras keeps on a softmax output, else clipped."""
    logits = getattr(y_pred, "_keras_logits", None)
    if logits is not None:
        return keras.ops.log_softmax(keras.ops.cast(logits, y_pred.dtype), axis=-1)
    return keras.ops.log(keras.ops.clip(y_pred, 1e-7, 1.0))


def compile_model(model, stage, settings, train_options, steps_per_epoch, jit_compile):
    """Compile with Adam (head) or AdamW with warm-up and cosine decay (fine-tune)."""
    schedule = learning_rate_schedule(stage, settings, steps_per_epoch)
    if stage == "head":
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=settings["weight_decay"])
    # One AUC a class, averaged: the one-vs-rest macro AUC that val_auc is (for two classes, the
    # positive class's). A plain AUC() pools every class column, a micro average beside val_auc's.
    n_classes = int(model.output_shape[-1])
    model.compile(optimizer=optimizer, loss=make_loss(train_options),
                  metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=n_classes)],
                  jit_compile=jit_compile)
    # Built here, the optimizer's variables exist before fit traces the train step. Keras defers
    # the build into that tracing when no distribution strategy was set, and TensorFlow then
    # traces the step a second time: 8 of the 21 s that a 2-epoch fine-tuning of a small ResNet-18 took.
    # model.optimizer, not optimizer: under mixed_float16 compile wraps it in a LossScaleOptimizer,
    # whose loss scale a checkpoint must find in the model that a resumed stage builds.
    model.optimizer.build(model.trainable_variables)


def reset_layer_seeds(model, seed, epoch):
    """Set every layer's random state (dropout) to a value derived from (seed, epoch).

    Keras keeps dropout's random state in SeedGenerator variables that model checkpoints do
    not hold; deriving it per epoch makes a resumed epoch draw the same masks as an
    uninterrupted one.
    """
    index = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", []):
            value = np.array([(int(seed) * 7919 + int(epoch) * 104729 + index) % (2 ** 31 - 1), 0])
            generator.state.assign(value.astype(generator.state.dtype))
            index += 1

"""Head training and fine-tuning from the HDF5 cache, resumable and reproducible.

``train_stage`` is what rules ``train_head`` and ``finetune`` (and ``medclassify train``) call.

Resume: after every epoch the stage writes ``checkpoints/epoch-<n>.npz`` (weights, optimizer
state with its step counter), ``checkpoints/best-<n>.npz`` (weights of the epoch kept so far)
and then ``checkpoints/state.json`` (completed epochs, the arrays file of the last one, history,
early-stopping state, the options the run was started with). A rerun after SIGKILL builds the
same model, loads them into it and continues with the next epoch; a kill before the state is
written leaves the previous epoch's state and arrays, which still belong together. Randomness
needs no saved state: each epoch's data order, augmentation and dropout seeds are derived from
``(seed, epoch)`` (see :mod:`medclassify.data`), so the resumed run continues exactly as the
uninterrupted one would have.
"""

import csv
import functools
import hashlib
import io
import json
import math
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score
from tensorflow.core.framework import summary_pb2

from . import __version__
from .atomic import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temporaries
from .cache import cache_identity, cache_params_hash, rows_identity
from .checkpoints import STATE_VERSION, StageCheckpoint
from .codedeps import module_closure
from .config import MEMBER_SEED_STRIDE, complete_run_options, config_hash, without_loading_options
from .content import file_digest
from .data import (ImageSource, TrainingBatches, class_weights, evaluation_dataset, fits_in_memory,
                   read_errors_unwrapped, split_indices, zscore_statistics)
from .epoch_selection import check_rule, crossentropy
from .errors import InputError
from .fitting import compile_model, reset_layer_seeds, stage_options
from .gpu import configure_devices
from .inference import cache_reader, predict_probabilities
from .model_info import model_json_beside, saved_weights_digest
from .models import (backbone_of, build_classifier, build_ensemble, load_model, set_backbone_inference_mode,
                     set_trainable_blocks)
from .models.ensemble import MEMBER_PREFIX
from .models.weights import imagenet_weights_path
from .versions import library_versions

STAGES = ("head", "finetune")
MEMBERS_DIRNAME = "members"  # an ensemble's members: members/member_<k>/ in the fine-tune stage
HISTORY_COLUMNS = ("epoch", "loss", "auc", "val_loss", "val_auc", "val_accuracy", "lr")
# Member k of an ensemble trains with seed + k * MEMBER_SEED_STRIDE (config.py, which checks that
# the last one is a seed NumPy takes): runs with seeds 0, 1, 2 then get disjoint members (with
# seed + k, the ensembles of seeds 0 and 1 would share two models).


# --- options ------------------------------------------------------------------------------------
def resolve_weights(train_options):
    """Backbone weights file for ``train.weights`` (imagenet, none or a path), or None."""
    weights = train_options["weights"]
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        return imagenet_weights_path(train_options["backbone"])
    path = Path(weights)
    if not path.exists():
        raise InputError(f"train.weights: file {path} does not exist",
                         ["use imagenet (fetched by rule fetch_weights), none, or an existing .weights.h5 file"])
    return path


def cache_intensity(params):
    """The cache's intensity normalisation (its params hold the preprocess options)."""
    preprocess = params.get("preprocess", params) if isinstance(params, dict) else {}
    return preprocess.get("intensity")


# --- reproducibility ----------------------------------------------------------------------------
def seed_everything(seed, deterministic):
    """One seed for Python, NumPy and TensorFlow; op determinism on exactly when ``deterministic``.

    Op determinism is a process-wide switch, so it is also turned off: a run without it that
    follows one with it in the same process (tests, benchmarks) must not inherit it, not least
    because Keras then silently compiles without XLA.
    """
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # TensorFlow exports enable_op_determinism but not its inverse.
        from tensorflow.python.framework.config import disable_op_determinism

        disable_op_determinism()


# --- model ----------------------------------------------------------------------------------------
def initial_model(stage, *, init_model, input_shape, class_counts, train_options, settings, zscore):
    """The model a stage starts from, and whether its backbone holds pretrained weights.

    Head: a new classifier (backbone weights as configured) with the backbone frozen and run in
    inference mode. Fine-tune: the head stage's model (or a new one without it), with the top
    ``unfreeze`` blocks trainable and BatchNorm frozen when the backbone is pretrained.
    """
    pretrained = False
    if stage == "finetune" and init_model is not None:
        model = load_model(init_model)
        problems = []
        if tuple(model.input_shape[1:]) != tuple(input_shape):
            problems.append(f"it takes images of shape {tuple(model.input_shape[1:])}, the cache holds {tuple(input_shape)}")
        if model.output_shape[-1] != len(class_counts):
            problems.append(f"it has {model.output_shape[-1]} outputs, the cache {len(class_counts)} classes")
        if problems:
            raise InputError(f"{init_model}: the model to fine-tune does not fit the cache", problems)
        pretrained = bool(model_json_beside(init_model).get("pretrained", False))
    else:
        weights_path = resolve_weights(train_options)
        pretrained = weights_path is not None
        model = build_classifier(input_shape, len(class_counts), backbone=train_options["backbone"],
                                 class_counts=class_counts, dropout=settings["dropout"],
                                 small_input=train_options["small_input"], weights_path=weights_path,
                                 zscore=zscore, resnet_width=int(train_options["resnet_width"]),
                                 seed=int(train_options["seed"]), min_size=int(train_options["min_input_size"]))
    backbone = backbone_of(model)
    if stage == "head":
        backbone.trainable = False
        set_backbone_inference_mode(model, True)
    else:
        set_backbone_inference_mode(model, False)
        set_trainable_blocks(backbone, settings["unfreeze"], freeze_batchnorm=settings["freeze_batchnorm"] and pretrained)
    return model, pretrained


# --- validation metrics ---------------------------------------------------------------------------
def classification_auc(labels, probabilities):
    """ROC AUC: of the second class for binary, one-vs-rest macro for more; NaN if undefined."""
    labels = np.asarray(labels)
    n_classes = probabilities.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(labels == 1, probabilities[:, 1]))
    aucs = [roc_auc_score(labels == c, probabilities[:, c]) for c in range(n_classes) if c in present]
    return float(np.mean(aucs))


class ValidationMetrics(keras.callbacks.Callback):
    """Adds val_loss, val_auc (scikit-learn, exact), val_accuracy and lr to each epoch's logs.

    With ``record_dir``, each epoch's validation probabilities are also kept there
    (``epoch_<n>.npy``, validation order, beside ``labels.npy``), so that rules for choosing the
    epoch can be compared afterwards on the very trajectories the stage trained
    (bench/epoch_selection.py).

    ``val_loss`` is the plain categorical cross-entropy of the validation probabilities, whatever
    the training loss (label smoothing, focal loss): it measures the model, not the training
    objective, and it is what :mod:`medclassify.epoch_selection` replays, so that
    ``select_epoch: lowest_val_loss`` picks the same epoch online and offline.
    """

    def __init__(self, dataset, labels, record_dir=None, stage="finetune"):
        super().__init__()
        self.dataset, self.labels, self.stage = dataset, np.asarray(labels), stage
        self.record_dir = None if record_dir is None else Path(record_dir)
        if self.record_dir is not None:
            _save_array(self.record_dir / "labels.npy", self.labels)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        probabilities = self.model.predict(self.dataset, verbose=0).astype("float64")
        if not np.isfinite(probabilities).all():
            remedy = (f"lower {self.stage}.learning_rate" +
                      (" or raise finetune.warmup_epochs" if self.stage == "finetune" else ""))
            raise InputError(f"the {self.stage} stage diverged at epoch {epoch + 1}: the model's validation "
                             "probabilities are not finite numbers", [remedy])
        if self.record_dir is not None:
            _save_array(self.record_dir / f"epoch_{epoch + 1:03d}.npy", probabilities)
        logs["val_loss"] = crossentropy(self.labels, probabilities)
        logs["val_auc"] = classification_auc(self.labels, probabilities)
        logs["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == self.labels))
        logs["lr"] = current_learning_rate(self.model.optimizer)


def current_learning_rate(optimizer):
    """The learning rate the optimizer uses at its current step: at an epoch's end, the rate of
    the next epoch's first step (0 after the cosine's last)."""
    rate = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(rate))


# --- weight averaging ----------------------------------------------------------------------------
class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of the model's weights, the model that validation and saving see.

    Updated after every training step with decay ``d = 1 - 1 / (epochs * steps_per_epoch)``, so
    that the average spans about ``epochs`` epochs whatever the dataset's size. The average is
    bias-corrected as Adam's moments are: step ``t`` uses ``d * (1 - d**(t-1)) / (1 - d**t)``, which
    makes it the exponentially weighted mean of the weights after steps 1..t, with no weight left
    on the initial model (TensorFlow's ``(1 + t) / (10 + t)`` warm-up instead keeps the horizon
    near ``t / 9`` steps for hundreds of steps: most of a small dataset's training).
    BatchNorm's moving statistics are averaged with the weights they belong to.

    At each epoch end the average is swapped into the model, so that validation, early stopping,
    the best checkpoint and the saved model all use it; the training weights wait in
    :attr:`averages` and are swapped back when the next epoch begins. Keras's own ``use_ema`` does
    not fit a loop of one ``fit`` call per epoch: each call ends by overwriting the training
    weights with the average.
    """

    def __init__(self, model, epochs, steps_per_epoch):
        super().__init__()
        self.decay = 1.0 - 1.0 / max(1.0, float(epochs) * steps_per_epoch)
        self.updates = 0
        self.swapped = False
        self.variables = [v for v in model.weights if "float" in str(v.dtype)]
        self.averages = [tf.Variable(keras.ops.convert_to_numpy(v.value), trainable=False) for v in self.variables]

    def restore(self, training_weights, updates):
        """Resume: the model holds a saved average, ``training_weights`` the training weights then."""
        for average, value in zip(self.averages, training_weights, strict=True):
            average.assign(value)
        self.updates, self.swapped = int(updates), True

    def training_weights(self):
        """The training weights (as NumPy arrays) while the average is swapped in."""
        if not self.swapped:
            return [keras.ops.convert_to_numpy(v.value) for v in self.variables]
        return [average.numpy() for average in self.averages]

    def swap(self):
        """Exchange the model's weights and the averages."""
        for average, variable in zip(self.averages, self.variables):
            held = tf.identity(variable.value)
            variable.assign(average)
            average.assign(held)
        self.swapped = not self.swapped

    def on_epoch_begin(self, epoch, logs=None):
        if self.swapped:
            self.swap()

    def on_train_batch_end(self, batch, logs=None):
        self.updates += 1
        d, t = self.decay, self.updates
        self._update(tf.constant(d * (1.0 - d ** (t - 1)) / (1.0 - d ** t), tf.float32))

    def on_epoch_end(self, epoch, logs=None):
        self.swap()

    @tf.function
    def _update(self, decay):
        for average, variable in zip(self.averages, self.variables):
            value = tf.cast(variable.value, average.dtype)
            average.assign(average + (1.0 - tf.cast(decay, average.dtype)) * (value - average))


# --- saving after each epoch ---------------------------------------------------------------------
def _save_array(path, array):
    with atomic_path(path, suffix=".partial.npy") as tmp:
        np.save(tmp, array)


def _save_keras(model, path):
    # Keras picks the format from the suffix, so the temporary name must end in .keras too.
    with atomic_path(path, suffix=".partial.keras") as tmp:
        model.save(tmp)


class EpochEnd(keras.callbacks.Callback):
    """Tracks early stopping (on validation AUC) and the epoch to keep, and checkpoints after every epoch.

    ``select_epoch`` names the epoch whose weights the stage saves: ``best_auc`` (highest
    validation AUC), ``lowest_val_loss``, or ``last`` (the last epoch trained). Stopping waits for a
    better validation AUC under each of them. ``epochs`` is the schedule's length: a patience that
    runs out at its last epoch stops nothing (the whole schedule was trained).
    """

    def __init__(self, checkpoint, state, patience, select_epoch="best_auc", average=None, epochs=None):
        super().__init__()
        check_rule(select_epoch)
        self.checkpoint, self.state, self.patience, self.average = checkpoint, state, patience, average
        self.select_epoch, self.epochs = select_epoch, epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:] if k in logs}}
        state = self.state
        state["history"].append(row)
        auc = row.get("val_auc", float("nan"))
        improved = not math.isnan(auc) and (state["best_auc"] is None or auc > state["best_auc"])
        if improved:
            state["best_auc"], state["best_epoch"], state["wait"] = auc, epoch + 1, 0
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        if self.patience > 0 and state["wait"] >= self.patience and (self.epochs is None or epoch + 1 < self.epochs):
            state["stopped"] = True
        loss = row.get("val_loss", float("nan"))
        lower_loss = not math.isnan(loss) and (state["best_loss"] is None or loss < state["best_loss"])
        if lower_loss:
            state["best_loss"] = loss
        keep = {"best_auc": improved, "lowest_val_loss": lower_loss, "last": True}[self.select_epoch]
        if keep:
            state["selected_epoch"] = epoch + 1
        training_weights = None
        if self.average is not None:
            state["average_updates"] = self.average.updates
            training_weights = self.average.training_weights()
        # The last epoch's weights are the model itself: no best weights to write or restore.
        self.checkpoint.save(self.model, state, keep and self.select_epoch != "last", training_weights)


class TensorBoardScalars(keras.callbacks.Callback):
    """Writes each epoch's row of the stage's history as TensorBoard scalars (event files under
    ``log_dir``), after :class:`EpochEnd` has added it.

    The folder is written anew from the history each time the stage starts: a stage that starts
    over showed the abandoned run's curves beside the new one's, and one resumed after a kill
    between the epoch's checkpoint and its scalars lacked that epoch.

    keras.callbacks.TensorBoard needs the tensorboard package for its summaries; this writes
    the same scalar summaries with TensorFlow's own ``tf.summary.write``, so TensorBoard reads
    them while training needs nothing beyond TensorFlow.
    """

    def __init__(self, log_dir, history):
        super().__init__()
        shutil.rmtree(log_dir, ignore_errors=True)
        self.history = history
        self.writer = tf.summary.create_file_writer(str(log_dir))
        self.metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        for row in history:
            self._write(row)

    def on_epoch_end(self, epoch, logs=None):
        self._write(self.history[-1])

    def _write(self, row):
        with self.writer.as_default():
            for name, value in row.items():
                if name != "epoch" and not math.isnan(float(value)):
                    tf.summary.write(name, tf.constant(float(value), tf.float32), step=row["epoch"],
                                     metadata=self.metadata)
        self.writer.flush()


# --- outputs ------------------------------------------------------------------------------------------
def write_history(path, history, member_column=False):
    """history.csv: one row per epoch, columns epoch, loss, auc, val_loss, val_auc, val_accuracy, lr
    (after a first column ``member`` for an ensemble's members)."""
    buffer = io.StringIO()
    columns = ("member",) + HISTORY_COLUMNS if member_column else HISTORY_COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write_text(path, buffer.getvalue())


def model_metadata(*, stage, cache, input_shape, train_options, settings, pretrained, zscore, state, n_train, n_val,
                   in_memory, policy, jit_compile, fold=None, split_rows=None, init_model=None):
    """model.json: everything predict needs besides the model, and what produced it."""
    return {
        "stage": stage,
        # The model fine-tuning started from (the head stage's), or None: a new one.
        "init_model": None if init_model is None else str(init_model),
        "fold": fold,
        "split_rows": split_rows,
        "classes": list(cache.classes),
        "params": cache.params,
        "params_hash": cache_params_hash(cache),
        "input_shape": list(input_shape),
        "input": "float32 images in [0, 1] of input_shape; output softmax probabilities in class order",
        "backbone": train_options["backbone"],
        "weights": str(train_options["weights"]),
        "pretrained": pretrained,
        "seed": int(train_options["seed"]),
        "zscore": zscore,
        "settings": settings,
        "train_options": train_options,
        "epochs_trained": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_auc": state["best_auc"],
        "selected_epoch": state["selected_epoch"],
        "stopped_early": state["stopped"],
        "n_train": n_train,
        "n_val": n_val,
        "images_in_memory": in_memory,
        "dtype_policy": policy,
        # What Keras compiled with, which train.jit_compile alone does not decide (medclassify.gpu.use_jit).
        "jit_compile": jit_compile,
        "library_version": __version__,
        # The run card copies these: the evaluation may run later, under other versions.
        "versions": library_versions(),
    }


def check_validation_auc_is_defined(val_labels, settings, splits_path, fold):
    """Early stopping and ``select_epoch: best_auc`` read the validation AUC, undefined on one class.

    Early stopping would stop after ``patience`` epochs of "no better AUC": an InputError.
    ``best_auc`` keeps the last epoch then, which a warning says.
    """
    if len(np.unique(val_labels)) >= 2:
        return
    where = f"{splits_path}" + (f" (fold {fold})" if fold is not None else "")
    if settings["patience"] > 0:
        raise InputError(f"{where}: the validation split holds one class, so its AUC is undefined",
                         ["early stopping waits for a better validation AUC: set finetune.early_stopping_patience "
                          "to 0, or split so that validation holds every class"])
    if settings["select_epoch"] == "best_auc":
        warnings.warn(f"{where}: the validation split holds one class, so its AUC is undefined; "
                      "select_epoch best_auc keeps the last epoch", stacklevel=2)


def check_init_model_fits(init_model, cache):
    """Raise InputError when ``init_model``'s model.json says it was trained on other classes or
    other preprocessing than ``cache`` holds: fine-tuning would go on with images it never saw
    (another intensity scaling, zscore statistics its layers lack) or other class meanings."""
    meta = model_json_beside(init_model)
    problems = []
    if meta.get("params_hash") not in (None, cache_params_hash(cache)):
        problems.append(f"it was trained on images preprocessed with other parameters (params_hash "
                        f"{meta['params_hash']}, the cache's {cache_params_hash(cache)})")
    if meta.get("classes") not in (None, list(cache.classes)):
        problems.append(f"its classes {meta['classes']} are not the cache's {list(cache.classes)}")
    if problems:
        raise InputError(f"{init_model}: the model to fine-tune does not fit the cache {cache.path}",
                         problems + ["train its head stage on this cache again"])


def warn_if_init_model_saw_other_rows(init_model, split_rows, fold):
    """Warn when ``init_model`` was trained on another split of the cache than ``split_rows`` (another
    fold, or another splits file): its training rows may hold this stage's validation images."""
    meta = model_json_beside(init_model)
    if meta.get("split_rows") in (None, split_rows):
        return
    other = (f"fold {meta.get('fold')}, where this stage trains fold {fold}" if meta.get("fold") != fold
             else "another splits file")
    warnings.warn(f"{init_model} was trained on another split of the cache ({other}): if its training images "
                  "include this stage's validation images, the validation AUC and the epoch it selects are "
                  "optimistic; train its head stage on this split", stacklevel=3)


# --- the stage ----------------------------------------------------------------------------------------
# What a training stage writes in its folders (those of its ensemble members alike).
_STAGE_FILES = r"model\.keras|model\.json|history\.csv|state\.json|ensemble\.json|(?:epoch|best)-\d+\.npz|[\w.-]+\.npy"


def remove_stale_outputs(out_dir):
    """Remove the partial models, checkpoints and recorded predictions that a killed run of the
    stage left in ``out_dir`` (its own folders only)."""
    out_dir = Path(out_dir)
    folders = [out_dir, *out_dir.glob(f"{MEMBERS_DIRNAME}/{MEMBER_PREFIX}*")]
    for folder in folders:
        for place in (folder, folder / "checkpoints", folder / "val_predictions"):
            remove_stale_temporaries(place, _STAGE_FILES)


def train_stage(stage, cache_path, splits_path, out_dir, *, options, fold=None, init_model=None, threads=None):
    """Train one stage and write model.keras, model.json, history.csv, checkpoints/, tensorboard/.

    ``stage``: ``head`` (frozen backbone, new head) or ``finetune`` (from ``init_model``, the head
    stage's model.keras; None builds a new model). ``options``: ``run_config(config, run)``.
    With 0 epochs the stage writes its initial model, so that the workflow's DAG stays uniform.
    With ``train.ensemble`` > 1 the fine-tune stage trains that many members (see
    :func:`train_ensemble`) and model.keras averages them.
    """
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}", [f"stage must be one of {', '.join(STAGES)}"])
    options = complete_run_options(options)
    n_members = int(options["train"]["ensemble"]) if stage == "finetune" else 1
    remove_stale_outputs(out_dir)
    if stage == "finetune":
        remove_surplus_members(out_dir, n_members)
    if n_members > 1:
        return train_ensemble(n_members, cache_path, splits_path, out_dir, options=options, fold=fold,
                              init_model=init_model, threads=threads)
    return _train_model(stage, cache_path, splits_path, out_dir, options=options, fold=fold, init_model=init_model,
                        threads=threads)


def _train_model(stage, cache_path, splits_path, out_dir, *, options, fold=None, init_model=None, threads=None):
    from .cache import open_cache

    out_dir = Path(out_dir)
    train_options = options["train"]
    settings = stage_options(options, stage)
    strategy, jit_compile, policy, n_gpus = configure_devices(train_options, threads)
    seed = int(train_options["seed"])
    seed_everything(seed, bool(train_options["deterministic"]))

    with open_cache(cache_path) as cache:
        if stage == "finetune" and init_model is not None:
            check_init_model_fits(init_model, cache)
        indices = split_indices(cache.sample_ids, splits_path, fold)
        labels = np.asarray(cache.labels, dtype="int64")
        n_classes = len(cache.classes)
        input_shape = tuple(int(d) for d in cache.image_shape)
        n_needed = len(indices["train"]) + len(indices["val"])
        in_memory = fits_in_memory(n_needed, input_shape, float(train_options["cache_in_memory_max_gb"]))
        train_source = ImageSource(cache, indices["train"], in_memory=in_memory)
        val_source = ImageSource(cache, indices["val"], in_memory=in_memory)
        train_labels, val_labels = labels[indices["train"]], labels[indices["val"]]
        check_validation_auc_is_defined(val_labels, settings, splits_path, fold)
        split_rows = {"train": rows_identity(cache, train_source.indices), "val": rows_identity(cache, val_source.indices)}
        if stage == "finetune" and init_model is not None:
            warn_if_init_model_saw_other_rows(init_model, split_rows, fold)
        zscore = zscore_statistics(train_source) if cache_intensity(cache.params) == "zscore" else None
        class_counts = np.bincount(train_labels, minlength=n_classes)

        batch_size = settings["batch_size"]
        steps_per_epoch = math.ceil(len(train_labels) / batch_size)
        # What the checkpoint's epochs were trained on: the options (less how images are read,
        # which gives the same batches), the rows with their labels and image contents, so that a
        # cache rebuilt with corrected labels starts over instead of resuming, and the code, so that
        # a stage killed mid-way and rerun after a fix is not half old code and half new.
        fingerprint = config_hash({"stage": stage, "train": without_loading_options(options)["train"],
                                   "stage_options": settings, "fold": fold,
                                   "params_hash": cache_params_hash(cache), "init_model": model_identity(init_model),
                                   "train_rows": split_rows["train"], "val_rows": split_rows["val"],
                                   "code": training_code_digest()})
        checkpoint = StageCheckpoint(out_dir)
        state = checkpoint.load_state(fingerprint)

        with strategy.scope():
            model, pretrained = initial_model(stage, init_model=init_model, input_shape=input_shape,
                                              class_counts=class_counts, train_options=train_options,
                                              settings=settings, zscore=zscore)
            compile_model(model, stage, settings, train_options, steps_per_epoch, jit_compile)
            print(f"[{stage}] {n_gpus} GPU(s), {strategy.num_replicas_in_sync} replica(s), dtype policy {policy}, "
                  f"XLA {'on' if model.jit_compile else 'off'}", flush=True)
            saved_training_weights = []
            if state is not None:
                saved_training_weights = checkpoint.restore(model, state)
                if saved_training_weights is None:
                    print(f"checkpoint in {checkpoint.dir} does not fit the model built now; starting over", flush=True)
                    state = None
                else:
                    print(f"resuming {stage} after epoch {state['epoch']} from {checkpoint.dir}", flush=True)
        record_dir = out_dir / "val_predictions" if settings["record_val_predictions"] else None
        if state is None:
            checkpoint.clear()
            if record_dir is not None:
                shutil.rmtree(record_dir, ignore_errors=True)
            state = {"version": STATE_VERSION, "fingerprint": fingerprint, "epoch": 0, "history": [],
                     "best_auc": None, "best_epoch": None, "wait": 0, "stopped": False,
                     "best_loss": None, "selected_epoch": None,
                     "rng": f"derived per epoch from seed {seed} (data order, augmentation, mixup, dropout)",
                     "pretrained": pretrained}
        pretrained = state.get("pretrained", pretrained)

        imbalance = train_options["imbalance"]
        per_class = class_weights(train_labels, n_classes) if imbalance == "class_weight" else None
        augment = train_options["augment"]
        val_dataset = evaluation_dataset(val_source, batch_size)
        train_batches = TrainingBatches(train_source, train_labels, n_classes=n_classes, batch_size=batch_size,
                                        seed=seed, augment=augment, mixup=float(train_options["mixup"]),
                                        balanced=imbalance == "balanced_sampling", weights_per_class=per_class)
        average = None
        if settings["average_epochs"] > 0:
            average = WeightAverage(model, settings["average_epochs"], steps_per_epoch)
            if saved_training_weights:
                average.restore(saved_training_weights, state["average_updates"])
        # The average (when on) is swapped in first, so that validation and checkpoints see it.
        callbacks = [*([average] if average is not None else []),
                     ValidationMetrics(val_dataset, val_labels, record_dir, stage),
                     EpochEnd(checkpoint, state, settings["patience"], settings["select_epoch"], average,
                              settings["epochs"]),
                     TensorBoardScalars(out_dir / "tensorboard", state["history"])]

        for epoch in range(state["epoch"], settings["epochs"]):
            if state["stopped"]:
                break
            print(f"[{stage}] epoch {epoch + 1}/{settings['epochs']}", flush=True)
            reset_layer_seeds(model, seed, epoch)
            # The dataset is already shuffled per epoch (seeded); Keras must not try to.
            with read_errors_unwrapped(train_source, val_source):
                model.fit(train_batches.for_epoch(epoch), epochs=epoch + 1, initial_epoch=epoch,
                          callbacks=callbacks, verbose=2, shuffle=False)
        if state["stopped"]:
            print(f"early stopping after epoch {state['epoch']}: no better val_auc for {settings['patience']} epochs",
                  flush=True)
        selected = state["selected_epoch"]
        if selected is not None and selected != state["epoch"] and checkpoint.has_best(state):
            print(f"restoring the weights of epoch {selected} ({settings['select_epoch']}: val_auc "
                  f"{state['history'][selected - 1].get('val_auc', float('nan')):.4f}, val_loss "
                  f"{state['history'][selected - 1].get('val_loss', float('nan')):.4f})", flush=True)
            checkpoint.restore_best(model, state)

        metadata = model_metadata(stage=stage, cache=cache, input_shape=input_shape, train_options=train_options,
                                  settings=settings, pretrained=pretrained, zscore=zscore, state=state,
                                  n_train=len(train_labels), n_val=len(val_labels), in_memory=in_memory, policy=policy,
                                  jit_compile=bool(model.jit_compile), fold=fold, split_rows=split_rows,
                                  init_model=init_model if stage == "finetune" else None)
    _save_keras(model, out_dir / "model.keras")
    write_history(out_dir / "history.csv", state["history"])
    atomic_write_json(out_dir / "model.json", metadata)
    checkpoint.mark_complete(state)
    return out_dir / "model.keras"


def file_identity(path):
    """sha256 of a file's bytes (None for None): a splits file written again with other rows is
    another file; one only touched (``snakemake --touch``) or moved is not."""
    return None if path is None else file_digest(path)


def model_identity(model_path):
    """The digest of a saved model's weights (None for None): a head stage saved again with the same
    weights (a forced rerun) is the same starting point, whose ``.keras`` bytes differ."""
    if model_path is None:
        return None
    stat = Path(model_path).stat()
    return _model_identity(str(Path(model_path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino,
                           stat.st_ctime_ns)


@functools.lru_cache(maxsize=4)
def _model_identity(path, *file_state):
    # Every ensemble member asks. Keyed by the file's size, times and inode too, as it may be written
    # again in between: a .keras zip of the same model keeps its size, and cp -p keeps the mtime,
    # but a new file or a rename changes the inode or ctime.
    return saved_weights_digest(path)


# --- ensembles --------------------------------------------------------------------------------------
def remove_surplus_members(out_dir, n_members):
    """Delete ensemble members numbered ``n_members`` and up, left by a run with a larger ensemble.

    A stage dir then holds only what its model.json describes; with one model (no ensemble) the
    ``members/`` folder and ``checkpoints/ensemble.json`` go too, and with an ensemble a single
    model's checkpoints, recorded predictions and TensorBoard log (which showed its curves beside
    the members').
    """
    out_dir = Path(out_dir)
    members = out_dir / MEMBERS_DIRNAME
    if n_members <= 1:
        shutil.rmtree(members, ignore_errors=True)
        (out_dir / "checkpoints" / "ensemble.json").unlink(missing_ok=True)
        return
    shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
    shutil.rmtree(out_dir / "val_predictions", ignore_errors=True)  # the members keep their own
    StageCheckpoint(out_dir).remove_files()
    for folder in sorted(members.glob(f"{MEMBER_PREFIX}*")) if members.is_dir() else []:
        number = folder.name.removeprefix(MEMBER_PREFIX)
        if number.isdigit() and int(number) >= n_members:
            shutil.rmtree(folder, ignore_errors=True)


def member_dir(out_dir, k):
    """The folder of ensemble member ``k`` in a fine-tune stage's ``out_dir``: ``members/member_<k>``."""
    return Path(out_dir) / MEMBERS_DIRNAME / f"{MEMBER_PREFIX}{k}"


def member_seeds(seed, n_members):
    """The training seeds of an ensemble's members: ``seed``, ``seed + 1000``, …"""
    return [int(seed) + k * MEMBER_SEED_STRIDE for k in range(n_members)]


def member_options(options, seed):
    """``options`` for one ensemble member: a single model (``ensemble`` 1) trained with ``seed``."""
    return {**options, "train": {**options["train"], "seed": int(seed), "ensemble": 1}}


@functools.lru_cache(maxsize=1)
def training_code_digest():
    """sha256 of the library files that training runs (this module and all it imports) and of the
    TensorFlow, Keras and NumPy versions: a member trained by other code is not reused."""
    digest = hashlib.sha256(f"tf {tf.__version__} keras {keras.__version__} numpy {np.__version__}".encode())
    for path in module_closure("training"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def member_data(init_model, cache_path, splits_path):
    """What an ensemble's members start from and train on, the same for each: the initial model,
    the cache's rows, the splits and the training code. Computed once an ensemble, as it reads the
    whole cache's row list and loads the initial model.

    ``init_model`` is the model the members start from: None when each draws its own initial
    weights, so that saving an untrained head again (a rerun) does not retrain the members."""
    return {"init_model": model_identity(init_model), "cache": cache_identity(cache_path),
            "splits": file_identity(splits_path), "code": training_code_digest()}


def member_fingerprint(options, seed, *, fold, data):
    """What decides an ensemble member's model: its options and seed, its fold and ``data``
    (:func:`member_data`); not the size of the ensemble, so members survive a change of ``train.ensemble``."""
    # Less how the images are read (LOADING_TRAIN_OPTIONS): the member's batches are the same.
    return config_hash({"options": member_options(without_loading_options(options), seed), "fold": fold, **data})


def untrained_initial_model(init_model):
    """Whether ``init_model`` is a head stage's random initial model (0 epochs, no pretrained weights).

    Ensemble members then draw their own initial weights from their seeds: starting every
    member from the same random weights would throw away most of the ensemble's diversity.
    """
    if init_model is None:
        return True
    meta = model_json_beside(init_model)
    return meta.get("epochs_trained") == 0 and not meta.get("pretrained", False)


def train_ensemble(n_members, cache_path, splits_path, out_dir, *, options, fold=None, init_model=None, threads=None):
    """Fine-tune ``n_members`` models with seeds :func:`member_seeds` and save their average.

    Each member is a complete fine-tune stage in ``members/member_<k>/`` (its own early stopping,
    checkpoints and history). ``checkpoints/ensemble.json`` records the finished members, so a
    killed stage resumes with the member it was training instead of starting over. Writes
    model.keras (the ensemble, see :func:`medclassify.models.build_ensemble`), model.json (the
    first member's record plus an ``ensemble`` entry and the ensemble's validation AUC) and
    history.csv (every member's epochs, with a ``member`` column).
    """
    out_dir = Path(out_dir)
    seed = int(options["train"]["seed"])
    seeds = member_seeds(seed, n_members)
    state_path = out_dir / "checkpoints" / "ensemble.json"
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {}
    finished = state.get("members", {}) if state.get("version") == STATE_VERSION else {}
    member_init = None if untrained_initial_model(init_model) else init_model
    data = member_data(member_init, cache_path, splits_path)
    member_paths = []
    for k in range(n_members):
        folder = member_dir(out_dir, k)
        path = folder / "model.keras"
        fingerprint = member_fingerprint(options, seeds[k], fold=fold, data=data)
        if finished.get(str(k)) == fingerprint and path.exists():
            print(f"[finetune] ensemble member {k + 1}/{n_members} already trained ({folder})", flush=True)
        else:
            print(f"[finetune] ensemble member {k + 1}/{n_members} (seed {seeds[k]})", flush=True)
            finished.pop(str(k), None)
            atomic_write_json(state_path, {"version": STATE_VERSION, "members": finished})
            _train_model("finetune", cache_path, splits_path, folder, options=member_options(options, seeds[k]),
                         fold=fold, init_model=member_init, threads=threads)
            finished[str(k)] = fingerprint
            atomic_write_json(state_path, {"version": STATE_VERSION, "members": finished})
        member_paths.append(path)

    members = [load_model(p) for p in member_paths]
    ensemble = build_ensemble(members)
    member_meta = [model_json_beside(p) for p in member_paths]
    metadata = dict(member_meta[0])
    metadata["train_options"] = options["train"]
    metadata["seed"] = seed
    metadata["best_val_auc"] = _validation_auc(ensemble, cache_path, splits_path, fold, options)
    metadata["ensemble"] = {
        "members": n_members,
        "seeds": seeds,
        "models": [str(p.relative_to(out_dir)) for p in member_paths],
        "best_epoch": [m["best_epoch"] for m in member_meta],
        "selected_epoch": [m["selected_epoch"] for m in member_meta],
        "epochs_trained": [m["epochs_trained"] for m in member_meta],
        "best_val_auc": [m["best_val_auc"] for m in member_meta],
        "initial_weights": "each member's own seed" if member_init is None else str(init_model),
    }
    metadata["best_epoch"] = None
    metadata["selected_epoch"] = None
    metadata["epochs_trained"] = max(m["epochs_trained"] for m in member_meta)
    with atomic_path(out_dir / "model.keras", suffix=".partial.keras") as tmp:
        ensemble.save(tmp)
    history = [{"member": k, **row}
               for k, path in enumerate(member_paths) for row in _read_history_rows(path.with_name("history.csv"))]
    write_history(out_dir / "history.csv", history, member_column=True)
    atomic_write_json(out_dir / "model.json", metadata)
    return out_dir / "model.keras"


def _validation_auc(model, cache_path, splits_path, fold, options):
    """AUC of ``model`` on the validation split, as the stages compute it."""
    from .cache import open_cache

    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path, fold)["val"]
        labels = np.asarray(cache.labels, dtype="int64")[indices]
        probabilities = predict_probabilities(model, cache_reader(cache, indices), len(indices),
                                              batch_size=int(options["train"]["batch_size"]))
    value = classification_auc(labels, probabilities)
    return None if math.isnan(value) else value


def _read_history_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

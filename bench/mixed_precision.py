"""Mixed-precision benchmark: the default classifier trained in float32 and in mixed_float16.

    .venv/bin/python bench/mixed_precision.py [--epochs 30] [--npz ../shared/data/breastmnist.npz]
    .venv/bin/python bench/mixed_precision.py --epochs 6 --set '{"train": {"min_input_size": 224}}'

``mixed_precision: auto`` turns on Keras's ``mixed_float16`` policy on a GPU. This checks, on
whatever device and Keras backend it runs under, that the classifier ``medclassify.models``
builds for ``config/breastmnist.yaml`` trains under that policy as it does in float32:
  - layers compute in float16 and keep float32 variables; the probabilities stay float32;
  - compile wraps the optimizer in a LossScaleOptimizer (float16 gradients underflow without it);
  - losses and final weights are finite;
  - the same float32-trained weights give the same probabilities in float16, within 0.02;
  - a checkpoint written halfway through a short mixed_float16 run (``medclassify.checkpoints``,
    as the stages write it) restores every variable, loss scale included, into a newly built
    model, and the resumed run ends within 0.02 of the uninterrupted one;
and reports training images/s and validation AUC of each. ``--set`` overrides the config as JSON
(a bigger backbone, or ``min_input_size`` to train at the sizes where float16 pays). Both runs
train the whole network from the same seed, compiled by the fine-tune stage's own
``compile_model`` (AdamW, warm-up, cosine decay), with no augmentation, on BreastMNIST's
official training split; AUC is on its validation split.
It imports no TensorFlow itself, so it also runs under ``KERAS_BACKEND=jax`` (XLA always on).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "breastmnist.npz"
PROBABILITY_TOLERANCE = 0.02


def load_splits(npz):
    """``{split: (images scaled to [0, 1] as (N, H, W, 1) float32, integer labels)}``."""
    from medclassify.datasets.medmnist import read_medmnist_npz

    return {split: (images.astype("float32")[..., None] / 255.0, labels)
            for split, (images, labels) in read_medmnist_npz(npz, "breastmnist", 28).items()}


def device_name():
    """The device the backend computes on, in words."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"gpu: {len(gpus)}" if gpus else "cpu"
    return backend


def build(options, input_shape, class_counts, policy):
    """The classifier as the fine-tune stage starts it without a head model, under ``policy``."""
    import keras

    from medclassify.models import build_classifier, set_backbone_inference_mode

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(int(options["train"]["seed"]))
    train, finetune = options["train"], options["finetune"]
    model = build_classifier(input_shape, len(class_counts), backbone=train["backbone"], class_counts=class_counts,
                             dropout=options["head"]["dropout"], small_input=train["small_input"],
                             zscore=None, resnet_width=int(train["resnet_width"]), seed=int(train["seed"]),
                             min_size=int(train["min_input_size"]))
    set_backbone_inference_mode(model, False)
    assert finetune["unfreeze"] == "all" and train["weights"] == "none", "the bench trains the whole network"
    return model


def compile_like_finetune(model, options, steps_per_epoch, epochs):
    """Compile as the fine-tune stage does (medclassify.fitting), with XLA and ``epochs`` in the schedule."""
    from medclassify.fitting import compile_model, stage_options

    settings = {**stage_options(options, "finetune"), "epochs": epochs}
    compile_model(model, "finetune", settings, options["train"], steps_per_epoch, jit_compile=True)


def dtype_report(model):
    """Compute and variable dtypes of the backbone's convolutions, and the output dtype."""
    from medclassify.models import backbone_of

    convs = [layer for layer in backbone_of(model).layers if type(layer).__name__ == "Conv2D"]
    return {
        "conv_compute_dtypes": sorted({layer.compute_dtype for layer in convs}),
        "conv_variable_dtypes": sorted({layer.variable_dtype for layer in convs}),
        "output_dtype": str(model.outputs[0].dtype),
    }


def all_finite(arrays):
    import numpy as np

    return bool(all(np.all(np.isfinite(np.asarray(a, dtype="float64"))) for a in arrays))


def train_one(options, policy, train, val, epochs, batch_size):
    """Train under ``policy``; return the model and a record of its checks, speed and val AUC."""
    import keras
    import numpy as np
    from sklearn.metrics import roc_auc_score

    images, labels = train
    class_counts = np.bincount(labels, minlength=2).tolist()
    model = build(options, images.shape[1:], class_counts, policy)
    steps = int(np.ceil(len(images) / batch_size))
    compile_like_finetune(model, options, steps, epochs)
    epoch_seconds = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    history = model.fit(images, np.eye(2)[labels], batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
                        callbacks=[EpochTimer()])
    probabilities = model.predict(val[0], batch_size=256, verbose=0)
    # The first epoch compiles the step; the rest are the training speed.
    steady = epoch_seconds[1:] or epoch_seconds
    record = {
        "policy": policy,
        **dtype_report(model),
        "loss_scale_optimizer": isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
        "losses_finite": all_finite([history.history["loss"]]),
        "weights_finite": all_finite(model.get_weights()),
        "first_loss": float(history.history["loss"][0]),
        "last_loss": float(history.history["loss"][-1]),
        "first_epoch_s": round(epoch_seconds[0], 2),
        "train_images_per_s": round(len(images) / float(np.median(steady)), 1),
        "val_auc": float(roc_auc_score(val[1], probabilities[:, 1])),
    }
    return model, record


def resume_check(options, policy, train, val, batch_size, epochs=4):
    """Checkpoint a run halfway (medclassify.checkpoints, as the stages do) and resume it in a new model.

    Returns whether the arrays fitted the new model, whether every weight and optimizer variable
    (the loss scale under mixed_float16) came back exactly, and the largest difference between
    the validation probabilities of the resumed and the uninterrupted run after the second half.
    """
    import tempfile

    import keras
    import numpy as np

    from medclassify.checkpoints import StageCheckpoint
    from medclassify.fitting import reset_layer_seeds

    images, labels = train
    targets = np.eye(2)[labels]
    class_counts = np.bincount(labels, minlength=2).tolist()
    steps = int(np.ceil(len(images) / batch_size))
    seed = int(options["train"]["seed"])
    half = epochs // 2

    def new_model():
        model = build(options, images.shape[1:], class_counts, policy)
        compile_like_finetune(model, options, steps, epochs)
        return model

    def fit(model, first, last):
        for epoch in range(first, last):
            reset_layer_seeds(model, seed, epoch)
            model.fit(images, targets, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                      verbose=0)

    def variables(model):
        return [keras.ops.convert_to_numpy(v) for v in (*model.weights, *model.optimizer.variables)]

    uninterrupted = new_model()
    fit(uninterrupted, 0, half)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = StageCheckpoint(tmp)
        state = {"epoch": half}
        checkpoint.save(uninterrupted, state, best_improved=False)
        resumed = new_model()
        fits = checkpoint.restore(resumed, state) is not None
    exact = fits and all(np.array_equal(a, b) for a, b in zip(variables(resumed), variables(uninterrupted)))
    fit(uninterrupted, half, epochs)
    fit(resumed, half, epochs)
    difference = float(np.max(np.abs(resumed.predict(val[0], batch_size=256, verbose=0).astype("float64")
                                      - uninterrupted.predict(val[0], batch_size=256, verbose=0).astype("float64"))))
    return {"policy": policy, "epochs": epochs, "checkpoint_fits": fits, "restored_exactly": exact,
            "max_probability_difference": difference}


def same_weights_difference(options, float32_model, val):
    """Largest |p_float32 - p_float16| when the float32-trained weights run under mixed_float16."""
    import numpy as np

    reference = float32_model.predict(val[0], batch_size=256, verbose=0)
    mixed = build(options, val[0].shape[1:], [1, 1], "mixed_float16")
    mixed.set_weights(float32_model.get_weights())
    probabilities = mixed.predict(val[0], batch_size=256, verbose=0)
    return float(np.max(np.abs(probabilities.astype("float64") - reference.astype("float64"))))


def verdicts(mixed, difference, resumed):
    return {
        "float16 compute, float32 variables": mixed["conv_compute_dtypes"] == ["float16"]
        and mixed["conv_variable_dtypes"] == ["float32"],
        "float32 probabilities": mixed["output_dtype"] == "float32",
        "loss scaling": mixed["loss_scale_optimizer"],
        "finite losses and weights": mixed["losses_finite"] and mixed["weights_finite"],
        f"same weights agree within {PROBABILITY_TOLERANCE}": difference <= PROBABILITY_TOLERANCE,
        "checkpoint restores every variable, loss scale included": resumed["restored_exactly"],
        f"resumed run agrees with the uninterrupted one within {PROBABILITY_TOLERANCE}":
            resumed["max_probability_difference"] <= PROBABILITY_TOLERANCE,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--npz", type=Path, default=Path(os.environ.get("MEDCLASSIFY_BREASTMNIST_NPZ", DEFAULT_NPZ)))
    parser.add_argument("--set", default="{}", help="config overrides as JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mixed_precision.json")
    args = parser.parse_args(argv)

    import keras

    from medclassify.atomic import atomic_write_json
    from medclassify.config import load_config, run_config

    overrides = json.loads(args.set)
    options = run_config(load_config(ROOT / "config" / "breastmnist.yaml", overrides), "baseline")
    batch_size = int(options["train"]["batch_size"])
    splits = load_splits(args.npz)
    train, val = splits["train"], splits["val"]
    records = {}
    models = {}
    for policy in ("float32", "mixed_float16"):
        start = time.perf_counter()
        models[policy], records[policy] = train_one(options, policy, train, val, args.epochs, batch_size)
        records[policy]["wall_s"] = round(time.perf_counter() - start, 1)
    difference = same_weights_difference(options, models["float32"], val)
    resumed = resume_check(options, "mixed_float16", train, val, batch_size)
    checks = verdicts(records["mixed_float16"], difference, resumed)

    result = {"backend": keras.backend.backend(), "keras": keras.__version__, "device": device_name(),
              "overrides": overrides, "epochs": args.epochs, "batch_size": batch_size,
              "runs": list(records.values()), "max_probability_difference_same_weights": difference,
              "resume": resumed,
              "checks": checks, "passed": all(checks.values())}
    print(f"backend {result['backend']} (Keras {result['keras']}) on {result['device']}; {args.set}; "
          f"{args.epochs} epochs, batch {batch_size}, BreastMNIST train {len(train[1])} / val {len(val[1])}")
    print(f"{'policy':<15} {'img/s':>8} {'1st epoch s':>11} {'loss first→last':>17} {'val AUC':>8} {'wall s':>7}")
    for record in records.values():
        print(f"{record['policy']:<15} {record['train_images_per_s']:>8.1f} {record['first_epoch_s']:>11.2f} "
              f"{record['first_loss']:>8.4f}→{record['last_loss']:<8.4f} {record['val_auc']:>8.4f} {record['wall_s']:>7.1f}")
    print(f"same float32 weights under mixed_float16: max |Δp| = {difference:.2e}")
    print(f"mixed_float16 checkpointed after epoch {resumed['epochs'] // 2} of {resumed['epochs']} and resumed: "
          f"fits {resumed['checkpoint_fits']}, restored exactly {resumed['restored_exactly']}, "
          f"max |Δp| at the end = {resumed['max_probability_difference']:.2e}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

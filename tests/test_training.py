"""Training stages: outputs, the saved model's contract, resume after SIGKILL, determinism.

The resume, determinism and option tests train in several processes (each traces the model
anew) and are marked slow: about 20-60 s each on an idle 2-core machine. Most of that is each
training's start (TensorFlow, building and tracing the model), not its epochs, so the slow tests
share their uninterrupted reference runs through module fixtures, and keep to one worker.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from medclassify.cache import open_cache
from medclassify.training import classification_auc, train_stage
from training_fixtures import make_training_cache, tiny_options

REPO = Path(__file__).resolve().parents[1]
RESUME_EPOCHS = 4


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return make_training_cache(tmp_path_factory.mktemp("cache"), n=64, n_classes=2)


def read_history(out_dir):
    return pd.read_csv(Path(out_dir) / "history.csv")


def test_head_then_finetune_write_every_output(tiny_cache, tmp_path):
    cache_path, splits_path = tiny_cache
    options = tiny_options()
    head = train_stage("head", cache_path, splits_path, tmp_path / "head", options=options, threads=1)
    final = train_stage("finetune", cache_path, splits_path, tmp_path / "finetune", options=options,
                        init_model=head, threads=1)
    for stage, epochs in (("head", 1), ("finetune", 2)):
        out = tmp_path / stage
        assert {"model.keras", "model.json", "history.csv", "checkpoints", "tensorboard"} <= {p.name for p in out.iterdir()}
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        history = read_history(out)
        assert list(history.columns) == ["epoch", "loss", "auc", "val_loss", "val_auc", "val_accuracy", "lr"]
        assert history["epoch"].tolist() == list(range(1, epochs + 1))
    meta = json.loads((tmp_path / "finetune" / "model.json").read_text())
    with open_cache(cache_path) as cache:
        assert meta["classes"] == cache.classes and meta["params_hash"] == cache.params_hash
        assert meta["params"] == cache.params and meta["input_shape"] == list(cache.image_shape)
        images = cache.read(np.arange(6))
    assert meta["backbone"] == "resnet18" and meta["seed"] == 0 and meta["zscore"] is None
    assert meta["dtype_policy"] == "float32" and meta["jit_compile"] is False  # auto on a CPU
    model = keras.models.load_model(final, safe_mode=True)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.dtype == np.float32 and probabilities.shape == (6, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The fine-tuned backbone trains; the head stage's stayed frozen.
    head_model = keras.models.load_model(head, safe_mode=True)
    assert not head_model.get_layer("backbone_runner").layer.trainable
    assert model.get_layer("backbone_runner").layer.get_layer("stem_conv").trainable


def test_xla_is_used_when_asked_for_without_op_determinism_and_the_switch_does_not_leak(tiny_cache, tmp_path):
    cache_path, splits_path = tiny_cache
    # Keras settles XLA when it compiles the model, before any epoch: the runs around the XLA one
    # need none. The XLA run trains one epoch of the head stage, whose frozen backbone compiles in
    # a quarter of the time of fine-tuning's backward pass (7 s against 30 s); both stages compile
    # through the same compile_model.
    for name, deterministic in (("before", True), ("xla", False), ("after", True)):
        options = tiny_options(jit_compile="on" if name == "xla" else "off", deterministic=deterministic)
        options["head"]["epochs"] = options["finetune"]["epochs"] = int(name == "xla")
        stage = "head" if name == "xla" else "finetune"
        train_stage(stage, cache_path, splits_path, tmp_path / name, options=options, threads=1)
    used = {name: json.loads((tmp_path / name / "model.json").read_text())["jit_compile"]
            for name in ("before", "xla", "after")}
    # "xla" follows a run with op determinism in the same process: it must not inherit the switch,
    # under which Keras would have compiled without XLA.
    assert used == {"before": False, "xla": True, "after": False}


def test_zero_head_epochs_save_the_initial_model(tiny_cache, tmp_path):
    cache_path, splits_path = tiny_cache
    options = tiny_options()
    options["head"]["epochs"] = 0
    path = train_stage("head", cache_path, splits_path, tmp_path, options=options, threads=1)
    assert read_history(tmp_path).empty
    with open_cache(cache_path) as cache:
        probabilities = keras.models.load_model(path, safe_mode=True).predict(cache.read([0, 1]), verbose=0)
    np.testing.assert_allclose(probabilities, [[0.5, 0.5], [0.5, 0.5]], atol=1e-6)  # the training priors


def test_min_input_size_reaches_the_model(tiny_cache, tmp_path):
    cache_path, splits_path = tiny_cache
    options = tiny_options()
    options["head"]["epochs"] = 0
    with open_cache(cache_path) as cache:
        height, width = cache.image_shape[:2]
    options["train"]["min_input_size"] = 2 * height
    path = train_stage("head", cache_path, splits_path, tmp_path, options=options, threads=1)
    fit = keras.models.load_model(path, safe_mode=True).get_layer("fit_size")
    assert fit.compute_output_shape((None, height, width, 1))[1:3] == (2 * height, 2 * width)


def test_zscore_statistics_come_from_the_training_split(tmp_path):
    cache_path, splits_path = make_training_cache(tmp_path / "data", n=24, intensity="zscore")
    options = tiny_options()
    options["head"]["epochs"] = 0
    train_stage("head", cache_path, splits_path, tmp_path / "out", options=options, threads=1)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    splits = pd.read_csv(splits_path)
    with open_cache(cache_path) as cache:
        rows = [cache.sample_ids.index(s) for s in splits.loc[splits["split"] == "train", "sample_id"]]
        images = cache.read(sorted(rows))
    assert meta["zscore"]["mean"] == pytest.approx(images.mean(), rel=1e-5)
    model = keras.models.load_model(tmp_path / "out" / "model.keras", safe_mode=True)
    assert model.get_layer("zscore") is not None


@pytest.mark.parametrize("graph", [False, True])
def test_focal_loss_keeps_the_gradient_of_a_confidently_wrong_image(graph):
    # Keras's focal loss clips probabilities at 1e-7: past a logit gap of about 16 the loss stuck at
    # 4.03 and the gradient was exactly 0, while cross-entropy still pulled with -1 (helper-78).
    import tensorflow as tf

    from medclassify.fitting import make_loss

    focal = make_loss({"imbalance": "focal_loss", "label_smoothing": 0.0})
    softmax = keras.layers.Activation("softmax", dtype="float32")
    target = tf.constant([[1.0, 0.0]])

    def loss_and_gradient(logits):
        with tf.GradientTape() as tape:
            loss = focal(target, softmax(logits))
        return loss, tape.gradient(loss, logits)

    step = tf.function(loss_and_gradient) if graph else loss_and_gradient
    for gap in (2.0, 10.0, 17.0, 25.0):
        logits = tf.Variable([[0.0, gap]])
        loss, gradient = step(logits)
        p = 1 / (1 + np.exp(gap))
        assert float(loss) == pytest.approx(-0.25 * (1 - p) ** 2 * np.log(p), rel=1e-5)  # Lin et al., alpha 0.25
        assert gradient.numpy()[0, 0] < -0.17
    # Where Keras's own focal loss is exact, the two agree, label smoothing included.
    smoothed = make_loss({"imbalance": "focal_loss", "label_smoothing": 0.1})
    keras_focal = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0, label_smoothing=0.1)
    probabilities = softmax(tf.constant([[0.3, -1.2, 2.0], [1.0, 0.5, -0.5]]))
    targets = tf.constant([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert float(smoothed(targets, probabilities)) == pytest.approx(float(keras_focal(targets, probabilities)), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("train", [{"imbalance": "class_weight", "label_smoothing": 0.1},
                                   {"imbalance": "balanced_sampling", "mixup": 0.2},
                                   {"imbalance": "focal_loss"}])
def test_imbalance_and_regularisation_options_train(tiny_cache, tmp_path, train):
    cache_path, splits_path = tiny_cache
    options = tiny_options(**train)
    options["finetune"]["epochs"] = 1
    train_stage("finetune", cache_path, splits_path, tmp_path, options=options, threads=1)
    history = read_history(tmp_path)
    assert np.isfinite(history["loss"]).all() and len(history) == 1
    # Compiled, as Keras loads by default, in a process that imports medclassify.models alone:
    # the focal loss is ours and must be registered there, as the schedule is (helper-79).
    code = "import sys, keras, medclassify.models; keras.models.load_model(sys.argv[1], safe_mode=True)"
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.keras")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-1000:]


def test_kfold_fold_trains_on_its_own_split(tmp_path):
    cache_path, splits_path = make_training_cache(tmp_path / "data", n=40, kfold=3)
    options = tiny_options()
    options["head"]["epochs"] = 0
    train_stage("head", cache_path, splits_path, tmp_path / "out", options=options, fold=1, threads=1)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    splits = pd.read_csv(splits_path)
    assert meta["n_val"] == int((splits["fold"] == 1).sum())
    assert meta["n_train"] == int(((splits["fold"] >= 0) & (splits["fold"] != 1)).sum())


def test_classification_auc():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert classification_auc(np.array([0, 1, 0, 1]), probabilities) == 1.0
    assert np.isnan(classification_auc(np.array([1, 1, 1, 1]), probabilities))
    three = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    assert classification_auc(np.array([0, 1, 2, 0]), three) == 1.0


# --- resume and determinism, in separate processes ------------------------------------------------
WORKER = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from training_fixtures import tiny_options
    from medclassify.training import train_stage
    options = tiny_options()
    options["head"]["epochs"] = 0
    options["finetune"].update(epochs={epochs}, early_stopping_patience=0)
    train_stage("finetune", {cache!r}, {splits!r}, sys.argv[1], options=options, threads=1)
""")


def worker_script(tmp_path, cache_path, splits_path, epochs):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), tests=str(REPO / "tests"), epochs=epochs,
                                    cache=str(cache_path), splits=str(splits_path)))
    return script


def run_worker(script, out_dir):
    result = subprocess.run([sys.executable, str(script), str(out_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def completed_epochs(out_dir):
    state = Path(out_dir) / "checkpoints" / "state.json"
    try:
        return json.loads(state.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def uninterrupted_worker_run(tiny_cache, tmp_path_factory):
    """(worker script, output folder) of a RESUME_EPOCHS-epoch fine-tuning in its own process."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    script = worker_script(folder, *tiny_cache, epochs=RESUME_EPOCHS)
    run_worker(script, folder / "out")
    return script, folder / "out"


@pytest.mark.slow
def test_two_runs_with_the_same_seed_are_identical(uninterrupted_worker_run, tmp_path):
    script, first = uninterrupted_worker_run
    run_worker(script, tmp_path / "second")
    pd.testing.assert_frame_equal(read_history(first), read_history(tmp_path / "second"), check_exact=True)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(uninterrupted_worker_run, tmp_path):
    script, uninterrupted = uninterrupted_worker_run
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script), str(killed_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while completed_epochs(killed_dir) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = completed_epochs(killed_dir)
    assert 1 <= done < RESUME_EPOCHS, f"the kill came after {done} epochs"
    assert not (killed_dir / "model.keras").exists()
    stdout = run_worker(script, killed_dir)
    assert f"resuming finetune after epoch {done}" in stdout
    resumed = read_history(killed_dir)
    assert resumed["epoch"].tolist() == list(range(1, RESUME_EPOCHS + 1))
    pd.testing.assert_frame_equal(resumed, read_history(uninterrupted), check_exact=False, rtol=1e-5, atol=1e-6)


class Killed(Exception):
    """Stands in for SIGKILL at one chosen moment."""


def kill_before_the_second_state(monkeypatch):
    """Make training raise Killed where it would record epoch 2 (its files written, not its state);
    return the function that stops it."""
    from medclassify import checkpoints

    write_json = checkpoints.atomic_write_json

    def killed_before_the_second_state(path, value):
        if Path(path).name == "state.json" and value.get("epoch") == 2 and not value.get("complete"):
            raise Killed
        write_json(path, value)

    monkeypatch.setattr(checkpoints, "atomic_write_json", killed_before_the_second_state)
    return lambda: monkeypatch.setattr(checkpoints, "atomic_write_json", write_json)


def averaged_options():
    options = tiny_options()
    options["finetune"]["average_epochs"] = 1
    return options


@pytest.fixture(scope="module")
def averaged_run(tiny_cache, tmp_path_factory):
    """Output folder of a fine-tuning with weight averaging, trained in this process start to end."""
    out = tmp_path_factory.mktemp("averaged") / "out"
    train_stage("finetune", *tiny_cache, out, options=averaged_options(), threads=1)
    return out


@pytest.mark.slow
def test_a_kill_after_the_model_file_before_the_state_resumes_from_the_state(
    tiny_cache, averaged_run, tmp_path, monkeypatch
):
    # With weight averaging, so that the training-weights file is part of what must stay consistent;
    # the SIGKILL test above covers resuming without it.
    cache_path, splits_path = tiny_cache
    options = averaged_options()
    stop_killing = kill_before_the_second_state(monkeypatch)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train_stage("finetune", cache_path, splits_path, out, options=options, threads=1)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and state["checkpoint_file"] == "epoch-0001.npz"
    assert (out / "checkpoints" / "epoch-0002.npz").exists()  # written, but no state names it
    stop_killing()
    train_stage("finetune", cache_path, splits_path, out, options=options, threads=1)
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch-*")) == ["epoch-0002.npz"]
    pd.testing.assert_frame_equal(read_history(out), read_history(averaged_run),
                                  check_exact=False, rtol=1e-5, atol=1e-6)
    resumed, uninterrupted = (keras.models.load_model(d / "model.keras", safe_mode=True)
                              for d in (out, averaged_run))
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_the_model_starts_over(tiny_cache, averaged_run, tmp_path, capsys):
    cache_path, splits_path = tiny_cache
    shutil.copytree(averaged_run, tmp_path, dirs_exist_ok=True)
    first = read_history(tmp_path)
    # An unfinished state whose arrays are of another model (as after a code change mid-run).
    checkpoints = tmp_path / "checkpoints"
    state = json.loads((checkpoints / "state.json").read_text())
    state.update(complete=False, epoch=1, history=state["history"][:1])
    (checkpoints / "state.json").write_text(json.dumps(state))
    np.savez(checkpoints / state["checkpoint_file"], model_00000=np.zeros(3), optimizer_00000=np.zeros(1))
    capsys.readouterr()
    train_stage("finetune", cache_path, splits_path, tmp_path, options=averaged_options(), threads=1)
    out = capsys.readouterr().out
    assert "does not fit the model built now; starting over" in out and "resuming" not in out
    pd.testing.assert_frame_equal(read_history(tmp_path), first, check_exact=True)


@pytest.fixture(params=["float32", "mixed_float16"])
def dtype_policy(request):
    """Each test twice: in float32 and under the mixed_float16 policy that a GPU run gets."""
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _compiled_model(filters, stage="finetune"):
    from medclassify.fitting import compile_model, stage_options

    inputs = keras.Input((4, 4, 1))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 3, padding="same")(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    options = tiny_options()
    compile_model(model, stage, stage_options(options, stage), options["train"], steps_per_epoch=2, jit_compile=False)
    return model


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_training_auc_is_the_macro_one_vs_rest_auc_that_val_auc_is(n_classes):
    # It was Keras's AUC over every class column pooled (0.62 where val_auc's measure gave 0.74).
    from sklearn.metrics import roc_auc_score

    from medclassify.fitting import compile_model, stage_options

    keras.utils.set_random_seed(1)
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Dense(n_classes, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    options = tiny_options()
    compile_model(model, "finetune", stage_options(options, "finetune"), options["train"], steps_per_epoch=1,
                  jit_compile=False)
    rng = np.random.default_rng(0)
    images, labels = rng.random((400, 4, 4, 1), "float32"), rng.integers(0, n_classes, 400)
    images[:, 0, 0, 0] += labels  # something to rank by
    probabilities = model.predict(images, verbose=0)
    expected = (roc_auc_score(labels, probabilities[:, 1]) if n_classes == 2
                else roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    logged = model.evaluate(images, np.eye(n_classes)[labels], verbose=0, return_dict=True)["auc"]
    assert logged == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize("stage", ["head", "finetune"])
def test_the_train_step_is_traced_once(stage, dtype_policy):
    # An optimizer built inside the first tracing makes TensorFlow trace the step again; that
    # second tracing was 8 of the 21 s of a short fine-tuning run (see compile_model). Under
    # mixed_float16 the optimizer to build is the LossScaleOptimizer that compile wraps around it.
    model = _compiled_model(filters=2, stage=stage)
    traced = []
    train_step = model.train_step
    model.train_step = lambda data: traced.append(1) or train_step(data)
    rng = np.random.default_rng(0)
    model.fit(rng.random((12, 4, 4, 1), "float32"), np.eye(2)[rng.integers(0, 2, 12)], batch_size=8, epochs=2,
              verbose=0)
    assert model.optimizer.built and len(traced) == 1


def test_a_checkpoint_restores_weights_and_optimizer_state_into_the_same_model_only(tmp_path, dtype_policy):
    from medclassify.checkpoints import StageCheckpoint

    keras.utils.set_random_seed(0)
    trained = _compiled_model(filters=2)
    rng = np.random.default_rng(0)
    trained.fit(rng.random((12, 4, 4, 1), "float32"), np.eye(2)[rng.integers(0, 2, 12)], batch_size=8, epochs=1,
                verbose=0)
    if dtype_policy == "mixed_float16":
        # A loss scale that overflows have lowered, which a resumed run must continue with.
        trained.optimizer.dynamic_scale.assign(1024.0)
    checkpoint = StageCheckpoint(tmp_path)
    state = {"epoch": 3}
    checkpoint.save(trained, state, best_improved=True)
    assert state["checkpoint_file"] == "epoch-0003.npz"
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"epoch-0003.npz", "best-0003.npz", "state.json"}

    fresh = _compiled_model(filters=2)
    assert checkpoint.restore(fresh, state) == []
    for got, want in zip([*fresh.weights, *fresh.optimizer.variables],
                         [*trained.weights, *trained.optimizer.variables], strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 2
    if dtype_policy == "mixed_float16":
        assert float(keras.ops.convert_to_numpy(fresh.optimizer.dynamic_scale)) == 1024.0

    other = _compiled_model(filters=3)
    before = [keras.ops.convert_to_numpy(v) for v in [*other.weights, *other.optimizer.variables]]
    assert checkpoint.restore(other, state) is None
    for got, want in zip([*other.weights, *other.optimizer.variables], before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)

    best = _compiled_model(filters=2)
    checkpoint.restore_best(best, state)
    for got, want in zip(best.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_best_weights_written_by_an_epoch_a_kill_interrupted_are_not_restored(tmp_path, monkeypatch):
    # The kill came after epoch 2's best weights and before its state; the resumed run scored epoch 2
    # lower (training need not be deterministic), so epoch 1 stays the best and must be what is restored.
    import medclassify.checkpoints
    from medclassify.checkpoints import StageCheckpoint

    keras.utils.set_random_seed(0)
    first, interrupted, redone = (_compiled_model(filters=2) for _ in range(3))
    assert not np.array_equal(first.get_weights()[0], interrupted.get_weights()[0])
    checkpoint = StageCheckpoint(tmp_path)
    checkpoint.save(first, {"epoch": 1}, best_improved=True)
    write_state = medclassify.checkpoints.atomic_write_json

    def killed(*args):
        raise KeyboardInterrupt("SIGKILL")

    monkeypatch.setattr(medclassify.checkpoints, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(interrupted, {"epoch": 2, "best_file": "best-0001.npz"}, best_improved=True)
    monkeypatch.setattr(medclassify.checkpoints, "atomic_write_json", write_state)

    state = json.loads(checkpoint.state_path.read_text())
    assert state["epoch"] == 1 and state["best_file"] == "best-0001.npz"
    state["epoch"] = 2
    checkpoint.save(redone, state, best_improved=False)
    assert sorted(p.name for p in checkpoint.dir.iterdir()) == ["best-0001.npz", "epoch-0002.npz", "state.json"]
    restored = _compiled_model(filters=2)
    checkpoint.restore_best(restored, json.loads(checkpoint.state_path.read_text()))
    for got, want in zip(restored.get_weights(), first.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_state_resumes_only_its_own_format_options_and_unfinished_run(tmp_path, capsys):
    from medclassify.checkpoints import STATE_VERSION, StageCheckpoint

    checkpoint = StageCheckpoint(tmp_path)
    checkpoint.dir.mkdir()
    (checkpoint.dir / "epoch-0002.npz").write_bytes(b"")
    good = {"version": STATE_VERSION, "fingerprint": "f", "epoch": 2, "checkpoint_file": "epoch-0002.npz"}

    def load(**changes):
        checkpoint.state_path.write_text(json.dumps({**good, **changes}))
        return checkpoint.load_state("f")

    assert load() == good
    assert load(version=2, model_file="epoch-0002.keras") is None
    assert f"another checkpoint format (version 2, now {STATE_VERSION})" in capsys.readouterr().out
    assert load(fingerprint="g") is None and "from other options, data or code" in capsys.readouterr().out
    assert load(complete=True) is None and "of a finished run" in capsys.readouterr().out
    assert load(checkpoint_file="epoch-0001.npz") is None  # the file it names is gone


# --- what a stage refuses, and what makes it start over -------------------------------------------
def test_the_rows_identity_changes_with_a_label_or_an_image_not_with_nothing():
    from types import SimpleNamespace

    from medclassify.cache import rows_identity

    cache = SimpleNamespace(labels=np.array([0, 1, 0, 1]), content_hashes=["h0", "h1", "h2", "h3"])
    rows = np.array([0, 2, 3])
    relabelled = SimpleNamespace(labels=np.array([0, 1, 1, 1]), content_hashes=cache.content_hashes)
    replaced = SimpleNamespace(labels=cache.labels, content_hashes=["h0", "h1", "new", "h3"])
    assert rows_identity(cache, rows) == rows_identity(SimpleNamespace(**vars(cache)), rows.copy())
    assert len({rows_identity(c, rows) for c in (cache, relabelled, replaced)}) == 3
    assert rows_identity(cache, rows) != rows_identity(cache, np.array([0, 2]))


@pytest.fixture(scope="module")
def untrained_head(tiny_cache, tmp_path_factory):
    options = tiny_options()
    options["head"]["epochs"] = 0
    return train_stage("head", *tiny_cache, tmp_path_factory.mktemp("head"), options=options, threads=1)


@pytest.mark.parametrize("change", ["intensity", "size"])
def test_fine_tuning_refuses_a_head_model_of_another_cache(untrained_head, tmp_path, change):
    from medclassify.errors import InputError

    other = {"intensity": {"intensity": "zscore"}, "size": {"size": 24}}[change]
    cache_path, splits_path = make_training_cache(tmp_path / "other", n=32, **other)
    head = untrained_head
    if change == "size":  # a bare .keras file, without the model.json that names its cache
        shutil.copy(untrained_head, tmp_path / "head.keras")
        head = tmp_path / "head.keras"
    with pytest.raises(InputError, match="the model to fine-tune does not fit the cache") as error:
        train_stage("finetune", cache_path, splits_path, tmp_path / "out", options=tiny_options(), init_model=head,
                    threads=1)
    assert any(("params_hash" if change == "intensity" else "shape") in p for p in error.value.problems)
    assert not (tmp_path / "out" / "model.keras").exists()


def test_a_diverged_training_says_so_instead_of_scikit_learn_s_nan_traceback(tiny_cache, tmp_path):
    # roc_auc_score's "Input contains NaN" ended the stage (helper-78).
    from medclassify.errors import InputError

    options = tiny_options()
    options["finetune"].update(learning_rate=1e30, warmup_epochs=0)
    with pytest.raises(InputError, match="the finetune stage diverged at epoch 1") as error:
        train_stage("finetune", *tiny_cache, tmp_path / "out", options=options, threads=1)
    assert error.value.problems == ["lower finetune.learning_rate or raise finetune.warmup_epochs"]
    assert not (tmp_path / "out" / "model.keras").exists()


def test_fine_tuning_from_a_damaged_head_model_names_the_file(untrained_head, tiny_cache, tmp_path):
    # Keras says "File not found" of a cut .keras zip; training passed that on (helper-71).
    from medclassify.errors import InputError

    head = tmp_path / "model.keras"
    head.write_bytes(Path(untrained_head).read_bytes()[:2000])
    with pytest.raises(InputError, match="not a readable Keras model") as error:
        train_stage("finetune", *tiny_cache, tmp_path / "out", options=tiny_options(), init_model=head, threads=1)
    assert str(head) in str(error.value)


def test_fine_tuning_from_a_head_trained_on_another_split_warns(untrained_head, tiny_cache, tmp_path):
    # By hand, fold 0 fine-tuned from fold 1's head (which trained on fold 0's images) said nothing.
    cache_path, splits_path = tiny_cache
    options = tiny_options()
    options["finetune"]["epochs"] = 1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*another split")  # the head's own split: no warning
        train_stage("finetune", cache_path, splits_path, tmp_path / "same", options=options, init_model=untrained_head,
                    threads=1)
    splits = pd.read_csv(splits_path, dtype=str, keep_default_na=False)
    first_train, first_val = splits.index[splits["split"] == "train"][0], splits.index[splits["split"] == "val"][0]
    splits.loc[[first_train, first_val], "split"] = ["val", "train"]
    other = tmp_path / "other_splits.csv"
    splits.to_csv(other, index=False)
    # Recorded by hand: pytest.warns would also catch, and then repeat, TensorFlow's deprecation noise.
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=".*another split")
        train_stage("finetune", cache_path, other, tmp_path / "other", options=options, init_model=untrained_head,
                    threads=1)
    assert [w for w in caught if "was trained on another split of the cache" in str(w.message)]
    recorded = json.loads((tmp_path / "same" / "model.json").read_text())
    assert recorded["fold"] is None and set(recorded["split_rows"]) == {"train", "val"}
    assert recorded["init_model"] == str(untrained_head)  # which head it fine-tuned (helper-55)


def test_a_validation_split_of_one_class_refuses_early_stopping_and_warns_of_best_auc(tiny_cache, tmp_path):
    from medclassify.errors import InputError

    cache_path, splits_path = tiny_cache
    splits = pd.read_csv(splits_path)
    with open_cache(cache_path) as cache:
        label = dict(zip(cache.sample_ids, cache.labels))
    one_class_val = (splits["split"] == "val") & (splits["sample_id"].map(label) == 1)
    splits.loc[one_class_val, "split"] = "train"
    splits.to_csv(tmp_path / "splits.csv", index=False)
    options = tiny_options()
    options["finetune"]["early_stopping_patience"] = 2
    with pytest.raises(InputError, match="validation split holds one class"):
        train_stage("finetune", cache_path, tmp_path / "splits.csv", tmp_path / "out", options=options, threads=1)
    options["head"]["epochs"] = 0
    with warnings.catch_warnings(record=True) as caught:  # pytest.warns would re-emit Keras's own warnings
        warnings.simplefilter("always")
        train_stage("head", cache_path, tmp_path / "splits.csv", tmp_path / "head", options=options, threads=1)
    assert any("best_auc keeps the last epoch" in str(warning.message) for warning in caught)


@pytest.mark.slow
def test_a_damaged_image_read_from_disk_is_an_input_error_naming_the_cache(tiny_cache, tmp_path):
    # Read inside tf.data, the loader's InputError reached the user as TensorFlow's UnknownError
    # and a long traceback ("Error in user-defined function passed to MapDataset").
    import h5py

    from medclassify.errors import InputError

    cache_path, splits_path = tiny_cache
    damaged = tmp_path / "cache.h5"
    shutil.copy(cache_path, damaged)
    with h5py.File(damaged) as f:
        chunk = f["images"].id.get_chunk_info(3)  # a training row
    data = bytearray(damaged.read_bytes())
    for k in range(chunk.byte_offset + 4, chunk.byte_offset + 12):
        data[k] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupted cache") as caught:
        train_stage("head", damaged, splits_path, tmp_path / "out", options=tiny_options(cache_in_memory_max_gb=0),
                    threads=1)
    assert str(damaged) in str(caught.value)


def test_a_run_killed_and_rerun_with_images_read_from_disk_resumes(tiny_cache, tmp_path, monkeypatch, capsys):
    # Lowering train.cache_in_memory_max_gb is the fix after running out of memory: the batches
    # are the same, so the checkpoint must still be resumed, not thrown away.
    stop_killing = kill_before_the_second_state(monkeypatch)
    with pytest.raises(Killed):
        train_stage("finetune", *tiny_cache, tmp_path, options=tiny_options(cache_in_memory_max_gb=4), threads=1)
    stop_killing()
    # what a SIGKILL during a write leaves (helper-82): the rerun removes it
    stale = [tmp_path / ".model.keras.k2j4x_9q.partial.keras",
             tmp_path / "checkpoints" / ".epoch-0002.npz.a1b2c3d4.partial.npz"]
    for path in stale:
        path.write_bytes(b"partial")
    capsys.readouterr()
    train_stage("finetune", *tiny_cache, tmp_path, options=tiny_options(cache_in_memory_max_gb=0), threads=1)
    out = capsys.readouterr().out
    assert "resuming finetune after epoch 1" in out
    assert not any(path.exists() for path in stale)
    assert json.loads((tmp_path / "model.json").read_text())["images_in_memory"] is False


def test_a_run_killed_and_rerun_after_a_code_change_starts_over(tiny_cache, tmp_path, monkeypatch, capsys):
    # Snakemake reruns the stage when its code changes; the checkpoint of the old code was resumed,
    # giving a model trained half by the old code and half by the new.
    import medclassify.training

    stop_killing = kill_before_the_second_state(monkeypatch)
    with pytest.raises(Killed):
        train_stage("finetune", *tiny_cache, tmp_path, options=tiny_options(), threads=1)
    stop_killing()
    monkeypatch.setattr(medclassify.training, "training_code_digest", lambda: "the fixed code")
    capsys.readouterr()
    train_stage("finetune", *tiny_cache, tmp_path, options=tiny_options(), threads=1)
    out = capsys.readouterr().out
    assert "is from other options, data or code; starting over" in out and "resuming" not in out
    # TensorBoard showed the abandoned run's first epoch beside the new run's (helper-84)
    steps = tensorboard_steps(tmp_path / "tensorboard")
    epochs = len((tmp_path / "history.csv").read_text().splitlines()) - 1
    assert steps["val_auc"] == list(range(1, epochs + 1)) and steps["loss"] == steps["val_auc"]


def tensorboard_steps(folder):
    """{tag: sorted steps} over every event file in ``folder``."""
    import collections

    import tensorflow as tf

    steps = collections.defaultdict(list)
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return {tag: sorted(found) for tag, found in steps.items()}


def test_a_touched_or_rebuilt_cache_is_the_same_data_to_an_ensemble_member(tiny_cache, tmp_path):
    # Members were matched by file size and time: `snakemake --touch` retrained every one.
    import os
    import shutil

    from medclassify.training import member_data, member_fingerprint

    cache_path, splits_path = tiny_cache
    copies = [shutil.copy(path, tmp_path / Path(path).name) for path in (cache_path, splits_path)]

    def fingerprint():
        return member_fingerprint(tiny_options(), 7, fold=None, data=member_data(None, *copies))

    before = fingerprint()
    for path in copies:
        os.utime(path, ns=(0, 10**18))
    assert fingerprint() == before
    Path(copies[1]).write_text(Path(copies[1]).read_text().replace("train", "val", 1))
    assert fingerprint() != before


def test_a_head_model_saved_again_with_the_same_weights_is_the_same_start_for_a_member(tiny_cache, tmp_path):
    # Its .keras bytes differ between two saves, which retrained every member after a forced head rerun.
    from medclassify.training import member_data, member_fingerprint

    cache_path, splits_path = tiny_cache
    model = _compiled_model(filters=2)
    paths = [tmp_path / "first" / "model.keras", tmp_path / "again" / "model.keras"]
    for path in paths:
        path.parent.mkdir()
        model.save(path)
    _compiled_model(filters=2).save(tmp_path / "other.keras")  # other weights

    def fingerprint(head):
        return member_fingerprint(tiny_options(), 7, fold=None, data=member_data(head, cache_path, splits_path))

    assert fingerprint(paths[0]) == fingerprint(paths[1]) != fingerprint(tmp_path / "other.keras")


def test_an_ensemble_member_does_not_depend_on_how_images_are_read(tiny_cache):
    from medclassify.training import member_data, member_fingerprint

    cache_path, splits_path = tiny_cache
    data = member_data(None, cache_path, splits_path)
    fingerprints = {member_fingerprint(tiny_options(cache_in_memory_max_gb=gb), 7, fold=None, data=data)
                    for gb in (4, 0)}
    assert len(fingerprints) == 1


def test_head_and_finetune_in_one_process_share_one_mirrored_strategy(tmp_path):
    # A second MirroredStrategy reuses the first one's all-reduce keys, whose shapes TensorFlow
    # remembers: the fine-tune stage after the head's, in one process (bench/accuracy.py), aborted
    # with "Shape mismatch in the collective instance 100" on two GPUs (helper-87). Two logical
    # CPU devices stand in for them.
    import subprocess

    script = f"""
import functools, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.distribute.MirroredStrategy = functools.partial(tf.distribute.MirroredStrategy, ["/cpu:0", "/cpu:1"])
sys.path.insert(0, "tests")
import medclassify.gpu as gpu
gpu.strategy_kind = lambda n_gpus: "mirrored"
from training_fixtures import make_training_cache, tiny_options
from medclassify.training import train_stage
root = {str(tmp_path)!r}
make_training_cache(root, n=80)
options = tiny_options()
train_stage("head", root + "/cache.h5", root + "/splits.csv", root + "/head", options=options, threads=1)
train_stage("finetune", root + "/cache.h5", root + "/splits.csv", root + "/finetune", options=options,
            init_model=root + "/head/model.keras", threads=1)
print("replicas", gpu.mirrored_strategy().num_replicas_in_sync)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "replicas 2"

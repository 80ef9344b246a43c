"""train.ensemble: the fine-tune stage trains several members and saves the model averaging them."""

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

from medclassify import training
from medclassify.cache import open_cache
from medclassify.evaluation import gradcam
from medclassify.evaluation.plots import plot_training_curves
from medclassify.models import ensemble_members
from medclassify.predict import predict_files
from medclassify.training import remove_surplus_members, train_stage
from training_fixtures import make_training_cache, tiny_options


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return make_training_cache(tmp_path_factory.mktemp("cache"), n=48, n_classes=2)


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory):
    """A head stage of 0 epochs, a single fine-tuned model and a 2-member ensemble from it."""
    cache_path, splits_path = tiny_cache
    root = tmp_path_factory.mktemp("runs")
    options = tiny_options()
    options["head"]["epochs"], options["finetune"]["epochs"] = 0, 2
    head = train_stage("head", cache_path, splits_path, root / "head", options=options, threads=1)
    single = train_stage("finetune", cache_path, splits_path, root / "single", options=options, init_model=head,
                         threads=1)
    options["train"]["ensemble"] = 2
    ensemble = train_stage("finetune", cache_path, splits_path, root / "ensemble", options=options,
                           init_model=head, threads=1)
    return {"root": root, "head": head, "single": single, "ensemble": ensemble, "options": options}


def test_the_ensemble_averages_its_members(trained, tiny_cache):
    out = trained["root"] / "ensemble"
    model = keras.models.load_model(trained["ensemble"], safe_mode=True)
    members = [keras.models.load_model(out / "members" / f"member_{k}" / "model.keras", safe_mode=True)
               for k in range(2)]
    with open_cache(tiny_cache[0]) as cache:
        images = cache.read(np.arange(8))
    probabilities = model.predict(images, verbose=0)
    each = [m.predict(images, verbose=0) for m in members]
    np.testing.assert_allclose(probabilities, np.mean(each, axis=0), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Own seeds, own initial weights: the members are different models.
    assert np.abs(each[0] - each[1]).max() > 1e-4
    assert len(ensemble_members(model)) == 2


def test_the_first_member_is_the_single_model_of_the_same_seed(trained):
    single = pd.read_csv(trained["root"] / "single" / "history.csv")
    member = pd.read_csv(trained["root"] / "ensemble" / "members" / "member_0" / "history.csv")
    pd.testing.assert_frame_equal(member, single, check_exact=False, rtol=1e-6, atol=1e-7)


def test_ensemble_records_its_members(trained):
    out = trained["root"] / "ensemble"
    meta = json.loads((out / "model.json").read_text())
    assert meta["ensemble"]["members"] == 2 and meta["ensemble"]["seeds"] == [0, 1000]
    assert meta["ensemble"]["models"] == ["members/member_0/model.keras", "members/member_1/model.keras"]
    assert meta["ensemble"]["initial_weights"] == "each member's own seed"
    assert meta["classes"] and meta["params_hash"] and meta["train_options"]["ensemble"] == 2
    assert meta["best_val_auc"] is None or 0 <= meta["best_val_auc"] <= 1
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["member", "epoch", "loss", "auc", "val_loss", "val_auc", "val_accuracy", "lr"]
    assert history["member"].tolist() == [0, 0, 1, 1] and history["epoch"].tolist() == [1, 2, 1, 2]
    fig = plot_training_curves({"finetune": history})
    assert len(fig.axes[0].lines) == 4  # train and val loss of each member
    assert len(fig.axes[0].get_legend().get_texts()) == 2


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members(trained, tiny_cache):
    model = keras.models.load_model(trained["ensemble"], safe_mode=True)
    with open_cache(tiny_cache[0]) as cache:
        images = cache.read(np.arange(4))
    classes = np.array([0, 1, 0, 1])
    maps = gradcam.gradcam_heatmaps(model, images, classes)
    mean = np.mean([gradcam.gradcam_heatmaps(m, images, classes) for m in ensemble_members(model)], axis=0)
    peak = mean.reshape(4, -1).max(axis=1)
    np.testing.assert_allclose(maps, mean / np.where(peak > 0, peak, 1)[:, None, None], atol=1e-6)
    assert gradcam.explained_model(model) is ensemble_members(model)[0]


def test_a_killed_ensemble_resumes_with_the_unfinished_member(trained, tiny_cache, capsys):
    out = trained["root"] / "ensemble"
    first = pd.read_csv(out / "history.csv")
    state_path = out / "checkpoints" / "ensemble.json"
    state = json.loads(state_path.read_text())
    # As if killed while training member 1: member 0 finished, nothing of member 1 kept.
    del state["members"]["1"]
    state_path.write_text(json.dumps(state))
    for name in ("model.keras", "model.json", "history.csv"):
        (out / name).unlink()
    member_1 = out / "members" / "member_1"
    for path in sorted(member_1.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    capsys.readouterr()
    train_stage("finetune", *tiny_cache, out, options=trained["options"], init_model=trained["head"], threads=1)
    log = capsys.readouterr().out
    assert "ensemble member 1/2 already trained" in log and "ensemble member 2/2 (seed 1000)" in log
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), first, check_exact=False, rtol=1e-5, atol=1e-6)
    assert sorted(json.loads(state_path.read_text())["members"]) == ["0", "1"]


def test_members_that_do_not_start_from_the_head_model_survive_a_new_head_file(trained, tiny_cache, tmp_path, capsys):
    # The fixture's head has 0 epochs and no pretrained weights: members draw their own initial
    # weights, so a head stage saved again (a rerun: another file time) must not retrain them.
    head = train_stage("head", *tiny_cache, tmp_path / "head", options=trained["options"], threads=1)
    out = tmp_path / "finetune"
    shutil.copytree(trained["root"] / "ensemble", out)
    capsys.readouterr()
    train_stage("finetune", *tiny_cache, out, options=trained["options"], init_model=head, threads=1)
    log = capsys.readouterr().out
    assert "member 1/2 already trained" in log and "member 2/2 already trained" in log


def _refit(trained, tiny_cache, out, capsys, **changes):
    """Run the fine-tune stage in ``out`` again with ``changes`` ({section: {key: value}}); its log."""
    options = {section: dict(values) for section, values in trained["options"].items()}
    for section, values in changes.items():
        options[section].update(values)
    capsys.readouterr()
    train_stage("finetune", *tiny_cache, out, options=options, init_model=trained["head"], threads=1)
    return capsys.readouterr().out


def test_a_larger_or_smaller_ensemble_keeps_the_members_it_shares(trained, tiny_cache, tmp_path, capsys):
    out = tmp_path / "finetune"
    shutil.copytree(trained["root"] / "ensemble", out)
    member_0 = (out / "members" / "member_0" / "model.keras").read_bytes()

    log = _refit(trained, tiny_cache, out, capsys, train={"ensemble": 3})
    assert "member 1/3 already trained" in log and "member 2/3 already trained" in log
    assert "ensemble member 3/3 (seed 2000)" in log
    assert (out / "members" / "member_0" / "model.keras").read_bytes() == member_0
    assert json.loads((out / "model.json").read_text())["ensemble"]["seeds"] == [0, 1000, 2000]

    log = _refit(trained, tiny_cache, out, capsys, train={"ensemble": 2})
    assert "member 1/2 already trained" in log and "member 2/2 already trained" in log and "(seed " not in log
    assert not (out / "members" / "member_2").exists()
    original = pd.read_csv(trained["root"] / "ensemble" / "history.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), original)


@pytest.mark.parametrize("change", ["options", "code"])
def test_members_of_other_options_or_code_are_trained_anew(trained, tiny_cache, tmp_path, capsys, monkeypatch, change):
    out = tmp_path / "finetune"
    shutil.copytree(trained["root"] / "ensemble", out)
    if change == "code":
        monkeypatch.setattr(training, "training_code_digest", lambda: "another version of the code")
        log = _refit(trained, tiny_cache, out, capsys)
    else:
        log = _refit(trained, tiny_cache, out, capsys, finetune={"learning_rate": 0.0003})
    assert "already trained" not in log
    assert "ensemble member 1/2 (seed 0)" in log and "ensemble member 2/2 (seed 1000)" in log


def test_predict_reads_an_ensemble_like_any_model(trained, tiny_cache, tmp_path):
    cache_path = tiny_cache[0]
    images = sorted((cache_path.parent / "img").glob("*.png"))[:4]
    with pytest.warns(UserWarning, match="deciding by arg-max"):  # no evaluation ran for this model
        table = predict_files(trained["ensemble"], images, tmp_path / "predictions.csv")
    assert (table["status"] == "ok").all()
    model = keras.models.load_model(trained["ensemble"], safe_mode=True)
    with open_cache(cache_path) as cache:
        rows = [cache.sample_ids.index(f"img/{path.name}") for path in images]
        expected = model.predict(cache.read(rows), verbose=0)
    np.testing.assert_allclose(table[["prob_class_0", "prob_class_1"]].to_numpy(), expected, atol=1e-5)


def test_a_smaller_ensemble_removes_the_surplus_members(tmp_path):
    for k in range(3):
        (tmp_path / "members" / f"member_{k}").mkdir(parents=True)
        (tmp_path / "members" / f"member_{k}" / "model.keras").write_bytes(b"x")
    (tmp_path / "members" / "notes.txt").write_text("kept")
    remove_surplus_members(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "members").iterdir()) == ["member_0", "member_1", "notes.txt"]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ensemble.json").write_text("{}")
    remove_surplus_members(tmp_path, 1)
    assert not (tmp_path / "members").exists() and not (tmp_path / "checkpoints" / "ensemble.json").exists()
    remove_surplus_members(tmp_path / "missing", 3)  # nothing to remove is fine
    # one model then an ensemble: the single model's checkpoints and curves go (helper-90)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    for name in ("state.json", "epoch-0002.npz", "best-0001.npz"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    (tmp_path / "checkpoints" / "ensemble.json").write_text("{}")
    (tmp_path / "val_predictions").mkdir()
    (tmp_path / "val_predictions" / "epoch_001.npy").write_bytes(b"x")
    remove_surplus_members(tmp_path, 2)
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "val_predictions").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ensemble.json"]


def test_a_single_model_after_an_ensemble_leaves_no_members_behind(trained, tiny_cache, tmp_path):
    out = tmp_path / "finetune"
    shutil.copytree(trained["root"] / "ensemble", out)
    options = tiny_options()
    options["head"]["epochs"], options["finetune"]["epochs"] = 0, 0
    train_stage("finetune", *tiny_cache, out, options=options, init_model=trained["head"], threads=1)
    assert not (out / "members").exists()
    meta = json.loads((out / "model.json").read_text())
    assert "ensemble" not in meta and "member" not in pd.read_csv(out / "history.csv").columns


def test_an_ensemble_fine_tuned_from_a_trained_head_trains(tmp_path):
    # The head model was built a third time in the fine-tuning process, only to digest its
    # weights, and TensorFlow's oneDNN kernels then corrupted the heap in the first member's first
    # epoch ("free(): invalid next size", the process aborted) (helper-90). Each stage in a
    # process of its own, as the workflow runs them: an abort would take pytest with it.
    import subprocess
    import sys
    from pathlib import Path

    script = """
import sys
sys.path.insert(0, "tests")
from training_fixtures import make_training_cache, tiny_options
from medclassify.training import train_stage
root, stage = sys.argv[1], sys.argv[2]
options = tiny_options()
options["finetune"]["early_stopping_patience"] = 0
options["head"]["epochs"], options["finetune"]["epochs"], options["train"]["ensemble"] = 1, 3, 2
if stage == "head":
    make_training_cache(root)
    train_stage("head", root + "/cache.h5", root + "/splits.csv", root + "/head", options=options, threads=1)
else:
    train_stage("finetune", root + "/cache.h5", root + "/splits.csv", root + "/finetune", options=options,
                init_model=root + "/head/model.keras", threads=1)
print("trained")
"""
    for stage in ("head", "finetune"):
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path), stage], capture_output=True, text=True,
                             timeout=600, cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 0 and run.stdout.strip().endswith("trained"), (stage, run.stderr[-2000:])

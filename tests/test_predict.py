"""predict_files: same reader and preprocessing as the cache, saved threshold, errors listed."""

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("tensorflow")

from evaluation_fixtures import tiny_model  # noqa: E402
from medclassify import __version__  # noqa: E402
from medclassify.cache import params_record  # noqa: E402
from medclassify.config import load_config  # noqa: E402
from medclassify.errors import InputError  # noqa: E402
from medclassify.io import read_sample  # noqa: E402
from medclassify.predict import files_read, folder_entries, load_model_info, predict_files  # noqa: E402
from medclassify.preprocessing import PREPROCESSING_VERSION, from_storage, preprocess_image, to_storage  # noqa: E402

CLASSES = ["benign", "malignant"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder with finetune/model.keras + model.json, and a folder of new images."""
    root = tmp_path_factory.mktemp("predict")
    config = load_config(overrides={"preprocess": {"size": [16, 16]}})
    stage = root / "run" / "finetune"
    stage.mkdir(parents=True)
    model = tiny_model((16, 16, 1), 2, seed=3)
    model.save(stage / "model.keras")
    (stage / "model.json").write_text(json.dumps({
        "classes": CLASSES, "params": params_record(config["preprocess"], config["io"]),  # as training records it
        "input_shape": [16, 16, 1], "library_version": __version__}))
    images = root / "new"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, size=(32, 24), dtype=np.uint8)).save(images / f"img{k}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root, stage / "model.keras", images, config


def _as_cached(path, config):
    """The image of ``path`` as the cache stores it and training reads it back."""
    image = preprocess_image(read_sample(path, None, config["io"]).pixels, config["preprocess"])
    return from_storage(to_storage(image, config["preprocess"]["dtype"]))


def _expected_probabilities(model_path, path, config):
    from medclassify.models import load_model

    return load_model(model_path).predict(_as_cached(path, config)[None], verbose=0)[0]


def test_predicts_a_folder_and_lists_unreadable_files(saved_run, tmp_path):
    root, model_path, images, config = saved_run
    with pytest.warns(UserWarning, match="1 of 6 inputs could not be predicted"):
        table = predict_files(model_path, [images], tmp_path / "predictions.csv")
    assert len(table) == 6
    broken = table[table["input"].str.endswith("broken.png")].iloc[0]
    assert broken["status"] == "error" and broken["error"] and pd.isna(broken["prob_benign"])
    ok = table[table["status"] == "ok"]
    assert len(ok) == 5
    assert np.allclose(ok[["prob_benign", "prob_malignant"]].sum(axis=1), 1, atol=1e-5)
    first = ok.iloc[0]
    expected = _expected_probabilities(model_path, first["input"], config)
    assert [first["prob_benign"], first["prob_malignant"]] == pytest.approx(expected.tolist(), abs=1e-6)
    on_disk = pd.read_csv(tmp_path / "predictions.csv")
    assert list(on_disk.columns) == ["input", "sample_id", "index", "status", "error", "warning", "predicted",
                                     "prob_benign", "prob_malignant"]


def test_uses_the_threshold_chosen_on_validation(saved_run, tmp_path):
    root, model_path, images, _ = saved_run
    files = sorted(images.glob("img*.png"))
    argmax = predict_files(model_path, files, tmp_path / "argmax.csv")
    evaluation = root / "run" / "evaluation"
    evaluation.mkdir(exist_ok=True)
    try:
        # A threshold of 0 calls every image malignant; arg-max would not.
        (evaluation / "metrics.json").write_text(json.dumps(
            {"positive_class": "malignant", "threshold": {"method": "fixed", "value": 0.0, "chosen_on": "val"}}))
        thresholded = predict_files(model_path, files, tmp_path / "threshold.csv")
    finally:
        (evaluation / "metrics.json").unlink()
    assert (thresholded["predicted"] == "malignant").all()
    assert (argmax["predicted"] == np.array(CLASSES)[argmax[["prob_benign", "prob_malignant"]].to_numpy().argmax(1)]).all()


def test_a_model_the_evaluation_did_not_evaluate_decides_by_arg_max_with_a_warning(saved_run, tmp_path):
    # The run's head model was given the fine-tuned model's threshold.
    root, model_path, images, _ = saved_run
    run = tmp_path / "run"
    shutil.copytree(model_path.parent, run / "finetune")
    shutil.copytree(model_path.parent, run / "head")
    tiny_model((16, 16, 1), 2, seed=4).save(run / "head" / "model.keras")  # another model, beside the evaluated one
    inputs = {"model": "results/x/run/finetune/model.keras"}
    (run / "evaluation").mkdir()
    (run / "evaluation" / "metrics.json").write_text(json.dumps(
        {"positive_class": "malignant", "threshold": {"method": "fixed", "value": 0.0, "chosen_on": "val"},
         "inputs": inputs}))
    files = sorted(images.glob("img*.png"))
    assert (predict_files(run / "finetune" / "model.keras", files, tmp_path / "own.csv")["predicted"] == "malignant").all()
    with pytest.warns(UserWarning, match="is the evaluation of another model"):
        head = predict_files(run / "head" / "model.keras", files, tmp_path / "head.csv")
    probabilities = head[["prob_benign", "prob_malignant"]].to_numpy()
    assert (head["predicted"] == np.array(CLASSES)[probabilities.argmax(1)]).all()


def _evaluated_run(folder, model_path, threshold):
    """A run folder holding a copy of ``model_path`` and an evaluation of it with ``threshold``."""
    from medclassify.model_info import weights_digest
    from medclassify.models import load_model

    shutil.copytree(model_path.parent, folder / "finetune")
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "metrics.json").write_text(json.dumps(
        {"positive_class": "malignant", "threshold": {"method": "fixed", "value": threshold, "chosen_on": "val"},
         "inputs": {"model": "results/x/run/finetune/model.keras",
                    "model_weights": weights_digest(load_model(model_path))}}))
    return folder / "finetune" / "model.keras"


def test_a_model_trained_again_after_its_evaluation_decides_by_arg_max_with_a_warning(saved_run, tmp_path):
    # Its folder and name are the evaluated model's; its weights are not, so the threshold is another model's.
    _, model_path, images, _ = saved_run
    evaluated = _evaluated_run(tmp_path / "run", model_path, 0.0)
    files = sorted(images.glob("img*.png"))
    assert (predict_files(evaluated, files, tmp_path / "own.csv")["predicted"] == "malignant").all()
    tiny_model((16, 16, 1), 2, seed=4).save(evaluated)
    with pytest.warns(UserWarning, match="its weights are not those .* evaluated"):
        retrained = predict_files(evaluated, files, tmp_path / "retrained.csv",
                                  record_json=tmp_path / "retrained.json")
    probabilities = retrained[["prob_benign", "prob_malignant"]].to_numpy()
    assert (retrained["predicted"] == np.array(CLASSES)[probabilities.argmax(1)]).all()
    assert json.loads((tmp_path / "retrained.json").read_text())["decision"]["method"] == "argmax"


def test_an_ensemble_member_trained_again_after_its_evaluation_is_refused(saved_run, tmp_path):
    _, model_path, images, _ = saved_run
    members = [_evaluated_run(tmp_path / f"fold_{k}", model_path, 0.5) for k in range(2)]
    files = sorted(images.glob("img*.png"))[:1]
    with pytest.warns(UserWarning, match="deciding by arg-max"):
        predict_files(members, files, tmp_path / "before.csv")
    tiny_model((16, 16, 1), 2, seed=4).save(members[1])
    with pytest.raises(InputError, match="members must be the models their runs evaluated") as error, \
            pytest.warns(UserWarning, match="deciding by arg-max"):
        predict_files(members, files, tmp_path / "after.csv")
    assert [str(members[1]) in problem for problem in error.value.problems] == [True]
    assert not (tmp_path / "after.csv").exists()


def test_the_weights_digest_survives_saving_and_loading_and_tells_models_apart(tmp_path):
    from medclassify.model_info import weights_digest
    from medclassify.models import load_model

    model = tiny_model((16, 16, 1), 2, seed=3)
    model.save(tmp_path / "a.keras")
    assert weights_digest(load_model(tmp_path / "a.keras")) == weights_digest(model)
    assert weights_digest(tiny_model((16, 16, 1), 2, seed=3)) == weights_digest(model)  # same seed, same weights
    assert weights_digest(tiny_model((16, 16, 1), 2, seed=4)) != weights_digest(model)


@pytest.mark.parametrize("damaged", ["finetune/model.json", "evaluation/metrics.json"])
@pytest.mark.parametrize("content", ['{"classes": ["benign", "malignant"], ', '["benign", "malignant"]'])
def test_a_damaged_model_json_or_metrics_json_is_an_input_error_naming_it(saved_run, tmp_path, damaged, content):
    # Both were read with a bare json.loads: a cut or hand-edited file gave a JSONDecodeError traceback.
    root, model_path, images, _ = saved_run
    path = root / "run" / damaged
    path.parent.mkdir(exist_ok=True)
    original = path.read_bytes() if path.exists() else None
    path.write_text(content)
    try:
        with pytest.raises(InputError, match=f"{path}: (cannot be read as JSON|not a JSON object)"):
            predict_files(model_path, [images / "img0.png"], tmp_path / "out.csv")
    finally:
        path.write_bytes(original) if original is not None else path.unlink()
    assert not (tmp_path / "out.csv").exists()


def test_applies_the_test_time_views_that_evaluation_used(saved_run, tmp_path):
    """The threshold was chosen on view-averaged probabilities, so predict must average the same views."""
    from medclassify.models import load_model
    from medclassify.inference import view_of

    root, model_path, images, config = saved_run
    views = ["identity", "horizontal_flip", {"affine": {"rotation_degrees": 7.0, "scale": 1.05,
                                                         "shift_x": 0.1, "shift_y": -0.05}}]
    evaluation = root / "run" / "evaluation"
    evaluation.mkdir(exist_ok=True)
    try:
        (evaluation / "metrics.json").write_text(json.dumps(
            {"positive_class": "malignant", "threshold": {"method": "youden", "value": 0.5},
             "tta": {"enabled": True, "views": views}}))
        table = predict_files(model_path, [images / "img0.png"], tmp_path / "tta.csv")
        (evaluation / "metrics.json").write_text(json.dumps(
            {"tta": {"views": ["identity", "sideways", {"affine": {"rotation_degrees": "7"}}]}}))
        with pytest.raises(InputError, match="unreadable test-time augmentation views") as error:
            predict_files(model_path, [images / "img0.png"], tmp_path / "bad.csv")
        assert len(error.value.problems) == 2
    finally:
        (evaluation / "metrics.json").unlink()
    image = _as_cached(images / "img0.png", config)[None].astype(np.float32)
    model = load_model(model_path)
    expected = np.mean([model.predict(view_of(image, view), verbose=0)[0] for view in views], axis=0)
    plain = model.predict(image, verbose=0)[0]
    assert not np.allclose(expected, plain, atol=1e-4)  # the views change the prediction of this model
    assert table.loc[0, ["prob_benign", "prob_malignant"]].to_numpy(float) == pytest.approx(expected, abs=1e-6)
    assert not (tmp_path / "bad.csv").exists()


def test_multi_page_tiff_is_predicted_from_its_first_page_with_a_warning(saved_run, tmp_path):
    """As validation warns (unread_tiff_pages): the other pages are not read, and the output says so."""
    import tifffile

    _, model_path, _, _ = saved_run
    pages = np.random.default_rng(4).integers(0, 255, (3, 32, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="minisblack")
    tifffile.imwrite(tmp_path / "first.tif", pages[0], photometric="minisblack")
    with pytest.warns(UserWarning, match=r"1 of 2 inputs were predicted with a warning .*pages\.tif: unread_tiff_pages"):
        table = predict_files(model_path, [tmp_path / "pages.tif", tmp_path / "first.tif"], tmp_path / "out.csv")
    several, single = table.iloc[0], table.iloc[1]
    assert several["status"] == "ok" and single["status"] == "ok"
    assert several["warning"].startswith("unread_tiff_pages: the TIFF holds 3 pages; only the first was read")
    assert single["warning"] == ""
    assert several["prob_benign"] == pytest.approx(single["prob_benign"], abs=1e-6)  # page 0 was predicted
    assert "warning" in pd.read_csv(tmp_path / "out.csv").columns


def test_manifest_input_keeps_labels_and_reports_missing_files(saved_run, tmp_path):
    root, model_path, images, _ = saved_run
    manifest = tmp_path / "new.csv"
    pd.DataFrame({"path": [str(images / "img0.png"), "does/not/exist.png"], "label": ["benign", "malignant"],
                  "patient": ["Jane Doe", "John Roe"], "modality": ["US", "US"]}).to_csv(manifest, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = predict_files(model_path, [manifest], tmp_path / "out.csv")
    assert list(table["status"]) == ["ok", "error"]
    assert "exist.png" in table.loc[1, "error"]
    assert list(table["label"]) == ["benign", "malignant"]
    assert "Jane Doe" not in (tmp_path / "out.csv").read_text()  # raw patient ids are not copied


def test_model_without_model_json_is_an_input_error(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(InputError, match="model.json"):
        predict_files(tmp_path / "model.keras", [tmp_path], tmp_path / "out.csv")


def _copy_of_model(model_path, folder, **info_changes):
    """A copy of the model in ``folder``/run/finetune, its model.json changed by ``info_changes``."""
    import shutil

    stage = folder / "run" / "finetune"
    stage.mkdir(parents=True)
    shutil.copy(model_path, stage / "model.keras")
    info = json.loads(model_path.with_name("model.json").read_text())
    for key, change in info_changes.items():
        info[key] = change(info[key])
    (stage / "model.json").write_text(json.dumps(info))
    return stage / "model.keras"


def test_model_trained_under_another_preprocessing_version_is_refused(saved_run, tmp_path):
    """Its images were preprocessed otherwise: fed this version's images, it would predict from wrong values."""
    _, model_path, images, _ = saved_run
    trained_under = PREPROCESSING_VERSION + 1
    model = _copy_of_model(model_path, tmp_path, params=lambda params: {**params, "preprocessing_version": trained_under},
                           library_version=lambda _: "9.9.9")
    with pytest.raises(InputError) as error:
        predict_files(model, [images], tmp_path / "out.csv")
    message = str(error.value)
    assert str(model) in message
    assert f"preprocessing version {trained_under}" in message and f"version {PREPROCESSING_VERSION}" in message
    assert "retrain" in message and "medclassify 9.9.9" in message
    assert not (tmp_path / "out.csv").exists()


def test_model_json_without_a_preprocessing_version_counts_as_version_1(saved_run, tmp_path, monkeypatch):
    """Only a hand-written model.json lacks it: training has recorded it since version 1, the first."""
    import medclassify.preprocessing

    _, model_path, _, _ = saved_run
    model = _copy_of_model(model_path, tmp_path, params=lambda params: {
        key: value for key, value in params.items() if key != "preprocessing_version"})
    monkeypatch.setattr(medclassify.preprocessing, "PREPROCESSING_VERSION", 1)
    assert load_model_info(model)["classes"] == CLASSES
    monkeypatch.setattr(medclassify.preprocessing, "PREPROCESSING_VERSION", 2)
    with pytest.raises(InputError, match="preprocessing version 1"):
        load_model_info(model)


def _fold_run(folder, model_path, seed, views, threshold):
    """``folder``/finetune/model.keras (a tiny model of ``seed``, model.json as ``model_path``'s) and the
    fold's evaluation/metrics.json with its test-time ``views`` and its own ``threshold``."""
    stage = folder / "finetune"
    stage.mkdir(parents=True)
    tiny_model((16, 16, 1), 2, seed=seed).save(stage / "model.keras")
    (stage / "model.json").write_text(model_path.with_name("model.json").read_text())
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "metrics.json").write_text(json.dumps(
        {"positive_class": "malignant", "threshold": {"method": "youden", "value": threshold, "chosen_on": "val"},
         "tta": {"enabled": True, "views": views}}))
    return stage / "model.keras"


def test_several_models_predict_their_mean_probability_decided_by_the_ensemble_threshold(saved_run, tmp_path):
    """A k-fold run's folds: averaged as aggregate_folds averages them, decided by its out-of-fold threshold."""
    from medclassify.models import load_model
    from medclassify.inference import view_of

    _, model_path, images, config = saved_run
    views = ["identity", "horizontal_flip"]
    # Each fold's own threshold would call every image one class; the ensemble's must decide instead.
    folds = [_fold_run(tmp_path / f"fold_{k}", model_path, seed, views, threshold)
             for k, (seed, threshold) in enumerate([(3, 0.0), (11, 1.0)])]
    files = sorted(images.glob("img*.png"))
    batch = np.stack([_as_cached(f, config) for f in files]).astype(np.float32)
    per_fold = [np.mean([load_model(m).predict(view_of(batch, v), verbose=0) for v in views], axis=0) for m in folds]
    assert not np.allclose(per_fold[0], per_fold[1], atol=1e-3)  # two different models
    expected = np.mean(per_fold, axis=0)
    threshold = float(np.median(expected[:, 1]))
    aggregate = tmp_path / "aggregate" / "metrics.json"
    aggregate.parent.mkdir()
    aggregate.write_text(json.dumps({"positive_class": "malignant", "threshold": {
        "method": "youden", "value": threshold, "chosen_on": "out_of_fold_val"}}))

    table = predict_files(folds, files, tmp_path / "ensemble.csv", ensemble_metrics=aggregate,
                          record_json=tmp_path / "ensemble.json")
    assert table[["prob_benign", "prob_malignant"]].to_numpy(float) == pytest.approx(expected, abs=1e-6)
    called = np.where(expected[:, 1] >= threshold, "malignant", "benign")
    assert list(table["predicted"]) == list(called) and len(set(called)) == 2
    record = json.loads((tmp_path / "ensemble.json").read_text())
    assert [model["path"] for model in record["models"]] == [str(m) for m in folds]
    assert [model["sha256"] for model in record["models"]] == [
        hashlib.sha256(Path(m).read_bytes()).hexdigest() for m in folds]
    assert record["ensemble"] == "mean probability of 2 models" and record["classes"] == CLASSES
    assert record["decision"] == {"method": "threshold (youden, chosen on out-of-fold val)", "threshold": threshold,
                                  "positive_class": "malignant", "source": str(aggregate), "views": views}
    assert record["rows"] == {"total": 5, "ok": 5, "error": 0, "with_warning": 0}
    assert record["inputs"] == [str(f) for f in files] and record["preprocess"]["size"] == [16, 16]

    with pytest.warns(UserWarning, match="ensemble of 2 models: deciding by arg-max"):
        argmax = predict_files(folds, files, tmp_path / "argmax.csv")
    assert list(argmax["predicted"]) == list(np.array(CLASSES)[expected.argmax(axis=1)])
    with pytest.raises(InputError, match="not found"):
        predict_files(folds, files, tmp_path / "missing.csv", ensemble_metrics=tmp_path / "none.json")


def test_command_line_predicts_with_several_models_and_the_ensemble_threshold(saved_run, tmp_path, capsys):
    from medclassify.cli import main

    _, model_path, images, _ = saved_run
    folds = [_fold_run(tmp_path / f"fold_{k}", model_path, seed, ["identity"], 0.5) for k, seed in enumerate([3, 11])]
    aggregate = tmp_path / "aggregate.json"
    aggregate.write_text(json.dumps({"positive_class": "malignant", "threshold": {"method": "fixed", "value": 0.0}}))
    files = [str(path) for path in sorted(images.glob("img*.png"))]
    status = main(["predict", "--model", *map(str, folds), "--ensemble-metrics", str(aggregate),
                   "--input", *files, "--out", str(tmp_path / "cli.csv"), "--record", str(tmp_path / "cli.json")])
    assert status == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "cli.json").read_text())["decision"]["source"] == str(aggregate)
    table = pd.read_csv(tmp_path / "cli.csv")
    expected = predict_files(folds, files, tmp_path / "library.csv", ensemble_metrics=aggregate)
    assert (table["predicted"] == "malignant").all()  # threshold 0: the ensemble's file decided
    assert np.array_equal(table[["prob_benign", "prob_malignant"]].to_numpy(), expected[["prob_benign", "prob_malignant"]].to_numpy())


def test_models_that_do_not_belong_together_are_refused_naming_each(saved_run, tmp_path):
    _, model_path, images, _ = saved_run
    first = _fold_run(tmp_path / "fold_0", model_path, 3, ["identity"], 0.5)
    other_views = _fold_run(tmp_path / "fold_1", model_path, 4, ["identity", "vertical_flip"], 0.5)
    with pytest.raises(InputError, match="different test-time views") as error:
        predict_files([first, other_views], [images], tmp_path / "out.csv")
    assert str(other_views) in error.value.problems[0]
    renamed = _copy_of_model(model_path, tmp_path, classes=lambda classes: classes[::-1])
    with pytest.raises(InputError, match="do not read or name images alike") as error:
        predict_files([first, renamed], [images], tmp_path / "out.csv")
    assert error.value.problems == [f"{renamed}: classes {CLASSES[::-1]!r} against {CLASSES!r} in {first}"]
    assert not (tmp_path / "out.csv").exists()


def test_dicom_and_every_nifti_slice_get_their_own_rows(saved_run, tmp_path):
    """The io options saved with the model choose the frames/slices, as in the validated manifest."""
    import shutil

    import nibabel.testing
    import pydicom.data

    from medclassify.io import sample_indices

    _, model_path, _, config = saved_run
    run = tmp_path / "run" / "finetune"
    run.mkdir(parents=True)
    shutil.copy(model_path, run / "model.keras")
    info = json.loads(model_path.with_name("model.json").read_text())
    info["params"]["io"] = dict(config["io"], nifti_slice="all")
    (run / "model.json").write_text(json.dumps(info))
    dicom = pydicom.data.get_testdata_file("CT_small.dcm")
    nifti = str(Path(nibabel.testing.data_path) / "anatomical.nii")
    table = predict_files(run / "model.keras", [dicom, nifti], tmp_path / "out.csv")
    slices = sample_indices(nifti, info["params"]["io"])
    assert len(table) == 1 + len(slices) and (table["status"] == "ok").all()
    assert table.loc[0, "sample_id"] == dicom
    assert list(table["sample_id"][1:]) == [f"{nifti}#{k}" for k in slices]
    assert list(table["index"][1:]) == slices


@pytest.mark.parametrize("text, expected", [
    # A trailing comma once made pandas take the first column as the index: path became 'benign'.
    ("path,label\nnew/img0.png,benign,\n", "row 1 has 3 fields, the header has 2"),
    ("path,label\nnew/img0.png,benign\nnew/img1.png,a,b,c\n", "row 2 has 4 fields, the header has 2"),
    ('path,label\n"new/img0.png,benign\n', "row 1 has 1 fields, the header has 2"),
    ('path,label\nnew/img0.png,"benign\nnew/img1.png,malignant\n', "the quote opened on line 2 is never closed"),
    ('path,label\nnew/img0.png,"benign\nand more"\nnew/img1.png,malignant\n', "its 'label' value holds the lines after its first"),
    ("path,label\nnew/img0.png,benign\n,malignant\n", "row 2: empty path"),
    # A stray quote in a free-text column swallowing a row (it vanished without a word).
    ('path,notes\nnew/img0.png,"first\nnew/img1.png,second"\nnew/img0.png,third\n', "remove the stray quote"),
    ("path,label\n", "has a header but no rows"),
    ("", "the manifest is empty"),
])
def test_malformed_manifest_is_an_input_error_naming_file_and_row(saved_run, tmp_path, text, expected):
    root, model_path, images, _ = saved_run
    manifest = root / f"{tmp_path.name}.csv"  # beside new/, so that the paths would resolve
    manifest.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as error:
            predict_files(model_path, [manifest], tmp_path / "out.csv")
    assert f"{manifest}: " in str(error.value) and expected in str(error.value)
    assert not (tmp_path / "out.csv").exists()


def test_files_read_are_the_existing_files_predict_reads(tmp_path):
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.png", "sub/a.png", ".hidden.png", "notes.txt"]:
        (folder / name).write_bytes(b"x")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\nnew/b.png\nnew/missing.png\n")

    # The whole folder but its hidden files, sorted; non-images too (they become error rows).
    assert files_read(folder) == [str(folder / name) for name in ["b.png", "notes.txt", "sub/a.png"]]
    assert files_read(manifest) == sorted([str(manifest), str(folder / "b.png")])


def test_files_read_leave_problems_to_predict(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("file\na.png\n")  # no 'path' column

    assert files_read(tmp_path / "empty") == []
    assert files_read(tmp_path / "bad.csv") == [str(tmp_path / "bad.csv")]
    assert files_read(tmp_path / "missing") == []


def test_a_folder_lists_linked_folders_broken_links_and_counts_what_it_leaves_out(tmp_path):
    # rglob left out files in linked folders and broken links without a row, and hidden files without a word.
    folder, outside = tmp_path / "in", tmp_path / "outside"
    (folder / "real").mkdir(parents=True)
    outside.mkdir()
    for path in (folder / "real" / "a.png", outside / "b.png", folder / ".hidden.png"):
        path.write_bytes(b"x")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "c.png").write_bytes(b"x")
    (folder / "linked").symlink_to(outside)
    (folder / "dangling.png").symlink_to(tmp_path / "unmounted" / "d.png")
    (folder / "real" / "loop").symlink_to(folder)  # a link back up the tree is not walked again

    entries, hidden = folder_entries(folder)

    assert [p.relative_to(folder).as_posix() for p in entries] == ["dangling.png", "linked/b.png", "real/a.png"]
    assert hidden == 2


@pytest.mark.filterwarnings("ignore:.*metrics.json not found")  # no evaluation beside the model here
@pytest.mark.parametrize("target", ["manifest", "image", "model", "model.json", "record"])
def test_predictions_never_overwrite_what_predict_reads(saved_run, tmp_path, target):
    # --out naming the manifest to predict, or the model, replaced it with the predictions table.
    from medclassify.errors import UsageError

    _, model_path, images, _ = saved_run
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{images / 'img0.png'}\n")
    out = {"manifest": manifest, "image": images / "img0.png", "model": model_path,
           "model.json": model_path.with_name("model.json"), "record": tmp_path / "p.json"}[target]
    kept = {path: path.read_bytes() for path in (manifest, images / "img0.png", model_path)}
    with pytest.raises(UsageError, match="refusing to write over an input|must be two files"):
        predict_files(model_path, [manifest], out, record_json=tmp_path / "p.json")
    assert all(path.read_bytes() == content for path, content in kept.items())


@pytest.mark.filterwarnings("ignore:.*metrics.json not found")  # no evaluation beside the model here
def test_blank_and_nan_images_are_predicted_with_the_warnings_validation_gives_them(saved_run, tmp_path):
    # Both came back "ok" with an empty warning and confident probabilities (helper-44).
    _, model_path, images, _ = saved_run
    Image.fromarray(np.full((20, 20), 7, dtype=np.uint8)).save(tmp_path / "blank.png")
    nan = np.full((20, 20), np.nan, dtype=np.float32)
    nan[:10] = np.arange(200, dtype=np.float32).reshape(10, 20)
    np.save(tmp_path / "half_nan.npy", nan)
    with pytest.warns(UserWarning, match="predicted with a warning"):
        table = predict_files(model_path, [tmp_path / "blank.png", tmp_path / "half_nan.npy", images / "img0.png"],
                              tmp_path / "p.csv")
    warning = dict(zip(table["input"].map(lambda p: Path(p).name), table["warning"].fillna("")))
    assert (table["status"] == "ok").all()
    assert warning["blank.png"].startswith("constant_image:")
    assert warning["half_nan.npy"].startswith("non_finite_pixels: 200 of 400 pixel values")
    assert warning["img0.png"] == ""


@pytest.mark.filterwarnings("ignore:.*metrics.json not found")  # no evaluation beside the model here
def test_a_manifest_row_naming_a_folder_says_so(saved_run, tmp_path):
    # It said "FileNotFoundError: no such file".
    _, model_path, images, _ = saved_run
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nsub\n")
    with pytest.warns(UserWarning, match="could not be predicted"):
        table = predict_files(model_path, [manifest], tmp_path / "p.csv")
    assert table["error"].iloc[0] == f"IsADirectoryError: {tmp_path / 'sub'} is a folder, not an image file"


@pytest.mark.filterwarnings("ignore:.*metrics.json not found")
def test_a_manifest_row_naming_a_fifo_or_a_link_loop_is_not_called_missing(saved_run, tmp_path):
    # Both existed, and were reported as "no such file" (helper-75).
    import os

    _, model_path, _, _ = saved_run
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nfifo.png\nloop_a\ngone.png\n")
    with pytest.warns(UserWarning, match="could not be predicted"):
        table = predict_files(model_path, [manifest], tmp_path / "p.csv")
    assert list(table["error"]) == [
        f"OSError: not a regular file (a special file or a broken link): {tmp_path / 'fifo.png'}",
        f"OSError: not a regular file (a special file or a broken link): {tmp_path / 'loop_a'}",
        f"FileNotFoundError: no such file: {tmp_path / 'gone.png'}"]


def test_the_note_on_io_options_follows_a_reader_s_advice_only():
    # Any error text with "io." in it (radio.png, portfolio.dcm) got the note (helper-45).
    from medclassify.io import ReadError
    from medclassify.predict import _reason

    assert "model.json" not in _reason(FileNotFoundError("no such file: /data/radio.png"))
    advice = _reason(ReadError("needs_slice_choice", "4D NIfTI of shape (8, 8, 4, 3): set io.nifti_volume to ..."))
    assert advice.endswith("(predict reads the io options from the model's model.json, as the model was trained)")


def test_the_record_names_the_evaluation_it_read_relative_to_the_working_folder(saved_run, tmp_path, monkeypatch):
    # One model's source was an absolute, resolved path; an ensemble's as given (helper-44).
    from medclassify.predict import load_decision

    root, model_path, _, _ = saved_run
    run = tmp_path / "run"
    shutil.copytree(model_path.parent, run / "finetune")
    (run / "evaluation").mkdir()
    (run / "evaluation" / "metrics.json").write_text(json.dumps(
        {"positive_class": "malignant", "threshold": {"method": "fixed", "value": 0.3, "chosen_on": "val"}}))
    monkeypatch.chdir(tmp_path)
    assert load_decision(run / "finetune" / "model.keras", CLASSES)["source"] == "run/evaluation/metrics.json"


def test_a_folder_reached_through_two_links_is_listed_under_the_first_in_name_order(tmp_path):
    folder, outside = tmp_path / "in", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "b.png").write_bytes(b"x")
    for name in ("z_link", "a_link", "m_link"):
        (folder / name).symlink_to(outside)
    entries, _ = folder_entries(folder)
    assert [p.relative_to(folder).as_posix() for p in entries] == ["a_link/b.png"]


@pytest.mark.filterwarnings("ignore:.*metrics.json not found. deciding by arg-max")
def test_an_image_the_training_would_have_refused_for_its_intensity_gets_an_error_row(saved_run, tmp_path):
    # Under intensity "none" a NIfTI in scanner units was clipped to 0 and 1 and predicted anyway.
    import nibabel as nib

    _, model_path, images, _ = saved_run
    model = _copy_of_model(model_path, tmp_path, params=lambda params: {
        **params, "preprocess": {**params["preprocess"], "intensity": "none"}})
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.uniform(0, 800, (20, 20, 1)).astype(np.float32), np.eye(4)), tmp_path / "units.nii")
    with pytest.warns(UserWarning, match="1 of 2 inputs could not be predicted"):
        table = predict_files(model, [tmp_path / "units.nii", images / "img0.png"], tmp_path / "p.csv")
    assert list(table["status"]) == ["error", "ok"]
    assert table["error"].iloc[0].startswith("outside_intensity_range: preprocess.intensity 'none'")

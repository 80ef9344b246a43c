"""run_evaluation end to end on a tiny dataset and model; Grad-CAM; compare_runs."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

pytest.importorskip("tensorflow")

from evaluation_fixtures import (synthetic_dataset, tiny_model, trained_model, write_cache,  # noqa: E402
                                 write_splits)
from medclassify.config import load_config, run_config  # noqa: E402
from medclassify.errors import InputError  # noqa: E402
from medclassify.evaluation import compare_runs, run_evaluation  # noqa: E402
from medclassify.workflow_paths import PLOT_NAMES  # noqa: E402
from medclassify.models import load_model  # noqa: E402
from medclassify.evaluation.threshold import choose_threshold  # noqa: E402


def _options(**evaluate):
    evaluate.setdefault("bootstrap", 200)
    return {"evaluate": run_config(load_config(overrides={"evaluate": evaluate}), "baseline")["evaluate"]}


def _dataset(folder, classes=("benign", "malignant"), nested=False, folds=None, train=True):
    folder.mkdir(parents=True, exist_ok=True)
    manifest, images, classes = synthetic_dataset(classes=classes)
    manifest.to_csv(folder / "manifest.validated.csv", index=False)
    write_cache(folder / "cache.h5", manifest, images, classes)
    write_splits(folder / "splits.csv", manifest, folds=folds)
    labels = manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    if train:
        model = trained_model(images, labels, len(classes), nested=nested, epochs=12)
    else:
        model = tiny_model(images.shape[1:], len(classes), nested=nested)
    model.save(folder / "model.keras")
    head = folder / "head_history.csv"
    head.write_text("")  # a skipped head stage leaves an empty history
    finetune = folder / "finetune_history.csv"
    finetune.write_text("epoch,loss,val_loss,val_auc,lr\n0,0.9,0.8,0.6,0.001\n1,0.6,0.7,0.7,0.001\n")
    return folder, {"head": head, "finetune": finetune}


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    folder, histories = _dataset(tmp_path_factory.mktemp("binary"))
    out = folder / "evaluation"
    metrics = run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "splits.csv",
                             folder / "manifest.validated.csv", out,
                             options=_options(subgroups=["site"], min_subgroup_size=10),
                             histories=histories)
    return folder, out, metrics


def test_writes_metrics_predictions_and_every_plot(binary_run):
    _, out, metrics = binary_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["accuracy"] == metrics["accuracy"]
    for key in ("classes", "n", "accuracy", "balanced_accuracy", "auc", "confusion_matrix", "per_class",
                "macro_avg", "weighted_avg", "average_precision", "mcc", "cohen_kappa", "brier", "ece",
                "threshold", "val", "ci", "subgroups", "calibration"):
        assert key in on_disk, key
    for name in PLOT_NAMES:
        for fmt in ("png", "pdf"):
            assert (out / f"{name}.{fmt}").stat().st_size > 1000, f"{name}.{fmt}"
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["sample_id", "split", "patient", "label", "predicted",
                                         "prob_benign", "prob_malignant"]
    assert set(predictions["split"]) == {"val", "test"}
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_records_the_digest_of_the_weights_it_evaluated(binary_run):
    # predict compares it with the model it loads, to notice one trained again in the run's folder.
    from medclassify.model_info import weights_digest
    from medclassify.models import load_model

    folder, _, metrics = binary_run
    assert metrics["inputs"]["model_weights"] == weights_digest(load_model(folder / "model.keras"))


def test_metrics_agree_with_scikit_learn_on_the_written_predictions(binary_run):
    _, out, metrics = binary_run
    test = pd.read_csv(out / "predictions.csv").query("split == 'test'")
    y_true = (test["label"] == "malignant").to_numpy()
    y_pred = (test["predicted"] == "malignant").to_numpy()
    assert metrics["n"] == len(test)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics["auc"] == pytest.approx(skm.roc_auc_score(y_true, test["prob_malignant"]))
    assert metrics["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert metrics["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    # The threshold applied to test is the one that the predictions give.
    assert (y_pred == (test["prob_malignant"] >= metrics["threshold"]["value"])).all()


def test_threshold_is_chosen_on_validation_predictions_only(binary_run):
    _, out, metrics = binary_run
    val = pd.read_csv(out / "predictions.csv").query("split == 'val'")
    expected, _ = choose_threshold(val["label"] == "malignant", val["prob_malignant"], "youden")
    assert metrics["threshold"] == {"method": "youden", "value": pytest.approx(expected), "chosen_on": "val"}
    assert metrics["val"]["n"] == len(val)


def test_confidence_intervals_resample_patients_and_bracket_the_estimates(binary_run):
    _, _, metrics = binary_run
    assert metrics["ci_info"]["unit"] == "patient"
    assert metrics["ci_info"]["resamples"] == 200
    for name in ("auc", "accuracy", "sensitivity", "specificity"):
        low, high = metrics["ci"][name]
        assert low <= metrics[name] <= high, name


def test_subgroups_cover_modality_and_configured_columns(binary_run):
    _, _, metrics = binary_run
    assert set(metrics["subgroups"]) == {"modality", "site"}
    modality = metrics["subgroups"]["modality"]
    assert sum(group["n"] for group in modality.values()) == metrics["n"]
    assert all(group["reliable"] == (group["n"] >= 10 and group["auc"] is not None
                                     and min(group["class_patients"].values()) >= 2) for group in modality.values())


def test_outputs_carry_no_raw_patient_ids(binary_run):
    folder, out, _ = binary_run
    text = (out / "metrics.json").read_text() + (out / "predictions.csv").read_text()
    assert "patient-" not in text  # raw ids of the fixture are "patient-<k>"; only hashes appear


def test_missing_subgroup_column_is_an_input_error(binary_run, tmp_path):
    folder, _, _ = binary_run
    with pytest.raises(InputError) as error:
        run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "splits.csv",
                       folder / "manifest.validated.csv", tmp_path,
                       options=_options(subgroups=["scanner", "sex"], bootstrap=0), histories={})
    assert "manifest.validated.csv" in str(error.value)
    assert any("scanner" in p for p in error.value.problems) and any("sex" in p for p in error.value.problems)


def test_a_subgroup_naming_each_image_is_refused_by_evaluate(binary_run, tmp_path):
    # By hand, subgroups [path] (or a copy of it) listed every test image's path in metrics.json (helper-73).
    import pandas as pd

    folder, _, _ = binary_run
    manifest = pd.read_csv(folder / "manifest.validated.csv", dtype=str, keep_default_na=False)
    # A subgroup added after the split ran reaches only evaluate, which checks the values too (helper-80).
    exams = [f"E{k}" for k in range(len(manifest))]
    manifest.assign(image_file=manifest["path"], exam=exams).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputError) as error:
        run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "splits.csv", tmp_path / "m.csv",
                       tmp_path / "out", options=_options(subgroups=["site", "path", "image_file", "exam"],
                                                          bootstrap=0), histories={})
    assert error.value.problems == ["evaluate.subgroups 'path' names each image or patient",
                                    "evaluate.subgroups 'image_file' repeats each row's image path",
                                    "evaluate.subgroups 'exam' holds a different value in every row"]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_tta_and_fixed_threshold_are_recorded(binary_run, tmp_path):
    folder, _, _ = binary_run
    metrics = run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "splits.csv",
                             folder / "manifest.validated.csv", tmp_path,
                             options=_options(tta=True, threshold="fixed", fixed_threshold=0.3, bootstrap=0,
                                              gradcam_per_class=0, misclassified=0),
                             histories={})
    assert metrics["tta"] == {"enabled": True, "views": ["identity", "horizontal_flip", "vertical_flip"]}
    assert metrics["threshold"]["value"] == 0.3
    assert metrics["ci"]["auc"] == [None, None]
    assert (tmp_path / "gradcam.png").exists() and (tmp_path / "misclassified.pdf").exists()


def test_multiclass_nested_backbone_uses_argmax_and_explains_inner_conv(tmp_path):
    # Untrained: these checks concern structure (arg-max, macro AUC, nested layer, folds), not skill.
    folder, histories = _dataset(tmp_path / "multi", classes=("a", "b", "c"), nested=True, train=False)
    metrics = run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "splits.csv",
                             folder / "manifest.validated.csv", folder / "evaluation",
                             options=_options(bootstrap=50), histories=histories)
    assert metrics["threshold"]["method"] == "argmax"
    assert metrics["auc_method"] == "macro_ovr"
    assert metrics["gradcam"]["layer"] == "backbone/conv_b"
    test = pd.read_csv(folder / "evaluation" / "predictions.csv").query("split == 'test'")
    probs = test[["prob_a", "prob_b", "prob_c"]].to_numpy()
    assert (np.array(["a", "b", "c"])[probs.argmax(1)] == test["predicted"]).all()

    # k-fold: the same data split into folds, evaluated for fold 1
    write_splits(folder / "kfold.csv", pd.read_csv(folder / "manifest.validated.csv", dtype=str), folds=3)
    fold = run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "kfold.csv",
                          folder / "manifest.validated.csv", folder / "fold1",
                          options=_options(bootstrap=0, gradcam_per_class=0), histories={}, fold=1)
    splits = pd.read_csv(folder / "kfold.csv")
    assert fold["val"]["n"] == int((splits["fold"] == 1).sum())
    assert fold["n"] == int((splits["split"] == "test").sum())
    assert fold["fold"] == 1


def test_gradcam_highlights_the_class_evidence(binary_run):
    import keras

    from medclassify.evaluation.gradcam import gradcam_heatmaps, upsample
    from medclassify.models import load_model

    folder, _, _ = binary_run
    model = load_model(folder / "model.keras")
    manifest, images, _ = synthetic_dataset()
    malignant = images[(manifest["label"] == "malignant").to_numpy()][:4]
    heat = upsample(gradcam_heatmaps(model, malignant, [1] * 4), malignant.shape[1:3])
    square = np.zeros(malignant.shape[1:3], dtype=bool)
    square[4:8, 4:12] = True  # where the fixture draws the malignant class's bright square
    assert heat.shape == (4, 16, 16) and heat.min() >= 0 and heat.max() <= 1
    assert heat[:, square].mean() > heat[:, ~square].mean()
    assert isinstance(model, keras.Model)


def test_compare_runs_writes_table_markdown_and_plot(binary_run, tmp_path):
    _, out, metrics = binary_run
    second = tmp_path / "results" / "demo" / "wide" / "evaluation" / "metrics.json"
    second.parent.mkdir(parents=True)
    other = dict(metrics, auc=0.7, ci=dict(metrics["ci"], auc=[0.6, 0.8]))
    second.write_text(json.dumps(other))
    table = compare_runs([out / "metrics.json", second], tmp_path / "runs.csv", tmp_path / "runs.md",
                         tmp_path / "runs_auc.png")
    assert list(table["auc"]) == [pytest.approx(metrics["auc"]), 0.7]
    assert table.loc[1, "run"] == "wide" and table.loc[1, "auc_low"] == 0.6
    markdown = (tmp_path / "runs.md").read_text()
    assert "| wide |" in markdown and "0.700 (0.600–0.800)" in markdown
    assert (tmp_path / "runs_auc.png").stat().st_size > 1000
    assert pd.read_csv(tmp_path / "runs.csv").shape[0] == 2


def test_compare_prints_a_tiny_threshold_to_significant_digits(binary_run, tmp_path):
    # A k-fold threshold of 1.15e-07 printed "youden 0.000", as if every image were called positive (helper-72).
    _, out, metrics = binary_run
    path = tmp_path / "results" / "demo" / "tiny" / "evaluation" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(metrics, threshold=dict(metrics["threshold"], value=1.15e-07))))
    compare_runs([path], tmp_path / "runs.csv", tmp_path / "runs.md", tmp_path / "runs.png")
    assert f"| {metrics['threshold']['method']} 1.15e-07 |" in (tmp_path / "runs.md").read_text()


def test_compare_names_the_confidence_level_and_marks_intervals_of_a_single_patient_class(binary_run, tmp_path):
    # A 90% run sat beside 95% ones under one "AUC (CI)" header; a one-patient class gave 0.548 (0.548–0.548).
    _, out, metrics = binary_run
    paths = []
    for run, confidence, reliable in (("a", 0.95, True), ("b", 0.95, False), ("c", 0.9, True)):
        path = tmp_path / "results" / "demo" / run / "evaluation" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(dict(metrics, ci_info=dict(metrics["ci_info"], confidence=confidence,
                                                              reliable=reliable))))
        paths.append(path)
    compare_runs(paths[:2], tmp_path / "same.csv", tmp_path / "same.md", tmp_path / "same.png")
    same = (tmp_path / "same.md").read_text()
    assert "| AUC (95% CI) |" in same and "| b* |" in same and "too narrow" in same
    compare_runs(paths, tmp_path / "mixed.csv", tmp_path / "mixed.md", tmp_path / "mixed.png")
    mixed = (tmp_path / "mixed.md").read_text()
    assert "| AUC (CI) |" in mixed and "(90%: " in mixed and "(95%: " in mixed and "different confidence levels" in mixed
    assert list(pd.read_csv(tmp_path / "mixed.csv")["ci_level"]) == [0.95, 0.95, 0.9]


def test_a_resample_lacking_a_class_leaves_the_macro_sensitivity_undefined():
    # Classes 0 and 1 from ten patients each, always right; class 2 from one patient, always wrong:
    # every resample holding all three classes gives 2/3, yet the interval reached 1.0.
    from medclassify.evaluation.run import confidence_intervals

    y_true = np.repeat([0, 1, 2], [20, 20, 2])
    patients = np.r_[np.repeat(np.arange(10), 2), np.repeat(np.arange(10, 20), 2), [20, 20]]
    y_pred = np.where(y_true == 2, 0, y_true)
    prob = np.eye(3)[y_pred].astype(float)
    ci, info = confidence_intervals(y_true, prob, y_pred, patients, 3, None, _options(bootstrap=300)["evaluate"])
    assert ci["sensitivity"] == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert info["class_patients"] == [10, 10, 1] and info["reliable"] is False


def test_a_class_absent_from_the_test_split_leaves_the_macro_interval_over_the_others_and_is_named():
    # The point estimate averages the classes present; every resample lacked class 2, so its interval
    # was always null, and the warning spoke of "a single patient" (helper-54, helper-57).
    from medclassify.evaluation.run import confidence_intervals, unreliable_intervals_note

    rng = np.random.default_rng(0)
    y_true = np.repeat([0, 1], 40)
    patients = np.repeat(np.arange(40), 2)
    y_pred = np.where(rng.random(80) < 0.8, y_true, 2)
    prob = np.eye(3)[y_pred] * 0.7 + 0.1
    ci, info = confidence_intervals(y_true, prob, y_pred, patients, 3, None, _options(bootstrap=200)["evaluate"])
    assert info["n_valid"]["sensitivity"] == 200 and ci["sensitivity"][0] < 0.8 < ci["sensitivity"][1]
    assert info["class_patients"] == [20, 20, 0] and info["reliable"] is False
    assert unreliable_intervals_note(info["class_patients"], ["a", "b", "c"]) == (
        "class(es) c are absent from the test split: the AUC and its interval are undefined, the macro "
        "sensitivity averages the other classes, and the macro specificity counts theirs too (how rarely they were "
        "wrongly predicted) (patients per class [20, 20, 0]; ci_info.reliable: false)")
    # As the note says: the macro specificity is the mean over all three classes, c's included (helper-69).
    from medclassify.evaluation.metrics import classification_metrics

    metrics = classification_metrics(y_true, prob, y_pred, ["a", "b", "c"])
    per_class = [metrics["per_class"][name]["specificity"] for name in "abc"]
    assert metrics["macro_avg"]["specificity"] == pytest.approx(np.mean(per_class)) and per_class[2] < 1
    assert unreliable_intervals_note([1, 5], ["a", "b"]).startswith("class(es) a come from a single patient")


def test_gradcam_reaches_into_the_workflows_wrapped_backbone(tmp_path):
    """The training stage wraps its backbone in a keras Wrapper layer (BackboneRunner)."""
    heads = pytest.importorskip("medclassify.models.heads")
    import keras

    from medclassify.evaluation.gradcam import find_last_conv_layer, gradcam_heatmaps
    from medclassify.models import load_model

    # Seeded: the weights drawn from whatever state earlier tests left could give an all-zero map.
    keras.utils.set_random_seed(0)
    model = heads.build_classifier((16, 16, 1), 2, backbone="resnet18", class_counts=[5, 5], resnet_width=8)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    # The new head starts with zero weights (no gradient); give it some so that maps are non-trivial.
    dense = [layer for layer in loaded.layers if type(layer).__name__ == "Dense"][-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([np.random.default_rng(0).normal(size=kernel.shape).astype("float32"), bias])
    chain = find_last_conv_layer(loaded)
    assert len(chain) == 3 and chain[1].layer is heads.backbone_of(loaded)
    images = np.random.default_rng(1).random((2, 16, 16, 1), dtype=np.float32)
    heat = gradcam_heatmaps(loaded, images, [0, 1])
    assert heat.shape[0] == 2 and np.isfinite(heat).all() and heat.max() == pytest.approx(1.0)


def test_first_class_as_positive_class(binary_run, tmp_path):
    from medclassify.evaluation.calibration import expected_calibration_error

    folder, _, _ = binary_run
    metrics = run_evaluation(folder / "model.keras", folder / "cache.h5", folder / "splits.csv",
                             folder / "manifest.validated.csv", tmp_path,
                             options=_options(positive_class="benign", bootstrap=0, gradcam_per_class=0,
                                              misclassified=0, calibration_bins=5),
                             histories={})
    test = pd.read_csv(tmp_path / "predictions.csv").query("split == 'test'")
    is_benign = (test["label"] == "benign").to_numpy()
    assert metrics["positive_class"] == "benign"
    assert metrics["auc"] == pytest.approx(skm.roc_auc_score(is_benign, test["prob_benign"]))
    assert metrics["sensitivity"] == pytest.approx(np.mean(test["predicted"][is_benign] == "benign"))
    assert metrics["ece"] == pytest.approx(expected_calibration_error(is_benign, test["prob_benign"], 5))
    assert ((test["prob_benign"] >= metrics["threshold"]["value"]) == (test["predicted"] == "benign")).all()
    site = metrics["subgroups"]["modality"]
    for value, group in site.items():
        rows = test[pd.read_csv(folder / "manifest.validated.csv").set_index("sample_id")
                    .loc[test["sample_id"], "modality"].to_numpy() == value]
        positives = rows["label"] == "benign"
        if positives.any():
            assert group["sensitivity"] == pytest.approx(np.mean(rows["predicted"][positives] == "benign"))


def test_tta_uses_only_the_flips_that_training_allowed(tmp_path):
    from medclassify.evaluation.run import tta_flips
    from medclassify.model_info import model_json_beside
    from medclassify.inference import view_of

    model_path = tmp_path / "model.keras"
    assert tta_flips(model_json_beside(model_path)) == ["horizontal_flip", "vertical_flip"]  # no model.json: both
    (tmp_path / "model.json").write_text(json.dumps(
        {"train_options": {"augment": {"horizontal_flip": True, "vertical_flip": False}}}))
    assert tta_flips(model_json_beside(model_path)) == ["horizontal_flip"]
    images = np.arange(8, dtype=np.float32).reshape(1, 2, 4, 1)
    assert np.array_equal(view_of(images, "horizontal_flip")[0, :, :, 0], images[0, :, ::-1, 0])
    assert np.array_equal(view_of(images, "vertical_flip")[0, :, :, 0], images[0, ::-1, :, 0])


def test_affine_views_are_drawn_from_the_training_ranges_and_nest():
    from medclassify.inference import affine_views

    augment = {"rotation_degrees": 10, "zoom": 0.1, "translate": 0.05}
    views = affine_views(augment, 16)
    assert views == affine_views(augment, 16) and views[:4] == affine_views(augment, 4)
    params = pd.DataFrame([view["affine"] for view in views])
    assert params["rotation_degrees"].abs().max() <= 10 and params["rotation_degrees"].abs().max() > 5
    assert params["scale"].between(0.9, 1.1).all() and params[["shift_x", "shift_y"]].abs().max().max() <= 0.05
    assert len({tuple(view["affine"].values()) for view in views}) == 16
    assert affine_views({"rotation_degrees": 0, "zoom": 0, "translate": 0, "horizontal_flip": True}, 8) == []
    assert affine_views(augment, 0) == []
    # Ranges set but no image warped (warp_probability 0): a view would be unseen (helper-60).
    assert affine_views({**augment, "warp_probability": 0.0}, 8) == []
    assert len(affine_views({**augment, "warp_probability": 0.3}, 8)) == 8


def test_tta_views_are_recorded_and_change_the_probabilities(binary_run, tmp_path):
    folder, out, _ = binary_run
    (tmp_path / "model.keras").symlink_to(folder / "model.keras")
    (tmp_path / "model.json").write_text(json.dumps(
        {"train_options": {"augment": {"rotation_degrees": 10, "zoom": 0.1, "translate": 0.1}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both kinds of views are available: no note
        metrics = run_evaluation(tmp_path / "model.keras", folder / "cache.h5", folder / "splits.csv",
                                 folder / "manifest.validated.csv", tmp_path / "evaluation",
                                 options=_options(tta_views=3, bootstrap=0, gradcam_per_class=0, misclassified=0),
                                 histories={})
    views = metrics["tta"]["views"]
    assert metrics["tta"]["enabled"] and views[0] == "identity" and len(views) == 4
    assert all(set(view) == {"affine"} for view in views[1:])
    plain = pd.read_csv(out / "predictions.csv")["prob_malignant"]
    assert not np.allclose(pd.read_csv(tmp_path / "evaluation" / "predictions.csv")["prob_malignant"], plain, atol=1e-4)
    with pytest.warns(UserWarning, match="training augmented no rotation, zoom or shift"):
        (tmp_path / "model.json").write_text(json.dumps({"train_options": {"augment": {"translate": 0}}}))
        again = run_evaluation(tmp_path / "model.keras", folder / "cache.h5", folder / "splits.csv",
                               folder / "manifest.validated.csv", tmp_path / "again",
                               options=_options(tta_views=3, bootstrap=0, gradcam_per_class=0, misclassified=0),
                               histories={})
    assert again["tta"]["views"] == ["identity"] and not again["tta"]["enabled"]
    assert np.allclose(pd.read_csv(tmp_path / "again" / "predictions.csv")["prob_malignant"], plain, atol=1e-6)


def test_single_class_val_and_test_give_nulls_and_a_recorded_fallback(tmp_path):
    manifest, images, classes = synthetic_dataset()
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    write_cache(tmp_path / "cache.h5", manifest, images, classes)
    write_splits(tmp_path / "splits.csv", manifest)
    splits = pd.read_csv(tmp_path / "splits.csv")
    malignant = manifest.set_index("sample_id").loc[splits["sample_id"], "label"].to_numpy() == "malignant"
    splits.loc[malignant & splits["split"].isin(["val", "test"]).to_numpy(), "split"] = "train"
    splits.to_csv(tmp_path / "splits.csv", index=False)
    tiny_model((16, 16, 1), 2).save(tmp_path / "model.keras")
    with pytest.warns(UserWarning, match=r"class malignant is absent from the test split: .* \(patients per class \[\d+, 0\]; "), \
            pytest.warns(UserWarning, match="single class"):
        metrics = run_evaluation(tmp_path / "model.keras", tmp_path / "cache.h5", tmp_path / "splits.csv",
                                 tmp_path / "manifest.csv", tmp_path / "evaluation",
                                 options=_options(bootstrap=50, gradcam_per_class=1), histories={})
    assert metrics["auc"] is None and metrics["sensitivity"] is None and metrics["ci"]["auc"] == [None, None]
    assert metrics["ci_info"]["n_valid"]["auc"] == 0
    assert metrics["threshold"]["method"] == "fixed" and metrics["threshold"]["configured"] == "youden"
    assert "NaN" not in (tmp_path / "evaluation" / "metrics.json").read_text()
    assert (tmp_path / "evaluation" / "roc.png").exists()


def test_cache_built_with_other_preprocessing_than_the_model_is_refused(binary_run, tmp_path):
    import shutil

    folder, _, _ = binary_run
    shutil.copy(folder / "model.keras", tmp_path / "model.keras")
    (tmp_path / "model.json").write_text(json.dumps({"params_hash": "not-this-cache"}))
    with pytest.raises(InputError, match="other preprocessing parameters"):
        run_evaluation(tmp_path / "model.keras", folder / "cache.h5", folder / "splits.csv",
                       folder / "manifest.validated.csv", tmp_path / "evaluation", options=_options(), histories={})


def test_a_model_giving_nan_probabilities_is_an_input_error_naming_it(binary_run, tmp_path):
    import keras

    folder, _, _ = binary_run
    model = keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False)
    dense = model.layers[-1]
    dense.bias.assign(np.full(dense.bias.shape, np.nan, dtype="float32"))  # as after a diverged fp16 run
    model.save(tmp_path / "model.keras")
    with pytest.raises(InputError, match="NaN or infinite probabilities") as error:
        run_evaluation(tmp_path / "model.keras", folder / "cache.h5", folder / "splits.csv",
                       folder / "manifest.validated.csv", tmp_path / "evaluation", options=_options(), histories={})
    assert str(tmp_path / "model.keras") in str(error.value)
    assert any(p.endswith("val images") for p in error.value.problems)
    assert any(p.endswith("test images") for p in error.value.problems)
    assert not (tmp_path / "evaluation" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_a_damaged_model_file_is_an_input_error_naming_it(binary_run, tmp_path, damage):
    folder, _, _ = binary_run
    model = tmp_path / "model.keras"
    if damage != "missing":
        model.write_bytes((folder / "model.keras").read_bytes()[:3000] if damage == "truncated" else b"")
    with pytest.raises(InputError, match="not found" if damage == "missing" else "not a readable Keras model") as error:
        load_model(model)
    assert str(model) in str(error.value)


@pytest.mark.parametrize("content, problem", [
    ("", "No columns to parse"),
    ("sample_id\na\n", "no 'split' column"),
    ("sample_id,split\na,training\n", "line 2: split 'training'"),
    ("sample_id,split,fold\na,trainval,one\nb,test,-1\n", "line 2: fold 'one'"),
])
def test_a_damaged_splits_file_is_an_input_error_naming_it(binary_run, tmp_path, content, problem):
    folder, _, _ = binary_run
    splits = tmp_path / "splits.csv"
    splits.write_text(content)
    with pytest.raises(InputError) as error:
        run_evaluation(folder / "model.keras", folder / "cache.h5", splits, folder / "manifest.validated.csv",
                       tmp_path / "evaluation", options=_options(), histories={})
    assert str(splits) in str(error.value) and any(problem in p for p in error.value.problems), error.value.problems


def test_fold_minus_one_is_refused_not_evaluated_on_the_test_rows_as_validation(binary_run, tmp_path):
    folder, _, _ = binary_run
    splits = write_splits(tmp_path / "splits.csv", pd.read_csv(folder / "manifest.validated.csv"), folds=2)
    with pytest.raises(InputError, match="fold -1 is not among this split's folds") as error:
        run_evaluation(folder / "model.keras", folder / "cache.h5", splits, folder / "manifest.validated.csv",
                       tmp_path / "evaluation", options=_options(bootstrap=0), histories={}, fold=-1)
    assert str(splits) in str(error.value)

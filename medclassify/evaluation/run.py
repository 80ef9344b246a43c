"""The evaluate stage: predictions on val and test, threshold from val, metrics and plots on test."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, atomic_write_json
from ..errors import InputError
from ..inference import (FLIPS, IDENTITY, affine_views, cache_reader, check_finite_probabilities,
                         predict_probabilities)
from ..model_info import model_json_beside, weights_digest
from ..privacy import PER_SAMPLE_COLUMNS, names_each_sample
from ..splits import read_splits_file, split_sample_ids
from . import plots
from .bootstrap import bootstrap_ci, bootstrap_indices
from .calibration import reliability_curve
from .metrics import (calibration_target, classification_metrics, confusion_counts, fast_roc_auc,
                      rates_from_confusion, roc_points)
from .subgroups import MIN_PATIENTS_PER_CLASS, patients_per_class, subgroup_metrics
from .threshold import choose_threshold, decide

ROC_GRID = np.linspace(0.0, 1.0, 101)


def read_history(path):
    """A stage's history.csv as a DataFrame; empty for a missing path or empty file (skipped stage)."""
    if path is None or not Path(path).exists() or Path(path).stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def tta_flips(model_info):
    """Flips averaged over with test-time augmentation: those that training augmentation allowed.

    They are read from the ``augment`` options recorded in ``model.json`` (under
    ``train_options``, as the training stage writes it); without that record both flips are used.
    """
    augment = trained_augment(model_info)
    if augment is None:
        return list(FLIPS)
    return [flip for flip in FLIPS if augment.get(flip)]


def trained_augment(model_info):
    """The ``train.augment`` options recorded in ``model.json`` (under ``train_options``), or None."""
    train_options = model_info.get("train_options") or {}
    augment = train_options.get("augment") if isinstance(train_options, dict) else None
    return augment if isinstance(augment, dict) else None


def tta_views(model_info, evaluate):
    """The views evaluation averages the probabilities over, and a note when one was asked for in vain.

    Always the image itself; with ``evaluate.tta`` the flips that training allowed; with
    ``evaluate.tta_views`` N, N affine views drawn (seed 0) from training's rotation, zoom and
    shift ranges (:func:`medclassify.inference.affine_views`).
    """
    flips = tta_flips(model_info) if evaluate.get("tta") else []
    n_affine = int(evaluate.get("tta_views") or 0)
    affine = affine_views(trained_augment(model_info) or {}, n_affine)
    notes = []
    if evaluate.get("tta") and not flips:
        notes.append("evaluate.tta is on, but training allowed no flip (train.augment horizontal_flip/vertical_flip)")
    if n_affine and not affine:
        notes.append(f"evaluate.tta_views is {n_affine}, but training augmented no rotation, zoom or shift "
                     "(train.augment rotation_degrees/zoom/translate, warp_probability)")
    return [IDENTITY, *flips, *affine], "; ".join(notes)


def positive_index(classes, positive_class, where):
    """Index of the positive class of a binary task (default: the second class); None otherwise."""
    if len(classes) != 2:
        return None
    if positive_class is None:
        return 1
    if positive_class not in classes:
        raise InputError("unknown positive class", [f"{where}: evaluate.positive_class {positive_class!r} is not one of {classes}"])
    return classes.index(positive_class)


def threshold_record(evaluate, positive, y_val, prob_val, chosen_on="val"):
    """Choose the decision threshold on validation predictions; return its JSON record."""
    if positive is None:
        return {"method": "argmax", "value": None, "chosen_on": None, "configured": evaluate["threshold"],
                "note": "several classes: the predicted class is the arg-max; a threshold applies to binary tasks only"}
    threshold, note = choose_threshold(
        y_val == positive, prob_val[:, positive], evaluate["threshold"],
        fixed=evaluate["fixed_threshold"], target_sensitivity=evaluate["target_sensitivity"])
    record = {"method": evaluate["threshold"], "value": threshold, "chosen_on": chosen_on}
    if evaluate["threshold"] == "target_sensitivity":
        record["target_sensitivity"] = evaluate["target_sensitivity"]
    if note:
        record["method"] = "fixed"
        record["configured"] = evaluate["threshold"]
        record["note"] = note
        warnings.warn(note, stacklevel=2)
    return record


def confidence_intervals(y_true, y_prob, y_pred, patients, n_classes, positive, evaluate):
    """Patient-bootstrap intervals of AUC, accuracy, sensitivity and specificity on one split."""
    pos = 1 if positive is None else positive
    in_split = np.bincount(y_true, minlength=n_classes) > 0

    last = {}

    def rates(idx):
        # Three statistics read these rates from one resample: count it once.
        if last.get("idx") is not idx:
            last.update(idx=idx, rates=resample_rates(idx))
        return last["rates"]

    def resample_rates(idx):
        counts = confusion_counts(y_true[idx], y_pred[idx], n_classes)
        accuracy, sensitivity, specificity = rates_from_confusion(counts, pos)
        if n_classes > 2 and (counts.sum(axis=1)[in_split] == 0).any():
            # A macro average over fewer classes than the point estimate's is another statistic
            # (0 or 1 where every full resample gives 0.33): undefined, as the AUC is then. A
            # class the split lacks is in neither average.
            return accuracy, float("nan"), float("nan")
        return accuracy, sensitivity, specificity

    statistics = {
        "auc": lambda idx: fast_roc_auc(y_true[idx], y_prob[idx], n_classes, pos),
        "accuracy": lambda idx: rates(idx)[0],
        "sensitivity": lambda idx: rates(idx)[1],
        "specificity": lambda idx: rates(idx)[2],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples lacking a class give NaN, reported as n_valid
        intervals, n_valid = bootstrap_ci(patients, statistics, n_resamples=evaluate["bootstrap"],
                                          seed=evaluate["seed"], confidence=evaluate["confidence"])
    info = {"method": "percentile", "unit": "patient", "resamples": evaluate["bootstrap"], "seed": evaluate["seed"],
            "confidence": evaluate["confidence"], "n_valid": n_valid, "n_patients": int(len(set(patients)))}
    if n_classes > 2:
        info["note"] = ("sensitivity and specificity are macro averages over classes, undefined in a resample "
                        "that lacks a class")
    info.update(class_patient_counts(y_true, patients, n_classes))
    return intervals, info


def roc_band(is_positive, score, patients, evaluate):
    """Pointwise patient-bootstrap band of the ROC curve: ``(fpr_grid, low, high)``."""
    curves = []
    for idx in bootstrap_indices(patients, evaluate["bootstrap"], evaluate["seed"]):
        target = is_positive[idx]
        if target.all() or not target.any():
            continue
        fpr, tpr = roc_points(target, score[idx])
        curves.append(np.interp(ROC_GRID, fpr, tpr))
    if len(curves) < 2:
        return None
    curves = np.array(curves)
    alpha = (1 - evaluate["confidence"]) / 2
    low, high = np.quantile(curves, [alpha, 1 - alpha], axis=0)
    return ROC_GRID, low, high


def subgroup_columns_of(evaluate):
    """Manifest columns whose values make the subgroups: modality, then ``evaluate.subgroups``."""
    return list(dict.fromkeys(["modality", *evaluate.get("subgroups", [])]))


def subgroup_naming_problems(manifest_path, columns):
    """Subgroup ``columns`` that name each image or patient of the validated manifest: one of
    ``privacy.PER_SAMPLE_COLUMNS``, or values that ``privacy.names_each_sample`` judges to. The
    split stage refuses them too, but a subgroup added after the split ran reaches only this stage.
    """
    if not columns:
        return []  # the default: no second read of the manifest
    table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    problems = []
    for column in columns:
        if column in PER_SAMPLE_COLUMNS:
            problems.append(f"evaluate.subgroups {column!r} names each image or patient")
        elif how := names_each_sample(table, column):
            problems.append(f"evaluate.subgroups {column!r} {how}")
    return problems


def validated_rows_of(manifest_path, sample_ids, columns):
    """The validated manifest's rows of ``sample_ids``, in that order, indexed by sample id.

    InputError when ``columns`` (besides sample_id and patient) or any of the samples is missing.
    """
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    missing_columns = [c for c in ["sample_id", "patient", *columns] if c not in manifest.columns]
    if missing_columns:
        raise InputError(f"{manifest_path}: columns needed for evaluation are missing",
                         [f"no column {c!r} (columns: {', '.join(manifest.columns)})" for c in missing_columns])
    manifest = manifest.drop_duplicates("sample_id").set_index("sample_id")
    absent = [s for s in sample_ids if s not in manifest.index]
    if absent:
        raise InputError(f"{manifest_path}: samples of the split are not in the manifest",
                         [f"sample_id {s!r}" for s in absent])
    return manifest.loc[list(sample_ids)]


def _write_predictions(path, frame):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _prediction_frame(split, sample_ids, patients, y_true, y_pred, y_prob, classes):
    frame = pd.DataFrame({
        "sample_id": sample_ids,
        "split": split,
        "patient": patients,
        "label": [classes[i] for i in y_true],
        "predicted": [classes[i] for i in y_pred],
    })
    for k, name in enumerate(classes):
        frame[f"prob_{name}"] = y_prob[:, k]
    return frame


def _misclassified_figure(read_test, y_true, y_pred, y_prob, classes, count, positive):
    wrong = np.flatnonzero(y_true != y_pred)
    # Most confidently wrong = least probability on the true class; this ranks the same way
    # for a thresholded binary decision and for the arg-max.
    chosen = wrong[np.argsort(y_prob[wrong, y_true[wrong]], kind="stable")][:count]
    images = read_test(chosen) if len(chosen) else []
    # Titles name classes and scores only: sample ids are paths and may carry patient names.
    if positive is not None:
        titles = [f"true {classes[y_true[i]]}, pred {classes[y_pred[i]]}\nP({classes[positive]})={y_prob[i, positive]:.2f}"
                  for i in chosen]
    else:
        titles = [f"true {classes[y_true[i]]}, pred {classes[y_pred[i]]}\nP(true)={y_prob[i, y_true[i]]:.2f}"
                  for i in chosen]
    return plots.plot_image_grid(images, titles, title="Most confidently misclassified test images",
                                 empty_message="No misclassified test images" if count else "Disabled (evaluate.misclassified: 0)")


def _gradcam_figure(model, read_test, y_true, y_pred, y_prob, classes, per_class):
    chosen = []
    for c in range(len(classes)):
        members = np.flatnonzero(y_true == c)
        # The most confident examples of each true class: what the model relies on when sure.
        chosen += list(members[np.argsort(-y_prob[members, c], kind="stable")][:per_class])
    info = {"per_class": per_class, "n": len(chosen)}
    if not chosen:
        return plots.plot_image_grid([], [], title="Grad-CAM", empty_message="No test images to explain"), info
    from . import gradcam

    chosen = np.array(chosen)
    images = read_test(chosen)
    try:
        explained = gradcam.explained_model(model)
        layer = gradcam.find_last_conv_layer(explained)
        heatmaps = gradcam.upsample(gradcam.gradcam_heatmaps(model, images, y_pred[chosen]), images.shape[1:3])
        info["layer"] = "/".join(part.name for part in layer[1:])
        if explained is not model:
            info["ensemble_members"] = len(gradcam.ensemble_members(model))
            info["layer"] += f", mean of {info['ensemble_members']} members"
    except ValueError as error:  # a model without a spatial feature map cannot be explained this way
        info["error"] = str(error)
        return plots.plot_image_grid([], [], title="Grad-CAM", empty_message=f"Grad-CAM unavailable: {error}"), info
    titles = [f"true {classes[y_true[i]]}\nexplains {classes[y_pred[i]]} (p={y_prob[i, y_pred[i]]:.2f})" for i in chosen]
    fig = plots.plot_image_grid(images, titles, overlays=heatmaps, columns=max(per_class, 2),
                                title=f"Grad-CAM ({info['layer']}), test split", empty_message="")
    return fig, info


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _calibration_record(curve, bins, target):
    return {"bins": bins, "target": target,
            **{k: [float(v) if np.isfinite(v) else None for v in curve[k]] for k in ("mean_predicted", "observed")},
            "count": curve["count"].tolist()}


def class_patient_counts(y_true, patients, n_classes):
    """``{"class_patients": [patients of each class], "reliable": bool}`` of one split.

    A class whose images all come from one patient is in every patient resample, with the same
    images: the intervals of every statistic then hold that class fixed and shrink, down to a
    single point where the other classes are as concentrated (the demo's test split: one patient
    a class). Marked unreliable, as a subgroup is.
    """
    counts = patients_per_class(y_true, patients, n_classes)
    return {"class_patients": counts, "reliable": min(counts) >= MIN_PATIENTS_PER_CLASS}


def unreliable_intervals_note(class_patients, classes):
    """Why the test split's intervals cannot be trusted: absent classes, single-patient ones."""
    absent = [name for name, count in zip(classes, class_patients) if count == 0]
    single = [name for name, count in zip(classes, class_patients) if count == 1]
    parts = []
    if absent and len(classes) > 2:
        parts.append(f"class(es) {', '.join(absent)} are absent from the test split: the AUC and its interval are "
                     "undefined, the macro sensitivity averages the other classes, and the macro specificity "
                     "counts theirs too (how rarely they were wrongly predicted)")
    elif absent:
        parts.append(f"class {absent[0]} is absent from the test split: the AUC, and the sensitivity or specificity "
                     "that counts its images, are undefined")
    if single:
        parts.append(f"class(es) {', '.join(single)} come from a single patient, whose images are in every "
                     "bootstrap resample: the intervals are too narrow")
    return "; ".join(parts) + f" (patients per class {list(class_patients)}; ci_info.reliable: false)"


def evaluate_test_split(y_test, prob_test, pred_test, patients_test, manifest_test, classes, positive, evaluate):
    """Metrics of the test split with CIs, calibration curve and subgroups; also returns the curve."""
    pos = 1 if positive is None else positive
    bins = evaluate["calibration_bins"]
    metrics = classification_metrics(y_test, prob_test, pred_test, classes, positive=positive, calibration_bins=bins)
    metrics["n_patients"] = int(len(set(patients_test)))
    if evaluate["bootstrap"] > 0:
        metrics["ci"], metrics["ci_info"] = confidence_intervals(
            y_test, prob_test, pred_test, patients_test, len(classes), positive, evaluate)
        if not metrics["ci_info"]["reliable"]:
            warnings.warn(unreliable_intervals_note(metrics["ci_info"]["class_patients"], classes), stacklevel=2)
    else:
        metrics["ci"] = {k: [None, None] for k in ("auc", "accuracy", "sensitivity", "specificity")}
        metrics["ci_info"] = {"note": "evaluate.bootstrap is 0: no intervals"}
    outcome, probability = calibration_target(y_test, prob_test, pred_test, len(classes), pos)
    curve = reliability_curve(outcome, probability, bins)
    metrics["calibration"] = _calibration_record(curve, bins, metrics["ece_method"])
    metrics["subgroups"] = {
        column: subgroup_metrics(manifest_test[column].to_numpy(), y_test, prob_test, pred_test, patients_test,
                                 classes, positive=pos, min_size=evaluate["min_subgroup_size"],
                                 n_resamples=evaluate["bootstrap"], seed=evaluate["seed"],
                                 confidence=evaluate["confidence"])
        for column in manifest_test.columns
    }
    return metrics, curve


def _split_positions(cache, cache_path, sample_ids):
    position = {sample_id: i for i, sample_id in enumerate(cache.sample_ids)}
    absent = [s for s in sample_ids if s not in position]
    if absent:
        raise InputError(f"{cache_path}: samples of the split are not in the cache (rerun the split stage)",
                         [f"sample_id {s!r}" for s in absent])
    return np.array([position[s] for s in sample_ids], dtype=int)


def run_evaluation(model_path, cache_path, splits_path, manifest_path, out_dir, *, options, histories, fold=None,
                   threads=None):
    """Evaluate a trained model; write metrics.json, predictions.csv and the plots to ``out_dir``.

    The threshold (binary tasks) is chosen on the validation split and applied unchanged to the
    test split; confidence intervals resample test patients. ``threads`` caps TensorFlow's CPU
    threads. Returns the metrics dict.
    """
    from ..cache import open_cache
    from ..gpu import configure_inference

    configure_inference(threads)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluate = options["evaluate"]
    # Only the evaluate section reaches this stage (docs/architecture.md); an older run config
    # with train.tta is still honoured.
    evaluate = {**evaluate, "tta": bool(evaluate.get("tta", options.get("train", {}).get("tta", False)))}
    model_info = model_json_beside(model_path)
    views, views_note = tta_views(model_info, evaluate)
    subgroup_columns = subgroup_columns_of(evaluate)

    splits = read_splits_file(splits_path)
    # With a fold, val is that fold's rows; fold -1 would be the test rows themselves.
    by_split = split_sample_ids(splits, fold, splits_path)
    val_ids, test_ids = by_split["val"], by_split["test"]
    problems = [f"{splits_path}: the {name} split is empty" for name, ids in (("val", val_ids), ("test", test_ids)) if not ids]
    if problems:
        raise InputError("cannot evaluate", problems)
    problems = subgroup_naming_problems(manifest_path, evaluate["subgroups"])
    if problems:
        raise InputError("evaluate.subgroups would list every image or patient in metrics.json", problems)
    manifest = validated_rows_of(manifest_path, val_ids + test_ids, subgroup_columns)
    patients_val = manifest.loc[val_ids, "patient"].to_numpy()
    patients_test = manifest.loc[test_ids, "patient"].to_numpy()

    # A model must be evaluated on images preprocessed as its training images were: the cache's
    # parameter hash must be the one recorded when the model was trained.
    with open_cache(cache_path, expected_params_hash=model_info.get("params_hash"),
                    expected_by=("the model's", f"evaluate {model_path} on the cache it was trained on")) as cache:
        classes = list(cache.classes)
        positive = positive_index(classes, evaluate.get("positive_class"), "evaluate.positive_class")
        val_idx = _split_positions(cache, cache_path, val_ids)
        test_idx = _split_positions(cache, cache_path, test_ids)
        labels = np.asarray(cache.labels, dtype=int)
        y_val, y_test = labels[val_idx], labels[test_idx]

        from ..models import load_model  # TensorFlow: imported only to evaluate

        model = load_model(model_path)
        read_test = cache_reader(cache, test_idx)
        prob_val = predict_probabilities(model, cache_reader(cache, val_idx), len(val_idx), views=views)
        prob_test = predict_probabilities(model, read_test, len(test_idx), views=views)
        check_finite_probabilities(model_path, val=prob_val, test=prob_test)
        if prob_test.shape[1] != len(classes):
            raise InputError(f"{model_path}: model outputs {prob_test.shape[1]} classes",
                             [f"the cache {cache_path} has {len(classes)}: {classes}"])

        # The operating point is fixed on validation before any test prediction is scored.
        threshold = threshold_record(evaluate, positive, y_val, prob_val)
        pred_val = decide(prob_val, threshold["value"], positive)
        pred_test = decide(prob_test, threshold["value"], positive)

        metrics = {"split": "test", "fold": fold}
        test_part, curve = evaluate_test_split(y_test, prob_test, pred_test, patients_test,
                                                manifest.loc[test_ids, subgroup_columns], classes, positive, evaluate)
        metrics.update(test_part)
        metrics["threshold"] = threshold
        metrics["tta"] = {"enabled": len(views) > 1, "views": views}
        if views_note:
            metrics["tta"]["note"] = f"{views_note}: those views are not used"
            warnings.warn(metrics["tta"]["note"], stacklevel=2)
        metrics["val"] = classification_metrics(y_val, prob_val, pred_val, classes, positive=positive,
                                                calibration_bins=evaluate["calibration_bins"])
        metrics["val"]["n_patients"] = int(len(set(patients_val)))

        predictions = pd.concat([
            _prediction_frame("val", val_ids, patients_val, y_val, pred_val, prob_val, classes),
            _prediction_frame("test", test_ids, patients_test, y_test, pred_test, prob_test, classes),
        ], ignore_index=True)
        _write_predictions(out_dir / "predictions.csv", predictions)

        _write_plots(out_dir, metrics, y_test, prob_test, pred_test, patients_test, classes, positive, evaluate,
                     histories, curve)
        fig = _misclassified_figure(read_test, y_test, pred_test, prob_test, classes, evaluate["misclassified"], positive)
        plots.save_figure(fig, out_dir, "misclassified")
        fig, metrics["gradcam"] = _gradcam_figure(model, read_test, y_test, pred_test, prob_test, classes,
                                                  evaluate["gradcam_per_class"])
        plots.save_figure(fig, out_dir, "gradcam")

    metrics["inputs"] = {"model": str(model_path), "model_weights": weights_digest(model), "cache": str(cache_path),
                         "splits": str(splits_path), "manifest": str(manifest_path)}
    metrics = finite_json(metrics)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _write_plots(out_dir, metrics, y_test, prob_test, pred_test, patients_test, classes, positive, evaluate, histories, curve):
    pos = 1 if positive is None else positive
    plots.save_figure(plots.plot_confusion_matrix(metrics["confusion_matrix"], classes), out_dir, "confusion_matrix")
    band = operating_point = None
    if positive is not None:
        is_positive = y_test == positive
        if evaluate["bootstrap"] > 0 and 0 < is_positive.sum() < len(is_positive):
            band = roc_band(is_positive, prob_test[:, positive], patients_test, evaluate)
        if metrics["sensitivity"] is not None and metrics["specificity"] is not None:
            operating_point = (1 - metrics["specificity"], metrics["sensitivity"])
    plots.save_figure(plots.plot_roc(y_test, prob_test, classes, positive=pos, band=band, operating_point=operating_point,
                                     auc=metrics["auc"], auc_ci=metrics["ci"]["auc"], confidence=evaluate["confidence"]),
                      out_dir, "roc")
    plots.save_figure(plots.plot_pr(y_test, prob_test, classes, positive=pos), out_dir, "pr")
    label = (f"P({classes[pos]}) vs observed frequency" if positive is not None
             else "top-class confidence vs accuracy")
    plots.save_figure(plots.plot_calibration(curve, ece=metrics["ece"], label=label), out_dir, "calibration")
    frames = {stage: read_history(path) for stage, path in (histories or {}).items()}
    plots.save_figure(plots.plot_training_curves(frames), out_dir, "training_curves")
    plots.save_figure(plots.plot_per_class(metrics["per_class"]), out_dir, "per_class")
    plots.save_figure(plots.plot_score_histograms(y_test, prob_test, classes, positive=pos,
                                                  threshold=metrics["threshold"]["value"]), out_dir, "score_histograms")

"""k-fold cross-validation: summary over folds and the fold ensemble on the shared test split.

Each fold's evaluation wrote ``predictions.csv`` with its own val rows (its out-of-fold
predictions) and the test rows (the same held-out test set for every fold). This module reports
the mean ± standard deviation of each fold's test metrics, and the metrics of the ensemble that
averages the folds' test probabilities. The ensemble's threshold (binary tasks) is chosen on the
pooled out-of-fold validation predictions, so the test split still plays no part in choosing it.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, atomic_write_json
from ..errors import InputError
from .metrics import classification_metrics
from .run import (evaluate_test_split, finite_json, positive_index, subgroup_columns_of, threshold_record,
                  validated_rows_of)
from .threshold import decide

SUMMARY_METRICS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "average_precision",
                   "mcc", "cohen_kappa", "brier", "ece")
REQUIRED_COLUMNS = ("sample_id", "split", "patient", "label", "predicted")


def read_fold_predictions(path):
    """A fold's predictions.csv and its class names (from the ``prob_<class>`` columns, in order)."""
    try:
        frame = pd.read_csv(path, dtype={"sample_id": str, "split": str, "patient": str, "label": str, "predicted": str},
                            keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable predictions file (rerun its evaluation)", [str(error)]) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    if missing or len(classes) < 2:
        raise InputError(f"{path}: not a predictions file",
                         [f"missing column {c!r}" for c in missing] + ([] if len(classes) >= 2 else ["fewer than two prob_<class> columns"]))
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise InputError(f"{path}: labels without a probability column", [f"label {u!r}" for u in unknown])
    problems = [f"line {i + 2}: predicted {value!r} is not one of the classes {classes}"
                for i, value in frame.loc[~frame["predicted"].isin(classes), "predicted"].head(5).items()]
    for column in (f"prob_{c}" for c in classes):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        problems += [f"line {i + 2}: {column} {frame.at[i, column]!r} is not a finite number"
                     for i in np.flatnonzero(bad)[:5]]
        frame[column] = values
    if problems:
        raise InputError(f"{path}: damaged predictions (rerun its evaluation)", problems)
    return frame, classes


def _arrays(frame, classes):
    index = {name: i for i, name in enumerate(classes)}
    y_true = frame["label"].map(index).to_numpy(dtype=int)
    y_pred = frame["predicted"].map(index).to_numpy(dtype=int)
    y_prob = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    return y_true, y_pred, y_prob


def aggregate_folds(fold_prediction_csvs, manifest_path, out_dir, *, options):
    """Write ``metrics.json`` (ensemble metrics at the top level, ``folds`` summary) and the
    ensemble's ``predictions.csv`` to ``out_dir``; return the metrics dict.

    The ensemble's metrics have the keys of one evaluation's (CIs, calibration, subgroups):
    ``manifest_path``, the validated manifest, gives the subgroup columns of the test rows.
    """
    evaluate = options["evaluate"]
    paths = list(fold_prediction_csvs)
    if len(paths) < 2:
        raise InputError("k-fold aggregation needs the predictions of at least two folds",
                         [f"got {len(paths)}: {', '.join(map(str, paths))}"])
    folds = [read_fold_predictions(p) for p in paths]
    classes = folds[0][1]
    problems = [f"{p}: classes {c} differ from {classes} in {paths[0]}" for p, (_, c) in zip(paths, folds) if c != classes]
    test_sets = [set(f.loc[f["split"] == "test", "sample_id"]) for f, _ in folds]
    problems += [f"{p}: its test samples differ from those of {paths[0]}" for p, t in zip(paths, test_sets) if t != test_sets[0]]
    if not test_sets[0]:
        problems.append(f"{paths[0]}: no test rows")
    if problems:
        raise InputError("fold predictions do not belong together", problems)
    positive = positive_index(classes, evaluate.get("positive_class"), "evaluate.positive_class")
    bins = evaluate["calibration_bins"]

    per_fold = []
    for k, (frame, _) in enumerate(folds):
        test = frame[frame["split"] == "test"]
        y_true, y_pred, y_prob = _arrays(test, classes)
        fold_metrics = classification_metrics(y_true, y_prob, y_pred, classes, positive=positive, calibration_bins=bins)
        per_fold.append({"fold": k, "predictions": str(paths[k]), **{m: fold_metrics[m] for m in SUMMARY_METRICS}})
    summary = {}
    for stat, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1))):
        summary[stat] = {}
        for m in SUMMARY_METRICS:
            values = [f[m] for f in per_fold if f[m] is not None]
            summary[stat][m] = float(fn(values)) if len(values) >= (2 if stat == "std" else 1) else None

    # Ensemble: mean test probability over folds, rows in the first fold's order.
    first_test = folds[0][0][folds[0][0]["split"] == "test"].set_index("sample_id")
    prob_columns = [f"prob_{c}" for c in classes]
    stacked = np.stack([f[f["split"] == "test"].set_index("sample_id").loc[first_test.index, prob_columns].to_numpy(float)
                        for f, _ in folds])
    prob_test = stacked.mean(axis=0)
    y_test = first_test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    patients_test = first_test["patient"].to_numpy()

    out_of_fold = pd.concat([f[f["split"] == "val"] for f, _ in folds], ignore_index=True)
    if out_of_fold.empty:
        raise InputError("no out-of-fold validation rows", [f"{p}: no rows with split == 'val'" for p in paths])
    y_oof, _, prob_oof = _arrays(out_of_fold, classes)
    threshold = threshold_record(evaluate, positive, y_oof, prob_oof, chosen_on="out_of_fold_val")
    pred_test = decide(prob_test, threshold["value"], positive)

    columns = subgroup_columns_of(evaluate)
    manifest_test = validated_rows_of(manifest_path, list(first_test.index), columns)[columns]
    metrics = {"split": "test", "fold": None, "ensemble": f"mean probability of {len(folds)} folds"}
    metrics.update(evaluate_test_split(y_test, prob_test, pred_test, patients_test, manifest_test, classes, positive,
                                       evaluate)[0])
    metrics["threshold"] = threshold
    metrics["out_of_fold"] = classification_metrics(y_oof, prob_oof, decide(prob_oof, threshold["value"], positive),
                                                    classes, positive=positive, calibration_bins=bins)
    metrics["folds"] = {"n": len(folds), "per_fold": per_fold, **summary,
                        "note": "each fold's test metrics use the threshold chosen on that fold's val split"}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensemble = pd.DataFrame({"sample_id": first_test.index, "split": "test", "patient": patients_test,
                             "label": [classes[i] for i in y_test], "predicted": [classes[i] for i in pred_test]})
    for k, c in enumerate(classes):
        ensemble[f"prob_{c}"] = prob_test[:, k]
    with atomic_path(out_dir / "predictions.csv") as tmp:
        ensemble.to_csv(tmp, index=False)
    metrics = finite_json(metrics)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics

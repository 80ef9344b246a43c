"""Metrics per subgroup (modality, site, sex, scanner…) of the test predictions."""

import numpy as np

from .bootstrap import bootstrap_ci
from .metrics import confusion_counts, fast_roc_auc, rates_from_confusion, roc_auc, sensitivity_specificity

MISSING_VALUE = "(missing)"
# Patients each class needs in a group before its metrics count as reliable: with one, every
# patient resample holds the same images of that class, and the interval shrinks to a point.
MIN_PATIENTS_PER_CLASS = 2


def subgroup_metrics(values, y_true, y_prob, y_pred, patients, classes, *, positive=1, min_size=30,
                     n_resamples=0, seed=0, confidence=0.95):
    """Metrics of each value of one subgroup column.

    ``values`` holds the column's value per sample (missing values form their own group). Returns
    ``{value: {n, n_patients, accuracy, auc, sensitivity, specificity, class_counts,
    class_patients, reliable}}``; ``reliable`` is False below ``min_size`` samples, when a class is
    absent (AUC undefined) or when a class comes from fewer than MIN_PATIENTS_PER_CLASS patients.
    With ``n_resamples`` each group also gets ``ci`` {auc, accuracy}: patient-bootstrap intervals
    within the group, and ``ci_n_valid``: on how many resamples each was defined.
    """
    values = np.asarray([MISSING_VALUE if _is_missing(v) else str(v) for v in values], dtype=object)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    patients = np.asarray(patients)
    n_classes = len(classes)
    result = {}
    for value in sorted(set(values)):
        mask = values == value
        t, p, pr = y_true[mask], y_pred[mask], y_prob[mask]
        auc = roc_auc(t, pr, n_classes, positive)
        sensitivity, specificity = sensitivity_specificity(t, p, n_classes, positive)
        counts = np.bincount(t, minlength=n_classes)
        class_patients = patients_per_class(t, patients[mask], n_classes)
        result[value] = {
            "n": int(mask.sum()),
            "n_patients": int(len(set(patients[mask]))),
            "class_counts": {name: int(c) for name, c in zip(classes, counts)},
            "class_patients": {name: int(c) for name, c in zip(classes, class_patients)},
            "accuracy": float((t == p).mean()),
            "auc": _finite_or_none(auc),
            "sensitivity": _finite_or_none(sensitivity),
            "specificity": _finite_or_none(specificity),
            "reliable": bool(mask.sum() >= min_size and np.isfinite(auc)
                             and min(class_patients) >= MIN_PATIENTS_PER_CLASS),
        }
        if n_resamples:
            result[value]["ci"], result[value]["ci_n_valid"] = _group_intervals(
                t, pr, p, patients[mask], n_classes, positive, n_resamples, seed, confidence)
    return result


def _group_intervals(y_true, y_prob, y_pred, patients, n_classes, positive, n_resamples, seed, confidence):
    statistics = {
        "auc": lambda idx: fast_roc_auc(y_true[idx], y_prob[idx], n_classes, positive),
        "accuracy": lambda idx: rates_from_confusion(confusion_counts(y_true[idx], y_pred[idx], n_classes), positive)[0],
    }
    return bootstrap_ci(patients, statistics, n_resamples=n_resamples, seed=seed, confidence=confidence)


def _is_missing(value):
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


def patients_per_class(y_true, patients, n_classes):
    """How many patients each class's images come from, in class order."""
    y_true, patients = np.asarray(y_true), np.asarray(patients)
    return [int(len(set(patients[y_true == k]))) for k in range(n_classes)]

"""Classification metrics of one set of predictions.

Plain functions of NumPy arrays: ``y_true`` holds class indices (0..n_classes-1), ``y_prob`` the
predicted probabilities (n, n_classes) and ``y_pred`` the predicted class indices (which, for a
binary task, come from a threshold chosen on the validation split rather than the arg-max).
Every number that scikit-learn also computes is computed by scikit-learn; specificity and the
expected calibration error, which it lacks, are computed here and tested by hand.

Undefined values (an AUC on a set that holds one class only) are ``None`` so that they appear as
``null`` in JSON rather than as a misleading number.
"""

import math
import warnings

import numpy as np
from sklearn import metrics as skm

from .calibration import expected_calibration_error


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def confusion_matrix(y_true, y_pred, n_classes):
    """Counts (n_classes, n_classes): rows are true classes, columns predicted classes."""
    return skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def specificity_per_class(y_true, y_pred, n_classes):
    """One-vs-rest specificity TN / (TN + FP) of each class; NaN where a class has no negatives."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(float)
    total = cm.sum()
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    true_pos = np.diag(cm)
    false_pos = predicted - true_pos
    true_neg = total - actual - false_pos
    negatives = total - actual
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(negatives > 0, true_neg / negatives, np.nan)


def roc_auc(y_true, y_prob, n_classes, positive=1):
    """ROC AUC: of the positive class for two classes, macro one-vs-rest for more.

    Returns NaN when it is undefined (a class missing from ``y_true``).
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if n_classes == 2:
        target = y_true == positive
        if target.all() or not target.any():
            return float("nan")
        return float(skm.roc_auc_score(target, y_prob[:, positive]))
    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    # Macro one-vs-rest as roc_auc_score(multi_class="ovr") defines it: the mean over classes of
    # the binary AUC of the raw column. Called per class, it has no sum-to-1 check for float32
    # softmax rounding to fail, so rows need no renormalising, which would move exactly tied
    # scores apart in the last bit and change the AUC.
    return float(np.mean([skm.roc_auc_score(y_true == c, y_prob[:, c]) for c in range(n_classes)]))


def average_precision(y_true, y_prob, n_classes, positive=1):
    """Average precision: of the positive class for two classes, macro over classes for more."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if n_classes == 2:
        target = y_true == positive
        if not target.any():
            return float("nan")
        return float(skm.average_precision_score(target, y_prob[:, positive]))
    onehot = np.eye(n_classes, dtype=int)[y_true]
    present = onehot.any(axis=0)
    if not present.all():
        return float("nan")
    return float(skm.average_precision_score(onehot, y_prob, average="macro"))


def brier_score(y_true, y_prob, n_classes, positive=1):
    """Brier score: of the positive class for two classes, the multi-class (unhalved) sum for more."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if n_classes == 2:
        return float(skm.brier_score_loss(y_true == positive, y_prob[:, positive]))
    return float(skm.brier_score_loss(y_true, _normalised(y_prob), labels=list(range(n_classes))))


def calibration_target(y_true, y_prob, y_pred, n_classes, positive=1):
    """The (outcome, probability) pairs that calibration is judged on.

    Binary: the positive class's probability against "is positive". Several classes: the top
    label's probability (the model's confidence) against "the arg-max is right" (Guo et al. 2017).
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if n_classes == 2:
        return (y_true == positive).astype(int), y_prob[:, positive]
    top = y_prob.argmax(axis=1)
    return (top == y_true).astype(int), y_prob.max(axis=1)


def _normalised(y_prob):
    return y_prob / y_prob.sum(axis=1, keepdims=True)


def sensitivity_specificity(y_true, y_pred, n_classes, positive=1):
    """(sensitivity, specificity): of the positive class for two classes, macro averages for more."""
    recall = skm.recall_score(y_true, y_pred, labels=list(range(n_classes)), average=None, zero_division=np.nan)
    spec = specificity_per_class(y_true, y_pred, n_classes)
    if n_classes == 2:
        return float(recall[positive]), float(spec[positive])
    return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"), \
        float(np.nanmean(spec)) if np.isfinite(spec).any() else float("nan")


# --- fast forms for the bootstrap ------------------------------------------------------------
# A bootstrap evaluates each statistic a thousand times; scikit-learn's input validation then
# dominates the run time. These give the same numbers (tests compare them with scikit-learn) with
# plain NumPy.

def confusion_counts(y_true, y_pred, n_classes):
    """Confusion matrix (rows true, columns predicted) by one bincount."""
    return np.bincount(np.asarray(y_true) * n_classes + np.asarray(y_pred),
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def rates_from_confusion(cm, positive=1):
    """(accuracy, sensitivity, specificity) of a confusion matrix, as sensitivity_specificity
    defines them (positive class for two classes, macro averages for more); NaN if undefined."""
    cm = np.asarray(cm, dtype=float)
    total = cm.sum()
    actual = cm.sum(axis=1)
    true_pos = np.diag(cm)
    true_neg = total - actual - (cm.sum(axis=0) - true_pos)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(actual > 0, true_pos / actual, np.nan)
        specificity = np.where(total - actual > 0, true_neg / (total - actual), np.nan)
    accuracy = true_pos.sum() / total if total else np.nan
    if len(cm) == 2:
        return float(accuracy), float(recall[positive]), float(specificity[positive])
    mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    return float(accuracy), mean(recall), mean(specificity)


def binary_auc(is_positive, score):
    """ROC AUC by the Mann-Whitney U statistic (ties count one half); NaN with one class only."""
    from scipy.stats import rankdata

    is_positive = np.asarray(is_positive, dtype=bool)
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_points(is_positive, score):
    """ROC curve ``(fpr, tpr)`` from (0, 0) to (1, 1), one point per distinct score, as
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` gives it."""
    is_positive = np.asarray(is_positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    score, is_positive = score[order], is_positive[order]
    # The last index of each run of equal scores: a threshold admits all tied samples at once.
    ends = np.r_[np.flatnonzero(np.diff(score) != 0), len(score) - 1]
    true_pos = np.cumsum(is_positive)[ends]
    false_pos = (ends + 1) - true_pos
    n_pos, n_neg = is_positive.sum(), len(is_positive) - is_positive.sum()
    fpr = np.r_[0.0, false_pos / n_neg] if n_neg else np.r_[0.0, np.full(len(ends), np.nan)]
    tpr = np.r_[0.0, true_pos / n_pos] if n_pos else np.r_[0.0, np.full(len(ends), np.nan)]
    return fpr, tpr


def fast_roc_auc(y_true, y_prob, n_classes, positive=1):
    """Same value as :func:`roc_auc` (binary, or macro one-vs-rest), computed with NumPy."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if n_classes == 2:
        return binary_auc(y_true == positive, y_prob[:, positive])
    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    # Raw columns, not renormalised rows, for the reason given in roc_auc.
    return float(np.mean([binary_auc(y_true == c, y_prob[:, c]) for c in range(n_classes)]))


def classification_metrics(y_true, y_prob, y_pred, classes, *, positive=None, calibration_bins=10):
    """Every metric of one prediction set, as a JSON-ready dict.

    ``positive`` is the index of the positive class for binary metrics (default: the second
    class). ``sensitivity`` and ``specificity`` are those of the positive class for two classes
    and macro averages otherwise.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    n_classes = len(classes)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), n_classes):
        raise ValueError(f"y_prob has shape {y_prob.shape}, expected ({len(y_true)}, {n_classes})")
    if positive is None:
        positive = 1 if n_classes == 2 else None
    labels = list(range(n_classes))
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")

    # Undefined ratios (the precision of a class never predicted, 0/0) are null, and the averages
    # leave them out (scikit-learn's zero_division=nan): counted as 0 they read as a measured 0.
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    specificity = specificity_per_class(y_true, y_pred, n_classes)
    per_class = {
        name: {
            "precision": _finite_or_none(precision[i]),
            "recall": float(recall[i]) if support[i] else None,
            "sensitivity": float(recall[i]) if support[i] else None,
            "specificity": _finite_or_none(specificity[i]),
            "f1": _finite_or_none(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = _quiet(skm.precision_recall_fscore_support,
                            y_true, y_pred, labels=labels, average=average, zero_division=np.nan)
        averages[average] = {"precision": _finite_or_none(p), "recall": _finite_or_none(r), "f1": _finite_or_none(f)}
    # Recall is undefined for a class without images, as top-level sensitivity and balanced accuracy
    # take it: the macro average is over the classes present (scikit-learn would count the absent as 0).
    present = support > 0
    averages["macro"]["recall"] = float(recall[present].mean()) if present.any() else None
    # Specificity is undefined for a class without negatives; average over the defined ones.
    defined = np.isfinite(specificity)
    averages["macro"]["specificity"] = float(specificity[defined].mean()) if defined.any() else None
    weights = support[defined]
    averages["weighted"]["specificity"] = (float((specificity[defined] * weights).sum() / weights.sum())
                                           if weights.sum() > 0 else None)

    pos = 1 if positive is None else positive  # index used by the binary-only helpers
    sensitivity, spec = sensitivity_specificity(y_true, y_pred, n_classes, pos)
    outcome, confidence = calibration_target(y_true, y_prob, y_pred, n_classes, pos)
    return {
        "classes": list(classes),
        "n": int(len(y_true)),
        "positive_class": classes[positive] if positive is not None else None,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred, labels),
        "auc": _finite_or_none(roc_auc(y_true, y_prob, n_classes, pos)),
        "auc_method": "binary" if n_classes == 2 else "macro_ovr",
        "average_precision": _finite_or_none(average_precision(y_true, y_prob, n_classes, pos)),
        "sensitivity": _finite_or_none(sensitivity),
        "specificity": _finite_or_none(spec),
        # Undefined (scikit-learn returns 0) when the truth holds one class, as AUC is.
        # 0/0 when either side holds one class; scikit-learn's 0 would read as "no better than chance".
        "mcc": (_quiet(skm.matthews_corrcoef, y_true, y_pred)
                if len(np.unique(y_true)) > 1 and len(np.unique(y_pred)) > 1 else None),
        "cohen_kappa": _finite_or_none(_quiet(skm.cohen_kappa_score, y_true, y_pred, labels=labels)),
        "brier": brier_score(y_true, y_prob, n_classes, pos),
        "ece": float(expected_calibration_error(outcome, confidence, calibration_bins)),
        "ece_method": "positive_class" if n_classes == 2 else "top_label",
        "confusion_matrix": confusion_matrix(y_true, y_pred, n_classes).tolist(),
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
    }


def _quiet(metric, *args, **kwargs):
    # On a set holding one class scikit-learn warns and returns 0 (MCC) or NaN (kappa, reported
    # as null); the value says it, the warning would only fill the log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = metric(*args, **kwargs)
    return float(value) if np.ndim(value) == 0 else value


def _balanced_accuracy(y_true, y_pred, labels):
    # scikit-learn warns and averages over present classes only when a class is absent from
    # y_true; that is also the definition used here, so silence the warning, not the value.
    present = np.isin(labels, y_true)
    recall = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return float(recall[present].mean())

"""Decision threshold of a binary classifier, chosen on the validation split.

A sample is called positive when its positive-class probability is ``>= threshold``. The
threshold is chosen once, on validation predictions, and then applied unchanged to the test
split, so that the test set never influences the operating point.
"""

import numpy as np
from sklearn.metrics import roc_curve

METHODS = ("youden", "fixed", "target_sensitivity")


def choose_threshold(is_positive, score, method="youden", *, fixed=0.5, target_sensitivity=0.9):
    """Return ``(threshold, note)``; ``note`` explains a fallback to ``fixed``, else is None.

    - ``youden``: maximises sensitivity + specificity − 1 on the given predictions (the highest
      such threshold when several tie).
    - ``fixed``: ``fixed`` itself.
    - ``target_sensitivity``: the highest threshold whose sensitivity reaches
      ``target_sensitivity`` (so specificity is as high as that allows).
    Without both classes among ``is_positive`` nothing can be chosen; the fixed threshold is
    returned with a note saying so.
    """
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {METHODS}")
    is_positive = np.asarray(is_positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    if method == "fixed":
        return float(fixed), None
    if is_positive.all() or not is_positive.any():
        return float(fixed), (f"validation split holds a single class; {method} threshold undefined, "
                              f"used the fixed threshold {fixed}")
    _, tpr, thresholds = roc_curve(is_positive, score, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive); it is never a useful operating point.
    tpr, thresholds = tpr[1:], thresholds[1:]
    if method == "youden":
        return float(thresholds[_youden_best(is_positive, score, thresholds)]), None
    reaching = np.flatnonzero(tpr >= target_sensitivity)
    # tpr reaches 1 at the last threshold, so ``reaching`` is never empty; thresholds decrease.
    return float(thresholds[reaching[0]]), None


def _youden_best(is_positive, score, thresholds):
    """Index of the first (highest, as ``thresholds`` decrease) threshold of maximal Youden J."""
    # J = tps/n_pos - fps/n_neg in floating point makes equal values unequal (1 - 2/3 > 1/3), so
    # that argmax picks a lower threshold; n_pos*n_neg*J = tps*n_neg - fps*n_pos is an exact integer.
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    true_pos = _count_at_or_above(score[is_positive], thresholds)
    false_pos = _count_at_or_above(score[~is_positive], thresholds)
    return int(np.argmax(true_pos * n_neg - false_pos * n_pos))


def _count_at_or_above(values, thresholds):
    """How many of ``values`` are ``>= t`` for each ``t`` in ``thresholds``."""
    return len(values) - np.searchsorted(np.sort(values), thresholds, side="left")


def apply_threshold(score, threshold, positive=1, negative=0):
    """Class index per sample: ``positive`` where ``score >= threshold``, else ``negative``."""
    score = np.asarray(score, dtype=float)
    return np.where(score >= threshold, positive, negative).astype(int)


def decide(y_prob, threshold, positive):
    """Predicted class per sample: threshold on the positive class (binary) or the arg-max."""
    if positive is None:
        return np.asarray(y_prob).argmax(axis=1)
    return apply_threshold(np.asarray(y_prob)[:, positive], threshold, positive=positive, negative=1 - positive)

"""Which epoch a fine-tune stage keeps, replayed offline from the validation scores of every epoch.

The stage decides while it trains (:class:`medclassify.training.EpochEnd`): it stops after
``patience`` epochs without a better validation AUC and keeps the epoch that ``select_epoch``
names. Given the scores of all epochs (a run with ``record_val_predictions`` and no stopping),
these functions give the same answers for any patience and rule without training again, which
is how bench/epoch_selection.py compares the rules. NumPy only.
"""

import math

import numpy as np

SELECT_EPOCH_RULES = ("best_auc", "lowest_val_loss", "last")
# Keras's crossentropy clips probabilities to [epsilon, 1 - epsilon] with this epsilon.
_EPSILON = 1e-7


def check_rule(rule):
    """Raise ValueError unless ``rule`` is one of :data:`SELECT_EPOCH_RULES`."""
    if rule not in SELECT_EPOCH_RULES:
        raise ValueError(f"select_epoch must be one of {', '.join(SELECT_EPOCH_RULES)}, not {rule!r}")


def stopping_epoch(val_auc, patience):
    """The last epoch (from 1) a stage trains: the first at which ``patience`` epochs in a row
    brought no strictly higher validation AUC (NaN never improves), or the last one given.
    ``patience`` 0 never stops."""
    best, wait = None, 0
    for epoch, auc in enumerate(val_auc, start=1):
        if not math.isnan(auc) and (best is None or auc > best):
            best, wait = auc, 0
        else:
            wait += 1
        if patience > 0 and wait >= patience:
            return epoch
    return len(val_auc)


def selected_epoch(rule, val_auc, val_loss, patience):
    """The epoch (from 1) whose weights a stage with ``rule`` and ``patience`` saves, or None when
    no epoch had a score to choose by (the stage then keeps the last one)."""
    check_rule(rule)
    last = stopping_epoch(val_auc, patience)
    if rule == "last":
        return last
    scores = np.asarray(val_auc if rule == "best_auc" else [-loss for loss in val_loss], dtype="float64")[:last]
    if np.all(np.isnan(scores)):
        return None
    # The first maximum: a later epoch replaces the kept one only when strictly better.
    return int(np.nanargmax(scores)) + 1


def crossentropy(labels, probabilities):
    """Mean categorical crossentropy of integer ``labels`` under class ``probabilities``, as Keras
    computes it (rows renormalised, clipped to [1e-7, 1 - 1e-7])."""
    probabilities = np.asarray(probabilities, dtype="float64")
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    picked = np.clip(probabilities[np.arange(len(labels)), np.asarray(labels)], _EPSILON, 1 - _EPSILON)
    return float(-np.mean(np.log(picked)))

"""Calibration: reliability curve and expected calibration error (ECE).

Both use ``n_bins`` equal-width bins of the predicted probability on [0, 1]; the last bin is
closed on the right so that a probability of exactly 1 is counted.
"""

import numpy as np


def bin_edges(n_bins):
    """The n_bins + 1 edges of equal-width bins on [0, 1], each k / n_bins as closely as a float can.

    Not ``np.linspace``, whose 4th of 11 edges is 0.30000000000000004: a probability of 0.3 fell in
    the bin drawn as [0.2, 0.3).
    """
    return np.arange(n_bins + 1) / n_bins


def bin_index(probability, n_bins):
    """Bin (0..n_bins-1) of each probability: bin k holds ``edges[k] <= p < edges[k+1]``."""
    # Placed against the reported edges rather than by int(p * n_bins): 0.58 * 50 is 28.999...,
    # which put a probability lying on edge 29 in bin 28.
    edges = bin_edges(n_bins)
    bins = np.searchsorted(edges, np.asarray(probability, dtype=float), side="right") - 1
    return np.clip(bins, 0, n_bins - 1)  # p == 1 (and anything outside [0, 1]) in an end bin


def reliability_curve(outcome, probability, n_bins=10):
    """Per bin: mean predicted probability, observed frequency of the outcome, and count.

    Returns a dict of arrays ``edges`` (n_bins+1), ``mean_predicted``, ``observed``, ``count``
    (n_bins each); empty bins hold NaN in the first two.
    """
    outcome = np.asarray(outcome, dtype=float)
    probability = np.asarray(probability, dtype=float)
    if outcome.shape != probability.shape:
        raise ValueError("outcome and probability differ in shape")
    bins = bin_index(probability, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    prob_sum = np.bincount(bins, weights=probability, minlength=n_bins)
    outcome_sum = np.bincount(bins, weights=outcome, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, prob_sum / count, np.nan)
        observed = np.where(count > 0, outcome_sum / count, np.nan)
    return {
        "edges": bin_edges(n_bins),
        "mean_predicted": mean_predicted,
        "observed": observed,
        "count": count,
    }


def expected_calibration_error(outcome, probability, n_bins=10):
    """Σ_bins (n_bin / n) · |observed frequency − mean predicted probability|."""
    curve = reliability_curve(outcome, probability, n_bins)
    count = curve["count"]
    if count.sum() == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(curve["observed"][filled] - curve["mean_predicted"][filled])
    return float((count[filled] * gaps).sum() / count.sum())

"""Patient-level bootstrap confidence intervals.

Images of one patient are correlated; resampling images would treat them as independent and give
intervals that are too narrow. Each resample here draws patients with replacement (as many as
there are) and takes all images of every drawn patient, as often as the patient was drawn.
"""

import numpy as np


def patient_groups(patients):
    """Image indices of each patient, in order of first appearance: a list of int arrays."""
    patients = np.asarray(patients)
    if patients.size == 0:
        return []
    _, first, inverse = np.unique(patients, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique() sorts by value; keep appearance order for stability
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group_of = rank[inverse.ravel()]
    # One stable sort, not a scan of every image per patient (quadratic with one image each).
    by_group = np.argsort(group_of, kind="stable")
    return np.split(by_group, np.cumsum(np.bincount(group_of, minlength=len(order)))[:-1])


def bootstrap_indices(patients, n_resamples, seed):
    """Yield ``n_resamples`` arrays of image indices, each a resample of the patients.

    Seeded with ``numpy.random.default_rng(seed)``: the same inputs give the same resamples.
    """
    groups = patient_groups(patients)
    sizes = np.array([len(g) for g in groups])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(groups) if groups else np.array([], dtype=int)
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(groups), size=len(groups))
        lengths = sizes[drawn]
        # The drawn patients' images one after another: position p of drawn patient k reads
        # flat[starts[k] + p - (images of the patients drawn before k)].
        shift = starts[drawn] - (np.cumsum(lengths) - lengths)
        yield flat[np.repeat(shift, lengths) + np.arange(lengths.sum())]


def percentile_interval(values, confidence=0.95):
    """Percentile interval ``[low, high]`` of the finite values; ``[None, None]`` if there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [None, None]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def bootstrap_statistics(patients, statistics, *, n_resamples=1000, seed=0):
    """Evaluate each of ``statistics`` ({name: fn(indices) -> float}) on every resample.

    Returns ``{name: np.ndarray of n_resamples values}``; a statistic undefined on a resample
    (e.g. AUC when the resample holds one class) should return NaN and is left out of intervals.
    """
    values = {name: np.empty(n_resamples) for name in statistics}
    for i, indices in enumerate(bootstrap_indices(patients, n_resamples, seed)):
        for name, fn in statistics.items():
            values[name][i] = fn(indices)
    return values


def bootstrap_ci(patients, statistics, *, n_resamples=1000, seed=0, confidence=0.95):
    """Patient-level percentile confidence intervals.

    Returns ``(intervals, n_valid)``: ``{name: [low, high]}`` and ``{name: number of resamples on
    which the statistic was defined}``, so that a reader can see when an interval rests on few.
    """
    values = bootstrap_statistics(patients, statistics, n_resamples=n_resamples, seed=seed)
    return (
        {name: percentile_interval(v, confidence) for name, v in values.items()},
        {name: int(np.isfinite(v).sum()) for name, v in values.items()},
    )

"""Evaluation of trained models: metrics, confidence intervals, calibration, subgroups, plots.

Metrics and plots import no TensorFlow; the model is loaded (and Grad-CAM computed) only inside
:func:`run_evaluation`.
"""

from .aggregate import aggregate_folds
from .compare import compare_runs
from .run import run_evaluation

__all__ = ["run_evaluation", "compare_runs", "aggregate_folds"]

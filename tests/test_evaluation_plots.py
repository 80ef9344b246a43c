"""Plots: every figure builds from plain arrays, edge cases included, and saves reproducibly."""

import hashlib

import numpy as np
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from medclassify.evaluation import plots
from medclassify.evaluation.calibration import reliability_curve


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, 40), 0, 1)
    return y, np.stack([1 - p, p], axis=1)


def test_save_figure_writes_png_and_pdf_byte_identically(tmp_path, binary):
    y, prob = binary
    for folder in ("a", "b"):
        fig = plots.plot_roc(y, prob, ["neg", "pos"], band=(np.linspace(0, 1, 5), np.zeros(5), np.ones(5)),
                             operating_point=(0.2, 0.8), auc=0.9, auc_ci=[0.8, 0.95])
        paths = plots.save_figure(fig, tmp_path / folder, "roc")
        assert [p.suffix for p in paths] == [".png", ".pdf"]
    for ext in ("png", "pdf"):
        assert _sha(tmp_path / "a" / f"roc.{ext}") == _sha(tmp_path / "b" / f"roc.{ext}")
    assert (tmp_path / "a" / "roc.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "a" / "roc.pdf").read_bytes().startswith(b"%PDF")


def test_every_plot_builds_for_binary_and_multiclass(binary):
    y, prob = binary
    y3 = np.arange(30) % 3
    prob3 = np.full((30, 3), 0.2)
    prob3[np.arange(30), y3] = 0.6
    for classes, labels, p in ((["neg", "pos"], y, prob), (["a", "b", "c"], y3, prob3)):
        n = len(classes)
        cm = np.bincount(labels * n + p.argmax(1), minlength=n * n).reshape(n, n)
        per_class = {c: {"sensitivity": 0.8, "specificity": None, "f1": 0.7, "support": 10} for c in classes}
        figures = {
            "confusion_matrix": plots.plot_confusion_matrix(cm, classes),
            "roc": plots.plot_roc(labels, p, classes, auc=0.8),
            "pr": plots.plot_pr(labels, p, classes),
            "calibration": plots.plot_calibration(reliability_curve(labels == labels, p.max(1), 10), ece=0.1, label="x"),
            "per_class": plots.plot_per_class(per_class),
            "score_histograms": plots.plot_score_histograms(labels, p, classes, threshold=0.5 if n == 2 else None),
        }
        for name, fig in figures.items():
            fig.canvas.draw()  # renders (and fails on layout errors) without the cost of writing files
            assert fig.axes, name
            plt.close(fig)


def test_training_curves_tolerate_skipped_stages_and_missing_columns(tmp_path):
    histories = {"head": pd.DataFrame(),
                 "finetune": pd.DataFrame({"epoch": [0, 1], "loss": [0.7, 0.5], "val_auc": [0.6, 0.7]})}
    fig = plots.plot_training_curves(histories)
    assert len(fig.axes[0].lines) == 1 and len(fig.axes[1].lines) == 1  # train loss; val AUC
    plots.save_figure(fig, tmp_path, "training_curves")
    empty = plots.plot_training_curves({"head": pd.DataFrame(), "finetune": None})
    assert "No training history" in empty.axes[0].texts[0].get_text()
    plots.save_figure(empty, tmp_path, "empty")


def test_image_grid_with_overlays_and_empty_grid(tmp_path):
    images = np.random.default_rng(0).random((3, 8, 8, 1))
    fig = plots.plot_image_grid(images, ["a", "b", "c"], title="t", empty_message="", overlays=np.ones((3, 8, 8)))
    assert len([ax for ax in fig.axes if ax.images]) == 3
    plots.save_figure(fig, tmp_path, "grid")
    empty = plots.plot_image_grid([], [], title="t", empty_message="No misclassified test images")
    assert empty.axes[0].texts[0].get_text() == "No misclassified test images"

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


def test_the_pr_curve_is_drawn_as_the_steps_that_average_precision_sums(binary):
    # Straight lines enclosed 0.385 where the reported AP was 0.409 (helper-72).
    y, prob = binary
    fig = plots.plot_pr(y, prob, ["neg", "pos"])
    assert fig.axes[0].lines[0].get_drawstyle() == "steps-post"
    plt.close(fig)


def test_confusion_matrix_text_colour_follows_the_colour_scale():
    # 0.42 and 0.50 were white on pale blue, the data's maximum (0.5) setting the switch (helper-72).
    fig = plots.plot_confusion_matrix(np.array([[5, 5], [6, 6]]), ["a", "b"])
    colours = {text.get_text(): text.get_color() for text in fig.axes[1].texts}
    assert colours == {"0.50": "black"}
    plt.close(fig)


def test_a_long_grid_title_is_wrapped_to_fit_two_columns():
    # Grad-CAM's title, naming its layer, was cut at both edges of a two-column grid (helper-72).
    title = "Grad-CAM (backbone_runner/stage4_block2_out), test split, mean of 3 members"
    fig = plots.plot_image_grid([np.zeros((8, 8))] * 2, ["x", "y"], title=title, empty_message="", columns=2)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    plt.close(fig)

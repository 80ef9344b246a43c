"""Evaluation figures, PNG and PDF, in one style.

Every function takes plain arrays and returns a matplotlib Figure; :func:`save_figure` writes it
atomically as ``<name>.png`` and ``<name>.pdf``. Figures show class names, counts and scores
only: never patient identifiers or DICOM attributes.
"""

import contextlib
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from ..atomic import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.cmap": "viridis",
    "pdf.fonttype": 42,  # embed TrueType so text stays editable in journals' PDF tools
    "svg.fonttype": "none",
}
COLORS = plt.get_cmap("tab10").colors


@contextlib.contextmanager
def plot_style():
    """Apply the shared style to figures created inside the block."""
    with plt.rc_context(STYLE):
        yield


def save_figure(fig, out_dir, name):
    """Write ``fig`` as ``out_dir/name.png`` and ``.pdf`` atomically, close it, return the paths."""
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(out_dir) / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            # Metadata without dates keeps PDFs byte-stable across identical runs.
            metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
            with plot_style():  # savefig.dpi and pdf.fonttype are read when saving
                # Figures use constrained layout, so they keep their exact size (no tight bbox).
                fig.savefig(tmp, format=fmt, metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def _message(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def plot_confusion_matrix(cm, classes, title="Test split"):
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    cm = np.asarray(cm, dtype=float)
    row_sums = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(row_sums > 0, cm / row_sums, 0.0)
    size = max(3.2, 0.55 * len(classes) + 2.2)
    with plot_style():
        fig, axes = plt.subplots(1, 2, figsize=(2 * size + 0.6, size), layout="constrained")
        for ax, values, label, fmt in ((axes[0], cm, "count", "{:.0f}"),
                                       (axes[1], normalised, "fraction of true class", "{:.2f}")):
            top = max(values.max(), 1e-9) if label == "count" else 1
            image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
            ax.grid(False)
            ticks = np.arange(len(classes))
            # A cell is about an inch wide: longer names would run into their neighbours.
            crowded = len(classes) > 3 or max(len(str(c)) for c in classes) > 8
            ax.set_xticks(ticks, classes, rotation=35 if crowded else 0, ha="right" if crowded else "center",
                          rotation_mode="anchor")
            ax.set_yticks(ticks, classes)
            ax.set_xlabel("Predicted class")
            ax.set_ylabel("True class")
            for i in range(len(classes)):
                for j in range(len(classes)):
                    # White on the darker half of the colour scale, wherever the data's maximum lies.
                    ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                            color="white" if values[i, j] > top / 2 else "black")
            fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        axes[0].set_title(f"{title}: counts")
        axes[1].set_title(f"{title}: row-normalised")
    return fig


def plot_roc(y_true, y_prob, classes, *, positive=1, band=None, operating_point=None, auc=None, auc_ci=None,
             confidence=0.95):
    """ROC curve(s) of the test split.

    Binary: the positive class's curve, its patient-bootstrap band ``band = (fpr_grid, low,
    high)`` and the operating point ``(fpr, tpr)`` of the threshold chosen on validation.
    Several classes: one one-vs-rest curve per class.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    with plot_style():
        fig, ax = plt.subplots(figsize=(4.6, 4.4), layout="constrained")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
        curve_classes = [positive] if len(classes) == 2 else range(len(classes))
        for k, c in enumerate(curve_classes):
            target = y_true == c
            if target.all() or not target.any():
                continue
            fpr, tpr, _ = roc_curve(target, y_prob[:, c])
            label = f"{classes[c]} vs rest" if len(classes) > 2 else classes[c]
            if len(classes) == 2 and auc is not None:
                label += f" (AUC {auc:.3f}" + (f", {_ci_text(auc_ci, confidence)})" if auc_ci and auc_ci[0] is not None else ")")
            ax.plot(fpr, tpr, color=COLORS[k % 10], lw=1.6, label=label)
        if band is not None:
            grid, low, high = band
            ax.fill_between(grid, low, high, color=COLORS[0], alpha=0.2, lw=0, label="bootstrap band (patients)")
        if operating_point is not None:
            ax.plot(*operating_point, "o", color="black", ms=6, label="operating point (threshold from val)")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("1 − specificity (false positive rate)")
        ax.set_ylabel("Sensitivity (true positive rate)")
        title = "ROC, test split" + ("" if len(classes) == 2 or auc is None else f" (macro AUC {auc:.3f})")
        ax.set_title(title)
        ax.legend(loc="lower right")
    return fig


def _ci_text(ci, confidence):
    return f"{100 * confidence:g}% CI {ci[0]:.3f}–{ci[1]:.3f}"


def plot_pr(y_true, y_prob, classes, *, positive=1):
    """Precision-recall curve(s) of the test split with the prevalence as the chance line."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    with plot_style():
        fig, ax = plt.subplots(figsize=(4.6, 4.4), layout="constrained")
        curve_classes = [positive] if len(classes) == 2 else range(len(classes))
        for k, c in enumerate(curve_classes):
            target = y_true == c
            if not target.any():
                continue
            precision, recall, _ = precision_recall_curve(target, y_prob[:, c])
            # Steps, as average precision sums them: straight lines between the points would enclose
            # another area than the AP the caption says this curve has.
            ax.plot(recall, precision, color=COLORS[k % 10], lw=1.6, label=f"{classes[c]}", drawstyle="steps-post")
            ax.axhline(target.mean(), color=COLORS[k % 10], ls=":", lw=0.8)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel("Recall (sensitivity)")
        ax.set_ylabel("Precision (positive predictive value)")
        ax.set_title("Precision–recall, test split (dotted: prevalence)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left")
        else:
            ax.text(0.5, 0.5, "No positive test samples", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_calibration(curve, *, ece, label):
    """Reliability diagram with the count of samples per bin below it."""
    with plot_style():
        fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.6, 5.4), height_ratios=[3, 1],
                                           sharex=True, layout="constrained")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
        filled = curve["count"] > 0
        ax.plot(curve["mean_predicted"][filled], curve["observed"][filled], "o-", color=COLORS[0],
                label=f"model (ECE {ece:.3f})")
        ax.set_ylim(-0.01, 1.01)
        ax.set_ylabel("Observed frequency")
        ax.set_title(f"Reliability diagram, test split\n({label})")
        ax.legend(loc="upper left")
        edges = curve["edges"]
        ax_count.bar(edges[:-1], curve["count"], width=np.diff(edges), align="edge", color=COLORS[0],
                     alpha=0.6, edgecolor="white")
        ax_count.set_xlim(0, 1)
        ax_count.set_xlabel("Predicted probability")
        ax_count.set_ylabel("Samples")
    return fig


def plot_training_curves(histories):
    """Loss and AUC of every stage on one figure, epochs numbered continuously across stages.

    ``histories`` is ``{stage: DataFrame}`` in stage order; empty or missing frames (a skipped
    stage) are left out, and missing columns are skipped. An ensemble's history (a ``member``
    column) draws one thinner line per member over the same epochs.
    """
    with plot_style():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
        offset = 0
        drawn = False
        for s, (stage, frame) in enumerate(histories.items()):
            if frame is None or len(frame) == 0:
                continue
            runs = [group for _, group in frame.groupby("member", sort=True)] if "member" in frame.columns else [frame]
            longest = max(len(run) for run in runs)
            name, width = (stage, None) if len(runs) == 1 else (f"{stage} (each member)", 0.9)
            for m, run in enumerate(runs):
                epochs = np.arange(1, len(run) + 1) + offset
                for ax, metric in zip(axes, ("loss", "auc")):
                    for column, ls in ((metric, "-"), (f"val_{metric}", "--")):
                        if column in run.columns:
                            values = np.asarray(run[column], dtype=float)
                            ax.plot(epochs, values, ls=ls, color=COLORS[s % 10], lw=width,
                                    marker="." if longest < 30 else None,
                                    label=None if m else f"{name} {'val' if column.startswith('val_') else 'train'}")
                            drawn = True
            if offset:
                for ax in axes:
                    ax.axvline(offset + 0.5, color="grey", lw=0.8, ls=":")
            offset += longest
        if not drawn:
            for ax in axes:
                _message(ax, "No training history recorded")
        else:
            axes[0].set_title("Loss")
            axes[1].set_title("AUC")
            for ax in axes:
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.set_xlabel("Epoch (all stages)")
                if ax.lines:
                    ax.legend()
    return fig


def plot_per_class(per_class):
    """Grouped bars of sensitivity and specificity (and F1) per class on the test split."""
    classes = list(per_class)
    measures = ("sensitivity", "specificity", "f1")
    x = np.arange(len(classes))
    width = 0.8 / len(measures)
    with plot_style():
        fig, ax = plt.subplots(figsize=(max(4.6, 1.1 * len(classes) + 2), 3.6), layout="constrained")
        for k, measure in enumerate(measures):
            values = [per_class[c].get(measure) for c in classes]
            values = [np.nan if v is None else v for v in values]
            bars = ax.bar(x + (k - 1) * width, values, width, color=COLORS[k], label=measure)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(x, [f"{c}\n(n={per_class[c]['support']})" for c in classes])
        ax.set_ylim(0, 1.25)  # room above the bar labels for the legend
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("Score")
        ax.set_title("Per-class sensitivity, specificity and F1, test split")
        ax.legend(loc="upper left", ncols=3)
    return fig


def plot_score_histograms(y_true, y_prob, classes, *, positive=1, threshold=None):
    """Distribution of predicted probabilities per true class.

    Binary: the positive class's probability for each true class, with the threshold. Several
    classes: one panel per class, its probability for samples of that class and of the others.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    bins = np.linspace(0, 1, 21)
    with plot_style():
        if len(classes) == 2:
            fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
            for c, name in enumerate(classes):
                scores = y_prob[y_true == c, positive]
                ax.hist(scores, bins=bins, alpha=0.55, color=COLORS[c], label=f"true {name} (n={len(scores)})")
            if threshold is not None:
                ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
            ax.set_xlabel(f"Predicted probability of {classes[positive]}")
            ax.set_ylabel("Samples")
            ax.set_title("Scores per true class, test split")
            ax.legend()
            return fig
        n = len(classes)
        cols = min(n, 3)
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, layout="constrained")
        for c, name in enumerate(classes):
            ax = axes.flat[c]
            ax.hist(y_prob[y_true == c, c], bins=bins, alpha=0.6, color=COLORS[0], label=f"true {name}")
            ax.hist(y_prob[y_true != c, c], bins=bins, alpha=0.6, color=COLORS[1], label="other classes")
            ax.set_title(f"P({name})")
            ax.set_xlabel("Predicted probability")
            ax.legend()
        for ax in axes.flat[n:]:
            ax.set_axis_off()
        fig.suptitle("Scores per true class, test split")
    return fig


def _image_for_display(image):
    image = np.asarray(image, dtype=float)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.clip(image, 0, 1)


def plot_image_grid(images, titles, *, title, empty_message, overlays=None, columns=4):
    """A grid of images (float in [0, 1]) with a caption each; optional heat-map overlays."""
    n = len(images)
    with plot_style():
        if n == 0:
            fig, ax = plt.subplots(figsize=(4, 1.5), layout="constrained")
            _message(ax, empty_message)
            fig.suptitle(title)
            return fig
        cols = min(columns, n)
        rows = int(np.ceil(n / cols))
        # At least wide enough for a title of about 60 characters (Grad-CAM's names a layer).
        fig, axes = plt.subplots(rows, cols, figsize=(max(2.1 * cols, 5.6), 2.3 * rows + 0.6), squeeze=False,
                                 layout="constrained")
        for i, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if i >= n:
                continue
            image = _image_for_display(images[i])
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            if overlays is not None:
                ax.imshow(overlays[i], cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear",
                          extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
            ax.set_title(titles[i], fontsize=7)
        fig.suptitle(textwrap.fill(title, 60))
    return fig

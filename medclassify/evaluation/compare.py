"""One table and one plot of every run of a dataset."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, atomic_write_text
from ..errors import InputError
from . import plots

_FOLD = re.compile(r"^fold_\d+$")
# (column, metrics.json key, CI key) in table order.
COLUMNS = (
    ("auc", "auc", "auc"),
    ("accuracy", "accuracy", "accuracy"),
    ("sensitivity", "sensitivity", "sensitivity"),
    ("specificity", "specificity", "specificity"),
    ("balanced_accuracy", "balanced_accuracy", None),
    ("average_precision", "average_precision", None),
    ("f1_macro", ("macro_avg", "f1"), None),
    ("mcc", "mcc", None),
    ("cohen_kappa", "cohen_kappa", None),
    ("brier", "brier", None),
    ("ece", "ece", None),
)


def run_label(metrics_path):
    """The run a metrics.json belongs to: ``results/<dataset>/<run>[/fold_k]/<stage>/metrics.json``."""
    path = Path(metrics_path)
    run_dir = path.parent.parent
    if _FOLD.match(run_dir.name):
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def _lookup(metrics, key):
    if isinstance(key, tuple):
        value = metrics
        for part in key:
            value = value.get(part, {}) if isinstance(value, dict) else None
        return value if not isinstance(value, dict) else None
    return metrics.get(key)


def runs_table(metrics_paths):
    """DataFrame with one row per metrics.json: point estimates, CIs, threshold and source."""
    rows = []
    problems = []
    for metrics_path in metrics_paths:
        try:
            metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            problems.append(f"{metrics_path}: {error}")
            continue
        row = {"run": run_label(metrics_path), "stage": Path(metrics_path).parent.name,
               "n": metrics.get("n"), "n_patients": metrics.get("n_patients")}
        ci = metrics.get("ci", {})
        for column, key, ci_key in COLUMNS:
            row[column] = _lookup(metrics, key)
            if ci_key is not None:
                low, high = (ci.get(ci_key) or [None, None])
                row[f"{column}_low"], row[f"{column}_high"] = low, high
        ci_info = metrics.get("ci_info") or {}
        row["ci_level"] = ci_info.get("confidence")
        row["ci_reliable"] = ci_info.get("reliable")
        threshold = metrics.get("threshold", {})
        row["threshold_method"] = threshold.get("method")
        row["threshold"] = threshold.get("value")
        if "folds" in metrics:
            row["folds"] = metrics["folds"].get("n")
            mean, std = metrics["folds"].get("mean", {}), metrics["folds"].get("std", {})
            row["auc_fold_mean"], row["auc_fold_std"] = mean.get("auc"), std.get("auc")
        row["metrics"] = str(metrics_path)
        rows.append(row)
    if problems:
        raise InputError("cannot read the metrics of every run", problems)
    return pd.DataFrame(rows)


def _format_threshold(value):
    """A threshold to three significant digits: a k-fold one of 1.15e-07 at three decimals read
    0.000, as if every image were called positive."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value):
        return f"{value:.3g}"
    return _format(value)


def _format(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def _levels(table):
    """The confidence levels of the runs' intervals (runs without intervals left out), sorted."""
    levels = pd.to_numeric(table.get("ci_level", pd.Series(dtype=float)), errors="coerce").dropna()
    return sorted(set(levels.tolist()))


def _percent(level):
    return f"{level * 100:g}%"


def markdown_table(table):
    """A Markdown table of the runs: metric (low–high) cells for metrics with a CI.

    The header names the intervals' confidence level when every run has the same; otherwise each
    cell does. A run whose test split has a class from a single patient is marked: its intervals
    are too narrow (``ci_info.reliable``).
    """
    has_folds = "auc_fold_mean" in table.columns
    levels = _levels(table)
    ci = f"{_percent(levels[0])} CI" if len(levels) == 1 else "CI"
    header = ["run", "n (patients)", f"AUC ({ci})", f"accuracy ({ci})", f"sensitivity ({ci})",
              f"specificity ({ci})", "balanced acc.", "macro F1", "MCC", "Brier", "ECE", "threshold"]
    header += ["AUC over folds (mean ± sd)"] if has_folds else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    unreliable = False
    for row in table.to_dict("records"):
        narrow = row.get("ci_reliable") is False
        unreliable |= narrow
        cells = [f"{row['run']}" + (f" ({row['stage']})" if row["stage"] != "evaluation" else "") + ("*" if narrow else ""),
                 f"{_format(row['n'])} ({_format(row['n_patients'])})"]
        level = row.get("ci_level")
        prefix = f"{_percent(level)}: " if len(levels) > 1 and level is not None and not pd.isna(level) else ""
        for column in ("auc", "accuracy", "sensitivity", "specificity"):
            cells.append(f"{_format(row[column])} ({prefix}{_format(row[column + '_low'])}–"
                         f"{_format(row[column + '_high'])})")
        cells += [_format(row[c]) for c in ("balanced_accuracy", "f1_macro", "mcc", "brier", "ece")]
        cells.append(f"{row['threshold_method']} {_format_threshold(row['threshold'])}".strip())
        if has_folds:
            folds = row.get("folds")
            cells.append("–" if pd.isna(row["auc_fold_mean"]) else
                         f"{_format(row['auc_fold_mean'])} ± {_format(row['auc_fold_std'])} ({int(folds)} folds)")
        lines.append("| " + " | ".join(cells) + " |")
    if unreliable:
        lines.append("")
        lines.append("\\* A class of the test split comes from a single patient, or from none "
                     "(`ci_info.class_patients`): a single patient's images are in every bootstrap resample, so the "
                     "intervals are too narrow; an absent class leaves the AUC undefined.")
    if len(levels) > 1:
        lines.append("")
        lines.append(f"The runs' intervals have different confidence levels ({', '.join(map(_percent, levels))}): "
                     "each cell names its own.")
    return "\n".join(lines) + "\n"


def plot_auc_by_run(table):
    """Test AUC of each run with its patient-bootstrap confidence interval."""
    import matplotlib.pyplot as plt

    labels = [r if s == "evaluation" else f"{r} ({s})" for r, s in zip(table["run"], table["stage"])]
    auc = pd.to_numeric(table["auc"], errors="coerce").to_numpy(dtype=float)
    low = pd.to_numeric(table["auc_low"], errors="coerce").to_numpy(dtype=float)
    high = pd.to_numeric(table["auc_high"], errors="coerce").to_numpy(dtype=float)
    y = np.arange(len(labels))
    with plots.plot_style():
        fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(labels) + 1.4), layout="constrained")
        has_ci = np.isfinite(low) & np.isfinite(high)
        # Clipped: rounding can leave an interval a hair inside its point estimate, and
        # matplotlib refuses negative error bars.
        errors = np.clip(np.vstack([np.where(has_ci, auc - low, 0), np.where(has_ci, high - auc, 0)]), 0, None)
        ax.errorbar(auc, y, xerr=errors, fmt="o", color=plots.COLORS[0], capsize=3)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.axvline(0.5, color="grey", ls="--", lw=0.8)
        finite = np.concatenate([auc[np.isfinite(auc)], low[has_ci]])
        ax.set_xlim(min(0.45, finite.min() - 0.02) if finite.size else 0.45, 1.0)
        levels = _levels(table)
        level = _percent(levels[0]) + " " if len(levels) == 1 else ""
        ax.set_xlabel(f"Test AUC (bars: {level}patient-bootstrap CI"
                      + ("; levels differ between runs" if len(levels) > 1 else "") + ")")
        ax.set_title("AUC by run")
    return fig


def compare_runs(metrics_paths, out_csv, out_md, out_png):
    """Write the table of all runs (CSV and Markdown) and the plot of their AUC with CIs."""
    metrics_paths = list(metrics_paths)
    if not metrics_paths:
        raise InputError("no runs to compare", ["compare_runs needs at least one metrics.json"])
    table = runs_table(metrics_paths)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out_md, markdown_table(table))
    fig = plot_auc_by_run(table)
    with atomic_path(out_png) as tmp, plots.plot_style():
        fig.savefig(tmp, format="png", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return table

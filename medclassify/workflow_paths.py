"""Names shared by the workflow and the library: the run wildcard and its fold, input paths."""

import os
import re

# Every evaluation plot, each written as PNG and PDF under the run's evaluation/ folder: the
# evaluate rule declares them, medclassify.evaluation.plots draws them.
PLOT_NAMES = ("confusion_matrix", "roc", "pr", "calibration", "training_curves", "per_class",
              "score_histograms", "misclassified", "gradcam")

_RUN = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)(?:/fold_(?P<fold>\d+))?$")


def parse_run(run):
    """Split a ``{run}`` wildcard value into ``(name, fold)``; fold is None outside k-fold."""
    match = _RUN.match(run)
    if not match:
        raise ValueError(f"not a run name: {run!r}")
    fold = match.group("fold")
    return match.group("name"), (int(fold) if fold is not None else None)


def run_ids(run_names, folds=None):
    """Every ``{run}`` value: the names, or ``name/fold_k`` for each of ``folds`` folds."""
    if not folds:
        return list(run_names)
    return [f"{name}/fold_{k}" for name in run_names for k in range(folds)]


def input_path(path):
    """``path`` spelled as one rule input: as written, normalised; no input (``[]``) for None.

    Snakemake reruns a job whose set of input paths changed, so two spellings of one file would
    rerun it and all that follows. A path that lies inside the working directory as written is
    relative to it (the config's ``data/m.csv``, the Makefile's absolute path and ``./data/m.csv``
    are one input), also where ``data`` is a symbolic link to another disk, which a project moved
    with its link keeps. Outside it the path keeps the kind the user gave: ``../data/m.csv`` stays
    relative, so that moving the project together with its data reruns nothing, and
    ``/data/m.csv`` stays absolute, so that moving the project away from data that stays put
    reruns nothing either. Symbolic links are not resolved: resolving one made the path depend
    on where its target lies, which moving the project changes.
    """
    if path is None:
        return []
    path = os.fspath(path)
    absolute = os.path.abspath(path)
    for base in _working_directory_spellings():
        if absolute == base or absolute.startswith(base.rstrip(os.sep) + os.sep):
            return os.path.relpath(absolute, base)
    return absolute if os.path.isabs(path) else os.path.normpath(path)


def _working_directory_spellings():
    """The working directory as the system gives it, and as the shell names it (``$PWD``, which
    may go through a symbolic link, ``/home/u`` for ``/data/home/u``) where that is the same folder."""
    cwd = os.getcwd()
    spellings = [cwd]
    shell = os.environ.get("PWD")
    if shell and os.path.isabs(shell) and shell != cwd:
        try:
            if os.path.samefile(shell, cwd):
                spellings.append(os.path.normpath(shell))
        except OSError:
            pass
    return spellings


def manifest_root(options):
    """The folder a user's manifest paths are relative to (``root``, or the manifest's own folder),
    spelled as :func:`input_path` spells files."""
    return input_path(options["root"] or os.path.dirname(options["manifest"]) or ".")

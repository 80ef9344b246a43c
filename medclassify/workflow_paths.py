"""Names shared by the workflow and the library: the run wildcard and its fold, input paths."""

import os
import re

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
    """``path`` spelled as one rule input: relative to the working directory, symlinks resolved; no
    input (``[]``) for None.

    Snakemake reruns a job whose set of input paths changed, so two spellings of one file (the
    config's relative path, the Makefile's absolute one, a link) would rerun it and all that
    follows. Relative even outside the working directory (``../data/m.csv``), so that moving or
    copying the project together with its data, or mounting both elsewhere, reruns nothing.
    """
    if path is None:
        return []
    return os.path.relpath(os.path.realpath(path), os.path.realpath(os.getcwd()))

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
    """``path`` spelled as one rule input, symlinks resolved; no input (``[]``) for None.

    Snakemake reruns a job whose set of input paths changed, so two spellings of one file would
    rerun it and all that follows. Inside the working directory the path is relative to it (the
    config's ``data/m.csv``, the Makefile's absolute path and ``./data/m.csv`` are one input).
    Outside it the path keeps the kind the user gave: ``../data/m.csv`` stays relative, so that
    moving the project together with its data reruns nothing, and ``/data/m.csv`` stays absolute,
    so that moving the project away from data that stays put reruns nothing either.
    """
    if path is None:
        return []
    resolved, cwd = os.path.realpath(path), os.path.realpath(os.getcwd())
    inside = resolved == cwd or resolved.startswith(cwd.rstrip(os.sep) + os.sep)
    if os.path.isabs(path) and not inside:
        return resolved
    return os.path.relpath(resolved, cwd)


def manifest_root(options):
    """The folder a user's manifest paths are relative to (``root``, or the manifest's own folder),
    spelled as :func:`input_path` spells files."""
    return input_path(options["root"] or os.path.dirname(options["manifest"]) or ".")

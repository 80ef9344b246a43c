"""Leak-free assignment of samples to train, val and test (or k folds), grouped by patient.

Splitting images instead of patients is the best documented way imaging studies overstate
their results, so every method here keeps each patient in exactly one split and checks the
result itself before returning it:

- no patient (the salted hash) in two splits, or in two k-fold validation folds;
- no identical image content (``content_hash``) in two splits. With ``drop_duplicates: false``
  (the default) patients that share an identical image are linked into one group before
  splitting, because the same image under two patient ids is most often the same person filed
  twice; they then land in the same split and the report lists them. With
  ``drop_duplicates: true`` patients are not linked; a duplicate is removed from the later split
  (train < val < test) and listed in the report. ``kfold`` drops before dealing the folds, so
  that no fold can lose all its images afterwards: a test copy of a trainval image goes, and of
  the trainval copies only those of one patient (the one with the first ``sample_id``) stay.
  A split (or fold) that dropping would leave empty is an error, never an empty split written.
  For ``predefined`` splits a duplicate across splits is an error unless ``drop_duplicates`` is
  set.

Determinism: rows are sorted by ``sample_id`` (unique) before anything random happens, and
every random choice comes from ``split.seed``. The same manifest in any row order and the
same seed give the same ``splits.csv``; another seed or other fractions give another split.
Nothing else (preprocessing, training options) enters.

``grouped_stratified`` uses scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`
as its base: a split of fraction *f* is the union of ``round(f * n)`` of its *n* folds. Several
seeded shufflings and every run of consecutive folds are scored, the best few candidates are
improved by a local search that moves or swaps whole patient groups, and the best result is
kept. The score is the largest deviation, in percentage points, of the split's share of samples
and of its class proportions from their targets (the class proportions of the whole dataset).
The report gives every deviation and whether all lie within :data:`TOLERANCE_POINTS`.

``kfold`` first holds out a test set exactly as above (it depends on the seed and the test
fraction only, not on k), then chooses the validation folds one at a time in the same way, each
1/k of the remaining samples; the last fold is what is left. ``fractions.train`` and
``fractions.val`` are unused: fold k trains on the other k-1 folds.

Beyond a few thousand patient groups (MedMNIST imports have one image per "patient"),
StratifiedGroupKFold's per-group Python loop is replaced by dealing shuffled groups
round-robin per class, which is what it converges to for small groups.
"""

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, atomic_write_json, atomic_write_text
from .config import empty_split_problems, with_section_defaults
from .content import is_constant_content
from .errors import InputError

__all__ = [
    "METHODS", "SPLITS", "TOLERANCE_POINTS", "assignment", "check_no_leakage", "make_splits",
    "write_split_outputs",
]

SPLITS = ("train", "val", "test")
METHODS = ("grouped_stratified", "predefined", "kfold")
TOLERANCE_POINTS = 2.0
REQUIRED_COLUMNS = ("sample_id", "label", "patient", "content_hash", "modality")

# StratifiedGroupKFold granularity: a split is a union of some of at most this many folds.
_BASE_FOLDS = 20
# Seeded shufflings of StratifiedGroupKFold tried per selection, and candidates refined further.
_SHUFFLES = 4
_REFINED = 3
_MAX_LOCAL_STEPS = 400
_GOOD_ENOUGH_POINTS = 0.05
# StratifiedGroupKFold places groups one by one in Python (about 1 ms per group). Beyond
# _MANY_GROUPS groups the fractions are easy to meet and one shuffle is enough; beyond
# _HUGE_GROUPS (e.g. MedMNIST's one-image "patients") groups are dealt round-robin per class
# after a seeded shuffle, which is what StratifiedGroupKFold converges to for small groups.
_MANY_GROUPS = 300
_HUGE_GROUPS = 3000


def make_splits(validated_df, options):
    """Assign every sample of a validated manifest to a split; return ``(splits_df, report)``.

    ``validated_df`` has the columns ``sample_id, label, patient, content_hash, modality`` and,
    for ``method: predefined``, ``split``. ``options`` is the ``split`` config section
    (``method``, ``fractions``, ``folds``, ``seed``, ``drop_duplicates``).

    ``splits_df`` has ``sample_id, split`` in the manifest's row order (rows dropped as
    duplicates are absent); with ``method: kfold`` also ``fold`` (0..k-1 for ``trainval`` rows,
    -1 for ``test`` rows). ``report`` is a JSON-serialisable dict (see :func:`split_report`).

    Raises :class:`InputError` listing every problem: missing columns, repeated sample ids,
    empty labels or patients, too few patients for the requested splits, and, for predefined
    splits, unknown split names, patients in two splits or duplicates across splits.
    """
    options = _check_options(options)
    table = _check_table(validated_df, options["method"])
    # Canonical order: the result must not depend on the manifest's row order.
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    classes = sorted(table["label"].unique())
    method = options["method"]
    linked = []
    dropped_before_folds = None
    if method == "predefined":
        table["split"] = table["split"].str.strip()
        table["fold"] = -1
    else:
        if options["drop_duplicates"]:
            table["group"] = table["patient"]
        else:
            table["group"], linked = _link_patients_sharing_content(table)
        rng = np.random.default_rng(options["seed"])
        if method == "grouped_stratified":
            table["split"] = _grouped_stratified(table, classes, options["fractions"], rng)
            table["fold"] = -1
        else:
            table["split"], table["fold"], dropped_before_folds = _kfold(table, classes, options, rng)

    dropped = _drop_duplicates(table, dropped_before_folds) if options["drop_duplicates"] else []
    if dropped:
        # k-fold's trainval rows without a fold are the copies dropped before the folds were
        # dealt: not a split of their own.
        units_before = _unit_names(table).value_counts().drop("trainval", errors="ignore")
        table = table[~table["sample_id"].isin({d["sample_id"] for d in dropped})]
        _check_no_unit_emptied(units_before, _unit_names(table), dropped)
    check_no_leakage(table, fold_column="fold" if method == "kfold" else None)
    _check_every_split_filled(table, method, options["folds"])

    # Back to the manifest's row order, which is also the cache's order.
    order = {sample_id: i for i, sample_id in enumerate(validated_df["sample_id"].astype(str))}
    table = table.assign(_order=table["sample_id"].map(order)).sort_values("_order").drop(columns="_order")
    columns = ["sample_id", "split"] + (["fold"] if method == "kfold" else [])
    splits_df = table[columns].reset_index(drop=True)
    if method == "kfold":
        splits_df["fold"] = splits_df["fold"].astype(int)
    report = split_report(table, classes, options, dropped=dropped, linked=linked)
    # A split without some class is written down in the report, and said where it is seen: a
    # model never trained on a class, or never validated or tested on it, is easy to miss.
    for note in report["notes"]:
        if "has no samples of class" in note:
            warnings.warn(note, stacklevel=2)
    return splits_df, report


SPLIT_NAMES = ("train", "val", "test", "trainval")


def read_splits_file(path):
    """``splits.csv`` as a DataFrame (``sample_id`` and ``split`` as strings, ``fold`` as integers).

    Raises InputError naming the file and every problem: unreadable or empty, a missing column,
    a split name other than train, val, test or trainval, a sample listed twice, a fold that is
    not an integer.
    """
    try:
        table = pd.read_csv(path, dtype={"sample_id": str, "split": str}, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"{path}: not found", ["run the split stage first"]) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable splits file (rerun the split stage)", [str(error)]) from None
    problems = [f"no {column!r} column" for column in ("sample_id", "split") if column not in table.columns]
    if "split" in table.columns:
        unknown = ~table["split"].isin(SPLIT_NAMES)
        problems += [f"line {i + 2}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}"
                     for i, value in table.loc[unknown, "split"].head(5).items()]
    if "sample_id" in table.columns:
        repeated = table["sample_id"].duplicated(keep=False)
        problems += [f"line {i + 2}: sample {value!r} is listed more than once (a sample belongs to one split)"
                     for i, value in table.loc[repeated, "sample_id"].head(5).items()]
    if "fold" in table.columns:
        folds = pd.to_numeric(table["fold"], errors="coerce")
        not_integer = folds.isna() | (folds != folds.round())
        problems += [f"line {i + 2}: fold {value!r} is not an integer"
                     for i, value in table.loc[not_integer, "fold"].head(5).items()]
        if not not_integer.any():
            table["fold"] = folds.astype(int)
    if problems:
        raise InputError(f"{path}: not a valid splits file (rerun the split stage)", problems)
    return table


def assignment(splits_df, fold=None):
    """Sample ids per split, ``{"train": [...], "val": [...], "test": [...]}``, in file order.

    For k-fold splits (a ``fold`` column) ``fold`` is required: val is the rows of that fold,
    train every other non-test row. Raises :class:`ValueError` when ``fold`` does not fit the
    table (missing for k-fold, given for a plain split, or out of range).
    """
    sample_ids = splits_df["sample_id"].astype(str)
    split = splits_df["split"].astype(str)
    if "fold" not in splits_df.columns:
        if fold is not None:
            raise ValueError(f"fold {fold} requested, but these splits have no fold column (not k-fold)")
        return {name: sample_ids[split == name].tolist() for name in SPLITS}
    folds = pd.to_numeric(splits_df["fold"]).astype(int)
    available = sorted(set(folds[folds >= 0]))
    if fold is None:
        raise ValueError(f"k-fold splits need a fold (one of {available})")
    if fold not in available:
        raise ValueError(f"fold {fold} is not among this split's folds {available}")
    return {
        "train": sample_ids[(folds >= 0) & (folds != fold)].tolist(),
        "val": sample_ids[folds == fold].tolist(),
        "test": sample_ids[split == "test"].tolist(),
    }


def split_sample_ids(splits_df, fold=None, source="splits.csv"):
    """Sample ids per split from a splits.csv table: :func:`assignment`.

    Raises InputError naming ``source`` when ``fold`` does not fit the table: missing for a
    k-fold split, given for a plain one, or not one of its folds (-1 marks the test rows).
    """
    try:
        return assignment(splits_df, fold)
    except ValueError as error:
        raise InputError(f"{source}: {error}", ["give a k-fold split's fold (--fold, 0 to k-1) and a plain "
                                                "split none"]) from None


def check_no_leakage(table, fold_column=None):
    """Raise :class:`InputError` if a patient or an image content appears in two splits.

    ``table`` has ``sample_id, patient, content_hash, split`` and, when ``fold_column`` is
    given, that column too: then the k-fold validation folds count as separate splits.
    """
    unit = table["split"].astype(str)
    if fold_column is not None:
        folds = table[fold_column].astype(int)
        unit = unit.where(folds < 0, "fold " + folds.astype(str))
    problems = []
    for keys, what in ((table["patient"], "patient"), (content_keys(table), "identical image (content_hash)")):
        keys = keys.to_numpy()
        spread = unit.groupby(keys).nunique()
        for key in spread.index[spread > 1]:
            rows = keys == key
            where = sorted(set(unit[rows]), key=_unit_order)
            samples = table.loc[rows, "sample_id"].tolist()
            shown = ", ".join(samples[:4]) + (f" and {len(samples) - 4} more" if len(samples) > 4 else "")
            problems.append(f"{what} {key} is in {' and '.join(where)} (samples {shown})")
    if problems:
        raise InputError(
            "the split leaks: the same patient or image would be in more than one split "
            "(fix the manifest's split column, or set split.drop_duplicates: true for duplicates)",
            problems,
        )


def content_keys(table):
    """``table``'s content hashes as keys of identical images: a blank image's (every pixel equal)
    made its own, as it shares its content with every other blank one of its size by having none,
    and neither links patients nor counts as a duplicate or a leak (the edge slices of volumes)."""
    hashes = table["content_hash"].astype(str)
    return hashes.where(~hashes.map(is_constant_content), hashes + "#" + table["sample_id"].astype(str))


def recorded_options(options):
    """The ``split`` options as the report records them and :func:`check_split_made_with` compares them."""
    options = _check_options(options)
    return {"method": options["method"], "fractions": {k: float(v) for k, v in options["fractions"].items()},
            "folds": int(options["folds"]), "seed": int(options["seed"]),
            "drop_duplicates": bool(options["drop_duplicates"])}


def check_split_made_with(report_path, options, remedy):
    """Raise InputError when the split report at ``report_path`` records other ``split`` options.

    Snakemake reruns the split when its options change, but not where it keeps no record of the
    split job (``results/`` copied without ``.snakemake/metadata`` and accepted with a plain
    ``--touch``): the run card would state options the split was not made with. A report from
    before the options were recorded passes.
    """
    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    recorded, stated = report.get("options"), recorded_options(options)
    if recorded is None or recorded == stated:
        return
    differing = [f"split.{key}: made with {recorded.get(key)!r}, the config states {stated[key]!r}"
                 for key in stated if recorded.get(key) != stated[key]]
    raise InputError(f"{report_path}: the split was made with other options than the config's", [*differing, remedy])


def split_report(table, classes, options, dropped=(), linked=()):
    """The split report: counts, patients, target and achieved fractions, class proportions.

    Percentage-point deviations are achieved minus target. For ``kfold`` the per-fold
    validation sets are reported under ``"folds"``; their size target is ``1/k`` of the
    non-test samples.
    """
    method = options["method"]
    n_total = len(table)
    overall = table["label"].value_counts().reindex(classes, fill_value=0) / max(n_total, 1)
    names = ("trainval", "test") if method == "kfold" else SPLITS
    report = {
        "method": method,
        "seed": options["seed"],
        # Every option the split was made with, which evaluation checks against its config.
        "options": recorded_options(options),
        "classes": classes,
        "n_samples": n_total,
        "n_patients": int(table["patient"].nunique()),
        "tolerance_points": TOLERANCE_POINTS,
        "samples": {},
        "patients": {},
        "counts": {},
        "modality_counts": {},
        "class_proportions": {"all": _rounded(overall)},
        "target_fractions": None,
        "achieved_fractions": {},
        "fraction_deviation_points": None,
        "class_proportion_deviation_points": {},
    }
    for name in names:
        rows = table[table["split"] == name]
        _describe(report, name, rows, classes, overall)
        report["achieved_fractions"][name] = round(len(rows) / max(n_total, 1), 4)
    if method != "predefined":
        targets = dict(options["fractions"])
        if method == "kfold":
            targets = {"trainval": 1 - targets["test"], "test": targets["test"]}
            report["folds"] = options["folds"]
        report["target_fractions"] = targets
        report["fraction_deviation_points"] = {
            name: round(100 * (report["achieved_fractions"][name] - targets[name]), 2) for name in names
        }
    if method == "kfold":
        trainval = table[table["split"] == "trainval"]
        report["fold_details"] = []
        for k in range(options["folds"]):
            rows = trainval[trainval["fold"] == k]
            detail = {"fold": k}
            _describe(detail, "val", rows, classes, overall)
            detail = {key: (value["val"] if isinstance(value, dict) else value) for key, value in detail.items()}
            detail["fraction_of_trainval"] = round(len(rows) / max(len(trainval), 1), 4)
            detail["fraction_deviation_points"] = round(100 * (detail["fraction_of_trainval"] - 1 / options["folds"]), 2)
            report["fold_details"].append(detail)
    deviations = [abs(v) for v in (report["fraction_deviation_points"] or {}).values()]
    for per_class in report["class_proportion_deviation_points"].values():
        deviations += [abs(v) for v in per_class.values()]
    report["max_deviation_points"] = round(float(max(deviations, default=0.0)), 2)
    report["within_tolerance"] = bool(report["max_deviation_points"] <= TOLERANCE_POINTS)
    report["dropped_duplicates"] = list(dropped)
    report["linked_patients"] = [list(group) for group in linked]
    report["notes"] = _notes(report, method)
    return report


def write_split_outputs(splits_df, report, splits_csv, report_json, report_png):
    """Write ``splits.csv``, the report JSON and its plot (stacked bars per split by class)."""
    buffer = io.StringIO()
    splits_df.to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_text(splits_csv, buffer.getvalue())
    atomic_write_json(report_json, report)
    figure = plot_split_report(report)
    with atomic_path(report_png) as tmp:
        figure.savefig(tmp, format="png", dpi=120, metadata={"Software": None})


def plot_split_report(report):
    """Stacked bars of samples per class for each split (and each k-fold validation fold)."""
    classes = report["classes"]
    bars = {name: report["counts"][name] for name in report["counts"]}
    patients = dict(report["patients"])
    for detail in report.get("fold_details", []):
        name = f"fold {detail['fold']} val"
        bars[name] = detail["counts"]
        patients[name] = detail["patients"]
    # Imported here: training and evaluation read splits.csv through this module (read_splits_file)
    # and need neither Matplotlib nor scikit-learn's splitters.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Agg canvas without pyplot: no global backend state in a library.
    figure = Figure(figsize=(max(4.5, 1.2 * len(bars) + 2), 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    names = list(bars)
    bottom = np.zeros(len(names))
    for cls in classes:
        heights = np.array([bars[name].get(cls, 0) for name in names], dtype=float)
        ax.bar(names, heights, bottom=bottom, label=cls)
        bottom += heights
    for i, name in enumerate(names):
        ax.annotate(f"{int(bottom[i])} img\n{patients[name]} pat", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottom.max(initial=0), 1) * 1.2)
    ax.set_ylabel("images")
    title = f"split: {report['method']} (seed {report['seed']})"
    if report["fraction_deviation_points"] is not None:
        title += f", max deviation {report['max_deviation_points']:.1f} points"
    ax.set_title(title, fontsize=10)
    ax.legend(title="class", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


# --- input checks --------------------------------------------------------------------------------
def _check_options(options):
    options = with_section_defaults("split", options or {})
    problems = []
    if options["method"] not in METHODS:
        problems.append(f"split.method {options['method']!r} is not one of {', '.join(METHODS)}")
    fractions = {name: float(options["fractions"][name]) for name in SPLITS}
    if any(f < 0 or f > 1 for f in fractions.values()):
        problems.append(f"split.fractions must lie in [0, 1], got {fractions}")
    if abs(sum(fractions.values()) - 1) > 1e-6:
        problems.append(f"split.fractions must sum to 1, got {sum(fractions.values()):g}")
    # A split left empty would fail in training or evaluation, after the preprocessing.
    problems += empty_split_problems({"method": options["method"], "fractions": fractions})
    if options["method"] == "kfold" and (int(options["folds"]) < 2):
        problems.append(f"split.folds must be at least 2, got {options['folds']}")
    if problems:
        raise InputError("invalid split options", problems)
    options["fractions"] = fractions
    options["folds"] = int(options["folds"])
    return options


def _check_table(validated_df, method):
    missing = [c for c in REQUIRED_COLUMNS + (("split",) if method == "predefined" else ()) if c not in validated_df.columns]
    if missing:
        hint = " (method predefined reads the manifest's split column)" if "split" in missing else ""
        raise InputError("the validated manifest lacks columns the split needs" + hint,
                         [f"missing column {c!r}" for c in missing])
    columns = list(REQUIRED_COLUMNS) + (["split"] if method == "predefined" else [])
    table = validated_df[columns].copy()
    for column in columns:
        table[column] = table[column].fillna("").astype(str)
        # A sample id is the image's path, as the cache keeps it: a file name may end in a space.
        if column != "sample_id":
            table[column] = table[column].str.strip()
    # Linking, duplicates and the leak check all read these keys.
    table["content_hash"] = content_keys(table)
    problems = []
    for column in ("sample_id", "label", "patient", "content_hash"):
        for row in np.flatnonzero((table[column].str.strip() == "").to_numpy())[:50]:
            problems.append(f"row {row + 2}: empty {column}")
    repeated = table["sample_id"][table["sample_id"].duplicated()]
    for sample_id in repeated.unique()[:50]:
        problems.append(f"sample_id {sample_id!r} appears more than once")
    if method == "predefined":
        bad = ~table["split"].isin(SPLITS)
        for row in np.flatnonzero(bad.to_numpy())[:50]:
            problems.append(f"row {row + 2} ({table['sample_id'].iat[row]}): split {table['split'].iat[row]!r} "
                            f"is not one of {', '.join(SPLITS)}")
        if bad.sum() > 50:
            problems.append(f"… {bad.sum()} rows with a bad split value in all")
    if table.empty:
        problems.append("the manifest has no rows")
    if problems:
        raise InputError("the validated manifest cannot be split", problems)
    return table


# --- grouping ------------------------------------------------------------------------------------
def _link_patients_sharing_content(table):
    """Group id per row: patients connected through an identical image form one group.

    Returns ``(groups, linked)`` where ``linked`` lists the patient sets that were merged.
    """
    parent = {}

    def find(p):
        parent.setdefault(p, p)
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    spread = table.groupby("content_hash")["patient"].nunique()
    shared_hashes = set(spread.index[spread > 1])
    shared = table[table["content_hash"].isin(shared_hashes)].groupby("content_hash")["patient"].agg(lambda s: sorted(set(s)))
    for patients in shared:
        root = min(find(p) for p in patients)
        for p in patients:
            parent[find(p)] = root
    if not parent:
        return table["patient"].copy(), []
    groups = table["patient"].map(lambda p: find(p) if p in parent else p)
    members = {}
    for p in parent:
        members.setdefault(find(p), set()).add(p)
    linked = [sorted(m) for m in members.values() if len(m) > 1]
    return groups, sorted(linked)


def _group_class_counts(table, classes):
    """``(group_ids, counts)``: sorted group ids and their (groups × classes) sample counts."""
    counts = pd.crosstab(table["group"], table["label"]).reindex(columns=classes, fill_value=0).sort_index()
    return counts.index.to_numpy(), counts.to_numpy(dtype=np.int64)


# --- grouped stratified selection --------------------------------------------------------------
def _grouped_stratified(table, classes, fractions, rng):
    groups, counts = _group_class_counts(table, classes)
    wanted = [name for name in SPLITS if fractions[name] > 0]
    if len(groups) < len(wanted):
        raise InputError(
            f"too few patients to split: {len(groups)} patient group(s) for {len(wanted)} non-empty splits",
            [f"splits with a non-zero fraction: {', '.join(wanted)}"],
        )
    target = counts.sum(axis=0) / counts.sum()
    n_total = counts.sum()
    assigned = np.full(len(groups), "train", dtype=object)
    available = np.ones(len(groups), dtype=bool)
    # Test first, then val from the rest; each keeps enough groups for the splits still to come.
    for position, name in enumerate(("test", "val")):
        if fractions[name] <= 0:
            continue
        still_needed = sum(1 for later in ("val", "train")[position:] if fractions[later] > 0)
        chosen = _select_groups(counts, available, fractions[name] * n_total, target, n_total,
                                keep_outside=still_needed, rng=rng)
        assigned[chosen] = name
        available &= ~chosen
    split_of_group = dict(zip(groups, assigned))
    return table["group"].map(split_of_group).to_numpy()


def _select_groups(counts, available, target_size, target_props, n_total, *, keep_outside, rng):
    """Choose groups among ``available`` whose samples best match a size and class proportions.

    Candidates are unions of consecutive StratifiedGroupKFold folds over several seeded
    shufflings; the best few are refined by local search. Returns a boolean mask over groups.
    At least one group is chosen, and at least ``keep_outside`` available groups are left.
    """
    pool = np.flatnonzero(available)
    pool_counts = counts[pool]
    n_pool_groups = len(pool)
    # Dealt folds cost nothing, and the local search moves one small group per step: with many
    # groups, start from the closest union of folds rather than the fewest folds.
    n_folds, take = _fold_plan(target_size / pool_counts.sum(), min(n_pool_groups, pool_counts.sum(axis=0).max()),
                               tolerance=0.001 if n_pool_groups > _HUGE_GROUPS else 0.01)
    shuffles = 1 if n_pool_groups > _MANY_GROUPS else _SHUFFLES

    # StratifiedGroupKFold works on samples: one row per sample with its group and class.
    sample_group = np.repeat(np.arange(n_pool_groups), pool_counts.sum(axis=1))
    sample_class = np.concatenate([np.repeat(np.arange(counts.shape[1]), row) for row in pool_counts])
    candidates = []
    for _ in range(shuffles):
        fold_of_group = _stratified_group_folds(sample_class, sample_group, n_pool_groups, n_folds,
                                                int(rng.integers(2**31 - 1)))
        for start in range(n_folds):
            folds = [(start + i) % n_folds for i in range(take)]
            candidates.append(np.isin(fold_of_group, folds))
    scorer = _Scorer(pool_counts, target_size, target_props, n_total)
    candidates = [c for c in candidates if 0 < c.sum() <= n_pool_groups - keep_outside]
    if not candidates:  # degenerate pools: start from the single smallest group
        start = np.zeros(n_pool_groups, dtype=bool)
        start[np.argmin(pool_counts.sum(axis=1))] = True
        candidates = [start]
    candidates.sort(key=scorer.score)
    best = None
    for candidate in candidates[:_REFINED]:
        refined = _local_search(candidate, scorer, keep_outside, rng)
        if best is None or scorer.score(refined) < scorer.score(best) - 1e-12:
            best = refined
    chosen = np.zeros(len(counts), dtype=bool)
    chosen[pool[best]] = True
    return chosen


def _fold_plan(fraction, max_folds, tolerance=0.01):
    """``(n_folds, take)``: the fewest folds whose ``take`` of them come within ``tolerance`` of ``fraction``.

    Fewer folds keep StratifiedGroupKFold fast; the local search corrects what is left.
    """
    best = None
    for n_folds in range(2, max(2, min(_BASE_FOLDS, max_folds)) + 1):
        take = int(np.clip(round(fraction * n_folds), 1, n_folds - 1))
        error = abs(take / n_folds - fraction)
        if best is None or error < best[0] - 1e-12:
            best = (error, n_folds, take)
        if error <= tolerance:
            break
    return best[1], best[2]


def _stratified_group_folds(sample_class, sample_group, n_groups, n_folds, random_state):
    """Fold index of every group from scikit-learn's StratifiedGroupKFold."""
    # StratifiedGroupKFold refuses more folds than the largest class has samples (tiny pools).
    if n_groups > _HUGE_GROUPS or np.bincount(sample_class).max() < n_folds:
        return _dealt_group_folds(sample_class, sample_group, n_groups, n_folds, random_state)
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    fold_of_group = np.zeros(n_groups, dtype=int)
    with warnings.catch_warnings():
        # "The least populated class has only n members": expected for rare classes.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test_index) in enumerate(splitter.split(sample_group, sample_class, sample_group)):
            fold_of_group[np.unique(sample_group[test_index])] = fold
    return fold_of_group


def _dealt_group_folds(sample_class, sample_group, n_groups, n_folds, random_state):
    """Fold index of every group, dealing shuffled groups round-robin within their majority class."""
    rng = np.random.default_rng(random_state)
    per_class = np.zeros((n_groups, sample_class.max() + 1), dtype=np.int64)
    np.add.at(per_class, (sample_group, sample_class), 1)
    majority = per_class.argmax(axis=1)
    order = rng.permutation(n_groups)
    order = order[np.argsort(majority[order], kind="stable")]
    fold_of_group = np.empty(n_groups, dtype=int)
    fold_of_group[order] = (np.arange(n_groups) + int(rng.integers(n_folds))) % n_folds
    return fold_of_group


class _Scorer:
    """Deviation of a group selection from a target size and class proportions, in points."""

    def __init__(self, counts, target_size, target_props, n_total):
        self.counts = counts
        self.target_size = target_size
        self.target_props = target_props
        self.n_total = n_total

    def deviations(self, class_totals):
        """(…, 1 + classes) absolute deviations in points for class-total vectors (…, classes)."""
        sizes = class_totals.sum(axis=-1, keepdims=True)
        size_dev = np.abs(sizes - self.target_size) / self.n_total
        props = class_totals / np.maximum(sizes, 1)
        class_dev = np.where(sizes > 0, np.abs(props - self.target_props), 1.0)
        return 100 * np.concatenate([size_dev, class_dev], axis=-1)

    def score_totals(self, class_totals):
        # The worst deviation decides; the mean breaks ties towards overall closeness.
        dev = self.deviations(class_totals)
        return dev.max(axis=-1) + 0.1 * dev.mean(axis=-1)

    def score(self, mask):
        return float(self.score_totals(self.counts[mask].sum(axis=0)))


def _local_search(mask, scorer, keep_outside, rng):
    """Improve a selection by moving one group in or out, or else swapping a pair, while it helps.

    Stops once every deviation is below :data:`_GOOD_ENOUGH_POINTS`: further moves would
    not change anything a reader of the report cares about.
    """
    mask = mask.copy()
    counts = scorer.counts
    totals = counts[mask].sum(axis=0)
    current = float(scorer.score_totals(totals))
    for _ in range(_MAX_LOCAL_STEPS):
        if scorer.deviations(totals).max() < _GOOD_ENOUGH_POINTS:
            break
        inside, outside = np.flatnonzero(mask), np.flatnonzero(~mask)
        best_score, best_move = current, None
        # Single moves: add an outside group, or remove an inside one.
        if len(outside) > keep_outside:
            scores = scorer.score_totals(totals + counts[outside])
            i = int(np.argmin(scores))
            if scores[i] < best_score - 1e-9:
                best_score, best_move = float(scores[i]), ([outside[i]], [])
        if len(inside) > 1:
            scores = scorer.score_totals(totals - counts[inside])
            i = int(np.argmin(scores))
            if scores[i] < best_score - 1e-9:
                best_score, best_move = float(scores[i]), ([], [inside[i]])
        # Swaps, only when no single move helps: over every pair when affordable, else over a
        # seeded sample of pairs.
        if best_move is None and len(inside) and len(outside):
            ins, outs = inside, outside
            if len(ins) * len(outs) > 200_000:
                ins = rng.choice(inside, size=min(len(inside), 400), replace=False)
                outs = rng.choice(outside, size=min(len(outside), 400), replace=False)
            swapped = totals[None, None, :] - counts[ins][:, None, :] + counts[outs][None, :, :]
            scores = scorer.score_totals(swapped)
            i, j = np.unravel_index(int(np.argmin(scores)), scores.shape)
            if scores[i, j] < best_score - 1e-9:
                best_score, best_move = float(scores[i, j]), ([outs[j]], [ins[i]])
        if best_move is None:
            break
        added, removed = best_move
        mask[added] = True
        mask[removed] = False
        totals = totals + counts[added].sum(axis=0) - counts[removed].sum(axis=0)
        current = best_score
    return mask


# --- k-fold --------------------------------------------------------------------------------------
def _kfold(table, classes, options, rng):
    """``(split, fold, dropped)`` per row: a grouped stratified test set, then k folds over the rest.

    With ``drop_duplicates``, ``dropped`` marks the copies dropped before the folds are dealt
    (see :func:`_copies_to_drop_before_folds`; their fold is -1); otherwise it is None.
    """
    k = options["folds"]
    groups, counts = _group_class_counts(table, classes)
    test_fraction = options["fractions"]["test"]
    if len(groups) < k + (test_fraction > 0):
        raise InputError(
            f"too few patients for {k}-fold cross-validation: {len(groups)} patient group(s)",
            [f"need at least {k} outside the test set" + (" plus one for the test set" if test_fraction > 0 else "")],
        )
    target = counts.sum(axis=0) / counts.sum()
    n_total = counts.sum()
    is_test = np.zeros(len(groups), dtype=bool)
    if test_fraction > 0:
        is_test = _select_groups(counts, np.ones(len(groups), dtype=bool), test_fraction * n_total, target,
                                 n_total, keep_outside=k, rng=rng)
    test_rows = table["group"].map(dict(zip(groups, is_test))).to_numpy(dtype=bool)
    dropped = _copies_to_drop_before_folds(table, test_rows) if options["drop_duplicates"] else None
    rest = table[~test_rows if dropped is None else ~test_rows & ~dropped]
    fold_of_group = _deal_folds(rest, classes, k, target, rng, n_dropped=0 if dropped is None else int(dropped.sum()))
    folds = table["group"].map(fold_of_group).fillna(-1).to_numpy().astype(int)
    if dropped is not None:
        folds[dropped] = -1
    split = np.where(test_rows, "test", "trainval")
    return split, folds, dropped


def _deal_folds(rest, classes, k, target, rng, n_dropped):
    """``{group: fold}`` over the rows ``rest`` (those outside the test set that remain).

    Folds are chosen one at a time, each like a split of 1/k of these samples with the
    dataset's class proportions ``target``; the last fold is what remains, balanced because
    the others are.
    """
    groups, counts = _group_class_counts(rest, classes)
    if len(groups) < k:
        raise InputError(
            f"too few patients for {k}-fold cross-validation: {len(groups)} patient group(s) outside the test set "
            f"after split.drop_duplicates dropped {n_dropped} shared image(s)",
            [f"need at least {k}, one per fold: set split.drop_duplicates: false to keep patients that share an "
             "image together instead, or lower split.folds"],
        )
    n_rest = counts.sum()
    fold = np.full(len(groups), -1)
    available = np.ones(len(groups), dtype=bool)
    for k_index in range(k - 1):
        chosen = _select_groups(counts, available, n_rest / k, target, n_rest, keep_outside=k - 1 - k_index, rng=rng)
        fold[chosen] = k_index
        available &= ~chosen
    fold[available] = k - 1
    return dict(zip(groups, fold))


# --- duplicates ----------------------------------------------------------------------------------
def _copies_to_drop_before_folds(table, test_rows):
    """Mask of the k-fold rows that ``drop_duplicates`` drops before the folds are dealt.

    A test copy of an image that trainval holds too, and the trainval copies of other patients
    than the one whose copy has the first ``sample_id`` (``table`` is in ``sample_id`` order).
    What remains has no image in two patients outside the test set, so the folds, dealt by
    patient afterwards, share none, and no fold loses images once dealt.
    """
    content = table["content_hash"]
    in_trainval = set(content[~test_rows])
    test_copies = test_rows & content.isin(in_trainval).to_numpy()
    trainval = table[~test_rows]
    keeper = trainval.groupby("content_hash")["patient"].transform("first")
    other_patients = pd.Series(False, index=table.index)
    other_patients[trainval.index] = (trainval["patient"] != keeper).to_numpy()
    return test_copies | other_patients.to_numpy()


def _drop_duplicates(table, later=None):
    """Report entries of the rows to drop: ``later`` (a mask), by default every copy of an image
    outside the earliest split (then fold) it is in."""
    if later is None:
        split_rank = table["split"].map({"train": 0, "trainval": 0, "val": 1, "test": 2}).to_numpy()
        folds = table["fold"].to_numpy().astype(int)
        rank = pd.Series(split_rank * 10_000 + np.maximum(folds, 0), index=table.index)
        first_rank = rank.groupby(table["content_hash"]).transform("min")
        later = rank > first_rank
    later = pd.Series(np.asarray(later, dtype=bool), index=table.index)
    if not later.any():
        return []
    unit = _unit_names(table)
    kept = table[~later & table["content_hash"].isin(set(table.loc[later, "content_hash"]))]
    kept_ids = kept.groupby("content_hash")["sample_id"].agg(list)
    kept_unit = unit[kept.index].groupby(kept["content_hash"]).first()
    return [
        {
            "sample_id": table.at[index, "sample_id"],
            "split": unit[index],
            "content_hash": table.at[index, "content_hash"],
            "kept_in": kept_unit[table.at[index, "content_hash"]],
            "kept_sample_ids": kept_ids[table.at[index, "content_hash"]],
        }
        for index in table.index[later]
    ]


def _check_no_unit_emptied(units_before, units_after, dropped):
    """Raise :class:`InputError` if dropping duplicates left a split (or fold) without a sample.

    ``units_before`` counts the samples per split before dropping. Training and evaluation
    need every split they were given; an empty one is an error here, not at training time.
    """
    emptied = sorted(set(units_before.index) - set(units_after), key=_unit_order)
    if not emptied:
        return
    kept_in = {}
    for entry in dropped:
        if entry["split"] in emptied:
            kept_in.setdefault(entry["split"], set()).add(entry["kept_in"])
    raise InputError(
        f"split.drop_duplicates would leave the {' and '.join(emptied)} split{'s' if len(emptied) > 1 else ''} empty: "
        "each image there is also in another split",
        [f"{name}: all {units_before[name]} image(s) dropped, kept in {', '.join(sorted(kept_in[name], key=_unit_order))}"
         for name in emptied]
        + ["set split.drop_duplicates: false to keep patients that share an image in one split instead"],
    )


def _check_every_split_filled(table, method, folds):
    """Raise :class:`InputError` naming each split (or fold) without a sample: training needs train
    and val, evaluation val and test, and both would fail only after the stages before them."""
    units = set(_unit_names(table))
    needed = ([f"fold {k}" for k in range(folds)] + ["test"]) if method == "kfold" else list(SPLITS)
    empty = [name for name in needed if name not in units]
    if not empty:
        return
    if method == "predefined":
        hint = "no row of the manifest's split column names it"
    else:
        hint = f"too few patients ({table['patient'].nunique()}) for split.fractions and split.folds"
    raise InputError(f"the split would leave {', '.join(empty)} without samples: training needs train and val, "
                     "evaluation val and test", [f"{name}: {hint}" for name in empty])


def _unit_order(name):
    """Sort key of split names: train, trainval, val, test, then folds by number."""
    order = {"train": (0, 0), "trainval": (0, 1), "val": (1, 0), "test": (2, 0)}
    if name in order:
        return order[name]
    return (3, int(name.split()[-1]))


def _unit_names(table):
    """The split of each row, with k-fold rows named by their fold ("fold 2")."""
    folds = table["fold"].astype(int)
    return table["split"].where(folds < 0, "fold " + folds.astype(str))


# --- report helpers ------------------------------------------------------------------------------
def _describe(report, name, rows, classes, overall):
    counts = rows["label"].value_counts().reindex(classes, fill_value=0)
    report.setdefault("samples", {})[name] = int(len(rows))
    report.setdefault("patients", {})[name] = int(rows["patient"].nunique())
    report.setdefault("counts", {})[name] = {c: int(n) for c, n in counts.items()}
    report.setdefault("modality_counts", {})[name] = {m: int(n) for m, n in rows["modality"].value_counts().sort_index().items()}
    proportions = counts / max(len(rows), 1)
    report.setdefault("class_proportions", {})[name] = _rounded(proportions)
    if len(rows):
        report.setdefault("class_proportion_deviation_points", {})[name] = {
            c: round(float(100 * (proportions[c] - overall[c])), 2) for c in classes
        }


def _rounded(series):
    return {str(k): round(float(v), 4) for k, v in series.items()}


def _notes(report, method):
    notes = []
    for name, n in report["samples"].items():
        if n == 0:
            notes.append(f"the {name} split is empty")
    for name, counts in report["counts"].items():
        absent = [c for c, n in counts.items() if n == 0]
        if report["samples"][name] and absent:
            notes.append(f"the {name} split has no samples of class(es) {', '.join(absent)}")
    for detail in report.get("fold_details", []):
        absent = [c for c, n in detail["counts"].items() if n == 0]
        if absent:
            notes.append(f"the validation split of fold {detail['fold']} has no samples of class(es) {', '.join(absent)}")
    if method != "predefined" and not report["within_tolerance"]:
        notes.append(
            f"some fraction or class proportion is more than {TOLERANCE_POINTS:g} points from its target "
            f"(max {report['max_deviation_points']:g}); with few or large patient groups a closer split may not exist"
        )
    if method == "kfold":
        notes.append("k-fold: fractions.train and fractions.val are unused; each fold validates on about "
                     f"1/{report['folds']} of the non-test samples and trains on the rest")
    if report["linked_patients"]:
        notes.append(f"{len(report['linked_patients'])} group(s) of patients share identical images and were kept together")
    if report["dropped_duplicates"]:
        notes.append(f"{len(report['dropped_duplicates'])} duplicate image(s) dropped from later splits")
    return notes

"""Property-based tests of the splits over random manifests (hypothesis)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclassify.errors import InputError
from medclassify.splits import TOLERANCE_POINTS, assignment, make_splits
from tests.splits_fixtures import make_manifest, options, patients_per_unit, split_of

# Random, skewed manifests often leave a small split without some class, which make_splits warns
# of (test_splits checks the warning); these properties are about partitions, not class coverage.
pytestmark = pytest.mark.filterwarnings("ignore:the .* has no samples of class:UserWarning")

# Each example runs the real search; a handful of examples per property keeps the file near 30 s.
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def manifests(draw, min_patients=6, max_patients=60, max_images=8):
    """Random group sizes (1..max_images per patient) and random, possibly skewed, class balance."""
    n_patients = draw(st.integers(min_patients, max_patients))
    n_classes = draw(st.integers(2, 4))
    weights = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=n_classes, max_size=n_classes)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, draw(st.integers(1, max_images)) + 1, size=n_patients)
    labels = rng.choice([f"class{c}" for c in range(n_classes)], size=n_patients, p=weights / weights.sum())
    labels[:n_classes] = [f"class{c}" for c in range(n_classes)]
    return make_manifest(sizes, labels, seed=seed)


fractions = st.sampled_from([(0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.8, 0.05, 0.15)])


def _check_partition(manifest, splits):
    """Every sample exactly once, and each patient in exactly one split (or fold)."""
    assert sorted(splits["sample_id"]) == sorted(manifest["sample_id"])
    assert splits["sample_id"].is_unique
    assert all(len(units) == 1 for units in patients_per_unit(manifest, splits).values())


@SETTINGS
@given(manifest=manifests(), fraction=fractions, seed=st.integers(0, 1000))
def test_grouped_split_partitions_patients_and_is_deterministic(manifest, fraction, seed):
    train, val, test = fraction
    splits, report = make_splits(manifest, options(train=train, val=val, test=test, seed=seed))
    _check_partition(manifest, splits)
    for name, target in zip(("train", "val", "test"), fraction):
        # Every split gets at least one patient (a fraction of 0 is refused: later stages need all three).
        assert report["samples"][name] > 0
    # Same seed, rows in another order: the same assignment.
    shuffled = manifest.sample(frac=1, random_state=seed)
    again, again_report = make_splits(shuffled, options(train=train, val=val, test=test, seed=seed))
    assert split_of(again) == split_of(splits)
    assert again_report == report


@st.composite
def roomy_manifests(draw):
    """Many small patients and no rare class: 2-point tolerance is always reachable."""
    n_patients = draw(st.integers(150, 300))
    n_classes = draw(st.integers(2, 4))
    weights = np.array(draw(st.lists(st.floats(0.4, 1.0), min_size=n_classes, max_size=n_classes)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=n_patients)
    labels = rng.choice([f"class{c}" for c in range(n_classes)], size=n_patients, p=weights / weights.sum())
    return make_manifest(sizes, labels, seed=seed)


@SETTINGS
@given(manifest=roomy_manifests(), fraction=fractions, seed=st.integers(0, 1000))
def test_fractions_and_class_proportions_within_tolerance_where_feasible(manifest, fraction, seed):
    train, val, test = fraction
    splits, report = make_splits(manifest, options(train=train, val=val, test=test, seed=seed))
    merged = manifest.merge(splits, on="sample_id")
    overall = merged["label"].value_counts(normalize=True)
    for name, target in zip(("train", "val", "test"), fraction):
        rows = merged[merged["split"] == name]
        assert abs(len(rows) / len(merged) - target) * 100 <= TOLERANCE_POINTS
        proportions = rows["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (abs(proportions - overall) * 100 <= TOLERANCE_POINTS).all()
    assert report["within_tolerance"]


@SETTINGS
@given(manifest=manifests(min_patients=12), folds=st.integers(2, 6), seed=st.integers(0, 1000))
def test_kfold_covers_every_non_test_sample_in_exactly_one_validation_fold(manifest, folds, seed):
    splits, report = make_splits(manifest, options("kfold", folds=folds, seed=seed))
    _check_partition(manifest, splits)
    test_ids = set(splits.loc[splits["split"] == "test", "sample_id"])
    assert test_ids and (splits.loc[splits["split"] == "test", "fold"] == -1).all()
    non_test = set(splits["sample_id"]) - test_ids
    validation_counts = dict.fromkeys(non_test, 0)
    for fold in range(folds):
        parts = assignment(splits, fold)
        assert parts["val"], f"fold {fold} has an empty validation set"
        assert set(parts["train"]) | set(parts["val"]) == non_test
        assert set(parts["test"]) == test_ids
        for sample_id in parts["val"]:
            validation_counts[sample_id] += 1
        # Patients never cross train/val within a fold either.
        train_patients = set(manifest.set_index("sample_id").loc[parts["train"], "patient"])
        val_patients = set(manifest.set_index("sample_id").loc[parts["val"], "patient"])
        assert not train_patients & val_patients
    assert set(validation_counts.values()) == {1}
    assert len(report["fold_details"]) == folds


@SETTINGS
@given(manifest=manifests(min_patients=20), seed=st.integers(0, 1000), data=st.data())
def test_shared_images_never_cross_splits(manifest, seed, data):
    # Copy some images' content onto other patients' images: linked patients stay together.
    rng = np.random.default_rng(seed)
    n_links = data.draw(st.integers(1, 5))
    for _ in range(n_links):
        source, target = rng.choice(len(manifest), size=2, replace=False)
        manifest.loc[target, "content_hash"] = manifest.loc[source, "content_hash"]
    splits, report = make_splits(manifest, options(seed=seed))
    _check_partition(manifest, splits)
    where = split_of(splits)
    for _, rows in manifest.groupby("content_hash"):
        assert len({where[s] for s in rows["sample_id"]}) == 1
    # With drop_duplicates instead, every copy outside the earliest split is gone.
    dropped_splits, dropped_report = make_splits(manifest, options(seed=seed, drop_duplicates=True))
    where = split_of(dropped_splits)
    kept = manifest[manifest["sample_id"].isin(where)]
    for _, rows in kept.groupby("content_hash"):
        assert len({where[s] for s in rows["sample_id"]}) == 1
    assert len(dropped_splits) + len(dropped_report["dropped_duplicates"]) == len(manifest)


@SETTINGS
@given(manifest=manifests(min_patients=12), folds=st.integers(2, 6), seed=st.integers(0, 1000), data=st.data())
def test_kfold_with_drop_duplicates_leaves_no_fold_empty(manifest, folds, seed, data):
    # Patients whose images are all copies of another patient's: up to all but one of them,
    # so a fold dealt before dropping may hold copies only.
    rng = np.random.default_rng(seed)
    patients = manifest["patient"].unique()
    originals = manifest[manifest["patient"] == patients[0]]["content_hash"].to_numpy()
    for patient in rng.permutation(patients[1:])[:data.draw(st.integers(1, len(patients) - 1))]:
        rows = manifest.index[manifest["patient"] == patient]
        manifest.loc[rows, "content_hash"] = rng.choice(originals, size=len(rows))
    try:
        splits, report = make_splits(manifest, options("kfold", folds=folds, seed=seed, drop_duplicates=True))
    except InputError as error:  # too few patients left for the folds, or none for the test set
        assert f"too few patients for {folds}-fold" in str(error) or "would leave the test split empty" in str(error)
        return
    assert all(detail["samples"] > 0 for detail in report["fold_details"])
    assert len(splits) + len(report["dropped_duplicates"]) == len(manifest)
    where = split_of(splits)
    for _, rows in manifest[manifest["sample_id"].isin(where)].groupby("content_hash"):
        assert len({where[s] for s in rows["sample_id"]}) == 1


@settings(SETTINGS, max_examples=10)
@given(manifest=roomy_manifests(), folds=st.integers(3, 5), seed=st.integers(0, 1000))
def test_kfold_test_set_and_folds_within_tolerance_where_feasible(manifest, folds, seed):
    splits, report = make_splits(manifest, options("kfold", folds=folds, seed=seed))
    merged = manifest.merge(splits, on="sample_id")
    overall = merged["label"].value_counts(normalize=True)
    assert abs((merged["split"] == "test").mean() - 0.15) * 100 <= TOLERANCE_POINTS
    trainval = merged[merged["split"] == "trainval"]
    for fold in range(folds):
        rows = trainval[trainval["fold"] == fold]
        assert abs(len(rows) / len(trainval) - 1 / folds) * 100 <= TOLERANCE_POINTS
        proportions = rows["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (abs(proportions - overall) * 100 <= TOLERANCE_POINTS).all()

"""Patient-grouped splits: methods, guarantees, report and outputs (example-based tests)."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclassify.errors import InputError
from medclassify.splits import TOLERANCE_POINTS, assignment, make_splits, read_splits_file, write_split_outputs
from tests.splits_fixtures import make_manifest, options, patients_per_unit, random_manifest, split_of


@pytest.fixture(scope="module")
def manifest():
    return random_manifest(150, weights=[0.5, 0.3, 0.2], seed=7)


# --- grouped_stratified ----------------------------------------------------------------------
def test_grouped_split_keeps_patients_together_and_assigns_every_sample_once(manifest):
    splits, report = make_splits(manifest, options())
    assert list(splits.columns) == ["sample_id", "split"]
    assert splits["sample_id"].tolist() == manifest["sample_id"].tolist()  # manifest order
    assert set(splits["split"]) == {"train", "val", "test"}
    assert all(len(units) == 1 for units in patients_per_unit(manifest, splits).values())
    assert report["samples"] == splits["split"].value_counts().to_dict()
    assert report["patients"]["train"] + report["patients"]["val"] + report["patients"]["test"] == 150


def test_grouped_split_meets_fractions_and_reports_true_deviations(manifest):
    splits, report = make_splits(manifest, options())
    merged = manifest.merge(splits, on="sample_id")
    overall = merged["label"].value_counts(normalize=True)
    for name, target in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        rows = merged[merged["split"] == name]
        achieved = len(rows) / len(merged)
        assert abs(achieved - target) * 100 <= TOLERANCE_POINTS
        assert report["fraction_deviation_points"][name] == pytest.approx(100 * (achieved - target), abs=0.02)
        proportions = rows["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        for cls in overall.index:
            deviation = 100 * (proportions[cls] - overall[cls])
            assert abs(deviation) <= TOLERANCE_POINTS
            assert report["class_proportion_deviation_points"][name][cls] == pytest.approx(deviation, abs=0.02)
    assert report["within_tolerance"] is True
    assert report["target_fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}


def test_row_order_does_not_matter_but_seed_and_fractions_do(manifest):
    splits, _ = make_splits(manifest, options(seed=3))
    shuffled = manifest.sample(frac=1, random_state=1)
    again, _ = make_splits(shuffled, options(seed=3))
    assert again["sample_id"].tolist() == shuffled["sample_id"].tolist()
    assert split_of(again) == split_of(splits)
    other_seed, _ = make_splits(manifest, options(seed=4))
    assert split_of(other_seed) != split_of(splits)
    other_fractions, _ = make_splits(manifest, options(seed=3, train=0.6, val=0.2, test=0.2))
    assert split_of(other_fractions) != split_of(splits)


def test_patients_with_images_of_several_labels_are_split_as_one_group():
    manifest = random_manifest(60, seed=2)
    mixed = manifest["patient"] == manifest["patient"].iloc[0]
    manifest.loc[mixed, "label"] = ["benign", "malignant"] * (mixed.sum() // 2) + ["benign"] * (mixed.sum() % 2)
    splits, _ = make_splits(manifest, options())
    assert all(len(units) == 1 for units in patients_per_unit(manifest, splits).values())


@pytest.mark.parametrize("method, fractions, refused", [
    ("grouped_stratified", dict(train=0.8, val=0.0, test=0.2), "val"),
    ("grouped_stratified", dict(train=0.8, val=0.2, test=0.0), "test"),
    ("kfold", dict(train=1.0, val=0.0, test=0.0), "test"),
])
def test_a_zero_fraction_of_a_split_a_later_stage_needs_is_refused(method, fractions, refused):
    # Training needs train and val, evaluation val and test: an empty one failed there, after
    # the preprocessing and a whole training (helper-56).
    with pytest.raises(InputError) as error:
        make_splits(random_manifest(30, seed=1), options(method, **fractions))
    assert any(f"split.fractions.{refused} must be above 0" in p for p in error.value.problems)


def test_kfold_takes_only_test_from_the_fractions():
    splits, _ = make_splits(random_manifest(40, seed=1), options("kfold", train=0.8, val=0.0, test=0.2, folds=3))
    assert set(splits["split"]) == {"trainval", "test"}


def test_a_predefined_split_without_val_rows_is_refused_naming_the_split(manifest):
    given = _predefined(manifest).replace({"split": {"val": "train"}})
    with pytest.raises(InputError, match="would leave val without samples") as error:
        make_splits(given, options("predefined"))
    assert error.value.problems == ["val: no row of the manifest's split column names it"]


def test_a_sample_id_keeps_its_spaces_as_the_cache_does(manifest):
    # "sp ace.png " is a file name validation accepts; the split wrote "sp ace.png", which no cache
    # row matched (helper-56).
    given = manifest.copy()
    given.loc[given.index[0], "sample_id"] = " sp ace.png "
    splits, _ = make_splits(given, options())
    assert splits["sample_id"].tolist() == given["sample_id"].tolist()


def test_infeasible_fractions_are_reported_not_hidden():
    # One patient holds half of all images: no split can be within 2 points of 70/15/15.
    manifest = make_manifest([60] + [2] * 30, ["a"] + ["a", "b"] * 15)
    splits, report = make_splits(manifest, options())
    assert report["within_tolerance"] is False
    assert report["max_deviation_points"] > TOLERANCE_POINTS
    assert any("more than 2 points" in note for note in report["notes"])
    assert all(len(units) == 1 for units in patients_per_unit(manifest, splits).values())


def test_too_few_patients_is_an_input_error():
    manifest = make_manifest([3, 3], ["a", "b"])
    with pytest.raises(InputError, match="too few patients"):
        make_splits(manifest, options())


# --- duplicates --------------------------------------------------------------------------------
def _with_shared_image(manifest, first, second):
    """Give the first image of patient index ``second`` the content of ``first``'s first image."""
    manifest = manifest.copy()
    patients = manifest["patient"].unique()
    source = manifest.index[manifest["patient"] == patients[first]][0]
    target = manifest.index[manifest["patient"] == patients[second]][0]
    manifest.loc[target, "content_hash"] = manifest.loc[source, "content_hash"]
    return manifest, patients[first], patients[second]


def test_patients_sharing_an_image_are_linked_into_one_split(manifest):
    for first, second in ((0, 1), (5, 80), (10, 140)):
        shared, a, b = _with_shared_image(manifest, first, second)
        splits, report = make_splits(shared, options())
        units = patients_per_unit(shared, splits)
        assert units[a] == units[b]
        assert [a, b] in report["linked_patients"] or [b, a] in report["linked_patients"]
        assert report["dropped_duplicates"] == []


def test_drop_duplicates_removes_the_later_copy_and_lists_it(manifest):
    shared, a, b = _with_shared_image(manifest, 3, 120)
    duplicate_hash = shared.loc[shared["patient"] == b, "content_hash"].iloc[0]
    copies = shared.loc[shared["content_hash"] == duplicate_hash, "sample_id"].tolist()
    order = {"train": 0, "val": 1, "test": 2}
    for seed in range(30):  # find a seed that puts the two patients in different splits
        splits, report = make_splits(shared, options(seed=seed, drop_duplicates=True))
        if report["dropped_duplicates"]:
            break
    else:
        pytest.fail("the two patients never landed in different splits")
    assert report["linked_patients"] == []
    (dropped,) = report["dropped_duplicates"]
    assert dropped["content_hash"] == duplicate_hash
    assert order[dropped["split"]] > order[dropped["kept_in"]]
    assert dropped["sample_id"] in copies and dropped["kept_sample_ids"] == [c for c in copies if c != dropped["sample_id"]]
    assert dropped["sample_id"] not in set(splits["sample_id"])
    assert len(splits) == len(shared) - 1


def test_duplicates_within_one_patient_are_kept():
    manifest = random_manifest(40, seed=3)
    first_patient = manifest["patient"] == manifest["patient"].iloc[0]
    manifest.loc[first_patient, "content_hash"] = "same" * 8
    splits, report = make_splits(manifest, options(drop_duplicates=True))
    assert len(splits) == len(manifest)
    assert report["dropped_duplicates"] == []


def _sharing_images(manifest, copies):
    """``manifest`` where patient ``target``'s images are patient ``source``'s, for each (target, source) of ``copies``."""
    shared = manifest.copy()
    for target, source in copies.items():
        hashes = shared.loc[shared["patient"] == f"p_{source:016x}", "content_hash"].to_numpy()
        shared.loc[shared["patient"] == f"p_{target:016x}", "content_hash"] = hashes
    return shared


@pytest.mark.parametrize("method, emptied", [("grouped_stratified", "val and test"), ("kfold", "test")])
def test_a_split_that_drop_duplicates_would_empty_is_an_input_error(method, emptied):
    # In each class every patient's images are copies of the first patient's: every copy
    # outside the split (or fold) that keeps the first is dropped.
    shared = _sharing_images(make_manifest([2] * 10, ["a"] * 5 + ["b"] * 5),
                             {target: 5 * (target // 5) for target in range(10) if target % 5})
    with pytest.raises(InputError, match=f"would leave the {emptied} splits? empty") as caught:
        make_splits(shared, options(method, train=0.6, val=0.2, test=0.2, folds=2, drop_duplicates=True))
    assert "drop_duplicates: false" in str(caught.value)


# --- predefined ---------------------------------------------------------------------------------
def _predefined(manifest, seed=0):
    rng = np.random.default_rng(seed)
    split_by_patient = {p: rng.choice(["train", "train", "train", "val", "test"]) for p in manifest["patient"].unique()}
    return manifest.assign(split=manifest["patient"].map(split_by_patient))


def test_predefined_keeps_the_manifest_split(manifest):
    given = _predefined(manifest)
    splits, report = make_splits(given, options("predefined"))
    assert splits["split"].tolist() == given["split"].tolist()
    assert report["method"] == "predefined"
    assert report["target_fractions"] is None and report["fraction_deviation_points"] is None
    assert report["achieved_fractions"]["train"] == pytest.approx((given["split"] == "train").mean(), abs=1e-4)


def test_predefined_with_a_patient_in_two_splits_fails_naming_the_patient(manifest):
    given = _predefined(manifest)
    patient = given["patient"].iloc[0]
    rows = given.index[given["patient"] == patient]
    given.loc[rows[0], "split"] = "train"
    given.loc[rows[1:], "split"] = "test"
    other = given["patient"].iloc[-1]
    given.loc[given["patient"] == other, "split"] = ["val", "train"] * (int((given["patient"] == other).sum()) // 2) + (
        ["val"] if (given["patient"] == other).sum() % 2 else []
    )
    with pytest.raises(InputError) as caught:
        make_splits(given, options("predefined"))
    text = str(caught.value)
    assert patient in text and "train and test" in text
    if len(set(given.loc[given["patient"] == other, "split"])) > 1:
        assert other in text  # every offending patient, not only the first


def test_predefined_duplicate_across_splits_fails_or_is_dropped():
    manifest = make_manifest([2, 2, 2, 2], ["a", "b", "a", "b"])
    manifest["split"] = ["train", "train", "train", "train", "val", "val", "test", "test"]
    manifest.loc[6, "content_hash"] = manifest.loc[0, "content_hash"]  # a test image equals a train image
    with pytest.raises(InputError) as caught:
        make_splits(manifest, options("predefined"))
    assert manifest.loc[0, "content_hash"] in str(caught.value) and "train and test" in str(caught.value)

    # Left with one image each, val and test lack a class: said as a warning, not only in the report.
    with pytest.warns(UserWarning) as caught:
        splits, report = make_splits(manifest, options("predefined", drop_duplicates=True))
    assert [str(w.message) for w in caught] == ["the val split has no samples of class(es) b",
                                                "the test split has no samples of class(es) a"]
    assert manifest.loc[6, "sample_id"] not in set(splits["sample_id"])
    assert report["dropped_duplicates"] == [{
        "sample_id": manifest.loc[6, "sample_id"],
        "split": "test",
        "content_hash": manifest.loc[0, "content_hash"],
        "kept_in": "train",
        "kept_sample_ids": [manifest.loc[0, "sample_id"]],
    }]


def test_predefined_rejects_unknown_or_missing_split_values_listing_all(manifest):
    given = _predefined(manifest)
    given.loc[3, "split"] = "training"
    given.loc[9, "split"] = ""
    with pytest.raises(InputError) as caught:
        make_splits(given, options("predefined"))
    assert "row 5" in str(caught.value) and "'training'" in str(caught.value)
    assert "row 11" in str(caught.value)
    with pytest.raises(InputError, match="split column"):
        make_splits(manifest, options("predefined"))


# --- input checks --------------------------------------------------------------------------------
def test_bad_manifests_list_every_problem(manifest):
    with pytest.raises(InputError) as caught:
        make_splits(manifest.drop(columns=["content_hash", "patient"]), options())
    assert caught.value.problems == ["missing column 'patient'", "missing column 'content_hash'"]

    broken = manifest.copy()
    broken.loc[2, "patient"] = ""
    broken.loc[4, "label"] = None
    broken.loc[7, "sample_id"] = broken.loc[6, "sample_id"]
    with pytest.raises(InputError) as caught:
        make_splits(broken, options())
    problems = "\n".join(caught.value.problems)
    assert "row 4: empty patient" in problems
    assert "row 6: empty label" in problems
    assert f"sample_id {broken.loc[6, 'sample_id']!r} appears more than once" in problems


def test_bad_options_are_input_errors(manifest):
    with pytest.raises(InputError, match="invalid split options"):
        make_splits(manifest, options(train=0.5, val=0.1, test=0.1))
    with pytest.raises(InputError, match="invalid split options"):
        make_splits(manifest, {**options(), "method": "random"})


# --- k-fold --------------------------------------------------------------------------------------
def test_kfold_holds_out_a_test_set_and_covers_the_rest_once(manifest):
    splits, report = make_splits(manifest, options("kfold", folds=4))
    assert list(splits.columns) == ["sample_id", "split", "fold"]
    assert set(splits["split"]) == {"trainval", "test"}
    assert (splits.loc[splits["split"] == "test", "fold"] == -1).all()
    assert set(splits.loc[splits["split"] == "trainval", "fold"]) == {0, 1, 2, 3}
    assert all(len(units) == 1 for units in patients_per_unit(manifest, splits).values())
    non_test = set(splits.loc[splits["split"] == "trainval", "sample_id"])
    seen_in_val = []
    for fold in range(4):
        parts = assignment(splits, fold)
        assert set(parts["train"]) | set(parts["val"]) == non_test
        assert not set(parts["train"]) & set(parts["val"])
        assert parts["test"] == splits.loc[splits["split"] == "test", "sample_id"].tolist()
        seen_in_val += parts["val"]
    assert sorted(seen_in_val) == sorted(non_test)
    assert [d["fold"] for d in report["fold_details"]] == [0, 1, 2, 3]
    assert abs(report["fraction_deviation_points"]["test"]) <= TOLERANCE_POINTS
    for detail in report["fold_details"]:
        # Folds are chosen one by one like splits: balanced in size and classes too.
        assert abs(detail["fraction_deviation_points"]) <= TOLERANCE_POINTS
        assert max(map(abs, detail["class_proportion_deviation_points"].values())) <= TOLERANCE_POINTS


def test_kfold_test_set_is_independent_of_the_fold_count(manifest):
    # The held-out set depends on the seed and the test fraction only, so k-fold runs with
    # different k are evaluated on the same patients.
    five, _ = make_splits(manifest, options("kfold", folds=5))
    three, _ = make_splits(manifest, options("kfold", folds=3))
    assert set(five.loc[five["split"] == "test", "sample_id"]) == set(three.loc[three["split"] == "test", "sample_id"])


def test_kfold_with_too_few_patients_is_an_input_error():
    manifest = make_manifest([2] * 5, ["a", "b", "a", "b", "a"])
    with pytest.raises(InputError, match="too few patients for 5-fold"):
        make_splits(manifest, options("kfold", folds=5))


@pytest.mark.filterwarnings("ignore:the validation split of fold")  # a tiny table, about dropping
def test_kfold_with_drop_duplicates_deals_the_folds_after_dropping():
    # Patients 1 and 3 hold copies of patients 0 and 2's images. Dealt first, the two folds got
    # {0, 2} and {1, 3}, and dropping the later copies then emptied fold 1.
    # Patients 4 and 5 are the held-out test set (k-fold needs one), and share nothing.
    shared = _sharing_images(make_manifest([2, 2, 2, 2, 1, 1], ["a", "a", "b", "b", "a", "b"]), {1: 0, 3: 2})
    for seed in range(5):
        splits, report = make_splits(shared, options("kfold", folds=2, train=0.6, val=0.2, test=0.2, seed=seed,
                                                     drop_duplicates=True))
        assert splits.loc[splits["split"] == "test", "sample_id"].tolist() == shared["sample_id"].iloc[[8, 9]].tolist()
        assert [detail["samples"] for detail in report["fold_details"]] == [2, 2]
        assert sorted(splits["fold"]) == [-1, -1, 0, 0, 1, 1]
        dropped = report["dropped_duplicates"]
        assert sorted(d["sample_id"] for d in dropped) == shared["sample_id"].iloc[[2, 3, 6, 7]].tolist()
        assert {d["split"] for d in dropped} == {"trainval"} and {d["kept_in"] for d in dropped} == {"fold 0", "fold 1"}


def test_kfold_with_too_few_patients_left_by_drop_duplicates_is_an_input_error():
    # Patients 0 and 1 share an image; the test set takes two of the other three.
    shared = _sharing_images(make_manifest([2, 2, 2, 1, 1], ["a", "a", "b", "a", "b"]), {1: 0})
    with pytest.raises(InputError, match="too few patients for 3-fold") as caught:
        make_splits(shared, options("kfold", folds=3, train=0.7, val=0.1, test=0.2, drop_duplicates=True))
    assert "2 patient group(s)" in str(caught.value) and "drop_duplicates" in str(caught.value)


# --- assignment -----------------------------------------------------------------------------------
def test_assignment_of_a_plain_split():
    table = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "split": ["train", "test", "val", "train"]})
    assert assignment(table) == {"train": ["a", "d"], "val": ["c"], "test": ["b"]}
    with pytest.raises(ValueError, match="no fold column"):
        assignment(table, fold=0)


def test_assignment_of_kfold_needs_a_valid_fold():
    table = pd.DataFrame({
        "sample_id": ["a", "b", "c", "d", "e"],
        "split": ["trainval", "trainval", "test", "trainval", "trainval"],
        "fold": [0, 1, -1, 1, 2],
    })
    assert assignment(table, fold=1) == {"train": ["a", "e"], "val": ["b", "d"], "test": ["c"]}
    with pytest.raises(ValueError, match="need a fold"):
        assignment(table)
    with pytest.raises(ValueError, match="fold 3 is not among"):
        assignment(table, fold=3)


# --- outputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["grouped_stratified", "kfold", "predefined"])
def test_write_split_outputs(tmp_path, manifest, method):
    given = _predefined(manifest) if method == "predefined" else manifest
    splits, report = make_splits(given, options(method, folds=3))
    paths = tmp_path / "splits.csv", tmp_path / "split" / "report.json", tmp_path / "split" / "report.png"
    write_split_outputs(splits, report, *paths)
    written = pd.read_csv(paths[0], dtype={"sample_id": str})
    pd.testing.assert_frame_equal(written, splits, check_dtype=False)
    loaded = json.loads(paths[1].read_text())
    assert loaded["counts"] == report["counts"] and loaded["method"] == method
    for key in ("modality_counts", "patients", "achieved_fractions", "class_proportions", "dropped_duplicates"):
        assert key in loaded
    with Image.open(paths[2]) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["report.json", "report.png", "split", "splits.csv"]


def test_read_splits_file_keeps_sample_ids_as_written_and_folds_as_integers(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_text("sample_id,split,fold\nNA,trainval,0\n007,trainval,1\nnull,test,-1\n")
    table = read_splits_file(path)
    assert table["sample_id"].tolist() == ["NA", "007", "null"] and table["fold"].tolist() == [0, 1, -1]


def test_read_splits_file_refuses_a_sample_in_two_splits(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_text("sample_id,split\na,train\nb,val\na,val\n")
    with pytest.raises(InputError) as error:
        read_splits_file(path)
    assert str(path) in str(error.value)
    assert [p for p in error.value.problems if "listed more than once" in p] == [
        "line 2: sample 'a' is listed more than once (a sample belongs to one split)",
        "line 4: sample 'a' is listed more than once (a sample belongs to one split)"]


def test_a_fold_whose_validation_rows_lack_a_class_is_warned_of():
    # Nine patients of three classes in five folds: a fold validates on one or two classes only,
    # and its run would stop early, choose its epoch and threshold on them.
    manifest = make_manifest([2] * 9, ["a", "b", "c"] * 3)
    with pytest.warns(UserWarning, match=r"the validation split of fold \d has no samples of class") as caught:
        splits, report = make_splits(manifest, options("kfold", folds=5))
    lacking = {d["fold"] for d in report["fold_details"] if 0 in d["counts"].values()}
    assert lacking and len([w for w in caught if "validation split of fold" in str(w.message)]) == len(lacking)


def test_a_split_report_records_its_options_and_a_split_made_with_others_is_refused(tmp_path, manifest):
    # results/ copied without .snakemake/metadata and accepted with a plain --touch: the split
    # seed changed in the config, the split was not rerun, and the run card stated the new seed
    # (helper-62). Evaluation checks the report against its config.
    from medclassify.splits import check_split_made_with

    splits, report = make_splits(manifest, options(seed=42))
    paths = tmp_path / "splits.csv", tmp_path / "split" / "report.json", tmp_path / "split" / "report.png"
    write_split_outputs(splits, report, *paths)
    check_split_made_with(paths[1], options(seed=42), "rerun it")
    with pytest.raises(InputError, match="made with other options") as error:
        check_split_made_with(paths[1], options(seed=3), "rerun it")
    assert error.value.problems == ["split.seed: made with 42, the config states 3", "rerun it"]
    # A report written before the options were recorded passes.
    recorded = json.loads(paths[1].read_text())
    del recorded["options"]
    paths[1].write_text(json.dumps(recorded))
    check_split_made_with(paths[1], options(seed=3), "rerun it")


def test_check_no_leakage_lets_blank_images_be_in_two_splits():
    # Blank images share their content hash by having no content; make_splits already left them
    # out, the public check did not (helper-67).
    from medclassify.splits import check_no_leakage

    blank = "constant-" + "0" * 23
    table = pd.DataFrame({"sample_id": ["a", "b"], "patient": ["p1", "p2"], "content_hash": [blank, blank],
                          "split": ["train", "test"]})
    check_no_leakage(table)
    with pytest.raises(InputError):
        check_no_leakage(table.assign(content_hash=["x" * 32] * 2))

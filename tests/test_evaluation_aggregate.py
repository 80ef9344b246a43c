"""aggregate_folds: mean ± std over folds, and the fold ensemble with an out-of-fold threshold."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from medclassify.config import load_config, run_config
from medclassify.errors import InputError
from medclassify.evaluation import aggregate_folds
from medclassify.evaluation.threshold import choose_threshold

CLASSES = ["neg", "pos"]


def _options(**evaluate):
    evaluate.setdefault("bootstrap", 100)
    return {"evaluate": run_config(load_config(overrides={"evaluate": evaluate}), "baseline")["evaluate"]}


def _fold_predictions(tmp_path, k=3, n_test=40, n_val=20, seed=0):
    rng = np.random.default_rng(seed)
    test_labels = np.arange(n_test) % 2
    paths, manifest_rows = [], {}
    for fold in range(k):
        val_labels = np.arange(n_val) % 2
        rows = []
        for split, labels, prefix in (("val", val_labels, f"f{fold}v"), ("test", test_labels, "t")):
            score = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, len(labels)), 0.01, 0.99)
            for i, (label, s) in enumerate(zip(labels, score)):
                rows.append({"sample_id": f"{prefix}{i}", "split": split, "patient": f"p_{prefix}{i // 2}",
                             "label": CLASSES[label], "predicted": CLASSES[int(s >= 0.5)],
                             "prob_neg": 1 - s, "prob_pos": s})
        path = tmp_path / f"fold_{fold}" / "evaluation" / "predictions.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(path, index=False)
        paths.append(path)
        manifest_rows.update({row["sample_id"]: row["patient"] for row in rows})
    # The validated manifest: patients, and the modality and site that make the subgroups.
    pd.DataFrame({"sample_id": list(manifest_rows), "patient": list(manifest_rows.values()),
                  "modality": "US", "site": [f"site_{i // 2 % 2}" for i in range(len(manifest_rows))]}
                 ).to_csv(tmp_path / "manifest.validated.csv", index=False)
    return paths


def _aggregate(paths, out_dir, **evaluate):
    return aggregate_folds(paths, paths[0].parents[2] / "manifest.validated.csv", out_dir, options=_options(**evaluate))


def test_summary_over_folds_and_ensemble_metrics(tmp_path):
    paths = _fold_predictions(tmp_path)
    metrics = _aggregate(paths, tmp_path / "aggregate")
    assert json.loads((tmp_path / "aggregate" / "metrics.json").read_text())["auc"] == pytest.approx(metrics["auc"])
    folds = [pd.read_csv(p) for p in paths]
    fold_aucs = [skm.roc_auc_score(f.query("split == 'test'")["label"] == "pos", f.query("split == 'test'")["prob_pos"])
                 for f in folds]
    assert metrics["folds"]["n"] == 3
    assert metrics["folds"]["mean"]["auc"] == pytest.approx(np.mean(fold_aucs))
    assert metrics["folds"]["std"]["auc"] == pytest.approx(np.std(fold_aucs, ddof=1))

    tests = [f.query("split == 'test'").set_index("sample_id") for f in folds]
    ensemble = np.mean([t.loc[tests[0].index, "prob_pos"] for t in tests], axis=0)
    truth = tests[0]["label"] == "pos"
    assert metrics["auc"] == pytest.approx(skm.roc_auc_score(truth, ensemble))

    out_of_fold = pd.concat([f.query("split == 'val'") for f in folds])
    expected, _ = choose_threshold(out_of_fold["label"] == "pos", out_of_fold["prob_pos"], "youden")
    assert metrics["threshold"]["chosen_on"] == "out_of_fold_val"
    assert metrics["threshold"]["value"] == pytest.approx(expected)
    assert metrics["accuracy"] == pytest.approx(np.mean((ensemble >= expected) == truth))
    assert metrics["ci"]["auc"][0] <= metrics["auc"] <= metrics["ci"]["auc"][1]
    written = pd.read_csv(tmp_path / "aggregate" / "predictions.csv")
    assert np.allclose(written["prob_pos"], ensemble)


def test_folds_with_different_test_sets_are_rejected(tmp_path):
    paths = _fold_predictions(tmp_path)
    other = pd.read_csv(paths[1])
    other.loc[other["split"] == "test", "sample_id"] += "x"
    other.to_csv(paths[1], index=False)
    with pytest.raises(InputError) as error:
        _aggregate(paths, tmp_path / "aggregate")
    assert str(paths[1]) in " ".join(error.value.problems)


def test_one_fold_is_not_enough(tmp_path):
    paths = _fold_predictions(tmp_path, k=2)
    with pytest.raises(InputError, match="at least two folds"):
        _aggregate(paths[:1], tmp_path / "aggregate")


def test_compare_runs_shows_the_fold_summary_of_an_aggregate(tmp_path):
    from medclassify.evaluation import compare_runs

    paths = _fold_predictions(tmp_path)
    aggregate = tmp_path / "results" / "demo" / "cv" / "aggregate"
    metrics = _aggregate(paths, aggregate, bootstrap=0)
    table = compare_runs([aggregate / "metrics.json"], tmp_path / "runs.csv", tmp_path / "runs.md", tmp_path / "runs.png")
    assert table.loc[0, "run"] == "cv" and table.loc[0, "stage"] == "aggregate" and table.loc[0, "folds"] == 3
    markdown = (tmp_path / "runs.md").read_text()
    mean, std = metrics["folds"]["mean"]["auc"], metrics["folds"]["std"]["auc"]
    assert f"{mean:.3f} ± {std:.3f} (3 folds)" in markdown
    assert "cv (aggregate)" in markdown


def test_auc_plot_accepts_an_interval_a_rounding_error_inside_its_estimate():
    from medclassify.evaluation.compare import plot_auc_by_run

    table = pd.DataFrame({"run": ["baseline", "wide"], "stage": ["evaluation", "evaluation"],
                          "auc": [0.8, 0.7], "auc_low": [0.8 + 1e-16, 0.6], "auc_high": [0.9, 0.8 - 1e-16]})
    figure = plot_auc_by_run(table)
    assert figure.axes[0].get_xlim()[1] == 1.0


@pytest.mark.parametrize("damage, problem", [
    ("empty file", "No columns to parse"),
    ("empty probability", "line 2: prob_pos '' is not a finite number"),
    ("nan probability", "line 2: prob_pos 'nan' is not a finite number"),
    ("unknown prediction", "line 2: predicted 'maybe' is not one of the classes"),
])
def test_damaged_fold_predictions_are_an_input_error_naming_the_file_and_line(tmp_path, damage, problem):
    paths = _fold_predictions(tmp_path, k=2)
    if damage == "empty file":
        paths[1].write_text("")
    else:
        frame = pd.read_csv(paths[1], keep_default_na=False, dtype=str)
        column, value = {"empty probability": ("prob_pos", ""), "nan probability": ("prob_pos", "nan"),
                         "unknown prediction": ("predicted", "maybe")}[damage]
        frame.loc[0, column] = value
        frame.to_csv(paths[1], index=False)
    with pytest.raises(InputError) as error:
        _aggregate(paths, tmp_path / "aggregate")
    assert str(paths[1]) in str(error.value) and any(problem in p for p in error.value.problems), error.value.problems
    assert not (tmp_path / "aggregate").exists() or not any((tmp_path / "aggregate").iterdir())


def test_the_ensemble_has_calibration_and_subgroups_as_an_evaluation_has(tmp_path):
    paths = _fold_predictions(tmp_path)
    metrics = _aggregate(paths, tmp_path / "aggregate", subgroups=["site"], min_subgroup_size=5)
    assert sum(metrics["calibration"]["count"]) == metrics["n"] == 40
    assert set(metrics["subgroups"]) == {"modality", "site"}
    sites = metrics["subgroups"]["site"]
    assert sum(group["n"] for group in sites.values()) == 40 and all(group["auc"] is not None for group in sites.values())
    assert metrics["subgroups"]["modality"]["US"]["auc"] == pytest.approx(metrics["auc"])
    assert json.loads((tmp_path / "aggregate" / "metrics.json").read_text())["subgroups"] == metrics["subgroups"]
    assert "note" in _aggregate(paths, tmp_path / "plain", bootstrap=0)["ci_info"]


def test_aggregate_and_compare_run_from_the_command_line(tmp_path):
    from medclassify.cli import main

    paths = _fold_predictions(tmp_path)
    aggregate = tmp_path / "results" / "demo" / "cv" / "aggregate"
    assert main(["aggregate", *map(str, paths), "--manifest", str(tmp_path / "manifest.validated.csv"),
                 "--out", str(aggregate), "--set", '{"evaluate": {"bootstrap": 0}}']) == 0
    expected = _aggregate(paths, tmp_path / "library", bootstrap=0)
    assert json.loads((aggregate / "metrics.json").read_text())["auc"] == expected["auc"]
    assert main(["compare", str(aggregate / "metrics.json"), "--out", str(tmp_path / "compare")]) == 0
    table = pd.read_csv(tmp_path / "compare" / "runs.csv")
    assert table["run"].tolist() == ["cv"] and table.loc[0, "folds"] == 3
    assert (tmp_path / "compare" / "runs_auc.png").exists()

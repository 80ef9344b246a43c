"""One real run of the demo workflow, end to end, and what it must leave behind."""

import hashlib
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn import metrics as skm

from conftest import FAST_DEMO_ARGS
from snakemake_fixtures import (FAST_CONFIG_NAME, FAST_DEMO_OVERRIDES, copy_repository, parse_job_stats, planned_jobs,
                                run_snakemake)

pytestmark = pytest.mark.slow

DATASET, RUN = "demo", "baseline"


def test_every_stage_output_exists(demo_run):
    results = demo_run / "results" / DATASET
    expected = [
        "manifest.validated.csv", "validation/report.json", "validation/report.md",
        "cache.h5", "fingerprint.json", "splits.csv", "split/report.json", "split/report.png",
        f"{RUN}/head/model.keras", f"{RUN}/head/history.csv",
        f"{RUN}/finetune/model.keras", f"{RUN}/finetune/history.csv",
        f"{RUN}/evaluation/metrics.json", f"{RUN}/evaluation/predictions.csv",
        f"{RUN}/evaluation/confusion_matrix.png", f"{RUN}/evaluation/roc.png",
        f"{RUN}/evaluation/training_curves.png", f"{RUN}/run_card.json",
        "runs.csv", "runs.md",
    ]
    missing = [name for name in expected if not (results / name).is_file()]
    assert not missing


def test_both_stages_record_the_configured_head_dropout(demo_run):
    # The fine-tune rule's params lacked head: its model.json said the default 0.2, and the
    # ensemble members an untrained head leaves to it were built with 0.2 (helper-43).
    for stage in ("head", "finetune"):
        meta = json.loads((demo_run / "results" / DATASET / RUN / stage / "model.json").read_text())
        assert meta["settings"]["dropout"] == FAST_DEMO_OVERRIDES["head"]["dropout"], stage


def test_the_run_card_times_each_stage(demo_run):
    card = json.loads((demo_run / "results" / DATASET / RUN / "run_card.json").read_text())
    assert list(card["stages"]) == ["head", "finetune", "evaluate"]
    assert all(stage["seconds"] >= 0 for stage in card["stages"].values())
    assert card["compute_s"] == pytest.approx(sum(stage["seconds"] for stage in card["stages"].values()))
    assert card["compute_s"] <= card["duration_s"] + 1e-6
    assert card["command"] == f"snakemake rule evaluate dataset={DATASET} run={RUN}", "not the temporary script"


def test_the_run_card_records_the_inputs_by_content_and_the_training_versions(demo_run):
    from medclassify.cache import cache_identity

    results = demo_run / "results" / DATASET
    card = json.loads((results / RUN / "run_card.json").read_text())
    manifest = (results / "manifest.validated.csv").read_bytes()
    assert card["inputs"]["manifest"]["sha256"] == hashlib.sha256(manifest).hexdigest()
    params_hash, rows = cache_identity(results / "cache.h5")
    assert (card["inputs"]["cache"]["params_hash"], card["inputs"]["cache"]["rows_sha256"]) == (params_hash, rows)
    # Trained and evaluated in one environment here: the two records agree.
    assert card["inputs"]["model"]["training_versions"] == card["versions"]


def test_cache_holds_every_validated_sample_at_the_configured_size(demo_run):
    results = demo_run / "results" / DATASET
    validated = pd.read_csv(results / "manifest.validated.csv", dtype=str, keep_default_na=False)
    with h5py.File(results / "cache.h5", "r") as cache:
        images = cache["images"]
        assert images.shape == (len(validated), 32, 32, 1)
        assert images.dtype == np.uint8
        assert cache["labels"].shape == (len(validated),)
        sample_ids = [s.decode() if isinstance(s, bytes) else s for s in cache["sample_id"][:]]
    assert sample_ids == validated["sample_id"].tolist()


def test_splits_keep_every_patient_in_one_split(demo_run):
    results = demo_run / "results" / DATASET
    validated = pd.read_csv(results / "manifest.validated.csv", dtype=str, keep_default_na=False)
    splits = pd.read_csv(results / "splits.csv", dtype=str)
    joined = validated.merge(splits, on="sample_id", validate="one_to_one")
    assert len(joined) == len(validated)
    assert set(joined["split"]) == {"train", "val", "test"}
    assert joined.groupby("patient")["split"].nunique().max() == 1


def test_metrics_lie_in_range_and_match_scikit_learn(demo_run):
    evaluation = demo_run / "results" / DATASET / RUN / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    predictions = pd.read_csv(evaluation / "predictions.csv", dtype={"label": str, "predicted": str})
    test = predictions[predictions["split"] == "test"]
    classes = metrics["classes"]
    assert len(classes) == 3 and metrics["n"] == len(test)
    for key in ("accuracy", "balanced_accuracy", "auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(test["label"], test["predicted"]))
    assert metrics["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(test["label"], test["predicted"]))
    probabilities = test[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    auc = skm.roc_auc_score(test["label"], probabilities, multi_class="ovr", average="macro", labels=classes)
    assert metrics["auc"] == pytest.approx(auc, abs=1e-6)
    matrix = skm.confusion_matrix(test["label"], test["predicted"], labels=classes)
    assert np.array_equal(np.asarray(metrics["confusion_matrix"]), matrix)


def test_plots_are_real_images(demo_run):
    evaluation = demo_run / "results" / DATASET / RUN / "evaluation"
    pngs = sorted(evaluation.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        with Image.open(png) as image:
            image.load()
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 1.0, f"{png.name} is blank"
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")


def test_predict_rule_classifies_new_images_as_evaluation_scored_them(demo_run):
    """Rule predict, run for real on copies of test images: only predict runs, and it gives the
    evaluation's probabilities for them (same reader, preprocessing and views), with its record.
    It comes before the identifier test, which then scans predict's outputs too."""
    evaluation = demo_run / "results" / DATASET / RUN / "evaluation"
    scored = pd.read_csv(evaluation / "predictions.csv", dtype={"label": str, "predicted": str})
    test = scored[scored["split"] == "test"].head(4)
    new_images = demo_run / "new-images"
    new_images.mkdir()
    for sample_id in test["sample_id"]:
        shutil.copy2(demo_run / "results" / DATASET / "demo" / sample_id, new_images / sample_id.replace("/", "_"))
    config = yaml.safe_load((demo_run / FAST_CONFIG_NAME).read_text())
    config["predict"] = {"input": "new-images"}
    (demo_run / "config" / "predict-test.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    run = run_snakemake(["--cores", "2", "--configfile", "config/predict-test.yaml"], demo_run, timeout_s=300)
    assert run.returncode == 0, run.tail()
    assert {rule: n for rule, n in parse_job_stats(run.output).items() if rule != "all"} == {"predict": 1}
    predicted = pd.read_csv(demo_run / "results" / "predict" / "predictions.csv", dtype={"predicted": str})
    prob_columns = [c for c in scored.columns if c.startswith("prob_")]
    expected = test.assign(input=[f"new-images/{s.replace('/', '_')}" for s in test["sample_id"]])
    merged = predicted.merge(expected, on="input", suffixes=("", "_evaluation"))
    assert len(merged) == len(test) and (merged["status"] == "ok").all()
    for column in prob_columns:
        assert np.allclose(merged[column], merged[f"{column}_evaluation"], atol=1e-6), column
    assert (merged["predicted"] == merged["predicted_evaluation"]).all()
    record = json.loads((demo_run / "results" / "predict" / "predictions.json").read_text())
    assert [model["path"] for model in record["models"]] == [f"results/{DATASET}/{RUN}/finetune/model.keras"]
    assert record["decision"]["source"].endswith(f"results/{DATASET}/{RUN}/evaluation/metrics.json")
    assert record["rows"]["ok"] == len(test)


def test_no_dicom_identifier_reaches_results(demo_run):
    from medclassify.datasets.demo import DEMO_IDENTIFYING_VALUES

    raw_patients = pd.read_csv(demo_run / "results" / DATASET / "demo" / "manifest.csv", dtype=str)["patient"]
    needles = [str(v).encode() for v in DEMO_IDENTIFYING_VALUES] + [p.encode() for p in raw_patients.unique()]
    leaks = []
    for path in (demo_run / "results").rglob("*"):
        # The generated source images are the user's input, not an output.
        if not path.is_file() or (demo_run / "results" / DATASET / "demo") in path.parents:
            continue
        data = path.read_bytes()
        leaks += [(str(path.relative_to(demo_run)), n.decode()) for n in needles if n in data]
    assert not leaks


def test_second_dry_run_plans_nothing(demo_run):
    assert planned_jobs(demo_run, *FAST_DEMO_ARGS) == {}


def test_bad_manifest_stops_the_workflow_before_preprocessing(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    images = workdir / "data"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(images / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "label": "ab"[i % 2], "patient": f"P{i}", "modality": "US"})
    rows[3]["path"] = "missing.png"
    rows[4]["label"] = ""
    pd.DataFrame(rows).to_csv(images / "manifest.csv", index=False)
    (workdir / "bad.yaml").write_text("datasets: {bad: {manifest: data/manifest.csv}}\n")

    result = run_snakemake(["--cores", "1", "--configfile", "bad.yaml"], workdir, timeout_s=300)

    assert result.returncode != 0
    validation = workdir / "results" / "bad" / "validation"
    report = (validation / "report.failed.md").read_text()
    assert "missing_file" in report and "row 4" in report
    assert "row 5" in report
    assert not (workdir / "results" / "bad" / "manifest.validated.csv").exists()
    assert not (workdir / "results" / "bad" / "cache.h5").exists()
    log = (workdir / "results" / "logs" / "bad" / "validate_manifest.log").read_text()
    assert "missing.png" in log


def test_bad_config_stops_the_workflow_at_parse_time_with_every_problem(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    (workdir / "bad.yaml").write_text(
        "preprocess: {sise: 1}\n"
        "datasets: {a: {manifest: m.csv, preprocess: {size: [32]}}}\n"
        "runs: {r: {train: {batch_size: big}, evaluate: {threshold: bogus}}}\n")

    result = run_snakemake(["-n", "--configfile", "bad.yaml"], workdir, timeout_s=300)

    assert result.returncode != 0
    for problem in ("preprocess: Additional properties are not allowed ('sise' was unexpected)",
                    "datasets.a.preprocess.size: [32] is too short",
                    "runs.r.train.batch_size: 'big' is not of type 'integer'",
                    "runs.r.evaluate.threshold: 'bogus' is not one of"):
        assert f"  - {problem}" in result.output, result.tail()

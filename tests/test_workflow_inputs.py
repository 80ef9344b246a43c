"""Rules declare as inputs the files their jobs read, so that changing one reruns them.

Checked on dry runs (``snakemake -n``) over a recorded run: every output file is created empty and
``snakemake --touch`` records the metadata a real run would leave, so that no job runs; each test
then changes one input and puts it back, byte for byte and with its old modification time.
"""

import contextlib
import os
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from snakemake_fixtures import (
    FAST_CONFIG_NAME,
    copy_repository,
    restored_afterwards,
    parse_job_stats,
    run_snakemake,
    write_fast_config,
)

pytestmark = pytest.mark.slow

TIMEOUT_S = 300
CONFIG_ARGS = ["--configfile", FAST_CONFIG_NAME]
# Dataset named so that no MEDCLASSIFY_<NAME>_NPZ of the environment (the Makefile exports
# MEDCLASSIFY_BREASTMNIST_NPZ) reaches it unless a test sets it.
MEDMNIST_DATASET = "breast"
NPZ_VARIABLE = f"MEDCLASSIFY_{MEDMNIST_DATASET.upper()}_NPZ"


def snakemake(workdir, *args, env=None):
    run = run_snakemake([*args, *CONFIG_ARGS], workdir, timeout_s=TIMEOUT_S, env={NPZ_VARIABLE: "", **(env or {})})
    if run.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{run.tail()}")
    return run


def planned_jobs(workdir, env=None):
    """Jobs per rule that ``snakemake -n`` would run now (the ``all`` target left out)."""
    planned = parse_job_stats(snakemake(workdir, "-n", "--quiet", "rules", env=env).output)
    planned.pop("all", None)
    return dict(planned)


def record_complete_run(workdir):
    """Create every output file of the workflow empty and record their metadata with --touch."""
    summary = snakemake(workdir, "--summary").output
    for line in summary.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) > 4 and fields[4] == "missing":
            path = workdir / fields[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    snakemake(workdir, "--touch", "--cores", "1")
    if planned_jobs(workdir) != {}:
        pytest.fail("a recorded run must leave nothing to do")


def write_png(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def made_newer(path):
    """Give path a modification time after every recorded output."""
    later = time.time_ns() + 60 * 10**9
    os.utime(path, ns=(later, later))


def set_config(workdir, section, value):
    config_path = workdir / FAST_CONFIG_NAME
    config = yaml.safe_load(config_path.read_text())
    config[section] = value
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module", params=["folder", "manifest"])
def predict_workdir(request, tmp_path_factory):
    """A recorded demo run that predicts newimgs/ (a.png, b.png), as a folder or through newimgs.csv."""
    workdir = copy_repository(tmp_path_factory.mktemp("predict-inputs") / "repo")
    images = workdir / "newimgs"
    images.mkdir()
    for seed, name in enumerate(["a.png", "b.png"]):
        write_png(images / name, seed)
    # Beside the folder, not in it: predict would read it as one more image of the folder.
    (workdir / "newimgs.csv").write_text("path\nnewimgs/a.png\nnewimgs/b.png\n")
    source = "newimgs" if request.param == "folder" else "newimgs.csv"
    write_fast_config(workdir, {"predict": {"input": source}})
    record_complete_run(workdir)
    return workdir


def test_changing_an_image_to_predict_plans_predict(predict_workdir):
    image = predict_workdir / "newimgs/a.png"
    with restored_afterwards(image):
        write_png(image, seed=10)
        made_newer(image)
        assert planned_jobs(predict_workdir) == {"predict": 1}


def test_adding_an_image_to_predict_plans_predict(predict_workdir):
    added = predict_workdir / "newimgs/c.png"
    manifest = predict_workdir / "newimgs.csv"
    with restored_afterwards(manifest):
        write_png(added, seed=11)
        os.utime(added, ns=(0, 0))  # older than every output: only the set of inputs has changed
        manifest.write_text(manifest.read_text() + "newimgs/c.png\n")
        os.utime(manifest, ns=(0, 0))
        try:
            assert planned_jobs(predict_workdir) == {"predict": 1}
        finally:
            added.unlink()


@pytest.mark.parametrize("predict_workdir", ["manifest"], indirect=True)  # listed by name; a folder lists it alike
def test_an_image_named_with_braces_is_predicted_and_its_changes_plan_predict(predict_workdir):
    # Snakemake reads '{1}' in an input path as a wildcard: the whole workflow stopped planning
    # (WildcardError) whatever was asked for. Such files go into a stamp in params instead.
    braced = predict_workdir / "newimgs/scan{1}.png"
    manifest = predict_workdir / "newimgs.csv"
    with restored_afterwards(manifest):
        write_png(braced, seed=12)
        os.utime(braced, ns=(0, 0))
        manifest.write_text(manifest.read_text() + "newimgs/scan{1}.png\n")
        os.utime(manifest, ns=(0, 0))
        try:
            assert planned_jobs(predict_workdir) == {"predict": 1}
            snakemake(predict_workdir, "--touch", "--cores", "1")
            assert planned_jobs(predict_workdir) == {}
            write_png(braced, seed=13)  # changed in place
            assert planned_jobs(predict_workdir) == {"predict": 1}
        finally:
            braced.unlink()
            snakemake(predict_workdir, "--touch", "--cores", "1")  # as the fixture left it, for the next test


@pytest.mark.parametrize("predict_workdir", ["folder"], indirect=True)  # the input form plays no part
def test_the_salt_reruns_validation_but_never_reaches_the_metadata_or_the_log(predict_workdir):
    # The salt was a param of validate_manifest: Snakemake keeps params in plain text in
    # .snakemake/metadata and prints a changed one in its rerun reasons.
    secret = {"MEDCLASSIFY_SALT": "TopSecretSalt123"}
    planned = snakemake(predict_workdir, "-n", env=secret)
    assert "validate_manifest" in planned.output and "TopSecretSalt123" not in planned.output
    try:
        snakemake(predict_workdir, "--touch", "--cores", "1", env=secret)
        metadata = [path.read_bytes() for path in (predict_workdir / ".snakemake").rglob("*") if path.is_file()]
        assert metadata and not any(b"TopSecretSalt123" in content for content in metadata)
    finally:
        snakemake(predict_workdir, "--touch", "--cores", "1")  # the default salt again, for the next test


@pytest.mark.parametrize("predict_workdir", ["folder"], indirect=True)  # the input form plays no part
def test_switching_watch_images_off_plans_nothing_for_a_dataset_the_workflow_writes(predict_workdir):
    # watch_images only steers planning; as part of validation's params it reran every stage.
    with restored_afterwards(predict_workdir / FAST_CONFIG_NAME):
        set_config(predict_workdir, "validation", {"watch_images": False})
        assert planned_jobs(predict_workdir) == {}


@pytest.fixture(scope="module")
def unrun_workdir(tmp_path_factory):
    """A copy of the repository with the fast demo config and nothing run yet."""
    workdir = copy_repository(tmp_path_factory.mktemp("unrun") / "repo")
    write_fast_config(workdir)
    return workdir


def test_predict_options_left_over_do_not_stop_planning_without_predict_input(unrun_workdir):
    # A run or dataset renamed or removed since predict.run/dataset named it, with predict off.
    set_config(unrun_workdir, "predict", {"input": None, "dataset": "retired", "run": "retired"})
    planned = planned_jobs(unrun_workdir)
    assert planned.get("evaluate") == 1 and "predict" not in planned, planned


def test_asking_for_predictions_without_predict_input_names_the_key(unrun_workdir):
    set_config(unrun_workdir, "predict", {"input": None})
    run = run_snakemake(["-n", "results/predict/predictions.csv", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S)
    assert run.returncode != 0 and "predict.input is null: set it to a folder" in run.output, run.tail()


@contextlib.contextmanager
def with_own_dataset(workdir, header, row, **sections):
    """The config of ``workdir`` with a dataset ``own`` of the user's (a manifest of one row) and
    the top-level ``sections`` updated, for the block's length."""
    manifest = workdir / "own" / "manifest.csv"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text(f"{header}\n{row}\n")
    config_path = workdir / FAST_CONFIG_NAME
    with restored_afterwards(config_path):
        config = yaml.safe_load(config_path.read_text())
        config["datasets"]["own"] = {"manifest": "own/manifest.csv"}
        for section, values in sections.items():
            config[section].update(values)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        yield


def test_a_subgroup_column_no_manifest_has_stops_planning_before_any_job(unrun_workdir):
    # Evaluation reads the subgroup columns after training: a misspelt one must not cost the training.
    with with_own_dataset(unrun_workdir, "path,label,patient,modality,site", "img.png,a,p1,US,north",
                          evaluate={"subgroups": ["site", "scanner"]}):
        run = run_snakemake(["-n", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S)
    assert run.returncode != 0, run.tail()
    for dataset in ("demo", "own"):
        assert f"runs.baseline: evaluate.subgroups ['scanner'] are not columns of the manifest of dataset '{dataset}'" in run.output, \
            run.tail()
    assert "['site'" not in run.output, run.tail()


def test_the_public_salt_is_told_on_the_console_for_a_users_own_manifest(unrun_workdir):
    # Validation's warning went only to its report; on the console Snakemake said nothing (helper-88).
    assert "public default salt" not in run_snakemake(["-n", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S).output
    with with_own_dataset(unrun_workdir, "path,label,patient,modality,site,sex", "img.png,a,p1,US,north,f"):
        run = run_snakemake(["-n", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S)
        assert run.returncode == 0 and "hashed with the public default salt" in run.output, run.tail()
        run = run_snakemake(["-n", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S,
                            env={"MEDCLASSIFY_SALT": "s3cr3t"})
        assert run.returncode == 0 and "public default salt" not in run.output, run.tail()


def test_a_key_written_twice_in_the_config_file_stops_planning(unrun_workdir):
    config_path = unrun_workdir / FAST_CONFIG_NAME
    with restored_afterwards(config_path):
        config_path.write_text(config_path.read_text() + "\ntrain: {ensemble: 0}\n")
        run = run_snakemake(["-n", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S)
    assert run.returncode != 0, run.tail()
    assert "key 'train' is written twice in one mapping" in run.output, run.tail()
    # with the problems of the config Snakemake made of the file, not after they are mended
    assert "train.ensemble: 0 is less than the minimum of 1" in run.output, run.tail()


def test_a_subgroup_column_validation_leaves_out_stops_the_split_before_training(unrun_workdir):
    # "record" repeats the patient field: planning sees it in the header, validation leaves it out.
    images = unrun_workdir / "copied"
    images.mkdir(exist_ok=True)
    rows = []
    for index in range(8):
        write_png(images / f"{index}.png", index)
        rows.append(f"{index}.png,{'ab'[index % 2]},p{index},US,p{index}")
    (images / "manifest.csv").write_text("path,label,patient,modality,record\n" + "\n".join(rows) + "\n")
    config_path = unrun_workdir / FAST_CONFIG_NAME
    with restored_afterwards(config_path):
        config = yaml.safe_load(config_path.read_text())
        config["datasets"] = {"copied": {"manifest": "copied/manifest.csv"}}
        config["evaluate"]["subgroups"] = ["record"]
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        run = run_snakemake(["results/copied/splits.csv", "--cores", "1", *CONFIG_ARGS], unrun_workdir,
                            timeout_s=TIMEOUT_S)
    assert run.returncode != 0, run.tail()
    assert "evaluate.subgroups ['record'] are not columns of the manifest of dataset 'copied'" in run.output, run.tail()
    assert (unrun_workdir / "results" / "copied" / "manifest.validated.csv").exists()
    assert not (unrun_workdir / "results" / "copied" / "splits.csv").exists()


@pytest.mark.parametrize("option", ["dataset", "run"])
def test_unknown_predict_model_is_named_when_predicting(unrun_workdir, option):
    (unrun_workdir / "newimgs").mkdir(exist_ok=True)
    set_config(unrun_workdir, "predict", {"input": "newimgs", option: "retired"})
    run = run_snakemake(["-n", *CONFIG_ARGS], unrun_workdir, timeout_s=TIMEOUT_S)
    choices = "datasets: demo" if option == "dataset" else "runs: baseline"
    assert run.returncode != 0 and f"predict.{option}: 'retired' is not in the config ({choices})" in run.output, \
        run.tail()


@pytest.mark.parametrize("split, fold", [("kfold", "all"), ("kfold", 1), ("kfold", 3), ("grouped_stratified", 1)])
def test_kfold_predict_uses_the_ensemble_of_the_folds_or_the_fold_named(unrun_workdir, split, fold):
    (unrun_workdir / "newimgs").mkdir(exist_ok=True)
    with restored_afterwards(unrun_workdir / FAST_CONFIG_NAME):
        split_options = {"method": "kfold", "folds": 3} if split == "kfold" else {"method": split}
        set_config(unrun_workdir, "datasets", {"demo": {"demo": True, "split": split_options}})
        set_config(unrun_workdir, "predict", {"input": "newimgs", "fold": fold})
        run = run_snakemake(["-n", "results/predict/predictions.csv", *CONFIG_ARGS], unrun_workdir,
                            timeout_s=TIMEOUT_S)
    refusals = {("kfold", 3): "predict.fold: 3 is not a fold of dataset 'demo' (split.folds: 3, so 0 to 2)",
                ("grouped_stratified", 1): "predict.fold: 1 names a fold, but dataset 'demo' is not split by k-fold "
                                   "(split.method: grouped_stratified); leave predict.fold at all"}
    if (split, fold) in refusals:
        assert run.returncode != 0, run.tail()
        assert refusals[split, fold] in run.output, run.tail()
        return
    assert run.returncode == 0, run.tail()
    planned = parse_job_stats(run.output)
    predict_job = run.output[run.output.index("rule predict:"):]
    predict_inputs = predict_job[:predict_job.index("output:")]
    used = [k for k in range(3) if f"results/demo/baseline/fold_{k}/finetune/model.keras" in predict_inputs]
    if fold == "all":
        assert used == [0, 1, 2] and "results/demo/baseline/aggregate/metrics.json" in predict_inputs, predict_inputs
        assert planned["finetune"] == 3 and planned["aggregate_folds"] == 1, planned
    else:
        assert used == [1] and "/aggregate/metrics.json" not in predict_inputs, predict_inputs
        assert planned["finetune"] == 1 and "aggregate_folds" not in planned, planned


@pytest.fixture(scope="module")
def medmnist_workdir(tmp_path_factory):
    """A recorded run of a MedMNIST dataset imported from a local .npz (never read: no job runs)."""
    workdir = copy_repository(tmp_path_factory.mktemp("medmnist-inputs") / "repo")
    (workdir / "data").mkdir()
    (workdir / "data/breastmnist.npz").write_bytes(b"stands for the file")
    write_fast_config(workdir)
    dataset = {"medmnist": "breastmnist", "npz": "data/breastmnist.npz"}
    set_config(workdir, "datasets", {MEDMNIST_DATASET: dataset})
    evaluate = yaml.safe_load((workdir / FAST_CONFIG_NAME).read_text())["evaluate"]
    set_config(workdir, "evaluate", {**evaluate, "subgroups": []})  # the demo's site and sex: MedMNIST has none
    record_complete_run(workdir)
    return workdir


def test_replacing_the_npz_content_plans_the_import_and_what_follows(medmnist_workdir):
    npz = medmnist_workdir / "data/breastmnist.npz"
    with restored_afterwards(npz):
        npz.write_bytes(b"another file at the same path")
        made_newer(npz)
        planned = planned_jobs(medmnist_workdir)
    assert planned.get("import_medmnist") == 1 and planned.get("evaluate") == 1, planned


def test_the_same_npz_named_by_the_environment_plans_nothing(medmnist_workdir):
    # As `make` gives it: an absolute path in MEDCLASSIFY_<NAME>_NPZ, over the config's relative one.
    npz = (medmnist_workdir / "data/breastmnist.npz").resolve()
    assert planned_jobs(medmnist_workdir, env={NPZ_VARIABLE: str(npz)}) == {}

"""Snakemake reruns only what a change touches: checked on the dry-run job list after a real run.

One complete run of the workflow (a small dataset with its own manifest, one training epoch per
stage) is made once in a copy of the repository; each test then changes one thing, asks
Snakemake what it would run (``snakemake -n``), and puts the change back, byte for byte and
with the file's old modification time, so that the next test starts from the same state.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from snakemake_fixtures import (
    FAST_CONFIG_NAME,
    copy_repository,
    planned_jobs as shared_planned_jobs,
    restored_afterwards,
    run_snakemake,
    write_fast_config,
)

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 1200
DRY_RUN_TIMEOUT_S = 300
HELD_BACK_PATIENTS = 3
DATASET = "own"


def planned_jobs(workdir):
    """Jobs per rule that ``snakemake -n`` would run now with the test's config."""
    return shared_planned_jobs(workdir, "--configfile", FAST_CONFIG_NAME, timeout_s=DRY_RUN_TIMEOUT_S)


def write_manifest_without_last_patients(data_dir, n_patients):
    """Keep the full generated manifest aside and give the workflow one without the last patients."""
    full = pd.read_csv(data_dir / "manifest.csv")
    full.to_csv(data_dir / "manifest.full.csv", index=False)
    held_back = full["patient"].drop_duplicates().iloc[-n_patients:]
    full[~full["patient"].isin(held_back)].to_csv(data_dir / "manifest.csv", index=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of the repository with one complete run of a small own-manifest dataset."""
    from medclassify.datasets.demo import generate_demo_dataset

    workdir = copy_repository(tmp_path_factory.mktemp("rerun") / "repo")
    data_dir = workdir / "data"
    generate_demo_dataset(data_dir, n_patients=24, seed=0)
    write_manifest_without_last_patients(data_dir, HELD_BACK_PATIENTS)
    write_fast_config(workdir)
    # The own-manifest dataset replaces the demo one (a merge would keep both).
    config = yaml.safe_load((workdir / FAST_CONFIG_NAME).read_text())
    config["datasets"] = {DATASET: {"manifest": "data/manifest.csv", "root": "data"}}
    (workdir / FAST_CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))

    run = run_snakemake(
        ["--cores", "2", "--configfile", FAST_CONFIG_NAME], workdir, timeout_s=RUN_TIMEOUT_S
    )
    if run.returncode != 0:
        pytest.fail(f"the workflow run failed:\n{run.tail()}")
    if planned_jobs(workdir) != {}:
        pytest.fail("a complete run must leave nothing to do")
    return workdir


def edit_config(workdir, section, key, value):
    config_path = workdir / FAST_CONFIG_NAME
    config = yaml.safe_load(config_path.read_text())
    config.setdefault(section, {})[key] = value
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_changing_an_evaluation_option_plans_only_evaluation_and_comparison(workdir):
    config = workdir / FAST_CONFIG_NAME
    with restored_afterwards(config):
        edit_config(workdir, "evaluate", "threshold", "fixed")
        assert planned_jobs(workdir) == {"evaluate": 1, "compare": 1}


@pytest.mark.parametrize("section, key, value", [("finetune", "learning_rate", 0.0005), ("train", "ensemble", 2)])
def test_changing_a_finetune_option_plans_finetune_and_what_follows(workdir, section, key, value):
    config = workdir / FAST_CONFIG_NAME
    with restored_afterwards(config):
        edit_config(workdir, section, key, value)
        assert planned_jobs(workdir) == {"finetune": 1, "evaluate": 1, "compare": 1}


def test_changing_how_training_reads_the_images_plans_nothing(workdir):
    # In memory or from the HDF5 file, training sees the same values in the same order.
    config = workdir / FAST_CONFIG_NAME
    with restored_afterwards(config):
        edit_config(workdir, "train", "cache_in_memory_max_gb", 0)
        assert planned_jobs(workdir) == {}


@pytest.mark.parametrize(
    "entry",
    [
        {"manifest": "./data/manifest.csv", "root": "data/"},
        {"manifest": "{workdir}/data/manifest.csv", "root": "./data"},
        {"manifest": "data/manifest.csv", "root": None},  # the manifest's folder
        {"manifest": "data/manifest.csv", "root": "data", "demo_patients": 30, "medmnist_size": 64},
    ],
    ids=["dot-and-slash", "absolute", "root-left-out", "keys-of-other-sources"],
)
def test_another_spelling_of_the_same_dataset_plans_nothing(workdir, entry):
    # Each of these retrained everything: the manifest and root were params and inputs as spelt.
    config_path = workdir / FAST_CONFIG_NAME
    with restored_afterwards(config_path):
        config = yaml.safe_load(config_path.read_text())
        config["datasets"][DATASET] = {
            key: value.format(workdir=workdir) if isinstance(value, str) else value
            for key, value in entry.items()
        }
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        assert planned_jobs(workdir) == {}


def every_job_from_validation(workdir):
    n_shards = yaml.safe_load((workdir / FAST_CONFIG_NAME).read_text())["preprocess"]["shards"]
    return {
        "validate_manifest": 1,
        "preprocess": n_shards,
        "merge_cache": 1,
        "split": 1,
        "train_head": 1,
        "finetune": 1,
        "evaluate": 1,
        "compare": 1,
    }


def test_adding_images_to_the_manifest_plans_validation_preprocessing_and_what_follows(workdir):
    manifest = workdir / "data/manifest.csv"
    with restored_afterwards(manifest):
        shutil.copyfile(workdir / "data/manifest.full.csv", manifest)
        assert planned_jobs(workdir) == every_job_from_validation(workdir)


def test_replacing_an_image_in_place_plans_validation_and_what_follows(workdir):
    # The manifest is unchanged; the stamp of the files it names (validation.watch_images) is not.
    image = workdir / "data" / pd.read_csv(workdir / "data/manifest.csv")["path"].iloc[0]
    with restored_afterwards(image):
        with Image.open(image) as original:
            flipped = np.asarray(original)[::-1]
        Image.fromarray(flipped).save(image)
        assert planned_jobs(workdir) == every_job_from_validation(workdir)


@pytest.mark.parametrize(
    "module, first_rule, untouched",
    [
        ("medclassify/splits.py", "split", {"validate_manifest", "preprocess", "merge_cache"}),
        (
            "medclassify/evaluation/metrics.py",
            "evaluate",
            {"validate_manifest", "preprocess", "split", "train_head", "finetune"},
        ),
        ("medclassify/manifest.py", "validate_manifest", set()),
    ],
)
def test_editing_a_library_module_plans_the_rules_that_import_it(
    workdir, module, first_rule, untouched
):
    source = workdir / module
    with restored_afterwards(source):
        source.write_text(source.read_text() + "\n# an edit that changes the code's checksum\n")
        planned = planned_jobs(workdir)
    assert first_rule in planned
    assert not untouched & set(planned), planned


@pytest.mark.parametrize(
    "relative",
    [
        "data/manifest.csv",
        "medclassify/splits.py",
        "medclassify/training.py",
        f"results/{DATASET}/cache.h5",
        f"results/{DATASET}/splits.csv",
    ],
)
def test_touching_a_file_without_changing_it_plans_nothing(workdir, relative):
    path = workdir / relative
    with restored_afterwards(path):
        path.touch()
        assert planned_jobs(workdir) == {}


def test_reordering_the_keys_of_the_config_file_plans_nothing(workdir):
    config_path = workdir / FAST_CONFIG_NAME
    with restored_afterwards(config_path):
        config = yaml.safe_load(config_path.read_text())
        reordered = {
            section: dict(reversed(list(value.items()))) if isinstance(value, dict) else value
            for section, value in reversed(list(config.items()))
        }
        config_path.write_text(yaml.safe_dump(reordered, sort_keys=False))
        assert planned_jobs(workdir) == {}


# Last in the module: it runs the workflow on the grown manifest, so the state the tests above
# share is gone afterwards.
def test_rebuilding_the_cache_decodes_only_the_added_images(workdir):
    manifest = workdir / "data/manifest.csv"
    shutil.copyfile(workdir / "data/manifest.full.csv", manifest)
    cache = f"results/{DATASET}/cache.h5"
    # The target first: --configfile takes every argument after it.
    run = run_snakemake([cache, "--cores", "2", "--configfile", FAST_CONFIG_NAME], workdir, timeout_s=RUN_TIMEOUT_S)
    if run.returncode != 0:
        pytest.fail(f"the cache rebuild failed:\n{run.tail()}")
    full = pd.read_csv(workdir / "data/manifest.full.csv")
    added = full["patient"].isin(full["patient"].drop_duplicates().iloc[-HELD_BACK_PATIENTS:]).sum()
    counts = {"images": 0, "decoded": 0, "reused": 0}
    for log in (workdir / f"results/logs/{DATASET}").glob("preprocess-*-of-*.log"):
        for line in log.read_text().splitlines():
            words = line.replace(",", "").split()
            for count, word in zip(words, words[1:]):
                if word in counts and count.isdigit():
                    counts[word] += int(count)
    assert counts == {"images": len(full), "decoded": added, "reused": len(full) - added}

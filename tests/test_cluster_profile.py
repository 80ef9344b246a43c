"""profiles/slurm without a cluster: Snakemake accepts it, and its settings say what the README says.

The run against a real Slurm is tests/test_cluster.py.
"""

import re
import shutil

import pytest
import yaml

from snakemake_fixtures import (
    REPO,
    SLURM_PROFILE,
    fit_profile_to_node,
    parse_job_stats,
    run_snakemake,
)

PROFILE = yaml.safe_load(SLURM_PROFILE.read_text())
GPU_RULES = ("train_head", "finetune", "evaluate")


def workflow_rule_names():
    names = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        names |= set(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    return names


def evaluate_resource(expression, attempt):
    """A resource value as Snakemake computes it: a Python expression of ``attempt``."""
    return eval(str(expression), {"attempt": attempt, "system_tmpdir": "/tmp"})


def test_profile_uses_the_slurm_executor_with_squeue_status_checks():
    assert PROFILE["executor"] == "slurm"
    assert PROFILE["slurm-status-command"] == "squeue"
    assert PROFILE["retries"] >= 1


def test_profile_never_requests_resources_through_slurm_extra():
    assert "slurm_extra" not in SLURM_PROFILE.read_text()


def test_every_rule_the_profile_names_exists_in_the_workflow():
    named = set(PROFILE["set-resources"]) | set(PROFILE["set-threads"])
    assert named <= workflow_rule_names(), named - workflow_rule_names()


@pytest.mark.parametrize("rule", GPU_RULES)
def test_gpu_rules_request_a_gpu_and_cpus_to_feed_it(rule):
    resources = PROFILE["set-resources"][rule]
    assert resources["gpu"] >= 1
    assert resources["cpus_per_gpu"] >= 1
    assert PROFILE["set-threads"][rule] <= resources["cpus_per_gpu"] * resources["gpu"]


@pytest.mark.parametrize("rule", sorted(PROFILE["set-resources"]))
def test_memory_and_runtime_grow_with_each_retry(rule):
    resources = PROFILE["set-resources"][rule]
    for name in ("mem_mb", "runtime"):
        first, second = (evaluate_resource(resources[name], attempt) for attempt in (1, 2))
        assert second > first > 0, (rule, name)


def test_fitting_the_profile_to_a_small_node_caps_sizes_and_keeps_the_rest():
    fitted = fit_profile_to_node(PROFILE, cpus=2, mem_mb=6000, status_check_s=2)
    train = fitted["set-resources"]["train_head"]
    assert train["cpus_per_gpu"] == 2 and fitted["set-threads"]["train_head"] == 2
    assert evaluate_resource(train["mem_mb"], 1) == 6000
    # A small request stays as it was, and still grows with the attempt up to the cap.
    split = fitted["set-resources"]["split"]
    assert [evaluate_resource(split["mem_mb"], a) for a in (1, 2, 3)] == [2000, 4000, 6000]
    assert train["gpu"] == PROFILE["set-resources"]["train_head"]["gpu"]
    assert train["runtime"] == PROFILE["set-resources"]["train_head"]["runtime"]
    assert fitted["slurm-status-command"] == "squeue"
    assert fitted["slurm-init-seconds-before-status-checks"] == 2
    assert PROFILE["set-resources"]["train_head"]["cpus_per_gpu"] == 8, "input left unchanged"


def test_snakemake_and_the_slurm_plugin_accept_every_profile_key(tmp_path):
    """A dry run through the profile: an unknown or misspelt key is an error here."""
    shutil.copy(REPO / "tests/cluster/smoke/Snakefile", tmp_path / "Snakefile")
    run = run_snakemake(
        ["-n", "--profile", str(SLURM_PROFILE.parent), "--workflow-profile", "none"],
        tmp_path,
        timeout_s=120,
    )
    assert run.returncode == 0, run.tail()
    assert parse_job_stats(run.output) == {"split": 1, "train_head": 1, "all": 1}
    train_resources = next(
        line for line in run.output.split("rule train_head:")[1].splitlines() if "resources:" in line
    )
    for expected in ("gpu=1", "cpus_per_gpu=8", "mem_mb=32000", "runtime=240"):
        assert expected in train_resources, train_resources


JOB_STATS_OUTPUT = """\
Building DAG of jobs...
Job stats:
job                  count
-----------------  -------
preprocess               2
train_head               1
all                      1
total                    4

Reasons:
    (check individual jobs above for details)
"""


def test_parse_job_stats_reads_the_dry_run_table():
    assert parse_job_stats(JOB_STATS_OUTPUT) == {"preprocess": 2, "train_head": 1, "all": 1}
    assert parse_job_stats("Building DAG of jobs...\nNothing to be done (all requested files "
                           "are present and up to date).\n") == {}
    with pytest.raises(ValueError, match="no job stats"):
        parse_job_stats("WorkflowError: something broke")

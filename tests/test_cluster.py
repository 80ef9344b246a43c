"""profiles/slurm against a real Slurm: the one-node test cluster of tests/cluster/start-slurm.sh.

Run with the cluster up (``make test-cluster`` starts and stops it):

    tests/cluster/start-slurm.sh && source /tmp/medclassify-slurm/env.sh
    .venv/bin/python -m pytest tests/test_cluster.py -m cluster -q
    tests/cluster/stop-slurm.sh

Without MEDCLASSIFY_SLURM_DIR in the environment every test here is skipped. With it set, a
cluster that does not answer is a failure, not a skip.
"""

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from snakemake_fixtures import (
    REPO,
    copy_repository,
    kill_snakemake,
    run_snakemake,
    start_snakemake,
    wait_snakemake,
    write_fast_config,
    write_test_profile,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not os.environ.get("MEDCLASSIFY_SLURM_DIR"),
        reason="no test cluster: run `make test-cluster`, or tests/cluster/start-slurm.sh and "
        "`source <state dir>/env.sh` (sets MEDCLASSIFY_SLURM_DIR and SLURM_CONF)",
    ),
]

SMOKE_TIMEOUT_S = 300
DEMO_TIMEOUT_S = 1200
SQUEUE_FIELDS = "JobID:20,Comment:300,tres-per-job:40,State:20"
# snakemake-executor-plugin-slurm comments every job with its rule and wildcards.
PLUGIN_COMMENT = re.compile(r"^rule_(?P<rule>\w+?)(?:_wildcards_.*)?$")


@pytest.fixture(scope="module")
def test_node():
    """CPUs and memory (MB) of the test cluster's node; fails when the cluster does not answer."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%c %m %T"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"MEDCLASSIFY_SLURM_DIR is set but the test cluster does not answer: {error}")
    cpus, mem_mb, state = int(out[0]), int(out[1]), out[2]
    assert state.startswith(("idle", "mixed", "allocated")), f"test node is {state}"
    return {"cpus": cpus, "mem_mb": mem_mb}


class SlurmJobRecorder:
    """Polls squeue while Snakemake runs, so that no job is missed: without slurmdbd a finished job
    leaves squeue MinJobAge (300 s) after it ended, sooner than the demo workflow ends."""

    def __init__(self, interval_s=1.0):
        self.interval_s = interval_s
        self.jobs = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._record()
        self._earlier = set(self.jobs)  # jobs of earlier tests are not this run's
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._record()

    def _poll(self):
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self):
        out = subprocess.run(
            ["squeue", "--states=all", "--noheader", "-O", SQUEUE_FIELDS],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        for line in out.splitlines():
            job_id, *comment, tres, state = line.split()
            rule = PLUGIN_COMMENT.match(" ".join(comment))
            self.jobs[job_id] = {"rule": rule and rule["rule"], "tres": tres, "state": state}

    def by_rule(self, rule):
        return [
            job for job_id, job in self.jobs.items() if job["rule"] == rule and job_id not in self._earlier
        ]


def read_env_file(path):
    return dict(line.split("=", 1) for line in Path(path).read_text().splitlines() if line)


def slurm_args(profile_dir):
    # The workstation profile (workflow/profiles/default) would otherwise be merged over
    # profiles/slurm key by key; profiles/README.md tells users the same.
    return ["--profile", str(profile_dir), "--workflow-profile", "none"]


def test_smoke_workflow_goes_through_sbatch_with_a_gpu_for_training(tmp_path, test_node):
    workdir = tmp_path / "smoke"
    workdir.mkdir()
    (workdir / "Snakefile").write_text((REPO / "tests/cluster/smoke/Snakefile").read_text())
    profile = write_test_profile(tmp_path / "profile", **test_node)

    with SlurmJobRecorder() as recorder:
        run = run_snakemake(slurm_args(profile), workdir, timeout_s=SMOKE_TIMEOUT_S)

    assert run.returncode == 0, run.tail()
    cpu_job_env = read_env_file(workdir / "out/split.env")
    gpu_job_env = read_env_file(workdir / "out/train_head.env")
    # Both ran as Slurm jobs, not on the submit host.
    assert "SLURM_JOB_ID" in cpu_job_env and "SLURM_JOB_ID" in gpu_job_env
    assert "CUDA_VISIBLE_DEVICES" not in cpu_job_env
    assert gpu_job_env["CUDA_VISIBLE_DEVICES"] == "0"
    # cpus_per_gpu of the profile (fitted to the node) became the job's CPUs.
    assert int(gpu_job_env["SLURM_CPUS_ON_NODE"]) == min(8, test_node["cpus"])

    [train_job] = recorder.by_rule("train_head")
    [split_job] = recorder.by_rule("split")
    assert train_job["tres"] == "gres:gpu:1", recorder.jobs
    assert "gpu" not in split_job["tres"], recorder.jobs
    assert train_job["state"] == split_job["state"] == "COMPLETED"


METRICS = "results/demo/baseline/evaluation/metrics.json"
PREDICTIONS = "results/demo/baseline/evaluation/predictions.csv"
GPU_RULES = ("train_head", "finetune", "evaluate")
CPU_RULES = ("make_demo_data", "validate_manifest", "preprocess", "merge_cache", "split")


def test_demo_workflow_through_the_slurm_profile_matches_a_local_run(tmp_path, test_node, request):
    # The same fast demo as conftest's demo_run (two cores, the workstation profile), in a copy
    # of the working tree of its own. The Slurm run starts first and the local one is made (or
    # found) while it runs: the Slurm run spends most of its time waiting for the plugin's status
    # checks, and the local run fills that time instead of coming before it.
    workdir = copy_repository(tmp_path / "repo")
    profile = write_test_profile(tmp_path / "profile", **test_node)

    with SlurmJobRecorder() as recorder:
        started = start_snakemake([*slurm_args(profile), *write_fast_config(workdir)], workdir)
        try:
            demo_run = request.getfixturevalue("demo_run")
        except BaseException:
            kill_snakemake(started)
            raise
        run = wait_snakemake(started, timeout_s=DEMO_TIMEOUT_S)

    assert run.returncode == 0, run.tail()
    for rule in GPU_RULES:
        jobs = recorder.by_rule(rule)
        assert jobs, f"no Slurm job of rule {rule}: {recorder.jobs}"
        assert all(job["tres"] == "gres:gpu:1" for job in jobs), jobs
    for rule in CPU_RULES:
        jobs = recorder.by_rule(rule)
        assert jobs, f"no Slurm job of rule {rule}: {recorder.jobs}"
        assert not any("gpu" in job["tres"] for job in jobs), jobs
    states = {job["state"] for rule in (*GPU_RULES, *CPU_RULES) for job in recorder.by_rule(rule)}
    assert states == {"COMPLETED"}, recorder.jobs

    # Same seed, same threads, deterministic ops: the cluster changes nothing in the results.
    assert json.loads((workdir / METRICS).read_text()) == json.loads(
        (demo_run / METRICS).read_text()
    )
    assert (workdir / PREDICTIONS).read_text() == (demo_run / PREDICTIONS).read_text()

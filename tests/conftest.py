"""Shared fixtures: paths to real data and one end-to-end run of the demo workflow.

The demo run happens once per test session, in a copy of the repository under a temporary
folder, so that tests never touch the developer's own ``results/``. Tests that need a finished
workflow (end to end, reruns, report) share it through the ``demo_run`` fixture.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_NPZ = Path(os.environ.get("MEDCLASSIFY_BREASTMNIST_NPZ", REPO.parent / "shared" / "data" / "breastmnist.npz"))
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# A demo run small enough for CI: few epochs and bootstrap resamples, same code paths.
FAST_DEMO_CONFIG = ["--configfile", "config/config.yaml", "tests/fast_demo.yaml"]


def copy_repository(destination):
    """Copy the tracked and untracked-but-not-ignored files of the repository to ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def run_snakemake(workdir, *args, timeout=900, check=True):
    """Run snakemake in ``workdir``; return the completed process (output captured)."""
    result = subprocess.run(
        [*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir, *args):
    """Rules that a dry run plans, as {rule: count}, parsed from Snakemake's job table."""
    result = run_snakemake(workdir, "-n", "--quiet", "rules", *args)
    jobs, in_table = {}, False
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(fields) == 2 and fields[1].isdigit() and fields[0] != "total":
            jobs[fields[0]] = int(fields[1])
        elif in_table and fields and fields[0] == "total":
            break
    return jobs


@pytest.fixture(scope="session")
def shared_npz():
    if not SHARED_NPZ.exists():
        pytest.skip(f"real BreastMNIST not found at {SHARED_NPZ}")
    return SHARED_NPZ


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A copy of the repository in which the demo workflow has run to completion (fast config)."""
    workdir = copy_repository(tmp_path_factory.mktemp("demo-run"))
    run_snakemake(workdir, "--cores", "2", *FAST_DEMO_CONFIG)
    return workdir

"""Shared fixtures: the real BreastMNIST file and one end-to-end run of the demo workflow.

The demo run happens once per test session, in a copy of the repository under a temporary
folder, so that tests never touch the developer's own ``results/``. Tests that need a finished
workflow (end to end, report) share it through the ``demo_run`` fixture.
"""

import os
from pathlib import Path

import pytest

from snakemake_fixtures import FAST_CONFIG_NAME, REPO, copy_repository, run_snakemake, write_fast_config

SHARED_NPZ = Path(os.environ.get("MEDCLASSIFY_BREASTMNIST_NPZ", REPO.parent / "shared" / "data" / "breastmnist.npz"))

# The demo config with fewer patients, epochs and bootstrap resamples; same stages and code paths.
FAST_DEMO_ARGS = ["--configfile", FAST_CONFIG_NAME]
DEMO_RUN_TIMEOUT_S = 1200


# Seconds of each module on an idle 2-core machine, in make test (test_training with its slow
# tests); the rest take under 65 s each.
LONGEST_MODULES = ("test_training", "test_training_ensemble", "test_rerun", "test_workflow_inputs")  # ~230, 160, 150, 85 s


# tryfirst: pytest-xdist reads the xdist_group marks in its own pytest_collection_modifyitems,
# which would otherwise run before this one and see none (tests/test_xdist_grouping.py).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Give every test an xdist group, for ``--dist loadgroup``, and the longest groups first.

    A session or module fixture is built once per worker, so a module's tests stay together
    (as ``--dist loadscope`` would keep them), and so do the demo run's tests, wherever their
    module: split over two workers, the demo run would be made twice. The Slurm tests join its
    group: the demo workflow's test compares with it, and both read the one test cluster's queue.
    With ``--no-loadscope-reorder`` pytest-xdist hands the groups out in this order: the demo
    run's first (the Slurm demo test waits on status checks most of its time), then the modules
    of LONGEST_MODULES, so that none of them starts last and runs alone at the end.
    """
    groups = {}
    for item in items:
        if "demo_run" in item.fixturenames or item.get_closest_marker("cluster") is not None:
            groups[item] = "demo_run"
        else:
            groups[item] = item.module.__name__
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    order = ["demo_run", *LONGEST_MODULES]
    items.sort(key=lambda item: order.index(groups[item]) if groups[item] in order else len(order))


@pytest.fixture(scope="session")
def shared_npz():
    if not SHARED_NPZ.exists():
        pytest.skip(f"real BreastMNIST not found at {SHARED_NPZ}")
    return SHARED_NPZ


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A copy of the repository in which the demo workflow has run to completion (fast config)."""
    workdir = copy_repository(tmp_path_factory.mktemp("demo-run") / "repo")
    write_fast_config(workdir)
    run = run_snakemake(["--cores", "2", *FAST_DEMO_ARGS], workdir, timeout_s=DEMO_RUN_TIMEOUT_S)
    if run.returncode != 0:
        pytest.fail(f"the demo workflow failed:\n{run.tail()}")
    return workdir

"""make test relies on ``--dist loadgroup`` keeping a group on one worker (see conftest.py).

Two things have silently broken it: pytest-xdist reads the xdist_group marks before a conftest
hook without ``tryfirst`` adds them, and pytest 9.2 ignores the node-id rewrite by which
pytest-xdist 3.8 passes a group on (pytest-dev/pytest-xdist#1386). Either way the tests are
spread over the workers as if unmarked and every worker builds the demo run and the module
fixtures again; nothing fails, so this test runs conftest.py's own hook in a small pytest
session and checks where each test ran.
"""

import inspect
import os
import re
import subprocess
import sys
from collections import defaultdict

import conftest

CONFTEST = f'''
import pytest

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow")
    config.addinivalue_line("markers", "cluster: cluster")

@pytest.fixture(scope="session")
def demo_run():
    return None

LONGEST_MODULES = ()

{inspect.getsource(conftest.pytest_collection_modifyitems)}
'''

# Module a's tests form the module's group, as test_rerun.py's do; module b has tests that join
# the demo run's group (by fixture or by the cluster mark) among tests of its own group.
# pytest-xdist hands out its first tests in turn, one to each worker: each group's first two
# tests are neighbours there, so that without the grouping they would go to different workers.
MODULES = {
    "a": [("@pytest.mark.slow", f"test_a_{i}()", "test_a") for i in range(3)],
    "b": [
        ("@pytest.mark.slow", "test_b_demo0(demo_run)", "demo_run"),
        ("@pytest.mark.cluster", "test_b_demo1()", "demo_run"),
        ("", "test_b_own0()", "test_b"),
        ("@pytest.mark.slow", "test_b_own1()", "test_b"),
        ("@pytest.mark.slow", "test_b_demo2(demo_run)", "demo_run"),
        ("", "test_b_own2()", "test_b"),
    ],
}


def write_session(folder):
    """The session's files; returns {test name: its group}."""
    (folder / "conftest.py").write_text(CONFTEST)
    groups = {}
    for module, tests in MODULES.items():
        source = ["import time", "import pytest"]
        for mark, signature, group in tests:
            source.append(f"{mark}\ndef {signature}:\n    time.sleep(0.2)\n")
            groups[signature.split("(")[0]] = group
        (folder / f"test_{module}.py").write_text("\n\n".join(source))
    return groups


def test_loadgroup_keeps_each_group_on_one_worker(tmp_path):
    groups = write_session(tmp_path)
    # The inner session gets its own basetemp: pytest's default one would prune the outer
    # session's temporary folders. The outer worker's xdist variables are not passed on.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder", "-v",
               "-p", "no:cacheprovider"]
    run = subprocess.run(
        [*command, "--basetemp", str(tmp_path / "basetemp")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stdout[-3000:]
    placed = re.findall(r"^\[(gw\d)\] .*PASSED \S+::(test_[a-z0-9_]+)", run.stdout, flags=re.MULTILINE)
    assert sorted(name for _, name in placed) == sorted(groups), run.stdout
    workers = defaultdict(set)
    for worker, name in placed:
        workers[groups[name]].add(worker)
    assert set(workers) == {"demo_run", "test_a", "test_b"}
    split = {group: sorted(ran_on) for group, ran_on in workers.items() if len(ran_on) > 1}
    assert not split, f"groups ran on more than one worker: {split}\n{run.stdout}"

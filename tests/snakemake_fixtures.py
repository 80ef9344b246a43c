"""Helpers for tests that run Snakemake itself: end to end, reruns, report and cluster.

Each test works in a copy of the repository in a temporary folder, so that it never touches the
checkout's ``results/`` or ``.snakemake/``, and runs Snakemake as a subprocess under a hard time
limit (the whole process group is killed with SIGKILL: Snakemake was seen to ignore SIGTERM while
it waits on cluster jobs).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm" / "profile.yaml"

# Changes to the demo config (config/config.yaml): small enough to run the demo end to end in a
# minute or two on two CPU cores, large enough that every stage (validation, two preprocess
# shards, split, both training stages, evaluation, comparison) does real work.
FAST_DEMO_OVERRIDES = {
    "datasets": {"demo": {"demo": True, "demo_patients": 24}},
    "preprocess": {"size": [32, 32], "shards": 2},
    "train": {"batch_size": 16, "seed": 0},
    "head": {"epochs": 1, "dropout": 0.3},  # not the default: the fine-tune stage must get it too
    "finetune": {"epochs": 1, "warmup_epochs": 0},
    "evaluate": {"bootstrap": 200},
}
FAST_CONFIG_NAME = "config/fast-test.yaml"


@dataclass
class SnakemakeRun:
    """What one Snakemake subprocess did."""

    args: list
    returncode: int
    output: str
    seconds: float

    def tail(self, lines=60):
        """The last lines of the combined output, for assertion messages."""
        return "\n".join(self.output.splitlines()[-lines:])


def merge(base, overrides):
    """base with overrides merged in, nested dicts key by key (neither argument is changed)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_fast_config(workdir, extra=None):
    """Write the demo config with FAST_DEMO_OVERRIDES (and extra) to workdir/FAST_CONFIG_NAME.

    A --configfile replaces config/config.yaml instead of being merged over it (see Snakefile),
    so the file holds the whole demo config. Returns the --configfile arguments.
    """
    workdir = Path(workdir)
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config = merge(merge(config, FAST_DEMO_OVERRIDES), extra or {})
    (workdir / FAST_CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
    return ["--configfile", FAST_CONFIG_NAME]


def copy_repository(dest):
    """Copy the working tree's tracked and unignored files (not results, caches, venv) to dest.

    Modification times are kept, so that Snakemake sees the copy as it would see the checkout.
    Symbolic links stay links (profiles/default is one: Snakemake finds the workstation
    profile through it, as in the checkout).
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    dest = Path(dest)
    for relative in filter(None, listed.split("\0")):
        source = REPO / relative
        target = dest / relative
        if source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(source))
            continue
        if not source.is_file():  # deleted in the working tree but still tracked
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


@dataclass
class StartedSnakemake:
    """A Snakemake subprocess started by start_snakemake and not yet waited for."""

    command: list
    process: subprocess.Popen
    log_path: Path
    started: float


def start_snakemake(args, cwd, *, env=None, log_path=None):
    """Start ``snakemake ARGS`` in cwd with this interpreter, in a session of its own.

    Its output goes to log_path (a new file in cwd by default); finish it with wait_snakemake.
    """
    command = [sys.executable, "-m", "snakemake", *args]
    log_path = Path(log_path or Path(cwd) / f"snakemake-{time.time_ns()}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return StartedSnakemake(command, process, log_path, time.monotonic())


def wait_snakemake(started, *, timeout_s):
    """Wait for the run to end; timeout_s seconds after its start, kill its process group.

    A run that was killed is reported with returncode -9 and what it printed so far.
    """
    remaining_s = max(0.0, timeout_s - (time.monotonic() - started.started))
    try:
        returncode = started.process.wait(timeout=remaining_s)
    except subprocess.TimeoutExpired:
        kill_snakemake(started)
        returncode = -signal.SIGKILL
    output = started.log_path.read_text(errors="replace")
    if returncode == -signal.SIGKILL:
        output += f"\n[killed with SIGKILL after {timeout_s} s]"
    return SnakemakeRun(started.command, returncode, output, time.monotonic() - started.started)


def kill_snakemake(started):
    """SIGKILL to the run's whole process group (Snakemake and its job processes)."""
    try:
        os.killpg(started.process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group has ended already
        pass
    started.process.wait()


def run_snakemake(args, cwd, *, timeout_s, env=None, log_path=None):
    """Run ``snakemake ARGS`` in cwd with this interpreter, killing it after timeout_s seconds.

    The process gets its own session; on timeout the whole group (Snakemake, its job processes)
    gets SIGKILL and the run is reported with returncode -9 and what it printed so far.
    """
    return wait_snakemake(start_snakemake(args, cwd, env=env, log_path=log_path), timeout_s=timeout_s)


_JOB_STATS_ROW = re.compile(r"^(?P<rule>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<count>\d+)\s*$")


def parse_job_stats(output):
    """Jobs per rule from the "Job stats:" table of a dry run; empty when nothing is planned."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        if "Nothing to be done" in output:
            return Counter()
        raise ValueError(f"no job stats in Snakemake's output:\n{output[-3000:]}")
    counts = Counter()
    for line in lines[start + 1 :]:
        if not line.strip():
            if counts:
                break
            continue
        match = _JOB_STATS_ROW.match(line.strip())
        if match and match["rule"] not in ("job", "total"):
            counts[match["rule"]] = int(match["count"])
    return counts


def planned_jobs(workdir, *args, timeout_s=300):
    """Jobs per rule that ``snakemake -n ARGS`` would run now (the ``all`` target left out)."""
    import pytest

    run = run_snakemake(["-n", "--quiet", "rules", *args], workdir, timeout_s=timeout_s)
    if run.returncode != 0:
        pytest.fail(f"the dry run failed:\n{run.tail()}")
    planned = parse_job_stats(run.output)
    planned.pop("all", None)
    return dict(planned)


@contextmanager
def restored_afterwards(*paths):
    """Let the body change files; put back their bytes and modification times afterwards."""
    saved = {Path(p): (Path(p).read_bytes(), os.stat(p).st_mtime_ns) for p in paths}
    try:
        yield
    finally:
        for path, (content, mtime_ns) in saved.items():
            path.write_bytes(content)
            os.utime(path, ns=(mtime_ns, mtime_ns))


def fit_profile_to_node(profile, *, cpus, mem_mb, status_check_s):
    """The Slurm profile with only its sizes cut to fit the one small node of the test cluster.

    Threads and cpus_per_gpu are capped at the node's CPUs; memory expressions keep their
    ``attempt`` scaling but are capped at the node's memory (``min(<expr>, mem_mb)``); the first
    status check comes after status_check_s instead of the profile's production interval. Every
    other setting (executor, status command, GPU resources, runtimes, retries) is kept as is.
    """
    fitted = yaml.safe_load(yaml.safe_dump(profile))
    fitted["slurm-init-seconds-before-status-checks"] = status_check_s
    fitted["set-threads"] = {
        rule: min(int(threads), cpus) for rule, threads in fitted.get("set-threads", {}).items()
    }
    sections = [fitted.get("default-resources", {}), *fitted.get("set-resources", {}).values()]
    for resources in sections:
        if "cpus_per_gpu" in resources:
            resources["cpus_per_gpu"] = min(int(resources["cpus_per_gpu"]), cpus)
        if "mem_mb" in resources:
            resources["mem_mb"] = f"min({resources['mem_mb']}, {mem_mb})"
    return fitted


def write_test_profile(dest_dir, *, cpus, mem_mb, status_check_s=2):
    """Write profiles/slurm fitted to the test node (fit_profile_to_node) as dest_dir/profile.yaml."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    fitted = fit_profile_to_node(profile, cpus=cpus, mem_mb=mem_mb, status_check_s=status_check_s)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / "profile.yaml").write_text(yaml.safe_dump(fitted, sort_keys=False))
    return dest_dir

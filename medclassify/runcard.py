"""The run card: everything needed to know how a run's results were produced.

One JSON file per run with the resolved config and its hash, the workflow's git commit (and
whether the working tree differed from it), library versions, the dataset fingerprint, the hash
of the split, the seeds, start and end times and the hardware.
"""

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from . import __version__
from .atomic import atomic_write_json
from .config import REPO_ROOT, config_hash, without_planning_options
from .datasets import SOURCE_KEYS, source_kind
from .workflow_paths import input_path, manifest_root

# Distributions whose versions change results or their interpretation.
LIBRARIES = ("numpy", "pandas", "scipy", "scikit-learn", "h5py", "pydicom", "pylibjpeg", "nibabel", "pillow",
             "tifffile", "matplotlib", "tensorflow", "tensorflow-cpu", "keras", "snakemake", "jsonschema", "pyyaml")


def git_state(repo=REPO_ROOT):
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding the workflow.

    ``None`` values mean the state is unknown (no git executable, or not a git checkout).
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def library_versions(names=LIBRARIES):
    """Installed version of each distribution in ``names`` that is installed, plus Python's."""
    versions = {"python": platform.python_version(), "medclassify": __version__}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux, else the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb():
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError):
        pass
    return None


def gpu_names():
    """Names of the GPUs TensorFlow sees; ``None`` when TensorFlow cannot be imported."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    names = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            details = {}
        names.append(details.get("device_name") or device.name)
    return names


def hardware():
    """CPU model, logical CPUs, memory, GPU names and the OS."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpus": gpu_names(),
        "platform": platform.platform(),
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12],
    }


def file_sha256(path):
    """sha256 (hex) of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def timestamp(value):
    """ISO 8601 UTC text of a time given as epoch seconds, a datetime or ISO text."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    elif isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def find_seeds(config, prefix=""):
    """Every ``seed`` key in the config, by dotted path (``run.train.seed`` …)."""
    seeds = {}
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "seed" and not isinstance(value, dict):
                seeds[path] = value
            else:
                seeds.update(find_seeds(value, path))
    return seeds


def _seconds_between(started_text, ended_text):
    if not (started_text and ended_text):
        return None
    return (dt.datetime.fromisoformat(ended_text.replace("Z", "+00:00"))
            - dt.datetime.fromisoformat(started_text.replace("Z", "+00:00"))).total_seconds()


def stage_times(stages):
    """``{stage: {started, ended, seconds}}`` of ``{stage: (started, ended)}`` (as :func:`timestamp` takes)."""
    times = {}
    for stage, (started, ended) in stages.items():
        started_text, ended_text = timestamp(started), timestamp(ended)
        times[stage] = {"started": started_text, "ended": ended_text, "seconds": _seconds_between(started_text, ended_text)}
    return times


def recorded_dataset_options(options):
    """A dataset's resolved options as a run card records them (and rule evaluate's params hold them).

    Less the local ``.npz`` path, since where the file lies says nothing of the data (the
    fingerprint does), ``validation.watch_images``, which only steers planning, and the keys of
    other kinds of source (a user's manifest has no ``demo_patients``): none is part of what was
    computed, and as params they would rerun the evaluation. A user's manifest and root are
    spelled as the workflow's inputs are (``./m.csv`` is ``m.csv``), and the root is resolved.
    """
    kind = source_kind(options)
    ignored = {key for other, keys in SOURCE_KEYS.items() if other != kind for key in keys} | {"npz"}
    recorded = {key: value for key, value in options.items() if key not in ignored}
    recorded["validation"] = without_planning_options(options["validation"])
    if kind == "manifest" and options["manifest"] is not None:
        recorded["manifest"] = input_path(options["manifest"])
        recorded["root"] = manifest_root(options)
    return recorded


def write_run_card(out, *, config, dataset, run, fingerprint, splits, started, ended, stages=None, command=None):
    """Write ``run_card.json`` to ``out``; return its dict.

    ``fingerprint`` is the dataset fingerprint (a dict, or the path of fingerprint.json);
    ``splits`` the path of splits.csv; ``started``/``ended`` epoch seconds, datetimes or ISO text.
    ``stages`` maps each stage to its own (started, ended): ``compute_s`` sums their times, where
    ``duration_s``, from the first start to the end, also counts the time between a stage and
    the rerun of a later one (days, when only fine-tuning was rerun). ``command`` says what wrote the
    card; by default the command line of this process.
    """
    if isinstance(fingerprint, (str, os.PathLike)):
        fingerprint = json.loads(Path(fingerprint).read_text(encoding="utf-8"))
    started_text, ended_text = timestamp(started), timestamp(ended)
    times = stage_times(stages or {})
    seconds = [t["seconds"] for t in times.values()]
    card = {
        "dataset": dataset,
        "run": run,
        "config": config,
        "config_hash": config_hash(config),
        "seeds": find_seeds(config),
        "git": git_state(),
        "versions": library_versions(),
        "fingerprint": fingerprint,
        "splits": {"path": str(splits), "sha256": file_sha256(splits)},
        "started": started_text,
        "ended": ended_text,
        "duration_s": _seconds_between(started_text, ended_text),
        "stages": times,
        "compute_s": sum(seconds) if seconds and None not in seconds else None,
        "hardware": hardware(),
        "command": command or " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
    }
    atomic_write_json(out, card)
    return card

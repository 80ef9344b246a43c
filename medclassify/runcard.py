"""The run card: everything needed to know how a run's results were produced.

One JSON file per run with the resolved config and its hash, the workflow's git commit (and
whether the working tree differed from it), library versions, the dataset fingerprint, the hash
of the split, the seeds, start and end times and the hardware.
"""

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from .atomic import atomic_write_json
from .config import REPO_ROOT, config_hash, without_planning_options
from .content import file_digest
from .datasets import SOURCE_KEYS, source_kind
from .versions import library_versions
from .workflow_paths import input_path, manifest_root


def git_state(repo=REPO_ROOT):
    """``{"commit": sha, "dirty": bool, "untracked": int}`` of the repository holding the workflow.

    ``dirty``: a tracked file differs from the commit. ``untracked``: the files git neither tracks
    nor ignores (a folder of them counts once), which ``dirty`` cannot see, though a rule or module
    not yet added changes results as much. ``None`` values mean the state is unknown (no git
    executable, or not a git checkout).
    """

    def git(*args, timeout):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=timeout).stdout

    try:
        commit = git("rev-parse", "HEAD", timeout=30).strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "untracked": None}
    try:
        lines = git("status", "--porcelain", "--untracked-files=normal", timeout=60).splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": commit, "dirty": None, "untracked": None}
    untracked = sum(line.startswith("??") for line in lines)
    return {"commit": commit, "dirty": len(lines) > untracked, "untracked": untracked}


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
    spelled as the workflow's inputs are (``./m.csv`` is ``m.csv``), the root defaulting to the
    manifest's folder (``workflow_paths.manifest_root``).
    """
    kind = source_kind(options)
    ignored = {key for other, keys in SOURCE_KEYS.items() if other != kind for key in keys} | {"npz"}
    recorded = {key: value for key, value in options.items() if key not in ignored}
    recorded["validation"] = without_planning_options(options["validation"])
    if kind == "manifest" and options["manifest"] is not None:
        recorded["manifest"] = input_path(options["manifest"])
        recorded["root"] = manifest_root(options)
    return recorded


def input_record(*, manifest=None, cache=None, model=None):
    """What the run read, by content: the validated manifest's sha256; the cache's parameter hash
    and a digest of its rows (sample ids, labels, image content hashes: the same for a cache
    rebuilt from the same images, see ``cache.cache_identity``); the model's library versions
    (those of its training, which may differ from the evaluation's in ``versions``)."""
    record = {}
    if manifest is not None:
        record["manifest"] = {"path": str(manifest), "sha256": file_digest(manifest)}
    if cache is not None:
        from .cache import cache_identity

        params_hash, rows_sha256 = cache_identity(cache)
        record["cache"] = {"path": str(cache), "params_hash": params_hash, "rows_sha256": rows_sha256}
    if model is not None:
        from .model_info import model_json_beside

        record["model"] = {"path": str(model), "training_versions": model_json_beside(model).get("versions")}
    return record


def write_run_card(out, *, config, dataset, run, fingerprint, splits, started, ended, stages=None, command=None,
                   manifest=None, cache=None, model=None):
    """Write ``run_card.json`` to ``out``; return its dict.

    ``fingerprint`` is the dataset fingerprint (a dict, or the path of fingerprint.json);
    ``splits`` the path of splits.csv; ``manifest``, ``cache`` and ``model`` the validated
    manifest, the cache and the evaluated model, recorded under ``inputs`` when given (see
    ``input_record``); ``started``/``ended`` epoch seconds, datetimes or ISO text.
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
        "splits": {"path": str(splits), "sha256": file_digest(splits)},
        "inputs": input_record(manifest=manifest, cache=cache, model=model),
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

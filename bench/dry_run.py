"""Benchmark of planning: ``snakemake -n`` over a large manifest.

The DAG never has a job per image (preprocessing is sharded, training runs per run and fold), so
planning time must not grow with the manifest beyond reading it. This writes a manifest of
``--rows`` rows and an empty file for each (a dry run reads no image, but it does read the size
and time of every one: ``validation.watch_images``) and times ``snakemake -n`` on it for a few
shapes of the workflow. Goal: under 10 s for 100,000 rows.

    .venv/bin/python bench/dry_run.py                 # 100,000 rows
    .venv/bin/python bench/dry_run.py --rows 1000000

Prints a table and writes bench/results/dry_run.json.
"""

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from medclassify.atomic import atomic_write_json  # noqa: E402
from snakemake_fixtures import parse_job_stats  # noqa: E402

GOAL_SECONDS = 10.0

SHAPES = {
    "1 shard, 1 run": {"preprocess": {"shards": 1}, "runs": {"baseline": {}}},
    "16 shards, 1 run": {"preprocess": {"shards": 16}, "runs": {"baseline": {}}},
    "16 shards, 3 runs x 5 folds": {
        "preprocess": {"shards": 16},
        "split": {"method": "kfold", "folds": 5},
        "runs": {"baseline": {}, "longer": {"finetune": {"epochs": 60}}, "smoothed": {"train": {"label_smoothing": 0.1}}},
    },
}


def write_manifest(path, rows):
    """A manifest of ``rows`` rows beside an empty file for each, four to a folder."""
    root = Path(path).parent
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient", "modality", "site"])
        for i in range(rows):
            relative = f"images/p{i // 4:06d}/img{i % 4}.png"
            if i % 4 == 0:
                (root / relative).parent.mkdir(parents=True)
            (root / relative).touch()
            writer.writerow([relative, ("benign", "malignant")[i % 7 == 0], f"P{i // 4:06d}", "US", f"site{i % 3}"])


def time_dry_run(work, config_path):
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
         "--configfile", str(config_path), "-n", "--quiet", "rules"],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"dry run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    jobs = parse_job_stats(run.stdout + run.stderr)
    return seconds, sum(jobs.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="dry runs per shape; the fastest counts")
    args = parser.parse_args()

    results = {"rows": args.rows, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
               "python": platform.python_version(), "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="medclassify-dryrun-") as tmp:
        work = Path(tmp)
        manifest = work / "manifest.csv"
        write_manifest(manifest, args.rows)
        for name, shape in SHAPES.items():
            config = {"datasets": {"big": {"manifest": str(manifest), "root": str(work)}},
                      "evaluate": {"subgroups": ["site"]}, **shape}
            config_path = work / "config.yaml"
            config_path.write_text(yaml.safe_dump(config))
            timings = [time_dry_run(work, config_path) for _ in range(args.repeat)]
            seconds = min(t for t, _ in timings)
            results["shapes"][name] = {"seconds": seconds, "jobs": timings[0][1]}

    print(f"snakemake -n on a {args.rows:,}-row manifest ({os.cpu_count()} CPUs)")
    print(f"| {'workflow':<30} | {'jobs':>5} | {'seconds':>7} |")
    print(f"| {'-' * 30} | {'-' * 5}:| {'-' * 7}:|")
    for name, r in results["shapes"].items():
        print(f"| {name:<30} | {r['jobs']:>5} | {r['seconds']:>7.2f} |")
    worst = max(r["seconds"] for r in results["shapes"].values())
    results["goal_seconds"], results["goal_met"] = GOAL_SECONDS, worst < GOAL_SECONDS
    print(f"slowest {worst:.2f} s (goal < {GOAL_SECONDS:.0f} s: {'met' if worst < GOAL_SECONDS else 'NOT met'})")
    atomic_write_json(REPO / "bench" / "results" / "dry_run.json", results)


if __name__ == "__main__":
    main()

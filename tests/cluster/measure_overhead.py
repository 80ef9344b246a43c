"""Measure what one Snakemake job costs through Slurm, against the same jobs run locally.

    tests/cluster/start-slurm.sh && source /tmp/medclassify-slurm/env.sh
    .venv/bin/python tests/cluster/measure_overhead.py --jobs 20 --status-check-s 2 40

Runs a workflow of N independent trivial jobs (each writes one line) three ways: locally with
``--cores <node CPUs>``, then through profiles/slurm (fitted to the test node like the cluster
tests) once per first-status-check interval given. Prints a Markdown table: wall time, wall-time
overhead per job against the local run, and from Slurm's own records the mean wait in the queue
(submit to start) and the mean time a trivial job holds its allocation (start to end: mostly the
Snakemake job step starting up inside the job). docs/scaling.md quotes its output.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for snakemake_fixtures

from snakemake_fixtures import run_snakemake, write_test_profile  # noqa: E402

TRIVIAL_WORKFLOW = """
N = {n}

rule all:
    input: expand("out/{{i}}.txt", i=range(N))

rule trivial:
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
"""


def node_capacity():
    cpus, mem_mb = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%c %m"], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(cpus), int(mem_mb)


def slurm_records(job_name):
    """(submit, start, end) datetimes of the finished jobs that carry job_name."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", job_name,
         "-O", "SubmitTime:25,StartTime:25,EndTime:25,State:15"],
        check=True, capture_output=True, text=True,
    ).stdout
    records = []
    for line in out.splitlines():
        submit, start, end, state = line.split()
        if state == "COMPLETED":
            records.append(tuple(datetime.fromisoformat(t) for t in (submit, start, end)))
    return records


def job_name_of(run_output):
    """The Slurm job name the plugin gave this run's jobs (the run's UUID), from its log lines."""
    for line in run_output.splitlines():
        if "has been submitted with SLURM jobid" in line:
            job_id = line.split("SLURM jobid")[1].split()[0]
            return subprocess.run(
                ["squeue", "--states=all", "--noheader", "-j", job_id, "-O", "Name:60"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
    raise RuntimeError("no submitted job in the run's output")


def measure(n_jobs, status_checks, timeout_s):
    cpus, mem_mb = node_capacity()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medclassify-overhead-") as tmp:
        tmp = Path(tmp)
        for label, status_check_s in [("local", None), *[("slurm", s) for s in status_checks]]:
            workdir = tmp / f"{label}-{status_check_s}"
            workdir.mkdir()
            (workdir / "Snakefile").write_text(TRIVIAL_WORKFLOW.format(n=n_jobs))
            if label == "local":
                args = ["--cores", str(cpus)]
            else:
                profile = write_test_profile(
                    workdir / "profile", cpus=cpus, mem_mb=mem_mb, status_check_s=status_check_s
                )
                args = ["--profile", str(profile), "--workflow-profile", "none"]
            run = run_snakemake(args, workdir, timeout_s=timeout_s)
            if run.returncode != 0:
                raise RuntimeError(f"{label} run failed:\n{run.tail()}")
            row = {"how": label, "status_check_s": status_check_s, "wall_s": run.seconds}
            if label == "slurm":
                records = slurm_records(job_name_of(run.output))
                row["queue_s"] = mean((start - submit).total_seconds() for submit, start, _ in records)
                row["in_job_s"] = mean((end - start).total_seconds() for _, start, end in records)
                row["n_records"] = len(records)
            rows.append(row)
    local_s = rows[0]["wall_s"]
    print(
        f"{n_jobs} trivial jobs, node: {cpus} CPUs; load average (1, 5, 15 min) before: "
        f"{', '.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print()
    print("| run | first status check (s) | wall (s) | overhead per job vs local (s) "
          "| mean queue wait (s) | mean time in allocation (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        overhead = (row["wall_s"] - local_s) / n_jobs
        print(
            f"| {row['how']} | {row['status_check_s'] or '-'} | {row['wall_s']:.1f} "
            f"| {overhead:.2f} | {row.get('queue_s', float('nan')):.1f} "
            f"| {row.get('in_job_s', float('nan')):.1f} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="number of trivial jobs")
    parser.add_argument(
        "--status-check-s", type=int, nargs="+", default=[2, 40],
        help="slurm-init-seconds-before-status-checks values to measure (40 is the profile's)",
    )
    parser.add_argument("--timeout-s", type=int, default=1200)
    args = parser.parse_args(argv)
    if not os.environ.get("SLURM_CONF"):
        parser.error("no test cluster: source <state dir>/env.sh from tests/cluster/start-slurm.sh")
    measure(args.jobs, args.status_check_s, args.timeout_s)


if __name__ == "__main__":
    main()

"""Benchmark of manifest validation (medclassify.manifest.validate_manifest).

Generates ``--n`` synthetic 256×256 grey PNG images (a smooth blob, coarse texture and noise,
each image different) and a manifest, then times ``validate_manifest`` with 1 and ``--threads``
decoding processes. Every image is decoded and hashed. Goal: 10,000 images in under 30 s on
2 cores. Besides wall time it reports the CPU time spent (this process and its workers), which
does not depend on other load on the machine.

    .venv/bin/python bench/validate.py                # 10,000 images, 1 and 2 processes
    .venv/bin/python bench/validate.py --n 1000       # quicker

Prints a table and writes bench/results/validate.json.
"""

import argparse
import concurrent.futures
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from medclassify.atomic import atomic_write_json  # noqa: E402
from medclassify.manifest import validate_manifest  # noqa: E402

GOAL_SECONDS = 30.0


def synthetic_image(index, size):
    """A plausible grey image, different for every index."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx, radius = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
    texture = rng.normal(0, 1, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    image = 60 + 120 * blob + 12 * texture + rng.normal(0, 6, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(task):
    from PIL import Image

    folder, start, stop, size = task
    for index in range(start, stop):
        Image.fromarray(synthetic_image(index, size)).save(Path(folder) / f"img_{index:05d}.png")
    return stop - start


def generate(folder, n, size, workers):
    """Write ``n`` PNGs and a manifest (2 classes, 4 images per patient) into ``folder``.

    A folder that already holds the same generated set (see ``stamp.txt``) is reused.
    """
    stamp = Path(folder) / "stamp.txt"
    if stamp.exists() and stamp.read_text() == f"{n} {size}\n":
        return Path(folder) / "manifest.csv", 0
    images = Path(folder) / "images"
    images.mkdir(parents=True, exist_ok=True)
    step = max(1, n // (workers * 8))
    tasks = [(str(images), start, min(n, start + step), size) for start in range(0, n, step)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_images, tasks))
    lines = ["path,label,patient,modality"]
    for index in range(n):
        patient = index // 4
        lines.append(f"images/img_{index:05d}.png,{'ab'[patient % 2]},patient_{patient:05d},XR")
    manifest = Path(folder) / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stamp.write_text(f"{n} {size}\n")
    return manifest, written


def _cpu_seconds():
    """User + system CPU time of this process and of its reaped children (the decoding workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_validation(manifest, root, threads):
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    result = validate_manifest(manifest, root, io_options={}, validation_options={}, salt="bench",
                               threads=threads)
    seconds = time.perf_counter() - started
    # CPU time does not depend on what else runs on the machine: cpu_seconds / threads is the
    # wall time that the same work takes on `threads` otherwise idle cores.
    cpu_seconds = _cpu_seconds() - cpu_before
    if not result.ok:
        raise SystemExit(f"validation failed: {[str(p) for p in result.problems[:5]]}")
    return {
        "threads": threads,
        "images": int(result.summary["n_samples"]),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "idle_cores_estimate_seconds": round(cpu_seconds / threads, 2),
        "decode_seconds": result.timings.get("decode_seconds"),
        "images_per_second": round(result.summary["n_samples"] / seconds, 1),
        "under_goal": seconds < GOAL_SECONDS,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of images (default 10,000)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="decoding processes (default 2)")
    parser.add_argument("--workdir", type=Path,
                        help="where to generate images (kept, and reused by the next run with the same --n/--size; "
                        "default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "validate.json")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medclassify-bench-validate-"))
    try:
        started = time.perf_counter()
        manifest, written = generate(workdir, args.n, args.size, max(1, args.threads))
        generate_seconds = time.perf_counter() - started
        runs = [time_validation(manifest, workdir, threads)
                for threads in sorted({1, args.threads})]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    made = f"generated in {generate_seconds:.1f} s" if written else "reused from --workdir"
    print(f"validate_manifest on {args.n:,} generated {args.size}x{args.size} PNG images "
          f"({made}; cpu count {os.cpu_count()}; load average {os.getloadavg()[0]:.1f})")
    print(f"{'processes':>9} | {'images':>7} | {'seconds':>7} | {'decode s':>8} | {'images/s':>8} | "
          f"{'CPU s':>7} | {'CPU s/process':>13} | under {GOAL_SECONDS:.0f} s")
    print(f"{'-' * 9}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 8}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 13}-+-{'-' * 11}")
    for run in runs:
        print(f"{run['threads']:>9} | {run['images']:>7} | {run['seconds']:>7.2f} | {run['decode_seconds']:>8.2f} | "
              f"{run['images_per_second']:>8.1f} | {run['cpu_seconds']:>7.2f} | {run['idle_cores_estimate_seconds']:>13.2f} | "
              f"{'yes' if run['under_goal'] else 'NO'}")
    print("CPU s/process = CPU time / processes: the wall time on otherwise idle cores (load-independent).")
    atomic_write_json(args.out, {
        "benchmark": "validate_manifest", "n_images": args.n, "image_size": args.size,
        "goal_seconds": GOAL_SECONDS, "generate_seconds": round(generate_seconds, 2),
        "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "platform": platform.platform(), "python": platform.python_version(),
        "runs": runs,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The HDF5 preprocessing cache: build it in shards, merge the shards, read it back safely.

Layout (see docs/architecture.md): every part file ``cache/part-{i}-of-{n}.h5`` and the merged
``cache.h5`` hold ``images`` (N, H, W, C) uint8 or float16, ``labels``, and the strings
``sample_id``, ``patient``, ``content_hash``, ``modality``, in validated-manifest order, plus the
attributes ``params_hash``, ``params``, ``classes``, ``library_version``, ``manifest_hash``,
``created``. Part files also keep ``source_shape``, ``source_spacing`` and ``source_intensity``
(64 evenly spaced raw pixel values per image) from which the merge computes ``fingerprint.json``
without decoding anything again.

Sharding
    Shard ``i`` of ``n`` takes a contiguous block of manifest rows, so the parts concatenate in
    manifest order. ``preprocess.shards`` does not enter the parameter hash: resharding changes
    no image. ``merge_cache_parts`` writes ``cache.h5`` whose ``images`` is an HDF5 virtual
    dataset over the parts (relative source paths, so ``results/`` can move), and copies the
    small per-row datasets. The merge is O(rows), never O(pixels): the benchmark measured it
    against a full copy (``layout="copy"``, also available for a self-contained file).
    ``open_cache`` never trusts the virtual dataset blindly (HDF5 silently fills missing
    sources with zeros): it checks every part's presence, row count and digest, and reads
    images from the parts directly.

Incremental builds (the reuse pool)
    Snakemake deletes a rule's outputs before it reruns the rule, so the previous cache cannot be
    read from the outputs themselves. After a successful merge, ``merge_cache_parts(...,
    reuse_pool=DIR)`` hard-links every part into ``DIR`` (``results/{dataset}/cache/.previous/``,
    not a declared output; a copy where hard links are impossible) and removes older entries.
    ``build_cache_part(..., previous=DIR)`` indexes the pool by ``content_hash`` (computed by
    validation from the decoded pixels and already in the validated manifest) among pool files
    whose ``values_hash`` equals its own, and copies those stored images in runs of
    consecutive rows (a checksum-verified read, then the compressed chunks verbatim). Only new or changed images are
    decoded. ``values_hash`` is the parameter hash without the storage-only options
    (compression), so changing the filter re-encodes without decoding. A pool file that cannot
    be opened is ignored; one whose chunks fail their checksum stops the build with a clear
    error (delete the pool). Resharding keeps every image reusable.

Determinism
    Decoding runs in ``threads`` worker processes; one writer in the calling process writes rows
    in manifest order, in blocks whose boundaries do not depend on ``threads``. Object
    timestamps are off (``track_times=False``, and ``obj_track_times`` for the root group and
    the virtual dataset) and HDF5's chunk cache is off (chunks land in the file in write order),
    so the bytes of a part depend only on its inputs, and an incremental build equals a full one
    (tested). Each decoded image is checked against the manifest's ``content_hash``, so a file
    changed after validation stops the build instead of entering the pool under a stale key. The
    one exception is the ``created`` attribute (fixed-length ISO 8601 UTC): it is the current
    time unless the environment sets ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention),
    which makes the files byte-for-byte reproducible.

Faults
    Every file is written under a temporary name and renamed (``medclassify.atomic``), so a
    SIGKILL leaves only ``.*.tmp`` files, which nothing reads. Images carry the Fletcher-32
    checksum filter; a truncated file fails to open, and a corrupted chunk fails to read. Both
    surface as ``InputError`` naming the file, never as a crash inside TensorFlow.
    ``Cache.verify()`` reads every chunk.
"""

import collections
import concurrent.futures
import datetime
import hashlib
import io as _stringio
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import __version__
from .atomic import atomic_path, atomic_write_json
from .config import config_hash
from .errors import InputError
from .preprocessing import PREPROCESSING_VERSION, check_preprocess_options, from_storage, preprocess_image, to_storage

CACHE_FORMAT_VERSION = 1
STRING_DATASETS = ("sample_id", "patient", "content_hash", "modality")
REQUIRED_COLUMNS = ("sample_id", "path", "index", "label", "patient", "modality", "content_hash")
INTENSITY_SAMPLES = 64
# Images per task sent to a worker: large enough that pickling overhead is small, small enough
# that a few tasks in flight per worker bound memory.
DECODE_BATCH = 32
TASKS_IN_FLIGHT_PER_WORKER = 3
STORAGE_ONLY_OPTIONS = ("shards", "compression", "compression_level")
COPY_BLOCK = 256  # rows per read/write when copying images between files
ATTRIBUTES = ("params_hash", "params", "classes", "library_version", "manifest_hash", "created")


# --------------------------------------------------------------------------- parameters

def params_record(preprocess_options, io_options):
    """The parameters stored in the cache's ``params`` attribute (``shards`` excluded)."""
    preprocess = {k: v for k, v in preprocess_options.items() if k != "shards"}
    return {"preprocess": preprocess, "io": dict(io_options), "preprocessing_version": PREPROCESSING_VERSION,
            "cache_format": CACHE_FORMAT_VERSION}


def params_hash(preprocess_options, io_options):
    """Hash of every preprocessing and reading parameter except ``shards``.

    A cache is valid for a config exactly when this hash matches. Resharding must not
    invalidate images, so ``shards`` is left out.
    """
    return config_hash(params_record(preprocess_options, io_options))


def values_hash(preprocess_options, io_options):
    """Hash of the parameters that determine the stored values (compression left out)."""
    record = params_record(preprocess_options, io_options)
    record["preprocess"] = {k: v for k, v in record["preprocess"].items() if k not in STORAGE_ONLY_OPTIONS}
    return config_hash(record)


def _created_timestamp():
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
              else datetime.datetime.now(datetime.timezone.utc))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def shard_bounds(n_rows, shard, n_shards):
    """First and one-past-last manifest row of ``shard`` (0-based) of ``n_shards`` blocks."""
    if not (isinstance(n_shards, int) and n_shards >= 1 and 0 <= shard < n_shards):
        raise ValueError(f"shard {shard} of {n_shards} is not a valid shard")
    return n_rows * shard // n_shards, n_rows * (shard + 1) // n_shards


# --------------------------------------------------------------------------- manifest

def load_validated_manifest(validated_manifest):
    """Read ``manifest.validated.csv`` (path or DataFrame) → (table, manifest hash, name).

    Every column is text; ``index`` becomes a nullable integer (empty for 2D files).
    """
    if isinstance(validated_manifest, pd.DataFrame):
        table = validated_manifest.copy()
        name = "<validated manifest>"
        buffer = _stringio.StringIO()
        table.to_csv(buffer, index=False)
        digest = hashlib.sha256(buffer.getvalue().encode("utf-8")).hexdigest()
    else:
        path = Path(validated_manifest)
        name = str(path)
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise InputError(f"{path}: cannot read the validated manifest", [str(error)]) from None
        digest = hashlib.sha256(raw).hexdigest()
        table = pd.read_csv(_stringio.BytesIO(raw), dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{name}: not a validated manifest", [f"missing column {c!r}" for c in missing])
    table = table.reset_index(drop=True)
    # object dtype: a list of None and ints would otherwise become float with NaN.
    table["index"] = pd.Series([_parse_index(v) for v in table["index"]], dtype=object)
    return table, digest, name


def _parse_index(value):
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() in ("", "<NA>", "nan"):
        return None
    return int(float(value))


def _label_indices(table, classes, name, row_offset):
    position = {label: i for i, label in enumerate(classes)}
    problems = [f"row {row_offset + i + 1} ({path}): label {label!r} is not one of {list(classes)}"
                for i, (label, path) in enumerate(zip(table["label"].tolist(), table["path"].tolist()))
                if str(label) not in position]
    if problems:
        raise InputError(f"{name}: labels outside the configured classes", problems)
    return np.array([position[str(label)] for label in table["label"].tolist()], dtype=np.int64)


# --------------------------------------------------------------------------- decoding (workers)

def _read_sample(path, index, io_options):
    # Imported lazily so that this module loads without the readers (and tests may stand in).
    from .io import read_sample
    return read_sample(path, index, io_options)


def _content_hash(pixels):
    from .io import content_hash
    return content_hash(pixels)


def _decode_batch(job, items):
    """Worker: read, check and preprocess ``items`` [(position, path, index, content_hash)].

    Returns stored images (k, H, W, C) plus the fingerprint data and any problems, one per item
    that failed; failed items get a zero image (the build fails before anything is renamed).
    """
    root, io_options, preprocess_options, storage_dtype, shape = job
    k = len(items)
    images = np.zeros((k,) + shape, dtype=storage_dtype)
    source_shape = np.zeros((k, 3), dtype=np.int32)
    spacing = np.full((k, 2), np.nan, dtype=np.float64)
    intensity = np.full((k, INTENSITY_SAMPLES), np.nan, dtype=np.float32)
    problems = []
    for i, (position, rel_path, index, expected_hash) in enumerate(items):
        try:
            sample = _read_sample(Path(root) / rel_path, index, io_options)
            pixels = np.asarray(sample.pixels)
            if expected_hash and _content_hash(pixels) != expected_hash:
                problems.append((position, rel_path, "content_changed",
                                 "the image differs from the one validated (content hash); rerun validation"))
                continue
            image = preprocess_image(pixels, preprocess_options)
            if image.shape != shape:
                problems.append((position, rel_path, "channels_mismatch",
                                 f"preprocessed shape {image.shape} differs from the cache's {shape}; "
                                 "set io.channels so every image has the same number of channels"))
                continue
            images[i] = to_storage(image, storage_dtype)
            hwc = pixels.shape if pixels.ndim == 3 else pixels.shape + (1,)
            source_shape[i] = hwc[:3]
            spacing[i] = _spacing(getattr(sample, "meta", None) or {})
            intensity[i] = _intensity_sample(pixels)
        except Exception as error:  # any failure to decode a user's file is reported, not raised
            code = getattr(error, "code", type(error).__name__)
            problems.append((position, rel_path, code, str(error)))
    return images, source_shape, spacing, intensity, problems


def _spacing(meta):
    value = meta.get("spacing")
    try:
        numbers = [float(v) for v in value][:2]
    except (TypeError, ValueError):
        return (np.nan, np.nan)
    return tuple(numbers + [np.nan] * (2 - len(numbers)))


def _intensity_sample(pixels):
    flat = pixels.reshape(-1)
    picks = np.arange(INTENSITY_SAMPLES) * (flat.size - 1) // (INTENSITY_SAMPLES - 1)  # first to last
    return flat[picks].astype(np.float32)


def _ordered_map(function, jobs, workers):
    """Yield ``function(*job)`` for each job in order, over ``workers`` processes.

    At most ``TASKS_IN_FLIGHT_PER_WORKER × workers`` results wait in memory, so a writer slower
    than the decoders throttles them instead of filling memory.
    """
    if workers <= 1:
        for job in jobs:
            yield function(*job)
        return
    # fork: workers start instantly and inherit the loaded modules (spawn/forkserver would re-run
    # an unguarded __main__ such as a Snakemake script). Forking a process that runs other
    # threads is unsafe (a lock held by one stays locked in the child): then use threads, which
    # still overlap because Pillow, zlib, hashlib and NumPy release the GIL for most of the work.
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    else:
        executor = concurrent.futures.ThreadPoolExecutor(workers)
    with executor as pool:
        pending = collections.deque()
        jobs = iter(jobs)
        for job in jobs:
            pending.append(pool.submit(function, *job))
            if len(pending) >= TASKS_IN_FLIGHT_PER_WORKER * workers:
                break
        while pending:
            result = pending.popleft().result()
            job = next(jobs, None)
            if job is not None:
                pending.append(pool.submit(function, *job))
            yield result


# --------------------------------------------------------------------------- HDF5 writing

def _create_h5(path):
    """Open a new HDF5 file with timestamps off everywhere (byte-reproducible output)."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    # v1.10 format: needed for virtual datasets; fixed so the bytes do not follow the library.
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)
    # No raw-data chunk cache: each chunk reaches the file when written, so chunks lie in row
    # order whether they were encoded here or copied raw from the reuse pool.
    fapl.set_cache(0, 0, 0, 0.0)
    fid = h5py.h5f.create(os.fsencode(str(path)), h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl)
    return h5py.File(fid)


def _image_dataset_options(preprocess_options):
    compression = preprocess_options.get("compression", "lzf")
    options = {"fletcher32": True, "track_times": False}
    if compression == "lzf":
        options["compression"] = "lzf"
    elif compression == "gzip":
        options.update(compression="gzip", compression_opts=int(preprocess_options.get("compression_level", 4)))
    elif compression != "none":
        raise InputError("invalid preprocess options", [f"preprocess.compression: unknown filter {compression!r}"])
    return options


def _max_shape(n_rows, image_shape):
    # HDF5 needs room for one chunk; an empty shard (more shards than rows) declares it.
    return None if n_rows else (1,) + tuple(image_shape)


def _write_row_datasets(f, labels, table):
    f.create_dataset("labels", data=labels, dtype=np.int64, track_times=False)
    text = h5py.string_dtype("utf-8")
    for name in STRING_DATASETS:
        values = np.array([str(v) for v in table[name].tolist()], dtype=object)
        f.create_dataset(name, data=values, shape=(len(values),), dtype=text, track_times=False)


def _part_digest(params_hash_, content_hashes, sample_ids):
    digest = hashlib.sha256(params_hash_.encode())
    for sample_id, content in zip(sample_ids, content_hashes):
        digest.update(f"\x00{sample_id}\x01{content}".encode("utf-8"))
    return digest.hexdigest()[:32]


class _ReusePool:
    """Stored images of earlier builds, found by content hash (see the module docstring)."""

    FINGERPRINT_DATASETS = ("source_shape", "source_spacing", "source_intensity")

    def __init__(self, previous, wanted_hashes, values_hash_, image_shape, storage_dtype):
        self.files = []
        self.where = {}
        for path in _pool_files(previous):
            try:
                f = h5py.File(path, "r")
            except OSError as error:
                print(f"medclassify: ignoring unreadable reuse-pool file {path}: {error}", file=sys.stderr)
                continue
            images = f.get("images")
            if (_plain(f.attrs.get("values_hash")) != values_hash_ or images is None or images.is_virtual
                    or images.shape[1:] != image_shape or images.dtype != storage_dtype
                    or any(name not in f for name in self.FINGERPRINT_DATASETS)):
                f.close()
                continue
            try:
                hashes = f["content_hash"].asstr()[:]
            except (OSError, KeyError) as error:
                print(f"medclassify: ignoring unreadable reuse-pool file {path}: {error}", file=sys.stderr)
                f.close()
                continue
            file_index = len(self.files)
            self.files.append((f, images) + tuple(f[name] for name in self.FINGERPRINT_DATASETS))
            for row, content in enumerate(hashes):
                if content in wanted_hashes and content not in self.where:
                    self.where[content] = (file_index, row)

    def lookup(self, content_hash):
        """(pool file index, row) holding the image with ``content_hash``, or None."""
        return self.where.get(content_hash)

    def copy_run(self, file_index, source_row, n, images, row, fingerprint):
        """Copy ``n`` consecutive pooled rows into ``images[row:row + n]`` and ``fingerprint``.

        Works in blocks of ``COPY_BLOCK`` rows (bounded memory). Each block is first read through
        HDF5, which decompresses it and checks the Fletcher-32 checksums, so a corrupted pool
        file is never propagated. When both files store images alike, the compressed chunks are
        then copied verbatim (no re-compression: these are the bytes a fresh build writes);
        otherwise the block is re-encoded.
        """
        f, source, *source_fingerprint = self.files[file_index]
        raw = _same_storage(source, images)
        zeros = (0,) * (source.ndim - 1)
        read_chunk, write_chunk = source.id.read_direct_chunk, images.id.write_direct_chunk
        try:
            for start in range(0, n, COPY_BLOCK):
                stop = min(n, start + COPY_BLOCK)
                block = source[source_row + start:source_row + stop]
                if raw:
                    for k in range(start, stop):
                        mask, chunk = read_chunk((source_row + k,) + zeros)
                        write_chunk((row + k,) + zeros, chunk, mask)
                else:
                    images[row + start:row + stop] = block
            for target, dataset in zip(fingerprint, source_fingerprint):
                target[row:row + n] = dataset[source_row:source_row + n]
        except OSError as error:
            raise InputError(f"{f.filename}: corrupted file in the reuse pool",
                             [str(error), f"delete {Path(f.filename).parent} and rerun"]) from None

    def close(self):
        for f, *_ in self.files:
            f.close()


def _pool_files(previous):
    if previous is None:
        return []
    if isinstance(previous, (str, os.PathLike)):
        folder = Path(previous)
        if folder.is_dir():
            return sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))
        return [folder] if folder.is_file() else []
    return [Path(p) for p in previous if Path(p).is_file()]


def _same_storage(a, b):
    """Whether two image datasets encode chunks identically (so raw chunks can be copied)."""
    return (a.chunks == b.chunks and a.dtype == b.dtype and a.compression == b.compression
            and a.compression_opts == b.compression_opts and a.fletcher32 == b.fletcher32
            and a.shuffle == b.shuffle and a.scaleoffset == b.scaleoffset)


def build_cache_part(validated_manifest, root, out_part, *, preprocess_options, io_options, classes,
                     shard=0, n_shards=1, threads=1, previous=None):
    """Preprocess shard ``shard`` of ``n_shards`` of the validated manifest into ``out_part``.

    The shard is a contiguous block of manifest rows. Images found in ``previous`` (a reuse-pool
    folder or a list of earlier part/cache files) by content hash, with equal value parameters,
    are copied; the others are read with ``medclassify.io.read_sample`` and preprocessed in
    ``threads`` processes. Raises InputError listing every image that fails (the part is then
    not written). Returns a summary dict: rows, decoded, reused, seconds.
    """
    started = time.perf_counter()
    check_preprocess_options(preprocess_options)
    classes = [str(c) for c in classes]
    table, manifest_hash, name = load_validated_manifest(validated_manifest)
    start, stop = shard_bounds(len(table), shard, n_shards)
    rows = table.iloc[start:stop].reset_index(drop=True)
    labels = _label_indices(rows, classes, name, start)
    storage_dtype = np.dtype(preprocess_options.get("dtype", "uint8"))
    channels = _probe_channels(rows, root, io_options)
    height, width = preprocess_options["size"]
    shape = (int(height), int(width), channels)
    p_hash = params_hash(preprocess_options, io_options)
    v_hash = values_hash(preprocess_options, io_options)
    content = [str(c) for c in rows["content_hash"].tolist()]
    pool = _ReusePool(previous, set(content), v_hash, shape, storage_dtype)
    try:
        reused = [pool.lookup(c) for c in content]
        with atomic_path(out_part) as tmp:
            with _create_h5(tmp) as f:
                _write_row_datasets(f, labels, rows)
                images = f.create_dataset("images", shape=(len(rows),) + shape, dtype=storage_dtype,
                                          chunks=(1,) + shape, maxshape=_max_shape(len(rows), shape),
                                          **_image_dataset_options(preprocess_options))
                fingerprint = _fill_images(images, rows, reused, pool, root, io_options, preprocess_options,
                                           storage_dtype, shape, threads, name, start)
                for dataset, values in zip(("source_shape", "source_spacing", "source_intensity"), fingerprint):
                    f.create_dataset(dataset, data=values, track_times=False)
                f.attrs.update({
                    "params_hash": p_hash, "values_hash": v_hash,
                    "params": json.dumps(params_record(preprocess_options, io_options), sort_keys=True),
                    "classes": json.dumps(classes), "library_version": __version__,
                    "manifest_hash": manifest_hash, "created": _created_timestamp(),
                    "cache_format": CACHE_FORMAT_VERSION, "layout": "part", "shard": shard, "n_shards": n_shards,
                    "row_start": start, "row_stop": stop, "manifest_rows": len(table),
                    "part_digest": _part_digest(p_hash, content, rows["sample_id"].tolist()),
                })
    finally:
        pool.close()
    n_reused = sum(r is not None for r in reused)
    return {"rows": len(rows), "decoded": len(rows) - n_reused, "reused": n_reused,
            "seconds": round(time.perf_counter() - started, 3)}


def _probe_channels(rows, root, io_options):
    """Channels of the cache: those of the first image that decodes (all rows must agree).

    Images that fail here are reported by the full pass with every other problem.
    """
    policy = io_options.get("channels")
    if policy in ("rgb_to_grey", "grey_to_rgb"):
        return 1 if policy == "rgb_to_grey" else 3
    for path, index in zip(rows["path"].tolist(), rows["index"].tolist()):
        try:
            pixels = np.asarray(_read_sample(Path(root) / path, index, io_options).pixels)
        except Exception:  # reported with its row by the full pass
            continue
        return 1 if pixels.ndim == 2 else int(pixels.shape[2])
    return 1


def _fill_images(images, rows, reused, pool, root, io_options, preprocess_options, storage_dtype, shape,
                 threads, name, row_offset):
    """Write every row's image in manifest order: reused chunks copied, the rest decoded."""
    n = len(rows)
    source_shape = np.zeros((n, 3), dtype=np.int32)
    spacing = np.full((n, 2), np.nan, dtype=np.float64)
    intensity = np.full((n, INTENSITY_SAMPLES), np.nan, dtype=np.float32)
    fingerprint = (source_shape, spacing, intensity)
    reused_runs = _reuse_runs(reused)
    to_decode = [i for i in range(n) if reused[i] is None]
    job = (str(root), io_options, preprocess_options, storage_dtype, shape)
    batches = [to_decode[s:s + DECODE_BATCH] for s in range(0, len(to_decode), DECODE_BATCH)]
    items = list(zip(range(n), rows["path"].tolist(), rows["index"].tolist(), rows["content_hash"].tolist()))
    tasks = ((job, [items[i] for i in batch]) for batch in batches)
    problems = []
    next_run = 0  # reused runs before this index are written

    def copy_reused_before(limit):
        nonlocal next_run
        while next_run < len(reused_runs) and reused_runs[next_run][0] < limit:
            row, file_index, source_row, length = reused_runs[next_run]
            pool.copy_run(file_index, source_row, length, images, row, fingerprint)
            next_run += 1

    for batch, result in zip(batches, _ordered_map(_decode_batch, tasks, max(1, int(threads)))):
        batch_images, batch_shape, batch_spacing, batch_intensity, batch_problems = result
        problems += batch_problems
        source_shape[batch], spacing[batch], intensity[batch] = batch_shape, batch_spacing, batch_intensity
        for run_start, run_stop in _contiguous_runs(batch):
            copy_reused_before(batch[run_start])
            images[batch[run_start]:batch[run_stop - 1] + 1] = batch_images[run_start:run_stop]
    copy_reused_before(n + 1)
    if problems:
        problems.sort()
        raise InputError(f"{name}: {len(problems)} image(s) could not be preprocessed",
                         [f"row {row_offset + i + 1} ({path}): {code}: {message}" for i, path, code, message in problems])
    return source_shape, spacing, intensity


def _reuse_runs(reused):
    """Runs (row, pool file, pool row, length) of consecutive rows found consecutively in one pool file."""
    runs = []
    for row, location in enumerate(reused):
        if location is None:
            continue
        if runs:
            last_row, last_file, last_source, length = runs[-1]
            if row == last_row + length and location == (last_file, last_source + length):
                runs[-1] = (last_row, last_file, last_source, length + 1)
                continue
        runs.append((row, location[0], location[1], 1))
    return runs


def _contiguous_runs(positions):
    """(start, stop) index pairs into ``positions`` of runs of consecutive values."""
    runs, start = [], 0
    for k in range(1, len(positions) + 1):
        if k == len(positions) or positions[k] != positions[k - 1] + 1:
            runs.append((start, k))
            start = k
    return runs


# --------------------------------------------------------------------------- merging

def merge_cache_parts(parts, out_cache, fingerprint_out, *, reuse_pool=None, layout="virtual"):
    """Join part files into ``out_cache`` (one readable dataset) and write ``fingerprint.json``.

    ``layout="virtual"`` maps the parts' images through an HDF5 virtual dataset with source
    paths relative to ``out_cache`` (the parts must stay beside it); ``"copy"`` copies the
    compressed chunks into a self-contained file. With ``reuse_pool``, the parts are then
    hard-linked into that folder for the next incremental build. Returns the fingerprint.
    """
    if layout not in ("virtual", "copy"):
        raise ValueError(f"layout must be 'virtual' or 'copy', not {layout!r}")
    parts = [Path(p) for p in parts]
    out_cache = Path(out_cache)
    opened = [open_cache(p) for p in parts]
    try:
        _check_parts_agree(parts, opened)
        with atomic_path(out_cache) as tmp:
            with _create_h5(tmp) as f:
                _write_merged(f, parts, opened, out_cache, layout)
        fingerprint = compute_fingerprint(opened)
    finally:
        for cache in opened:
            cache.close()
    atomic_write_json(fingerprint_out, fingerprint)
    if reuse_pool is not None:
        update_reuse_pool(parts, reuse_pool)
    return fingerprint


def _check_parts_agree(parts, opened):
    problems = []
    if not parts:
        raise InputError("no cache parts to merge", ["the list of parts is empty"])
    first = opened[0].attrs
    n_shards = int(first.get("n_shards", 1))
    if len(parts) != n_shards:
        problems.append(f"{len(parts)} parts given but {parts[0]} says there are {n_shards}")
    expected_start = 0
    for k, (path, cache) in enumerate(zip(parts, opened)):
        attrs = cache.attrs
        for key in ("params_hash", "classes", "manifest_hash", "n_shards", "manifest_rows"):
            if attrs.get(key) != first.get(key):
                problems.append(f"{path}: {key} {attrs.get(key)!r} differs from {parts[0]}'s {first.get(key)!r}")
        if attrs.get("shard") != k:
            problems.append(f"{path}: is shard {attrs.get('shard')}, expected shard {k} in this position")
        if attrs.get("row_start") != expected_start:
            problems.append(f"{path}: starts at row {attrs.get('row_start')}, expected {expected_start}")
        expected_start = int(attrs.get("row_stop", expected_start))
    if not problems and expected_start != int(first.get("manifest_rows", expected_start)):
        problems.append(f"the parts cover {expected_start} rows of {first.get('manifest_rows')}")
    if problems:
        raise InputError("cache parts do not form one cache", problems)


def _write_merged(f, parts, opened, out_cache, layout):
    total = sum(len(c) for c in opened)
    first_images = opened[0].sources[0][0]["images"]
    shape = (total,) + first_images.shape[1:]
    labels = np.concatenate([c.labels for c in opened])
    f.create_dataset("labels", data=labels, dtype=np.int64, track_times=False)
    text = h5py.string_dtype("utf-8")
    for name, attribute in zip(STRING_DATASETS, ("sample_ids", "patients", "content_hashes", "modalities")):
        values = np.array([v for c in opened for v in getattr(c, attribute)], dtype=object)
        f.create_dataset(name, data=values, shape=(total,), dtype=text, track_times=False)
    part_records = []
    if layout == "virtual":
        offset = 0
        mappings = []
        for path, cache in zip(parts, opened):
            relative = os.path.relpath(path.resolve(), out_cache.resolve().parent)
            n = len(cache)
            if n:
                mappings.append((relative, offset, n))
            part_records.append({"path": relative, "rows": n, "part_digest": cache.attrs["part_digest"]})
            offset += n
        _create_virtual_images(f, shape, first_images.dtype, mappings)
    else:
        images = f.create_dataset("images", shape=shape, dtype=first_images.dtype, chunks=first_images.chunks,
                                  maxshape=_max_shape(total, shape[1:]),
                                  compression=first_images.compression,
                                  compression_opts=first_images.compression_opts,
                                  fletcher32=first_images.fletcher32, track_times=False)
        offset = 0
        for cache in opened:
            source = cache.sources[0][0]["images"]
            for start in range(0, len(cache), COPY_BLOCK):
                stop = min(len(cache), start + COPY_BLOCK)
                images[offset + start:offset + stop] = source[start:stop]  # checksum-verified read
            offset += len(cache)
    first = opened[0].attrs
    f.attrs.update({
        "params_hash": first["params_hash"], "values_hash": first["values_hash"], "params": first["params"],
        "classes": first["classes"], "library_version": __version__, "manifest_hash": first["manifest_hash"],
        "created": _created_timestamp(), "cache_format": CACHE_FORMAT_VERSION, "layout": layout,
        "parts": json.dumps(part_records), "manifest_rows": total,
        "part_digest": _part_digest(first["params_hash"], [h for c in opened for h in c.content_hashes],
                                    [s for c in opened for s in c.sample_ids]),
    })


def _create_virtual_images(f, shape, dtype, mappings):
    """``images`` as a virtual dataset over ``mappings`` [(relative part path, first row, rows)].

    Built with the low-level API because h5py's ``create_virtual_dataset`` records object
    timestamps, which would make the merged file's bytes depend on the clock.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.zeros(1, dtype=dtype))
    for relative, offset, n in mappings:
        virtual = h5py.h5s.create_simple(shape)
        virtual.select_hyperslab((offset,) + (0,) * (len(shape) - 1), (n,) + tuple(shape[1:]))
        source = h5py.h5s.create_simple((n,) + tuple(shape[1:]))
        dcpl.set_virtual(virtual, os.fsencode(relative), b"images", source)
    h5py.h5d.create(f.id, b"images", h5py.h5t.py_create(np.dtype(dtype)), h5py.h5s.create_simple(shape), dcpl=dcpl)


REUSE_POOL_DIRNAME = ".previous"


def default_reuse_pool(part):
    """The reuse pool beside the part files: ``results/{dataset}/cache/.previous``."""
    return Path(part).parent / REUSE_POOL_DIRNAME


def update_reuse_pool(parts, reuse_pool):
    """Make ``reuse_pool`` hold exactly (hard links to) ``parts``; older entries are removed."""
    pool = Path(reuse_pool)
    pool.mkdir(parents=True, exist_ok=True)
    keep = set()
    for part in parts:
        part = Path(part)
        target = pool / part.name
        with atomic_path(target) as tmp:
            tmp.unlink()
            try:
                os.link(part, tmp)
            except OSError:  # another file system, or no hard links: fall back to a copy
                shutil.copyfile(part, tmp)
        keep.add(target.name)
    for entry in list(pool.glob("*.h5")) + list(pool.glob(".*.tmp")):  # older parts, killed updates
        if entry.name not in keep:
            entry.unlink()


def compute_fingerprint(opened):
    """The dataset fingerprint (nnU-Net style) from opened part caches."""
    classes = opened[0].classes
    labels = np.concatenate([c.labels for c in opened])
    patients = {p for c in opened for p in c.patients}
    modalities = np.array([m for c in opened for m in c.modalities], dtype=object)
    shapes = np.concatenate([c.sources[0][0]["source_shape"][:] for c in opened]).reshape(-1, 3)
    spacings = np.concatenate([c.sources[0][0]["source_spacing"][:] for c in opened]).reshape(-1, 2)
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
    fingerprint = {
        "n_samples": int(len(labels)),
        "n_patients": len(patients),
        "class_counts": {name: int(n) for name, n in zip(classes, counts)},
        "sizes": _size_summary(shapes),
        "spacings": _spacing_summary(spacings),
        "intensity_percentiles": _intensity_summary(opened, modalities),
        "modalities": {str(m): int(n) for m, n in zip(*np.unique(modalities.astype(str), return_counts=True))} if len(modalities) else {},
        "params_hash": opened[0].attrs["params_hash"],
        "params": json.loads(opened[0].attrs["params"]),
        "image_shape": list(opened[0].image_shape),
    }
    return fingerprint


def _stats(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max()),
            "mean": float(values.mean())}


def _size_summary(shapes):
    channels, counts = np.unique(shapes[:, 2], return_counts=True) if len(shapes) else ([], [])
    return {"height": _stats(shapes[:, 0]), "width": _stats(shapes[:, 1]),
            "channels": {str(int(c)): int(n) for c, n in zip(channels, counts)}}


def _spacing_summary(spacings):
    known = np.isfinite(spacings).all(axis=1) if len(spacings) else np.zeros(0, bool)
    return {"n_known": int(known.sum()), "n_unknown": int((~known).sum()),
            "row": _stats(spacings[known, 0]), "column": _stats(spacings[known, 1])}


# Pooled intensity samples per modality are capped so the merge stays in bounded memory.
MAX_INTENSITY_VALUES = 4_000_000


def _intensity_summary(opened, modalities):
    summary = {}
    n_total = len(modalities)
    if n_total == 0:
        return summary
    step = max(1, (n_total * INTENSITY_SAMPLES) // MAX_INTENSITY_VALUES)
    offset = 0
    pooled = collections.defaultdict(list)
    for cache in opened:
        n = len(cache)
        first = (-offset) % step  # every step-th row of the whole dataset
        rows = np.arange(first, n, step)
        if len(rows):
            values = cache.sources[0][0]["source_intensity"][first::step]  # a strided slice, not a fancy read
            row_modalities = modalities[offset + rows].astype(str)
            for modality in np.unique(row_modalities):
                pooled[str(modality)].append(values[row_modalities == modality].ravel())
        offset += n
    levels = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
    for modality, chunks in sorted(pooled.items()):
        values = np.concatenate(chunks)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        quantiles = np.percentile(values, levels)
        entry = {f"p{level:g}": float(q) for level, q in zip(levels, quantiles)}
        entry.update({"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                      "std": float(values.std()), "n_values": int(values.size),
                      "method": f"{INTENSITY_SAMPLES} evenly spaced raw pixels per image"})
        summary[modality] = entry
    return summary


# --------------------------------------------------------------------------- reading

class Cache:
    """An opened, checked cache (merged file or one part). Use :func:`open_cache`.

    Attributes: ``classes``, ``labels``, ``sample_ids``, ``patients``, ``content_hashes``,
    ``modalities``, ``image_shape`` (H, W, C), ``params`` (dict), ``params_hash``, ``attrs``.
    """

    def __init__(self, path, handle, sources, attrs, labels, strings):
        self.path = Path(path)
        self._handle = handle
        self.sources = sources  # [(h5py.File, first row)], read directly (never via the VDS)
        self.attrs = attrs
        self.classes = json.loads(attrs["classes"])
        self.params = json.loads(attrs["params"])
        self.params_hash = attrs["params_hash"]
        self.labels = labels
        self.sample_ids, self.patients, self.content_hashes, self.modalities = strings
        self.image_shape = tuple(int(s) for s in sources[0][0]["images"].shape[1:]) if sources else None
        self.storage_dtype = sources[0][0]["images"].dtype
        self._offsets = np.array([start for _, start in sources] + [len(labels)], dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the file and its parts."""
        seen = set()
        for f, _ in self.sources:
            if id(f) not in seen and f.id.valid:
                seen.add(id(f))
                f.close()
        if self._handle.id.valid:
            self._handle.close()

    def read(self, indices):
        """Images at ``indices`` (any order, repeats allowed): float32 (n, H, W, C) in [0, 1].

        Indices are sorted and de-duplicated; each run of consecutive rows is one slice read.
        (h5py's simple-slice path costs ~15 µs per read, whereas a fancy-index or an OR-ed
        hyperslab selection of 64 scattered rows costs ~40 ms in HDF5: measured.)
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.path}: indices outside 0..{len(self) - 1}")
        unique = np.unique(indices)
        stored = np.empty((len(unique),) + self.image_shape, dtype=self.storage_dtype)
        part_of = np.searchsorted(self._offsets, unique, side="right") - 1
        for k in np.unique(part_of):
            f, start = self.sources[k]
            mask = part_of == k
            local = unique[mask] - start
            target = np.flatnonzero(mask)
            images = f["images"]
            try:
                for run_start, run_stop in _contiguous_runs(local):
                    first, last = local[run_start], local[run_stop - 1]
                    stored[target[run_start]:target[run_stop - 1] + 1] = images[first:last + 1]
            except (OSError, RuntimeError) as error:
                raise InputError(f"{f.filename}: corrupted cache, images cannot be read",
                                 [f"rows {local.min()}..{local.max()}: {error}",
                                  "delete the cache and rerun the preprocess stage"]) from None
        return from_storage(stored)[np.searchsorted(unique, indices)]

    def verify(self, batch=256):
        """Read every stored image (checking each chunk's checksum); raise InputError if any fails."""
        for start in range(0, len(self), batch):
            self.read(np.arange(start, min(start + batch, len(self))))
        return True


def open_cache(path, expected_params_hash=None):
    """Open and check a cache (``cache.h5`` or a part); return a :class:`Cache`.

    Raises InputError naming the file and the problem when the file is missing, truncated or
    corrupted, lacks a dataset or attribute, has inconsistent lengths, misses or mismatches a
    part, or when its parameter hash differs from ``expected_params_hash``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: cache not found", ["run the preprocess stage to build it"])
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: not a readable HDF5 cache (truncated or corrupted)",
                         [str(error), "delete it and rerun the preprocess stage"]) from None
    try:
        attrs, labels, strings = _read_checked_metadata(path, handle, expected_params_hash)
        sources = _open_sources(path, handle, attrs, len(labels))
    except InputError:
        handle.close()
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        handle.close()
        raise InputError(f"{path}: corrupted cache", [f"{type(error).__name__}: {error}",
                                                      "delete it and rerun the preprocess stage"]) from None
    return Cache(path, handle, sources, attrs, labels, strings)


def _read_checked_metadata(path, handle, expected_params_hash):
    problems = []
    names = ("images", "labels") + STRING_DATASETS
    problems += [f"dataset {n!r} is missing" for n in names if n not in handle]
    problems += [f"attribute {a!r} is missing" for a in ATTRIBUTES if a not in handle.attrs]
    if problems:
        raise InputError(f"{path}: incomplete cache", problems)
    attrs = {key: _plain(value) for key, value in handle.attrs.items()}
    if attrs.get("cache_format") != CACHE_FORMAT_VERSION:
        raise InputError(f"{path}: cache format {attrs.get('cache_format')!r}, this library reads {CACHE_FORMAT_VERSION}",
                         ["rerun the preprocess stage"])
    if expected_params_hash is not None and attrs["params_hash"] != expected_params_hash:
        raise InputError(f"{path}: built with other preprocessing parameters",
                         [f"cache params_hash {attrs['params_hash']} != config's {expected_params_hash}",
                          "rerun the preprocess stage (snakemake does this when the config changes)"])
    n = handle["labels"].shape[0]
    lengths = {name: handle[name].shape[0] for name in names}
    problems += [f"dataset {name!r} has {m} rows, 'labels' has {n}" for name, m in lengths.items() if m != n]
    if attrs.get("manifest_rows") is not None and attrs.get("layout") != "part" and attrs["manifest_rows"] != n:
        problems.append(f"{n} rows, expected {attrs['manifest_rows']}")
    if problems:
        raise InputError(f"{path}: inconsistent cache", problems)
    labels = handle["labels"][:].astype(np.int64)
    n_classes = len(json.loads(attrs["classes"]))
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"{path}: corrupted cache", [f"labels outside 0..{n_classes - 1}"])
    strings = tuple(list(handle[name].asstr()[:]) for name in STRING_DATASETS)
    digest = _part_digest(attrs["params_hash"], strings[2], strings[0])
    if attrs.get("part_digest") != digest:
        raise InputError(f"{path}: corrupted cache", ["row metadata does not match the recorded digest"])
    return attrs, labels, strings


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open_sources(path, handle, attrs, n_rows):
    if attrs.get("layout") != "virtual":
        return [(handle, 0)]
    problems, sources, offset = [], [], 0
    for record in json.loads(attrs["parts"]):
        part_path = path.parent / record["path"]
        if record["rows"] == 0:
            continue
        try:
            part = h5py.File(part_path, "r")
        except (OSError, FileNotFoundError) as error:
            problems.append(f"part {part_path}: {'missing' if not part_path.exists() else error}")
            continue
        if (_plain(part.attrs.get("part_digest")) != record["part_digest"] or "images" not in part
                or part["images"].shape[0] != record["rows"]):
            problems.append(f"part {part_path}: is not the part this cache was merged from (rebuilt or replaced)")
            part.close()
            continue
        sources.append((part, offset))
        offset += record["rows"]
    if not problems and offset != n_rows:
        problems.append(f"the parts hold {offset} rows, the cache {n_rows}")
    if problems:
        for part, _ in sources:
            part.close()
        raise InputError(f"{path}: incomplete cache", problems + ["rerun the preprocess stage"])
    if not sources:  # an empty cache: read from the file itself
        sources = [(handle, 0)]
    return sources

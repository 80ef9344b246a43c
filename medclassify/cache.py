"""The HDF5 preprocessing cache: build it in shards, merge the shards, read it back safely.

Layout (see docs/architecture.md): every part file ``cache/part-{i}-of-{n}.h5`` and the merged
``cache.h5`` hold ``images`` (N, H, W, C) uint8 or float16 (its pixels stored in image blocks,
below, or in a self-contained part), ``labels``, and the strings ``sample_id``, ``patient``,
``content_hash``, ``modality``, in validated-manifest order, plus the attributes ``params_hash``,
``params``, ``classes``, ``library_version``, ``manifest_hash``, ``created``. Part files also keep ``source_shape``, ``source_spacing`` and ``source_intensity``
(64 evenly spaced raw pixel values per image) from which the merge computes ``fingerprint.json``
without decoding anything again. The spacing is each row's ``source_spacing`` in the validated
manifest; shape and intensity follow from the pixels, so a block row, found by content hash,
gives them for every file with those pixels, but not the spacing, which is the file's own.

Sharding
    Shard ``i`` of ``n`` takes a contiguous block of manifest rows, so the parts concatenate in
    manifest order. ``preprocess.shards`` does not enter the parameter hash: resharding changes
    no image. ``merge_cache_parts`` writes ``cache.h5`` whose ``images`` is an HDF5 virtual
    dataset (relative source paths, so ``results/`` can move), and copies the small per-row
    datasets. The merge is O(rows), never O(pixels): the benchmark measured it against a full
    copy (``layout="copy"``, also available for a self-contained file). Each shard takes its
    channel count from its own first image (``io.channels: keep_grey``), so the merge refuses
    parts with rows whose image shape or storage dtype differ; a part without rows has none
    to tell, and the first part with rows sets the merged shape. ``open_cache`` never
    trusts a virtual dataset blindly (HDF5 silently fills missing sources with zeros): it
    checks every part's and block's presence, row count and digest, that their images have
    the cache's shape and dtype, and reads the stored images directly.

Image blocks and incremental builds
    Snakemake deletes a rule's outputs before it reruns the rule, so pixels that should outlive a
    rerun cannot live in the outputs. With ``blocks=DIR`` (the workflow passes
    ``results/{dataset}/cache/blocks/``, which is no rule's output), the pixels go to image
    blocks there: immutable files ``block-<id>.h5`` holding ``images``, ``content_hash`` and the
    fingerprint datasets of the rows they were written for, ``<id>`` a digest of the value
    parameters, storage options and content hashes. A part then holds only its rows' metadata;
    its ``images`` is a virtual dataset over blocks, and ``image_runs`` (row, block, block row,
    length) with the attribute ``blocks`` records the mapping that ``open_cache`` reads.
    ``build_cache_part`` indexes the blocks by ``content_hash`` (computed by validation from the
    decoded pixels and already in the validated manifest) among blocks whose ``values_hash``
    equals its own. An image found in a block that stores images as configured is referenced
    where it is, without reading a pixel, so a build's cost grows with the images that changed,
    not with the dataset. The others are decoded (or, found in a block with other compression,
    re-encoded) into one new block. ``values_hash`` is the parameter hash without the
    storage-only options (compression), so changing the filter re-encodes without decoding.
    A part points into at most ``MAX_BLOCKS_PER_PART`` blocks: beyond that, the build gathers
    the images of the blocks it uses least into its new block (re-encoded, not decoded), so a
    reader keeps a bounded number of files open however many incremental builds there were.
    It also gathers its images from any block of which it uses less than ``MIN_BLOCK_USE``
    (half): so every block still referenced is at least half used by one part, and the blocks
    hold at most twice the images the cache uses, whatever was removed from the manifest. And
    it gathers the images of all but its longest runs (rows lying one after another in one
    block) when it would read from more than max(``MIN_RUNS_ALLOWED``, rows / ``ROWS_PER_RUN``)
    of them: each run is a mapping of the virtual dataset, and a manifest whose order no longer
    follows the blocks' would otherwise map its images one by one.
    After a successful merge, part files of other shard counts beside the parts are deleted
    (their blocks are about to go, and a stale ``part-0-of-1.h5`` would otherwise be taken as
    up to date when ``preprocess.shards`` goes back to 1), then blocks that no part references.
    A block file that
    cannot be opened is ignored (and deleted by the merge); a corrupted chunk fails its
    Fletcher-32 checksum when read, naming the block. Resharding decodes no image.

Determinism
    Decoding runs in ``threads`` worker processes; one writer in the calling process writes rows
    in manifest order, in batches whose boundaries do not depend on ``threads``. Object
    timestamps are off (``track_times=False``, and ``obj_track_times`` for the root group and
    the virtual dataset) and HDF5's chunk cache is off (chunks land in the file in write order),
    so the bytes of parts and blocks depend only on their inputs (tested). An incremental build
    reads the same images, labels and fingerprint as a full one (tested); its parts differ in
    which blocks they point to. Each decoded image is checked against the manifest's
    ``content_hash``, so a file changed after validation stops the build instead of entering a
    block under a stale key. The
    one exception is the ``created`` attribute (fixed-length ISO 8601 UTC): it is the current
    time unless the environment sets ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention),
    which makes the files byte-for-byte reproducible. Except under ``compression: lzf`` with
    float16 images: a review saw a block's compressed chunks differ by a few bytes between
    identical runs (h5py's LZF filter; the images read back are identical, and gzip's bytes
    were stable). Nothing compares block bytes: reuse goes by content hash.

Faults
    Every file is written under a temporary name and renamed (``medclassify.atomic``), so a
    SIGKILL leaves only ``.*.tmp`` files, which nothing reads. Images carry the Fletcher-32
    checksum filter; a truncated file fails to open, and a corrupted chunk fails to read. Both
    surface as ``InputError`` naming the file, never as a crash inside TensorFlow. The row
    metadata (the class list, labels and the string datasets) is covered by the attribute
    ``part_digest``, recomputed on open, so a changed label, patient id or class list is refused too.
    ``Cache.verify()`` reads every chunk. A write that fails (a full disk) is an OSError naming
    the file, raised before its temporary file is removed; HDF5 may then crash at the process's
    exit (it cannot always close such a file), never before the error is told.
"""

import atexit
import collections
import concurrent.futures
import contextlib
import datetime
import errno
import gc
import hashlib
import io as _stringio
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import __version__
from .atomic import atomic_path, atomic_write_json
from .config import config_hash
from .errors import InputError
from .preprocess_options import check_preprocess_options
from .preprocessing import (PREPROCESSING_VERSION, from_storage, intensity_input_problem, preprocess_image,
                            to_storage)
from .runlog import default_sigterm

# Format 2: the part digest covers every row's label, patient and modality too. Format 3: it
# covers the class list too. A file of an older format is refused with "rerun the preprocess
# stage" (its digest would read as corruption).
CACHE_FORMAT_VERSION = 3
# Blocks are unchanged by formats 2 and 3: they keep their own version, which enters the values
# hash, so the images of blocks written before are still referenced, not decoded again.
BLOCK_FORMAT_VERSION = 1
STRING_DATASETS = ("sample_id", "patient", "content_hash", "modality")
REQUIRED_COLUMNS = ("sample_id", "path", "index", "label", "patient", "modality", "content_hash", "source_spacing")
INTENSITY_SAMPLES = 64
# Images per task sent to a worker: large enough that pickling overhead is small, small enough
# that a few tasks in flight per worker bound memory.
DECODE_BATCH = 32
TASKS_IN_FLIGHT_PER_WORKER = 3
STORAGE_ONLY_OPTIONS = ("shards", "compression", "compression_level")
COPY_BLOCK = 256  # rows per read/write when copying images between files
DIGEST_ROWS_PER_UPDATE = 65536
ATTRIBUTES = ("params_hash", "params", "classes", "library_version", "manifest_hash", "created")
BLOCKS_DIRNAME = "blocks"
BLOCK_PREFIX = "block-"
PART_PREFIX = "part-"
LEGACY_POOL_DIRNAME = ".previous"  # the copy-based reuse pool of earlier versions, removed on merge
# A reader opens every block its parts point into; beyond this many per part, a build gathers
# the images of the least-used blocks into its new block (see _referenced_rows).
MAX_BLOCKS_PER_PART = 16
# A part gathers the images it uses from a block of which it uses less than this fraction, so
# that images dropped from the manifest cannot pile up in blocks kept alive by a few others.
MIN_BLOCK_USE = 0.5
# A part's rows read from at most max(MIN_RUNS_ALLOWED, rows / ROWS_PER_RUN) runs of rows that lie
# consecutively in one block, each a mapping of the virtual dataset; see _keep_long_runs.
MIN_RUNS_ALLOWED = 64
ROWS_PER_RUN = 256


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
    record["cache_format"] = BLOCK_FORMAT_VERSION  # a new part format leaves the blocks' values alone
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
        raise InputError(f"{name}: not a validated manifest", [f"missing column {c!r}" for c in missing]
                         + ["rerun validation (medclassify validate, or the workflow's validate_manifest stage)"])
    table = table.reset_index(drop=True)
    # object dtype: a list of None and ints would otherwise become float with NaN.
    table["index"] = _parse_indices(table["index"])
    return table, digest, name


def _parse_indices(column):
    """The ``index`` column as Python ints, None where empty (a 2D file)."""
    text = column.astype("string").str.strip()
    blank = (text.isna() | text.isin(["", "<NA>", "nan"])).to_numpy()
    indices = pd.Series([None] * len(column), dtype=object)
    if not blank.all():  # only multi-sample files (DICOM frames, NIfTI slices) have an index
        numbers = pd.to_numeric(text[~blank].to_numpy(dtype=object)).astype(np.float64).astype(np.int64)
        indices[~blank] = [int(number) for number in numbers]
    return indices


def _source_spacings(table, name, row_offset):
    """Each row's (row, column) pixel spacing from ``source_spacing``; NaN where it is unknown (empty).

    The spacing is the file's, recorded by validation: an image referenced in a block written
    for another file with the same pixels must not take that file's spacing.
    """
    text = table["source_spacing"].astype(str).str.strip()
    known = (text != "").to_numpy()
    spacings = np.full((len(table), 2), np.nan, dtype=np.float64)
    if known.any():
        pairs = text[known].str.extract(r"^(\S+)\s+(\S+)$")
        values = pairs.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        malformed = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if malformed.size:
            rows = np.flatnonzero(known)[malformed]
            raise InputError(f"{name}: malformed source_spacing", [
                f"row {row_offset + i + 1} ({table['path'].iloc[i]}): {text.iloc[i]!r} is not two finite numbers"
                for i in rows])
        spacings[known] = values
    return spacings


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


def _content_hash(pixels, blank):
    from .io import content_hash
    return content_hash(pixels, blank)


def _decode_batch(job, items):
    """Worker: read, check and preprocess ``items`` [(position, path, index, content_hash)].

    Returns stored images (k, H, W, C) plus the fingerprint data that follow from the pixels
    (source shape, intensity samples) and any problems, one per item that failed; failed items
    get a zero image (the build fails before anything is renamed).
    """
    root, io_options, preprocess_options, storage_dtype, shape = job
    k = len(items)
    images = np.zeros((k,) + shape, dtype=storage_dtype)
    source_shape = np.zeros((k, 3), dtype=np.int32)
    intensity = np.full((k, INTENSITY_SAMPLES), np.nan, dtype=np.float32)
    problems = []
    for i, (position, rel_path, index, expected_hash) in enumerate(items):
        try:
            sample = _read_sample(Path(root) / rel_path, index, io_options)
            pixels = np.asarray(sample.pixels)
            if expected_hash and _content_hash(pixels, sample.meta.get("constant")) != expected_hash:
                problems.append((position, rel_path, "content_changed",
                                 "the image differs from the one validated (content hash); rerun validation"))
                continue
            unfit = intensity_input_problem(pixels, sample.meta, preprocess_options, io_options)
            if unfit:
                problems.append((position, rel_path, *unfit))
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
            intensity[i] = _intensity_sample(pixels)
        except Exception as error:  # any failure to decode a user's file is reported, not raised
            # A ReadError's text starts with its code, which the problem holds apart.
            code = getattr(error, "code", type(error).__name__)
            problems.append((position, rel_path, code, getattr(error, "message", str(error))))
    return images, source_shape, intensity, problems


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
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                          initializer=default_sigterm)
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

@contextlib.contextmanager
def _create_h5(path):
    """A new HDF5 file with timestamps off everywhere (byte-reproducible output), flushed and
    closed at the end of the block; OSError naming ``path`` if HDF5 failed to write any of it.

    HDF5 writes metadata when it evicts or flushes it, and h5py reports a failure met there from
    an object's destructor as an "Exception ignored", after which writing goes on: on a full disk
    a damaged file reached its final name, and later builds reused it unread. Such failures are
    gathered while the file is open and raised at its close.

    A file whose writing the disk refused (full, quota, size limit) is not closed: closing it can
    crash HDF5 (SIGSEGV) before the error is told, and leave the temporary file behind. It stays
    open, unreachable, until the process ends (its space with it, though the file is deleted),
    and the h5py destructor failures met from then on are not printed.
    """
    failures, previous_hook, abandoned = [], sys.unraisablehook, False

    def note_h5py_failure(unraisable):
        if _from_h5py(unraisable):
            failures.append(unraisable.exc_value)  # raised below, in one line
        else:
            previous_hook(unraisable)

    sys.unraisablehook = note_h5py_failure
    try:
        try:
            f = _new_h5(path)
        except OSError as error:  # a full disk refuses even the file's first bytes
            raise _write_error(error, path) from None
        try:
            yield f
            f.flush()
        except (OSError, RuntimeError) as error:
            if _error_number(error) in _DISK_FULL:
                _ABANDONED_FILES.append(f)
                abandoned = True
            else:
                _close_after_failure(f)
            if _is_write_failure(error):
                raise _write_error(error, path) from None
            raise  # not a write of this file (reading another block, a missing input): its own words
        except BaseException:
            _close_after_failure(f)
            raise
        try:
            f.close()
        except (OSError, RuntimeError) as error:
            failures.append(error)
    finally:
        sys.unraisablehook = _without_h5py_failures(previous_hook) if abandoned else previous_hook
    if failures:
        raise _write_error(failures[0], path)


_ABANDONED_FILES = []
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _is_write_failure(error):
    """Whether ``error`` is HDF5 failing to write (its message quotes the system's error number),
    or the disk refusing a write; not a failed read, nor an error Python raised itself."""
    text = str(error)
    return _error_number(error) in _DISK_FULL or ("errno = " in text and "read failed" not in text)


def _error_number(error):
    """The system error number of an HDF5 failure: the OSError's, or the one HDF5's message quotes."""
    found = re.search(r"errno = (\d+)", str(error))
    return getattr(error, "errno", None) or (int(found[1]) if found else None)


def _from_h5py(unraisable):
    """Whether an unraisable exception came from h5py (its object, or where it was raised: an
    object's destructor may report it without the object)."""
    if type(unraisable.object).__module__.startswith("h5py") or "h5py" in repr(unraisable.object):
        return True
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    return any("h5py" in frame.filename for frame in frames)


@atexit.register
def _drop_abandoned_files():
    """Let the abandoned files go before the interpreter shuts down (their destructors' failures
    then printed "Error in sys.excepthook"), with the standard error muted: h5py's compiled
    destructors print their tracebacks themselves, and the failure was told already."""
    if not _ABANDONED_FILES:
        return
    sys.stderr.flush()
    saved, muted = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(muted, 2)
    try:
        _ABANDONED_FILES.clear()
        gc.collect()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(muted)


def _without_h5py_failures(hook):
    """``hook`` for every unraisable exception but h5py's (those of an abandoned file)."""
    # It runs at interpreter exit too, when this module's globals may be gone: nothing but its own.
    def hook_without_h5py(unraisable, hook=hook, from_h5py=_from_h5py):
        if not from_h5py(unraisable):
            hook(unraisable)
    return hook_without_h5py


def _close_after_failure(f):
    """Close a file whose writing failed; its close fails too, and the first failure is the news."""
    try:
        f.close()
    except (OSError, RuntimeError):
        pass
    gc.collect()


def _write_error(error, path):
    """An OSError naming ``path`` for an HDF5 write failure, with the system's reason alone (HDF5's
    message runs over lines of internals)."""
    reason = re.search(r"error message = '([^']*)'", str(error))
    number = _error_number(error) or errno.EIO
    return OSError(number, f"HDF5 could not write it ({reason[1] if reason else error})", str(path))


def _new_h5(path):
    """Open a new HDF5 file with timestamps off everywhere (byte-reproducible output)."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    # v1.10 format: needed for virtual datasets; fixed so the bytes do not follow the library.
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)
    # No raw-data chunk cache: each chunk reaches the file when written, so chunks lie in row
    # order and the bytes do not depend on the cache's eviction.
    fapl.set_cache(0, 0, 0, 0.0)
    # As h5py's own files: closing the file closes it, and a failure to write it is raised by
    # close(), not met later by whichever object's destructor held the last reference.
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
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


def _row_strings(table):
    """The ``STRING_DATASETS`` columns of ``table`` as lists of str, in that order."""
    return tuple([str(v) for v in table[name].tolist()] for name in STRING_DATASETS)


def _write_row_datasets(f, labels, table):
    f.create_dataset("labels", data=labels, dtype=np.int64, track_times=False)
    for name, values in zip(STRING_DATASETS, _row_strings(table)):
        _write_strings(f, name, values)


def _write_strings(f, name, values):
    """A dataset of UTF-8 strings, fixed-length (as long as the longest value).

    Fixed-length strings write and read about three times faster than variable-length ones
    (which HDF5 stores on its heap one by one), and the per-row strings are a good part of what
    an incremental build costs. Readers use ``.asstr()``, which reads either kind. Validation
    refuses control characters, so no value has a NUL (which fixed-length strings would drop).
    """
    encoded = [value.encode("utf-8") for value in values]
    bad = [value for value in values if "\x00" in value]
    if bad:
        raise InputError(f"cannot store {name!r} values with a NUL character", [repr(v) for v in bad])
    length = max(1, max(map(len, encoded), default=1))
    dataset = f.create_dataset(name, shape=(len(encoded),), dtype=h5py.string_dtype("utf-8", length),
                               track_times=False)
    if encoded:
        # h5py has no conversion from NumPy bytes to a UTF-8 file type; the bytes are UTF-8 already.
        dataset.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(encoded, dtype=f"S{length}"),
                         mtype=dataset.id.get_type())


def _part_digest(params_hash_, classes, labels, strings):
    """Digest of the row metadata: the class list, each row's label and ``strings`` (the ``STRING_DATASETS``).

    Labels and strings carry no checksum filter: ``open_cache`` recomputes this digest so that
    a label, patient, modality, sample id or content hash changed in the file is refused. The
    labels are indices into ``classes``, so a changed class list is refused too.
    """
    digest = hashlib.sha256(params_hash_.encode())
    digest.update(json.dumps(list(classes)).encode("utf-8"))
    rows = iter(zip(np.asarray(labels).tolist(), *strings))
    # One update per many rows (the same bytes as one per row): the digest is computed three
    # times per build, and per-row calls were a visible part of an incremental build.
    # Validation refuses control characters, so the separators cannot occur in a value.
    while chunk := list(itertools.islice(rows, DIGEST_ROWS_PER_UPDATE)):
        digest.update("".join(f"\x00{label}\x01{sample_id}\x01{patient}\x01{content}\x01{modality}"
                              for label, sample_id, patient, content, modality in chunk).encode("utf-8"))
    return digest.hexdigest()[:32]


class _BlockStore:
    """The image blocks of a cache folder, found by content hash (see the module docstring)."""

    FINGERPRINT_DATASETS = ("source_shape", "source_spacing", "source_intensity")
    # What a block row says of every file with its content hash; the spacing is each file's own.
    PIXEL_FINGERPRINT_DATASETS = ("source_shape", "source_intensity")

    def __init__(self, folder, wanted_hashes, decoding):
        self.folder = Path(folder)
        self.image_options = decoding.image_options
        self.files = []
        self.names = []
        self.where = {}
        self._stores_like = {}
        paths = sorted(self.folder.glob(f"{BLOCK_PREFIX}*.h5")) if self.folder.is_dir() and wanted_hashes else []
        for path in paths:
            f = None
            try:
                f = h5py.File(path, "r")
                images = f.get("images")
                usable = (_plain(f.attrs.get("values_hash")) == decoding.values_hash and images is not None
                          and _plain(f.attrs.get("block_id")) == _block_id_of(path.name)
                          and images.shape[1:] == decoding.shape and images.dtype == decoding.storage_dtype
                          and all(name in f for name in self.FINGERPRINT_DATASETS))
                hashes = f["content_hash"].asstr()[:] if usable else []
                opened = (images,) + tuple(f[name] for name in self.PIXEL_FINGERPRINT_DATASETS) if usable else ()
            except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
                # Damaged metadata reads as any of these (a flipped byte in content_hash: a
                # UnicodeDecodeError). Its images are decoded again; the merge deletes the block.
                print(f"medclassify: ignoring unreadable cache block {path}: {type(error).__name__}: {error}",
                      file=sys.stderr)
                if f is not None:
                    f.close()
                continue
            if not usable:
                f.close()
                continue
            file_index = len(self.files)
            self.files.append((f,) + opened)
            self.names.append(path.name)
            for row, content in enumerate(hashes):
                if content in wanted_hashes and content not in self.where:
                    self.where[content] = (file_index, row)

    def lookup(self, content_hash):
        """(block index, row) holding the image with ``content_hash``, or None."""
        return self.where.get(content_hash)

    def rows(self, file_index):
        """Number of images in block ``file_index``."""
        return self.files[file_index][1].shape[0]

    def stores_like(self, file_index):
        """Whether block ``file_index`` encodes images as configured (then they can be referenced)."""
        if file_index not in self._stores_like:
            images, options = self.files[file_index][1], self.image_options
            compression = options.get("compression")
            self._stores_like[file_index] = bool(
                images.compression == compression and images.fletcher32
                and (compression != "gzip" or images.compression_opts == options["compression_opts"]))
        return self._stores_like[file_index]

    def read_pixel_fingerprint(self, file_index, source_row, n):
        """Source shapes and intensity samples of rows ``source_row .. source_row + n - 1`` of a block."""
        return [dataset[source_row:source_row + n] for dataset in self.files[file_index][2:]]

    def copy_run(self, file_index, source_row, n, images, row, pixel_fingerprint):
        """Copy ``n`` consecutive rows of a block into ``images[row:row + n]`` and ``pixel_fingerprint``.

        For a new block: images stored with other compression, or gathered from a little-used
        block. Works in runs of ``COPY_BLOCK`` rows (bounded memory), each read through HDF5,
        which checks the Fletcher-32 checksums, so a corrupted block is never propagated.
        """
        f, source = self.files[file_index][:2]
        try:
            for start in range(0, n, COPY_BLOCK):
                stop = min(n, start + COPY_BLOCK)
                images[row + start:row + stop] = source[source_row + start:source_row + stop]
            for target, values in zip(pixel_fingerprint, self.read_pixel_fingerprint(file_index, source_row, n)):
                target[row:row + n] = values
        except OSError as error:
            raise InputError(f"{f.filename}: corrupted cache block",
                             [str(error), f"delete {f.filename} and rerun the preprocess stage"]) from None

    def close(self):
        for f, *_ in self.files:
            f.close()


def _block_id(values_hash_, image_options, content_hashes):
    digest = hashlib.sha256(f"{values_hash_}|{json.dumps(image_options, sort_keys=True)}".encode())
    for content in content_hashes:
        digest.update(f"\x00{content}".encode("ascii"))
    return digest.hexdigest()[:32]


def build_cache_part(validated_manifest, root, out_part, *, preprocess_options, io_options, classes,
                     shard=0, n_shards=1, threads=1, blocks=None, reuse=True):
    """Preprocess shard ``shard`` of ``n_shards`` of the validated manifest into ``out_part``.

    The shard is a contiguous block of manifest rows. Without ``blocks`` the part stores its
    images itself. With ``blocks`` (a folder, see :func:`default_blocks_dir`) the images that
    a block there already holds (same content hash, same value parameters) are referenced
    where they are, unless ``reuse`` is false; the others are read with
    ``medclassify.io.read_sample``, preprocessed in ``threads`` processes and written to one new
    block; the part's ``images`` is then a virtual dataset over the blocks. Raises InputError
    listing every image that fails (the part is then not written). Returns a summary dict:
    rows, decoded, reused, seconds.
    """
    started = time.perf_counter()
    check_preprocess_options(preprocess_options)
    classes = [str(c) for c in classes]
    table, manifest_hash, name = load_validated_manifest(validated_manifest)
    start, stop = shard_bounds(len(table), shard, n_shards)
    rows = table.iloc[start:stop].reset_index(drop=True)
    labels = _label_indices(rows, classes, name, start)
    spacings = _source_spacings(rows, name, start)
    height, width = preprocess_options["size"]
    shape = (int(height), int(width), _probe_channels(rows, root, io_options))
    decoding = _Decoding(str(root), io_options, preprocess_options, np.dtype(preprocess_options.get("dtype", "uint8")),
                         shape, max(1, int(threads)), name, _image_dataset_options(preprocess_options),
                         values_hash(preprocess_options, io_options))
    p_hash = params_hash(preprocess_options, io_options)
    attrs = {
        "params_hash": p_hash, "values_hash": decoding.values_hash,
        "params": json.dumps(params_record(preprocess_options, io_options), sort_keys=True),
        "classes": json.dumps(classes), "library_version": __version__,
        "manifest_hash": manifest_hash, "created": _created_timestamp(),
        "cache_format": CACHE_FORMAT_VERSION, "layout": "part", "shard": shard, "n_shards": n_shards,
        "row_start": start, "row_stop": stop, "manifest_rows": len(table),
        "part_digest": _part_digest(p_hash, classes, labels, _row_strings(rows)),
    }
    row_numbers = np.arange(start + 1, stop + 1)
    if blocks is None or not len(rows):
        reused = _write_self_contained_part(out_part, rows, labels, spacings, attrs, row_numbers, decoding)
    else:
        reused = _write_block_backed_part(out_part, rows, labels, spacings, attrs, row_numbers, decoding, Path(blocks),
                                          reuse)
    return {"rows": len(rows), "decoded": len(rows) - reused, "reused": reused,
            "seconds": round(time.perf_counter() - started, 3)}


# What the decoding and writing of one part needs, besides its rows.
_Decoding = collections.namedtuple(
    "_Decoding", "root io_options preprocess_options storage_dtype shape threads name image_options values_hash")


def _write_self_contained_part(out_part, rows, labels, spacings, attrs, row_numbers, decoding):
    """A part that stores its images itself, all decoded. Returns 0 (images reused)."""
    with atomic_path(out_part) as tmp:
        with _create_h5(tmp) as f:
            _write_row_datasets(f, labels, rows)
            images = f.create_dataset("images", shape=(len(rows),) + decoding.shape, dtype=decoding.storage_dtype,
                                      chunks=(1,) + decoding.shape, maxshape=_max_shape(len(rows), decoding.shape),
                                      **decoding.image_options)
            shapes, intensities = _fill_images(images, rows, [None] * len(rows), None, row_numbers, decoding)
            _write_fingerprint(f, _Fingerprint(shapes, spacings, intensities))
            _write_attrs(f, attrs)
    return 0


def _write_block_backed_part(out_part, rows, labels, spacings, attrs, row_numbers, decoding, blocks, reuse):
    """A part whose images live in ``blocks``: found ones referenced, the rest in one new block.

    Returns the number of images not decoded (referenced, or re-encoded from another block).
    """
    content = [str(c) for c in rows["content_hash"].tolist()]
    store = _BlockStore(blocks, set(content) if reuse else set(), decoding)
    try:
        found = [store.lookup(c) for c in content]
        referenced = _referenced_rows(store, found)
        new_rows = [i for i, hit in enumerate(referenced) if hit is None]
        new_block = None
        if new_rows:
            new_block = _write_block(store, rows.iloc[new_rows].reset_index(drop=True), spacings[new_rows],
                                     [found[i] for i in new_rows], row_numbers[new_rows], decoding)
        used = sorted({hit[0] for hit in referenced if hit is not None})
        records = {store.names[k]: store.rows(k) for k in used}
        if new_block:
            records[new_block.name] = len(new_rows)
        names = sorted(records)
        location = np.zeros((len(rows), 2), dtype=np.int64)  # (block, row in the block) of each row
        position_of_file = {k: names.index(store.names[k]) for k in used}
        for i, hit in enumerate(referenced):
            if hit is not None:
                location[i] = position_of_file[hit[0]], hit[1]
        if new_block:
            location[new_rows] = np.column_stack([np.full(len(new_rows), names.index(new_block.name)),
                                                  np.arange(len(new_rows))])
        fingerprint = _gather_fingerprint(store, referenced, new_rows, new_block, spacings)
    finally:
        store.close()
    runs = _block_runs(location)
    folder = os.path.relpath(blocks.resolve(), Path(out_part).resolve().parent)
    block_records = [{"file": os.path.join(folder, block), "block_id": _block_id_of(block), "rows": int(records[block])}
                     for block in names]
    with atomic_path(out_part) as tmp:
        with _create_h5(tmp) as f:
            _write_row_datasets(f, labels, rows)
            _write_fingerprint(f, fingerprint)
            f.create_dataset("image_runs", data=runs, dtype=np.int64, track_times=False)
            _create_virtual_images(f, (len(rows),) + decoding.shape, decoding.storage_dtype,
                                   [(block_records[b]["file"], row, block_row, n, block_records[b]["rows"])
                                    for row, b, block_row, n in runs.tolist()])
            _write_attrs(f, {**attrs, "blocks": json.dumps(block_records)})
    return len(rows) - len(new_rows) + (new_block.reencoded if new_block else 0)


def _referenced_rows(store, found):
    """``found`` without the hits that must be copied into the new block rather than referenced.

    Those are the hits in blocks that store images otherwise (another compression), in blocks
    the part uses less than ``MIN_BLOCK_USE`` of (bounded disk use), and, when a part would
    point into more than ``MAX_BLOCKS_PER_PART`` blocks, in the blocks it uses least: after many
    incremental builds a part's images are thus gathered again, so that a reader never holds
    more than that many blocks open per part.
    """
    referenced = _keep_long_runs([hit if hit is not None and store.stores_like(hit[0]) else None for hit in found])
    distinct_rows = collections.Counter(k for k, _ in {hit for hit in referenced if hit is not None})
    sparse = {k for k, n in distinct_rows.items() if n < MIN_BLOCK_USE * store.rows(k)}
    referenced = [None if hit is not None and hit[0] in sparse else hit for hit in referenced]
    counts = collections.Counter(hit[0] for hit in referenced if hit is not None)
    if len(counts) + any(hit is None for hit in referenced) > MAX_BLOCKS_PER_PART:
        # what stays referenced, plus the new block that takes the rest, fits the limit
        n_gathered = len(counts) + 1 - MAX_BLOCKS_PER_PART
        gathered = {k for k, _ in sorted(counts.items(), key=lambda item: (item[1], item[0]))[:n_gathered]}
        referenced = [None if hit is not None and hit[0] in gathered else hit for hit in referenced]
    return referenced


def _keep_long_runs(referenced):
    """``referenced`` keeping the hits of its longest runs, of rows stored one after another in
    one block, as many as a part may have (see ``MIN_RUNS_ALLOWED``); the other hits are
    gathered into the new block, in row order.

    Each run is one mapping of the virtual dataset, and a manifest whose order no longer follows
    the blocks' (sorted another way, or new images sorted in among the old) made one mapping a
    row: about 28 KB each in every process that opened the cache, and a merge slower than linear.
    Images appended to a manifest, or removed from it here and there, keep their blocks.
    """
    location = np.array([(-1, -1) if hit is None else hit for hit in referenced], dtype=np.int64).reshape(-1, 2)
    new = location[:, 0] < 0
    location[new, 1] = np.arange(np.count_nonzero(new))  # the rows without a hit: the new block's, in order
    runs = _block_runs(location)
    allowed = max(MIN_RUNS_ALLOWED, len(referenced) // ROWS_PER_RUN)
    if len(runs) <= allowed:
        return referenced
    # Each run kept can split the new block's rows once more: kept + 1 + kept mappings at most.
    runs = runs[runs[:, 1] >= 0]
    longest = runs[np.lexsort((runs[:, 0], -runs[:, 3]))[:allowed // 2]]
    kept = np.zeros(len(referenced), dtype=bool)
    for row, _, _, length in longest.tolist():
        kept[row:row + length] = True
    return [hit if keep else None for hit, keep in zip(referenced, kept.tolist())]


def _block_id_of(file_name):
    return file_name.removeprefix(BLOCK_PREFIX).removesuffix(".h5")


_NewBlock = collections.namedtuple("_NewBlock", "name reencoded fingerprint")


def _write_block(store, rows, spacings, found, row_numbers, decoding):
    """Write the images of ``rows`` (decoded, or re-encoded from ``found`` blocks) to a new block."""
    content = [str(c) for c in rows["content_hash"].tolist()]
    block_id = _block_id(decoding.values_hash, decoding.image_options, content)
    path = store.folder / f"{BLOCK_PREFIX}{block_id}.h5"
    store.folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with _create_h5(tmp) as f:
            _write_strings(f, "content_hash", content)
            images = f.create_dataset("images", shape=(len(rows),) + decoding.shape, dtype=decoding.storage_dtype,
                                      chunks=(1,) + decoding.shape, **decoding.image_options)
            shapes, intensities = _fill_images(images, rows, found, store, row_numbers, decoding)
            fingerprint = _Fingerprint(shapes, spacings, intensities)
            _write_fingerprint(f, fingerprint)
            _write_attrs(f, {"values_hash": decoding.values_hash, "block_id": block_id,
                             "cache_format": BLOCK_FORMAT_VERSION, "layout": "block", "library_version": __version__})
    return _NewBlock(path.name, sum(hit is not None for hit in found), fingerprint)


def _write_fingerprint(f, fingerprint):
    for dataset, values in zip(_BlockStore.FINGERPRINT_DATASETS, fingerprint):
        f.create_dataset(dataset, data=values, track_times=False)


def _gather_fingerprint(store, referenced, new_rows, new_block, spacings):
    """The part's fingerprint rows: the manifest's spacings; the rest read from the referenced
    blocks or taken from the new one."""
    shapes, intensities = _empty_pixel_fingerprint(len(spacings))
    for row, file_index, source_row, length in _reuse_runs(referenced):
        for target, values in zip((shapes, intensities), store.read_pixel_fingerprint(file_index, source_row, length)):
            target[row:row + length] = values
    if new_block:
        shapes[new_rows], intensities[new_rows] = new_block.fingerprint.shape, new_block.fingerprint.intensity
    return _Fingerprint(shapes, spacings, intensities)


# The fingerprint rows of a part or block, in the order of ``_BlockStore.FINGERPRINT_DATASETS``.
_Fingerprint = collections.namedtuple("_Fingerprint", "shape spacing intensity")


def _empty_pixel_fingerprint(n):
    """Source shapes and intensity samples of ``n`` rows, to be filled."""
    return np.zeros((n, 3), dtype=np.int32), np.full((n, INTENSITY_SAMPLES), np.nan, dtype=np.float32)


def _block_runs(location):
    """Runs (row, block, block row, length) of consecutive rows stored consecutively in one block."""
    n = len(location)
    starts = np.ones(n, dtype=bool)
    starts[1:] = (location[1:, 0] != location[:-1, 0]) | (location[1:, 1] != location[:-1, 1] + 1)
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, n))
    return np.column_stack([first, location[first, 0], location[first, 1], lengths]).astype(np.int64)


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


def _fill_images(images, rows, reused, store, row_numbers, decoding):
    """Write every row's image in order: re-encoded from ``reused`` blocks, or decoded.

    ``row_numbers`` are the rows' 1-based manifest rows, for error messages. Returns the rows'
    source shapes and intensity samples (their spacings come from the manifest, not the pixels).
    """
    n = len(rows)
    pixel_fingerprint = _empty_pixel_fingerprint(n)
    source_shape, intensity = pixel_fingerprint
    reused_runs = _reuse_runs(reused)
    to_decode = [i for i in range(n) if reused[i] is None]
    job = (decoding.root, decoding.io_options, decoding.preprocess_options, decoding.storage_dtype, decoding.shape)
    batches = [to_decode[s:s + DECODE_BATCH] for s in range(0, len(to_decode), DECODE_BATCH)]
    items = list(zip(range(n), rows["path"].tolist(), rows["index"].tolist(), rows["content_hash"].tolist()))
    tasks = ((job, [items[i] for i in batch]) for batch in batches)
    problems = []
    next_run = 0  # reused runs before this index are written

    def copy_reused_before(limit):
        nonlocal next_run
        while next_run < len(reused_runs) and reused_runs[next_run][0] < limit:
            row, file_index, source_row, length = reused_runs[next_run]
            store.copy_run(file_index, source_row, length, images, row, pixel_fingerprint)
            next_run += 1

    for batch, result in zip(batches, _ordered_map(_decode_batch, tasks, decoding.threads)):
        batch_images, batch_shape, batch_intensity, batch_problems = result
        problems += batch_problems
        source_shape[batch], intensity[batch] = batch_shape, batch_intensity
        for run_start, run_stop in _contiguous_runs(batch):
            copy_reused_before(batch[run_start])
            images[batch[run_start]:batch[run_stop - 1] + 1] = batch_images[run_start:run_stop]
    copy_reused_before(n + 1)
    if problems:
        problems.sort()
        raise InputError(f"{decoding.name}: {len(problems)} image(s) could not be preprocessed",
                         [f"row {row_numbers[i]} ({path}): {code}: {message}" for i, path, code, message in problems])
    return pixel_fingerprint


def _reuse_runs(reused):
    """Runs (row, block, block row, length) of consecutive rows found consecutively in one block."""
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

def merge_cache_parts(parts, out_cache, fingerprint_out, *, blocks=None, layout="virtual"):
    """Join part files into ``out_cache`` (one readable dataset) and write ``fingerprint.json``.

    ``layout="virtual"`` maps the stored images through an HDF5 virtual dataset with source
    paths relative to ``out_cache`` (the parts and blocks must stay beside it); ``"copy"``
    copies the images into a self-contained file. With ``blocks`` (the parts' block folder),
    part files of other shard counts and blocks that no part references any more are then
    deleted. Returns the fingerprint.
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
    if blocks is not None:
        # Parts first: a crash in between must not leave a part whose blocks are gone.
        remove_parts_of_other_shard_counts(parts)
        remove_unused_blocks(parts, blocks)
    return fingerprint


def _shape_part(opened):
    """The part whose images give the merged cache its image shape and storage dtype.

    The first part with rows: a part without rows decoded no image, so its channel count
    (from ``_probe_channels``) is a guess that must not decide the shape of a colour cache.
    """
    return next((cache for cache in opened if len(cache)), opened[0])


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
    problems += _image_layout_problems(parts, opened)
    if problems:
        raise InputError("cache parts do not form one cache", problems)


def _image_layout_problems(parts, opened):
    """Parts with rows whose images differ in shape or storage dtype from the first such part.

    Same parameters do not imply the same shape: with ``io.channels: keep_grey`` each shard
    takes its channel count from its own first image, so grey and colour shards can meet here.
    """
    reference = _shape_part(opened)
    reference_path = parts[opened.index(reference)]
    expected = (reference.image_shape, reference.storage_dtype)
    problems = [f"{path}: images {cache.image_shape} {cache.storage_dtype}, "
                f"{reference_path}'s are {reference.image_shape} {reference.storage_dtype}"
                for path, cache in zip(parts, opened)
                if len(cache) and (cache.image_shape, cache.storage_dtype) != expected]
    if problems:
        problems.append("the images differ in channels: set io.channels to rgb_to_grey or grey_to_rgb so that "
                        "all images agree, and rerun the preprocess stage")
    return problems


def _write_merged(f, parts, opened, out_cache, layout):
    total = sum(len(c) for c in opened)
    first = opened[0]
    reference = _shape_part(opened)
    shape = (total,) + tuple(reference.image_shape)
    labels = np.concatenate([c.labels for c in opened])
    f.create_dataset("labels", data=labels, dtype=np.int64, track_times=False)
    strings = tuple([v for c in opened for v in getattr(c, attribute)]
                    for attribute in ("sample_ids", "patients", "content_hashes", "modalities"))
    for name, values in zip(STRING_DATASETS, strings):
        _write_strings(f, name, values)
    part_records = []
    for path, cache in zip(parts, opened):
        relative = os.path.relpath(path.resolve(), out_cache.resolve().parent)
        part_records.append({"path": relative, "rows": len(cache), "part_digest": cache.attrs["part_digest"]})
    offset = 0
    if layout == "virtual":
        mappings = []
        for cache in opened:
            for dataset, start, source_row, n in cache.sources:
                source = os.path.relpath(Path(dataset.file.filename).resolve(), out_cache.resolve().parent)
                mappings.append((source, offset + start, source_row, n, dataset.shape[0]))
            offset += len(cache)
        _create_virtual_images(f, shape, reference.storage_dtype, mappings)
    else:
        stored = reference.sources[0][0] if reference.sources else reference.handle["images"]
        images = f.create_dataset("images", shape=shape, dtype=reference.storage_dtype, chunks=(1,) + shape[1:],
                                  maxshape=_max_shape(total, shape[1:]), compression=stored.compression,
                                  compression_opts=stored.compression_opts, fletcher32=stored.fletcher32,
                                  track_times=False)
        for cache in opened:
            for start in range(0, len(cache), COPY_BLOCK):
                stop = min(len(cache), start + COPY_BLOCK)
                images[offset + start:offset + stop] = cache.read_stored(np.arange(start, stop))
            offset += len(cache)
    attrs = first.attrs
    _write_attrs(f, {
        "params_hash": attrs["params_hash"], "values_hash": attrs["values_hash"], "params": attrs["params"],
        "classes": attrs["classes"], "library_version": __version__, "manifest_hash": attrs["manifest_hash"],
        "created": _created_timestamp(), "cache_format": CACHE_FORMAT_VERSION, "layout": layout,
        "parts": json.dumps(part_records), "manifest_rows": total,
        "part_digest": _part_digest(attrs["params_hash"], first.classes, labels, strings),
    })


def _create_virtual_images(f, shape, dtype, mappings):
    """``images`` as a virtual dataset over ``mappings``.

    Each mapping is (relative source file, first row here, first row there, rows, the source
    dataset's rows): rows of the source file's ``images``. Built with the low-level API because
    h5py's ``create_virtual_dataset`` records object timestamps, which would make the file's
    bytes depend on the clock.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.zeros(1, dtype=dtype))
    zeros = (0,) * (len(shape) - 1)
    for relative, row, source_row, n, source_rows in mappings:
        virtual = h5py.h5s.create_simple(shape)
        virtual.select_hyperslab((row,) + zeros, (n,) + tuple(shape[1:]))
        source = h5py.h5s.create_simple((source_rows,) + tuple(shape[1:]))
        source.select_hyperslab((source_row,) + zeros, (n,) + tuple(shape[1:]))
        dcpl.set_virtual(virtual, os.fsencode(relative), b"images", source)
    h5py.h5d.create(f.id, b"images", h5py.h5t.py_create(np.dtype(dtype)), h5py.h5s.create_simple(shape), dcpl=dcpl)


def default_blocks_dir(part):
    """The block folder beside the part files: ``results/{dataset}/cache/blocks``."""
    return Path(part).parent / BLOCKS_DIRNAME


def referenced_blocks(part):
    """Names of the block files that a part's images live in (none for a self-contained part)."""
    with h5py.File(part, "r") as f:
        return {Path(record["file"]).name for record in json.loads(_plain(f.attrs.get("blocks", "[]")))}


def remove_parts_of_other_shard_counts(parts):
    """Delete the part files (``part-*-of-*.h5``) beside ``parts`` that are not among them.

    ``parts`` must be a whole merged set (the merge checks that), so the others are left from
    another shard count. Deleting them makes Snakemake rebuild a part if that count comes back,
    instead of taking the old file, whose blocks may be gone, as up to date.
    """
    keep = {Path(p).name for p in parts}
    for folder in {Path(p).parent for p in parts}:
        for entry in folder.glob(f"{PART_PREFIX}*-of-*.h5"):
            if entry.name not in keep:
                entry.unlink()


def remove_unused_blocks(parts, blocks):
    """Delete the blocks in ``blocks`` that none of ``parts`` references, and killed writes.

    Also removes the reuse pool of earlier versions (``cache/.previous``), which nothing reads now.
    """
    folder = Path(blocks)
    keep = set().union(*(referenced_blocks(p) for p in parts))
    if folder.is_dir():
        for entry in list(folder.glob(f"{BLOCK_PREFIX}*.h5")) + list(folder.glob(".*.tmp")):
            if entry.name not in keep:
                entry.unlink()
    shutil.rmtree(folder.parent / LEGACY_POOL_DIRNAME, ignore_errors=True)


def compute_fingerprint(opened):
    """The dataset fingerprint (nnU-Net style) from opened part caches."""
    classes = opened[0].classes
    labels = np.concatenate([c.labels for c in opened])
    patients = {p for c in opened for p in c.patients}
    # Modalities as codes into their sorted names: one hashing pass instead of string sorts.
    modality_codes, modality_names = pd.factorize(pd.Series([m for c in opened for m in c.modalities], dtype=object),
                                                  sort=True)
    shapes = np.concatenate([c.handle["source_shape"][:] for c in opened]).reshape(-1, 3)
    spacings = np.concatenate([c.handle["source_spacing"][:] for c in opened]).reshape(-1, 2)
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
    fingerprint = {
        "n_samples": int(len(labels)),
        "n_patients": len(patients),
        "class_counts": {name: int(n) for name, n in zip(classes, counts)},
        "sizes": _size_summary(shapes),
        "spacings": _spacing_summary(spacings),
        "intensity_percentiles": _intensity_summary(opened, modality_codes, modality_names),
        "modalities": {str(m): int(n) for m, n in zip(modality_names, np.bincount(modality_codes,
                                                                                 minlength=len(modality_names)))},
        "params_hash": opened[0].attrs["params_hash"],
        "params": json.loads(opened[0].attrs["params"]),
        "image_shape": list(_shape_part(opened).image_shape),
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


def _intensity_summary(opened, modality_codes, modality_names):
    summary = {}
    n_total = len(modality_codes)
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
            values = cache.handle["source_intensity"][first::step]  # a strided slice, not a fancy read
            row_codes = modality_codes[offset + rows]
            for code in np.unique(row_codes):
                pooled[str(modality_names[code])].append(values[row_codes == code].ravel())
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
                      # Said as it is: the reader's values (a DICOM after its window, MONOCHROME1
                      # mirrored), at positions spaced evenly in storage order (helper-89).
                      "method": f"{INTENSITY_SAMPLES} pixels per image, evenly spaced in storage order, "
                                "as the reader gives them (a DICOM after io.dicom_window and MONOCHROME1's "
                                "mirroring), before preprocessing"})
        summary[modality] = entry
    return summary


# --------------------------------------------------------------------------- reading

class Cache:
    """An opened, checked cache (merged file or one part). Use :func:`open_cache`.

    Attributes: ``classes``, ``labels``, ``sample_ids``, ``patients``, ``content_hashes``,
    ``modalities``, ``image_shape`` (H, W, C), ``params`` (dict), ``params_hash``, ``attrs``,
    ``handle`` (the open file), ``sources``: where the images are stored, as runs
    (images dataset, first row here, first row there, rows) read directly, never via a
    virtual dataset.
    """

    def __init__(self, path, handle, sources, files, attrs, labels, strings):
        self.path = Path(path)
        self.handle = handle
        self.sources = sources
        self._files = files  # the parts and blocks opened besides ``handle``
        self.attrs = attrs
        self.classes = json.loads(attrs["classes"])
        self.params = json.loads(attrs["params"])
        self.params_hash = attrs["params_hash"]
        self.labels = labels
        self.sample_ids, self.patients, self.content_hashes, self.modalities = strings
        self.image_shape = tuple(int(s) for s in handle["images"].shape[1:])
        self.storage_dtype = handle["images"].dtype
        self._starts = np.array([start for _, start, _, _ in sources], dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the file, its parts and blocks."""
        for f in self._files + [self.handle]:
            if f.id.valid:
                f.close()

    def read(self, indices):
        """Images at ``indices`` (any order, repeats allowed): float32 (n, H, W, C) in [0, 1].

        Indices are sorted and de-duplicated; each run of consecutive rows is one slice read.
        (h5py's simple-slice path costs ~15 µs per read, whereas a fancy-index or an OR-ed
        hyperslab selection of 64 scattered rows costs ~40 ms in HDF5: measured.)
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        unique = np.unique(indices)
        return from_storage(self.read_stored(unique))[np.searchsorted(unique, indices)]

    def read_stored(self, rows):
        """The stored images (uint8 or float16) at the increasing, distinct ``rows``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: indices outside 0..{len(self) - 1}")
        stored = np.empty((len(rows),) + self.image_shape, dtype=self.storage_dtype)
        source_of = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(source_of):
            images, start, source_row, _ = self.sources[k]
            mask = source_of == k
            local = rows[mask] - start + source_row
            target = np.flatnonzero(mask)
            try:
                for run_start, run_stop in _contiguous_runs(local):
                    first, last = local[run_start], local[run_stop - 1]
                    stored[target[run_start]:target[run_stop - 1] + 1] = images[first:last + 1]
            except (OSError, RuntimeError) as error:
                damaged = Path(images.file.filename)
                # A rerun reuses a block without reading its pixels: deleting it is what heals.
                remedy = (f"delete {damaged} and rerun the preprocess stage, which decodes its images again "
                          "(snakemake --forcerun preprocess: the cache's files are still there)"
                          if damaged.name.startswith(BLOCK_PREFIX)
                          else "delete the cache (and its blocks folder) and rerun the preprocess stage")
                raise InputError(f"{damaged}: corrupted cache, images cannot be read",
                                 [f"rows {local.min()}..{local.max()}: {error}", remedy]) from None
        return stored

    def verify(self, batch=256):
        """Read every stored image (checking each chunk's checksum); raise InputError if any fails."""
        for start in range(0, len(self), batch):
            self.read_stored(np.arange(start, min(start + batch, len(self))))
        return True


def open_cache(path, expected_params_hash=None, expected_by=("the config's", "rerun the preprocess stage "
                                                               "(snakemake does this when the config changes)")):
    """Open and check a cache (``cache.h5`` or a part); return a :class:`Cache`.

    Raises InputError naming the file and the problem when the file is missing, truncated or
    corrupted, lacks a dataset or attribute, has inconsistent lengths, misses or mismatches a
    part or a block, or when its parameter hash differs from ``expected_params_hash``; the
    message names whose hash that is and what to do, ``expected_by`` (whose, remedy).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: cache not found", ["run the preprocess stage to build it"])
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: not a readable HDF5 cache (truncated or corrupted)",
                         [str(error), "delete it and rerun the preprocess stage"]) from None
    files = []
    try:
        attrs, labels, strings = _read_checked_metadata(path, handle, expected_params_hash, expected_by)
        sources = _open_sources(path, handle, attrs, strings[STRING_DATASETS.index("content_hash")], files)
        _check_source_layouts(path, handle, sources)
    except InputError:
        for f in files + [handle]:
            f.close()
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        for f in files + [handle]:
            f.close()
        raise InputError(f"{path}: corrupted cache", [f"{type(error).__name__}: {error}",
                                                      "delete it and rerun the preprocess stage"]) from None
    return Cache(path, handle, sources, files, attrs, labels, strings)


def check_built_with(path, dataset_options, remedy):
    """Raise InputError (see ``open_cache``) when the cache at ``path`` was built with other
    preprocessing or reading options than ``dataset_options`` (``config.dataset_config``) state.

    Training checks what it is handed: a cache built by hand with other options and put where
    the workflow looks for it would otherwise be trained on, under a run card stating the config's.
    """
    expected = params_hash(dataset_options["preprocess"], dataset_options["io"])
    open_cache(path, expected_params_hash=expected, expected_by=("the config's", remedy)).close()


def _read_checked_metadata(path, handle, expected_params_hash, expected_by):
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
        whose, remedy = expected_by
        raise InputError(f"{path}: built with other preprocessing parameters",
                         [f"cache params_hash {attrs['params_hash']} != {whose} {expected_params_hash}", remedy])
    n = handle["labels"].shape[0]
    lengths = {name: handle[name].shape[0] for name in names}
    problems += [f"dataset {name!r} has {m} rows, 'labels' has {n}" for name, m in lengths.items() if m != n]
    if attrs.get("manifest_rows") is not None and attrs.get("layout") != "part" and attrs["manifest_rows"] != n:
        problems.append(f"{n} rows, expected {attrs['manifest_rows']}")
    if problems:
        raise InputError(f"{path}: inconsistent cache", problems)
    labels = handle["labels"][:].astype(np.int64)
    classes = json.loads(attrs["classes"])
    # The parameters are what training records for predict and reads intensity handling from:
    # only the hash was compared with the config, so a changed value went through unnoticed.
    if config_hash(json.loads(attrs["params"])) != attrs["params_hash"]:
        raise InputError(f"{path}: corrupted cache", ["the preprocessing parameters do not match their recorded hash"])
    n_classes = len(classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"{path}: corrupted cache", [f"labels outside 0..{n_classes - 1}"])
    strings = tuple(list(handle[name].asstr()[:]) for name in STRING_DATASETS)
    digest = _part_digest(attrs["params_hash"], classes, labels, strings)
    if attrs.get("part_digest") != digest:
        raise InputError(f"{path}: corrupted cache", ["row metadata does not match the recorded digest"])
    return attrs, labels, strings


# Longest string attribute stored at fixed length; HDF5 keeps an attribute in its object's header,
# which holds 64 KiB. Longer ones (the block list of a part of thousands of blocks) stay variable.
_FIXED_ATTRIBUTE_BYTES = 32_768


def _write_attrs(f, attrs):
    """Set ``attrs`` on ``f``, text as fixed-length UTF-8 bytes (read back by ``_plain``).

    h5py writes ``str`` as a variable-length string in the file's global heap, and HDF5 loops for
    ever reading one whose heap entry a flipped bit damaged: ``open_cache`` hung instead of
    reporting the damage. A fixed-length value lies in the attribute itself.
    """
    for key, value in attrs.items():
        encoded = value.encode("utf-8") if isinstance(value, str) else None
        if encoded is not None and len(encoded) <= _FIXED_ATTRIBUTE_BYTES:
            f.attrs.create(key, np.bytes_(encoded))
        else:
            f.attrs[key] = value


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open_sources(path, handle, attrs, content_hashes, files):
    """The runs where a cache's images are stored (see :class:`Cache`); opened files go to ``files``.

    ``content_hashes`` are the cache's rows', checked against its digest: each run must point at
    block rows of the same content hashes.
    """
    problems, sources, opened = [], [], {}
    n_rows = len(content_hashes)
    if attrs.get("layout") != "virtual":
        sources = _stored_runs(path, handle, 0, problems, opened, content_hashes)
    else:
        offset = 0
        for record in json.loads(attrs["parts"]):
            part_path = path.parent / record["path"]
            if record["rows"] == 0:
                continue
            try:
                part = h5py.File(part_path, "r")
            except (OSError, FileNotFoundError) as error:
                problems.append(f"part {part_path}: {'missing' if not part_path.exists() else error}")
                continue
            opened[str(part_path.resolve())] = part
            if (_plain(part.attrs.get("part_digest")) != record["part_digest"] or "images" not in part
                    or part["images"].shape[0] != record["rows"]):
                problems.append(f"part {part_path}: is not the part this cache was merged from (rebuilt or replaced)")
                continue
            sources += _stored_runs(part_path, part, offset, problems, opened, content_hashes)
            offset += record["rows"]
        if not problems and offset != n_rows:
            problems.append(f"the parts hold {offset} rows, the cache {n_rows}")
    files += list(opened.values())
    if problems:
        raise InputError(f"{path}: incomplete cache",
                         problems + ["delete it and the part files beside it, and rerun the preprocess stage"])
    return sources


def _check_source_layouts(path, handle, sources):
    """Refuse stored images whose shape or dtype differs from the cache's ``images``.

    ``Cache.read_stored`` copies them into an array of that shape and dtype, which would fail
    inside NumPy (or h5py, or later TensorFlow) at the first read, naming no file. A merge
    refuses such parts; this catches files merged by an earlier version or put together by hand.
    """
    shape, dtype = handle["images"].shape[1:], handle["images"].dtype
    problems = list(dict.fromkeys(  # one line per file, not per run
        f"{dataset.file.filename}: images {dataset.shape[1:]} {dataset.dtype}, the cache's are {shape} {dtype}"
        for dataset, *_ in sources if (dataset.shape[1:], dataset.dtype) != (shape, dtype)))
    if problems:
        raise InputError(f"{path}: inconsistent cache", problems + [
            "its images differ in channels: set io.channels to rgb_to_grey or grey_to_rgb so that all images "
            "agree, delete the cache and rerun the preprocess stage"])


def _stored_runs(path, f, offset, problems, opened, content_hashes):
    """Runs (images, first row, first source row, rows) of part or cache file ``f``, shifted by ``offset``.

    A self-contained file stores its images itself; a block-backed part names its blocks
    (attribute ``blocks``) and maps its rows onto them (dataset ``image_runs``), which must land
    on block rows of the content hashes ``content_hashes`` gives its rows.
    """
    images = f["images"]
    if "image_runs" not in f:
        return [(images, offset, 0, images.shape[0])] if images.shape[0] else []
    blocks = []
    for record in json.loads(_plain(f.attrs["blocks"])):
        block_path = (Path(path).parent / record["file"]).resolve()
        block = opened.get(str(block_path))
        if block is None:
            try:
                block = opened[str(block_path)] = h5py.File(block_path, "r")
            except (OSError, FileNotFoundError) as error:
                problems.append(f"block {block_path}: {'missing' if not block_path.exists() else error}")
                blocks.append(None)
                continue
        if (_plain(block.attrs.get("block_id")) != record["block_id"] or "images" not in block
                or block["images"].shape[0] != record["rows"]):
            problems.append(f"block {block_path}: is not the block {path} was built with (rebuilt or replaced)")
            blocks.append(None)
            continue
        blocks.append(block)
    runs = f["image_runs"][:]
    expected_row = 0
    sources = []
    block_hashes = {}
    for row, block, source_row, n in runs.tolist():
        if row != expected_row or not 0 <= block < len(blocks) or n < 1:
            problems.append(f"{path}: corrupted image_runs at row {row}")
            break
        expected_row = row + n
        if blocks[block] is None:
            continue
        if source_row + n > blocks[block]["images"].shape[0]:
            problems.append(f"{path}: rows {row}..{row + n - 1} lie outside block {block}")
            continue
        # image_runs carries no checksum: a changed block or row number would hand out other images.
        stored = block_hashes.get(block)
        if stored is None:
            stored = block_hashes[block] = blocks[block]["content_hash"].asstr()[:]
        if list(stored[source_row:source_row + n]) != content_hashes[offset + row:offset + row + n]:
            problems.append(f"{path}: rows {row}..{row + n - 1} point at other images of block {block} "
                            "(corrupted image_runs)")
            continue
        sources.append((blocks[block]["images"], offset + row, source_row, n))
    if expected_row != images.shape[0] and not problems:
        problems.append(f"{path}: image_runs cover {expected_row} of {images.shape[0]} rows")
    return sources


# --- identity: what a cache holds, whatever its file's bytes and times ---------------------------------
def cache_params_hash(cache):
    """The parameter hash of an open cache (or of a stand-in with ``params``)."""
    value = getattr(cache, "params_hash", None)
    return value if isinstance(value, str) else config_hash(cache.params)


def rows_identity(cache, rows):
    """sha256 of the cache ``rows``: their positions, labels and content hashes."""
    digest = hashlib.sha256(np.asarray(rows, dtype="int64").tobytes())
    digest.update(np.asarray(cache.labels, dtype="int64")[rows].tobytes())
    digest.update("\n".join(str(cache.content_hashes[row]) for row in rows).encode())
    return digest.hexdigest()


def cache_identity(cache_path):
    """The cache's preprocessing and every row's sample id, label and image content: a cache
    rebuilt from the same images is the same cache, whatever its file's bytes and times."""
    with open_cache(cache_path) as cache:
        digest = hashlib.sha256("\n".join(map(str, cache.sample_ids)).encode())
        digest.update(rows_identity(cache, np.arange(len(cache))).encode())
        return [cache_params_hash(cache), digest.hexdigest()]

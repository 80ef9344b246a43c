"""Manifest validation: every problem of a manifest and its images, found before training starts.

:func:`validate_manifest` reads the manifest (user input, never modified), checks its columns
and fields, keeps every path inside the dataset root, decodes every image in parallel, and
checks labels, classes, duplicates and patients. :func:`write_validation_outputs` writes the
validated manifest (only when nothing is wrong) and the reports.

Row numbers: ``row`` is the 1-based number of a data row in the manifest; the header is row 0
and blank lines are not counted, so with one record per line row N is line N + 1 of the file.
Messages say "row N". Problems about the manifest as a whole have ``row = None``.

Privacy: the manifest's patient ids appear nowhere in the outputs or messages; only their salted
hash (:func:`medclassify.privacy.hash_patient`) does.
"""

import collections
import csv
import difflib
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import stat
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, atomic_write_json, atomic_write_text
from .config import with_section_defaults
from .errors import InputError, UsageError
from .content import is_constant_content
from .io import READ_ERROR_CODES, ReadError, content_hash, read_file_samples, resolve_io_options
from .privacy import DEFAULT_SALT, PUBLIC_SALT_WARNING, hash_patient, is_identifier_column
from .runlog import default_sigterm

REQUIRED_COLUMNS = ("path", "label", "patient", "modality")
GENERATED_COLUMNS = ("sample_id", "index", "content_hash", "source_spacing")
VALIDATED_COLUMNS = ("sample_id", "path", "index", "label", "patient", "modality", "content_hash", "source_spacing")
SPLIT_VALUES = ("train", "val", "test")

# Every problem code validation reports, with its usual severity ("policy": set by config;
# validation.strict makes every warning an error). Codes are stable: tests and users match them.
PROBLEM_CODES = {
    # the manifest as a whole (row None)
    "manifest_missing": "error", "manifest_unreadable": "error", "manifest_encoding": "error",
    "manifest_bom": "warning", "manifest_delimiter": "error", "manifest_empty": "error",
    "duplicate_column": "error", "missing_column": "error", "reserved_column": "error",
    "too_few_images": "error", "too_few_classes": "error", "malformed_manifest": "error",
    "label_case_variants": "error", "patient_id_in_path": "warning", "unnamed_column": "warning",
    # one row
    "malformed_row": "error", "empty_field": "error", "control_character": "error", "whitespace_in_field": "warning",
    "unknown_label": "error", "invalid_split": "error", "missing_split": "warning",
    "path_outside_root": "error", "missing_file": "error", "not_a_file": "error", "unreadable_file": "error",
    "duplicate_row": "error", "duplicate_path": "error", "duplicate_sample_id": "error",
    "duplicate_content_conflicting_labels": "error", "duplicate_content_across_patients": "warning",
    "duplicate_content": "warning", "mixed_label_patient": "policy",
    "extension_mismatch": "warning", "modality_mismatch": "warning", "implausible_dimensions": "warning",
    "implausible_channels": "warning", "constant_image": "warning", "unread_tiff_pages": "warning",
    "non_finite_pixels": "warning", "public_salt": "warning", "channels_mismatch": "error",
    "identifier_column": "warning",
    # decoding (medclassify.io.READ_ERROR_CODES)
    **{code: "error" for code in READ_ERROR_CODES},
}

# Row errors that validation.drop_invalid does not drop: a setting of the whole dataset, not a
# defect of the row (dropping a site's colour images would remove the site without a word).
NOT_DROPPED = {"channels_mismatch"}

# Spellings of the required columns seen in real manifests, for "did you mean" hints.
_COLUMN_SYNONYMS = {
    "path": ("filepath", "file", "filename", "image", "imagepath", "img", "imgpath", "imagefile",
             "file_name", "location", "dicompath", "niftipath"),
    "label": ("class", "classname", "target", "diagnosis", "labels", "category", "y", "finding", "outcome"),
    "patient": ("patientid", "subject", "subjectid", "case", "caseid", "pid", "patientname", "mrn", "participant"),
    "modality": ("mod", "imagingmodality", "imagetype", "scantype"),
}
# Values that mean "no value" in exported spreadsheets (pandas' defaults, case-insensitive).
_MISSING_TOKENS = {"", "nan", "na", "n/a", "null", "none", "#n/a", "<na>"}
# Manifest modality spellings and the DICOM Modality values they stand for.
_MODALITY_ALIASES = {
    "CT": {"CT"}, "MR": {"MR"}, "MRI": {"MR"}, "CR": {"CR", "DX"}, "DX": {"DX", "CR"},
    "XR": {"CR", "DX"}, "XRAY": {"CR", "DX"}, "X-RAY": {"CR", "DX"}, "MG": {"MG"},
    "MAMMOGRAPHY": {"MG"}, "US": {"US"}, "ULTRASOUND": {"US"}, "PT": {"PT"}, "PET": {"PT"},
    "NM": {"NM"}, "XA": {"XA"}, "RF": {"RF"}, "OT": {"OT"},
}
# Modalities whose images are grey; a colour image under them is suspicious (burnt-in overlays,
# screenshots, wrong file).
_GREY_MODALITIES = {"CT", "MR", "MRI", "CR", "DX", "XR", "XRAY", "X-RAY", "MG", "MAMMOGRAPHY", "PT", "PET", "NM", "XA", "RF"}
_MIN_SIDE = 8
_MAX_ASPECT = 20.0
_MAX_LISTED = 5


@dataclass
class Problem:
    """One problem: where (row, path), what (a stable ``code``), how bad, and a message."""

    row: int | None
    path: str | None
    code: str
    severity: str  # "error" or "warning"
    message: str

    def __str__(self):
        """``row 9 (images/a.png): file not found … [error missing_file]``."""
        where = "manifest" if self.row is None else f"row {self.row}"
        message = self.message
        if message.startswith(f"{where}: "):
            message = message[len(where) + 2:]
        elif message.startswith(f"{where} "):  # "row 4 has 5 fields": said once, not "row 4: row 4 has"
            message = message[len(where) + 1:]
        if self.path:
            where += f" ({self.path})"
        return f"{where}: {message} [{self.severity} {self.code}]"

    def to_dict(self):
        return asdict(self)


@dataclass
class ValidationResult:
    """What :func:`validate_manifest` found.

    ``table`` is the validated manifest (rows without errors; empty when the manifest could not
    be parsed), ``problems`` every problem, ``classes`` the class order, ``dropped`` the rows
    removed under ``drop_invalid`` with their reasons, ``ok`` whether the table may be used.
    """

    table: pd.DataFrame
    problems: list
    classes: list
    dropped: list
    ok: bool
    summary: dict
    manifest_path: str = ""
    root: str = ""
    timings: dict = field(default_factory=dict)
    named_files: list = field(default_factory=list)  # real paths of the files the rows name

    @property
    def errors(self):
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self):
        return [p for p in self.problems if p.severity == "warning"]


class ProblemCollector:
    """Collects problems in the order found.

    Public because :mod:`medclassify.predict` reads its manifests through
    :func:`read_manifest_rows` too, and needs one to receive their problems.
    """

    def __init__(self):
        self.problems = []

    def add(self, row, path, code, severity, message):
        self.problems.append(Problem(row, path, code, severity, message))


# --------------------------------------------------------------------------------------------
# Reading the manifest
# --------------------------------------------------------------------------------------------

def read_manifest_rows(manifest, problems, root=None):
    """Parse the manifest CSV: return ``(header, [(row_number, fields), ...])``.

    Encoding, BOM, delimiter and field-count problems go to ``problems``. On a fatal one the
    header is None, or, where it could be read, the rows are those that could be read (none when
    a column name repeats). ``root``, the folder the paths are relative to, lets a stray quote's
    swallowed rows be told from a note's lines by the files they name.
    """
    manifest = Path(manifest)
    try:
        raw = manifest.read_bytes()
    except FileNotFoundError:
        problems.add(None, str(manifest), "manifest_missing", "error", f"manifest {manifest} does not exist")
        return None, []
    except OSError as error:
        problems.add(None, str(manifest), "manifest_unreadable", "error", f"manifest cannot be read: {error.strerror}")
        return None, []
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        problems.add(None, None, "manifest_encoding", "error",
                     "the manifest is UTF-16 encoded; save it as UTF-8 CSV")
        return None, []
    if raw.startswith(b"\xef\xbb\xbf"):
        problems.add(None, None, "manifest_bom", "warning",
                     "the manifest starts with a UTF-8 byte-order mark (typical of Excel's 'CSV UTF-8'); "
                     "it was ignored, but save as plain UTF-8 to silence this warning")
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        problems.add(None, None, "manifest_encoding", "error",
                     f"the manifest is not valid UTF-8 (byte 0x{raw[error.start]:02X} on line {line}; "
                     "probably Latin-1/Windows-1252); save it as UTF-8 CSV")
        return None, []
    if not text.strip():
        problems.add(None, None, "manifest_empty", "error", "the manifest is empty (no header, no rows)")
        return None, []
    records, unreadable = _csv_records(text)
    if unreadable:
        problems.add(None, None, "malformed_manifest", "error", unreadable)
        if not records:
            return None, []
    if records[0][0] != records[0][1]:
        # A stray quote in the header: the rows up to its closing quote would become a column name
        # (and patient ids with it), without a word.
        problems.add(None, None, "malformed_manifest", "error",
                     f"the header (lines {records[0][0]}-{records[0][1]}) spans several lines: a quote in it is "
                     f"closed only on line {records[0][1]}; remove the stray quote")
        return None, []
    header = [name.strip() for name in records[0][2]]
    if len(header) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if delimiter in header[0]:
                problems.add(None, None, "manifest_delimiter", "error",
                             f"the manifest's fields are separated by {name}, not commas "
                             f"(header {header[0]!r}); export it as comma-separated CSV")
                return None, []
    n_fields = len(header)  # a row has as many, the unnamed columns' included
    named = list(range(n_fields))
    if "" in header:
        named = _named_columns(header, records, problems)
        header = [header[i] for i in named]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        # No rows (which of two columns of a name would a row's value be?), but the header, so that
        # the checks of the columns themselves (a required one missing) are listed in the same run.
        problems.add(None, None, "duplicate_column", "error", f"column(s) {duplicated} appear more than once")
        return header, []
    path_at = named[header.index("path")] if "path" in header else None
    rows, spanning = [], []
    for number, (first_line, last_line, record) in enumerate(records[1:], start=1):
        if all(not value.strip() for value in record):
            continue  # a blank spreadsheet line carries nothing
        if len(record) != n_fields:
            if first_line != last_line:
                # The lines after a stray quote were read into this row: dropping it as one
                # malformed row would silently drop every row it swallowed.
                problems.add(None, None, "malformed_manifest", "error",
                             f"row {number} (lines {first_line}-{last_line}) has {len(record)} fields, the header "
                             f"has {n_fields}: a quote opened on line {first_line} is closed only on line "
                             f"{last_line}, and the lines between were read as one value; remove the stray quote")
            else:
                path = record[path_at] if path_at is not None and path_at < len(record) else None
                problems.add(number, path, "malformed_row", "error",
                             f"row {number} has {len(record)} fields, the header has {n_fields} "
                             "(an unquoted comma in a value?)")
            continue
        if first_line != last_line:
            spanning.append((number, first_line, last_line, record))
        rows.append((number, dict(zip(header, (record[i] for i in named)))))
    swallowing = _rows_swallowing_rows(spanning, rows, header, named, path_at, n_fields, text, root)
    for number, first_line, last_line, column, line, shown in swallowing:
        problems.add(None, None, "malformed_manifest", "error",
                     f"row {number} (lines {first_line}-{last_line}): its {column!r} value holds the lines after its "
                     f"first (line {line}: {shown!r}): a stray quote in it is closed only on line {last_line}, and "
                     "the rows between were read as one value; remove the stray quote")
    swallowed = {number for number, *_ in swallowing}
    return header, [(number, row) for number, row in rows if number not in swallowed]


def _rows_swallowing_rows(spanning, rows, header, named, path_at, n_fields, text, root):
    """The rows among ``spanning`` (those read from several lines) that swallowed other rows.

    A stray quote closed by another stray quote further down gives a row of the right field count
    when both stand in one column: every line between vanishes into that column's value without a
    word. A value spanning lines is valid CSV in a free-text column (a note with a line break),
    never in a required one (a path, label, patient or modality): there it is taken as a stray
    quote. Otherwise a physical line of the row, read alone (its first with quotes as plain
    characters, as the stray one is), is taken as a swallowed row when it has the header's field
    count and a path other than the row's own that names a file under ``root`` or ends as the
    paths of the rows read normally do (``.png``, ``.dcm``…): a swallowed row may name a missing
    file, and a note's line does not read as a path. Labels and modalities tell nothing: a note
    may say "benign, US", and the swallowed rows may be the only ones of their label or modality.
    Returns ``(row number, first line, last line, column, line, text)`` tuples.
    """
    if not spanning:
        return []
    lines = io.StringIO(text, newline="").readlines()
    endings = {_path_ending(row.get("path", "")) for _, row in rows} - {""}

    def is_path(value):
        value = value.strip()
        if not value:
            return False
        if _path_ending(value) in endings:
            return True
        try:
            return root is not None and os.path.isfile(os.path.join(root, value))
        except (OSError, ValueError):
            return False

    found = []
    for number, first_line, last_line, record in spanning:
        positions = [i for i, value in enumerate(record) if "\n" in value or "\r" in value]
        columns = [header[named.index(i)] if i in named else f"column {i + 1}" for i in positions]
        required = [column for column in columns if column in REQUIRED_COLUMNS]
        if required:
            line = first_line + 1
            found.append((number, first_line, last_line, required[0], line, lines[line - 1].rstrip("\r\n")))
            continue
        own_path = record[path_at].strip() if path_at is not None else None
        for line in range(first_line, last_line + 1):
            physical = lines[line - 1].rstrip("\r\n")
            reader = csv.reader([physical], quoting=csv.QUOTE_NONE) if line == first_line else csv.reader([physical])
            fields = next(reader, [])
            swallowed = (path_at is not None and len(fields) == n_fields and fields[path_at].strip() != own_path
                         and is_path(fields[path_at]))
            if swallowed:
                found.append((number, first_line, last_line, columns[0], line, physical))
                break
    return found


def _path_ending(path):
    """A path's file ending in lower case (``.nii.gz`` whole), or "" for none."""
    name = os.path.basename(str(path).strip()).lower()
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return ""
    if suffix == "gz" and "." in stem:
        return "." + stem.rpartition(".")[2] + ".gz"
    return "." + suffix


def manifest_header(manifest):
    """The column names on ``manifest``'s first line; None where validation will refuse the header.

    Reads that line alone, so that the workflow can check a config against a manifest of a million
    rows each time it starts. None for a file that cannot be read or decoded, or whose header lacks
    a required column: validation reports those, with every other problem.
    """
    try:
        with open(manifest, "rb") as f:
            first_line = f.readline(1 << 20)  # up to b"\n": the whole start of a file ending lines with "\r"
    except OSError:
        return None
    try:
        text = first_line.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        header = [name.strip() for name in next(csv.reader(io.StringIO(text, newline="")), [])]
    except (UnicodeDecodeError, csv.Error):
        return None
    return header if all(column in header for column in REQUIRED_COLUMNS) else None


def _named_columns(header, records, problems):
    """The positions of the header's named columns, with one warning naming the others.

    Trailing commas give empty names (their repeats read as a duplicated column ''), and so does
    a spreadsheet's or pandas' index column; neither can be a column of the validated manifest.
    """
    unnamed = [i for i, name in enumerate(header) if not name]
    holding_values = [i for i in unnamed if any(len(r) == len(header) and r[i].strip() for _, _, r in records[1:])]
    shown = ", ".join(str(i + 1) for i in unnamed)
    which = "" if holding_values == unnamed else f" (column(s) {', '.join(str(i + 1) for i in holding_values)})"
    what = (f"hold values{which}, which were not kept (a spreadsheet's or pandas' index?)" if holding_values
            else "hold no values (trailing commas?)")
    problems.add(None, None, "unnamed_column", "warning",
                 f"column(s) {shown} of the header have no name and {what}; name or remove them")
    return [i for i, name in enumerate(header) if name]


def _csv_records(text):
    """``([(first_line, last_line, fields), ...], problem)`` of a CSV text, blank lines left out.

    ``problem`` (else None) says why the text cannot be read to its end: a quote that is never
    closed (the csv module would read the rest of the file into one value, and the rows in it would
    vanish without a word) or a field beyond the csv module's size limit. The records are then
    those before the one that cannot be read, so that their own problems are listed too.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    records, last_line = [], 0
    try:
        for record in reader:
            if record:
                records.append((last_line + 1, reader.line_num, record))
            last_line = reader.line_num
    except csv.Error as error:
        return records, f"line {last_line + 1} cannot be read ({error}); is a quote there never closed?"
    if records and records[-1][0] != records[-1][1] and _quote_left_open(text, records[-1][0]):
        return records[:-1], (f"the quote opened on line {records[-1][0]} is never closed: every line after it "
                              "was read as one value; remove the stray quote")
    return records, None


def _quote_left_open(text, first_line):
    """Whether the CSV record that starts on ``first_line`` (1-based) ends inside a quote at the end of the text."""
    tail = "".join(io.StringIO(text, newline="").readlines()[first_line - 1:])
    try:
        for _ in csv.reader(io.StringIO(tail, newline=""), strict=True):
            pass
    except csv.Error as error:
        return "unexpected end of data" in str(error)
    return False


def column_hint(missing, header):
    """A "did you mean" hint for a missing required column, or an empty string."""
    def squash(name):
        return "".join(ch for ch in name.lower() if ch.isalnum())

    candidates = {squash(name): name for name in header}
    for spelling in (missing,) + _COLUMN_SYNONYMS.get(missing, ()):
        if squash(spelling) in candidates:
            return f"; did you mean {candidates[squash(spelling)]!r}? rename it to {missing!r}"
    close = difflib.get_close_matches(missing, [name.lower() for name in header], n=1, cutoff=0.75)
    if close:
        original = next(name for name in header if name.lower() == close[0])
        return f"; did you mean {original!r}? rename it to {missing!r}"
    return ""


def _is_missing(value):
    return value is None or value.strip().lower() in _MISSING_TOKENS


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


def _missing_path_hint(relative, root_real):
    """Why a path that is not there may have been meant: backslashes, or spaces around it that do match."""
    if "\\" in relative:
        return " (the path contains backslashes; use '/' as separator)"
    if relative != relative.strip() and os.path.exists(os.path.join(root_real, relative.strip())):
        return f" (it has leading/trailing spaces; {relative.strip()!r} exists)"
    return ""


def resolve_manifest_path(relative, root_real):
    """Return ``(absolute path, None)`` or ``(None, (code, message))`` for a manifest path.

    ``root_real`` is the dataset root with symbolic links resolved. Plain string operations:
    this runs once per row, and pathlib would be several times slower on large manifests.
    """
    if relative.startswith(("/", "\\", "~")) or _WINDOWS_ABSOLUTE.match(relative):
        return None, ("path_outside_root", "absolute path; paths must be relative to the dataset root")
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(("../", "..\\")):
        return None, ("path_outside_root", "'..' leads outside the dataset root")
    root_real = str(root_real)
    candidate = os.path.join(root_real, relative)
    real = os.path.realpath(candidate)
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        return None, ("path_outside_root", "a symbolic link leads outside the dataset root")
    try:
        mode = os.stat(candidate).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None, ("missing_file", f"file not found under the dataset root{_missing_path_hint(relative, root_real)}")
    except OSError as error:
        return None, ("unreadable_file", f"file cannot be accessed ({error.strerror})")
    if not stat.S_ISREG(mode):
        return None, ("not_a_file", "path is a folder or a special file, not an image file")
    return candidate, None


# --------------------------------------------------------------------------------------------
# Decoding (in worker processes)
# --------------------------------------------------------------------------------------------

def inspect_image_file(path, io_options):
    """Decode every configured sample of one file; return a small picklable summary.

    ``{"ok": True, "samples": [{index, content_hash, shape, dtype, format, modality, colour,
    constant, non_finite, n_pixels, extension_mismatch, original_shape, pages, spacing}]}`` or
    ``{"ok": False, "code", "message"}``.
    """
    try:
        samples = read_file_samples(path, io_options)
    except ReadError as error:
        return {"ok": False, "code": error.code, "message": error.message}
    except MemoryError:
        return {"ok": False, "code": "too_many_pixels", "message": "out of memory while decoding"}
    except Exception as error:  # a reader bug or an exotic file must not abort the whole validation
        return {"ok": False, "code": "undecodable", "message": f"unexpected {type(error).__name__} while decoding"}
    summaries = []
    for index, sample in samples:
        meta = sample.meta
        summaries.append({
            "index": index,
            "content_hash": content_hash(sample.pixels, meta.get("constant")),
            "shape": list(sample.pixels.shape),
            "dtype": str(sample.pixels.dtype),
            "format": meta.get("format"),
            "modality": meta.get("modality"),
            "colour": meta.get("colour", False),
            "constant": meta.get("constant", False),
            "non_finite": meta.get("non_finite", 0),
            "n_pixels": int(sample.pixels.size),
            "extension_mismatch": meta.get("extension_mismatch", False),
            "original_shape": meta.get("original_shape"),
            "pages": meta.get("pages"),  # TIFF only: the reader reads the first page of these
            "spacing": spacing_text(meta.get("spacing")),
        })
    return {"ok": True, "samples": summaries}


def spacing_text(spacing):
    """A reader's pixel spacing as the validated manifest's ``source_spacing``: "row column", or "".

    Empty (unknown) unless the reader gives at least two numbers, both finite; the first two
    are the spacing between rows and between columns. ``repr`` keeps every float exact.
    """
    try:
        numbers = [float(value) for value in spacing][:2]
    except (TypeError, ValueError):
        return ""
    if len(numbers) < 2 or not all(math.isfinite(number) for number in numbers):
        return ""
    return f"{numbers[0]!r} {numbers[1]!r}"


def _inspect_task(task):
    path, io_options = task
    return inspect_image_file(path, io_options)


def decode_files(paths, io_options, threads=1):
    """:func:`inspect_image_file` for each path, over ``threads`` workers; results in order.

    Workers are forked processes. When this process runs other threads, forking is unsafe (a
    lock held by another thread stays locked in the child) and spawn/forkserver would re-run an
    unguarded ``__main__`` such as a Snakemake script; decoding then uses threads instead (Pillow,
    zlib and NumPy release the GIL for most of the work).
    """
    tasks = [(str(path), io_options) for path in paths]
    workers = max(1, min(int(threads or 1), len(tasks)))
    if workers == 1:
        return [_inspect_task(task) for task in tasks]
    chunksize = max(1, min(256, len(tasks) // (workers * 8)))
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=default_sigterm) as pool:
            return list(pool.map(_inspect_task, tasks, chunksize=chunksize))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_inspect_task, tasks))


# Bump when inspect_image_file's output or a reader's decoding changes: old caches are ignored.
DECODE_CACHE_VERSION = 12


def _file_key(path):
    """Identity of a file's current content: real path, size, modification time, inode and change time.

    The change time too: an image rewritten in place with its size and modification time kept
    (``touch -r``, a tool restoring times) kept its old decoding, and so its old content hash,
    even through a forced validation, and the cache then reused the old pixels. No user tool sets
    the change time; a rename or chmod also changes it, which costs only a decoding.
    """
    try:
        info = os.stat(path)
    except OSError:
        return f"{path}|unreadable|{time.time_ns()}"  # never matches: the file is decoded (and fails)
    return f"{os.path.realpath(path)}|{info.st_size}|{info.st_mtime_ns}|{info.st_ino}|{info.st_ctime_ns}"


def decode_with_cache(paths, io_options, threads, cache_path=None):
    """:func:`decode_files` reusing the results stored in ``cache_path`` for unchanged files.

    Returns ``({path: result}, number of files actually decoded)``.
    """
    if cache_path is None:
        return dict(zip(paths, decode_files(paths, io_options, threads))), len(paths)
    from . import __version__

    stamp = {"version": DECODE_CACHE_VERSION, "library": __version__,
             "io_options": json.dumps(io_options, sort_keys=True)}
    stored = {}
    try:
        with open(cache_path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        content = None  # no cache yet: decode everything
    except (OSError, ValueError):
        content = "not a decode cache"
    if content is not None and not (isinstance(content, dict) and {"stamp", "entries"} <= content.keys()):
        # Rewriting it would destroy whatever the path names: a mistyped --decode-cache naming the
        # manifest or an image was overwritten, and validation still passed (it had read them first).
        raise UsageError(f"refusing to overwrite {cache_path} as the decode cache: it exists and is not one "
                         "(a JSON file that validation wrote); name another file, or delete it")
    if content is not None and content["stamp"] == stamp:
        stored = content["entries"]
    keys = {path: _file_key(path) for path in paths}
    missing = [path for path in paths if keys[path] not in stored]
    fresh = dict(zip(missing, decode_files(missing, io_options, threads)))
    results = {path: fresh[path] if path in fresh else stored[keys[path]] for path in paths}
    # One line: read by this function alone, and 160,000 indented entries took 1.1 GB to write.
    atomic_write_json(cache_path, {"stamp": stamp, "entries": {keys[p]: results[p] for p in paths}}, indent=None)
    return results, len(missing)


def image_files_stamp(manifest, root):
    """A digest of the name, size and modification time of every file that ``manifest`` names.

    The workflow gives it to rule validate_manifest as a parameter: Snakemake reruns a job whose
    parameters changed, so an image replaced, re-exported or edited in place under an unchanged
    manifest reruns validation (which decodes only that file again) and what follows, where the
    manifest's own time shows nothing. Sizes and times, not contents: reading every image at
    each planning would not scale, so a file touched or copied without its times counts as
    changed. The inode is left out, so that ``cp -p`` and ``rsync -a`` copies keep the stamp.

    Never raises: a manifest or file that cannot be read gets a stamp of its own, and
    validation reports the problem with its row.
    """
    header, rows = read_manifest_rows(manifest, ProblemCollector())
    if header is None or "path" not in header:
        return "unreadable manifest"
    return files_stamp((fields["path"] for _, fields in rows), os.path.realpath(root))


def files_stamp(names, root=""):
    """A digest of the name, size and modification time of each file ``names`` lists (under ``root``).

    Never raises: a file that is missing or cannot be read (or a name with a NUL byte) enters
    the digest as such.
    """
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        try:
            info = os.stat(os.path.join(root, name))
            entry = f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n"
        except (OSError, ValueError):
            entry = f"{name}\0-\n"
        digest.update(entry.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def validate_manifest(manifest, root, *, io_options, validation_options, labels=None, salt, threads=1,
                      decode_cache=None):
    """Check a manifest and every image it names; return a :class:`ValidationResult`.

    No input is modified. See the module docstring for row numbers. ``decode_cache``, a JSON
    file path (optional), keeps each file's decoding result keyed by its path, size, mtime and
    inode and by the io options, so revalidating a grown manifest decodes only new or changed
    files; it is rewritten atomically with the entries of this manifest only.
    """
    repeated = sorted({label for label in labels or [] if list(labels).count(label) > 1})
    if repeated:
        # Each label is a class index: a repeat would add an empty class and move the images of
        # its name to the last index.
        raise UsageError(f"labels {list(labels)} name {', '.join(map(repr, repeated))} more than once")
    started = time.perf_counter()
    options = with_section_defaults("validation", validation_options or {})
    io_options = resolve_io_options(io_options)
    problems = ProblemCollector()
    root_real = Path(os.path.realpath(root))
    header, rows = read_manifest_rows(manifest, problems, root=root_real)

    def finish(records, extra_columns, timings):
        return _finish(manifest, root_real, problems, records, extra_columns, options, labels,
                       threads, started, timings)

    if header is None:
        return finish([], [], {})
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    for name in missing:
        problems.add(None, None, "missing_column", "error",
                     f"required column {name!r} is missing{column_hint(name, header)} "
                     f"(required: {', '.join(REQUIRED_COLUMNS)})")
    reserved = [name for name in GENERATED_COLUMNS if name in header]
    for name in reserved:
        problems.add(None, None, "reserved_column", "error",
                     f"column {name!r} is written by validation; rename the manifest's column")
    if missing or reserved:
        return finish([], [], {})
    if not rows and not any(p.code in ("malformed_row", "malformed_manifest", "duplicate_column")
                            for p in problems.problems):
        problems.add(None, None, "manifest_empty", "error", "the manifest has a header but no rows")
    # split first, then the other extra columns in manifest order (the validated-manifest format).
    extra_columns = (["split"] if "split" in header else []) + [
        name for name in header if name not in REQUIRED_COLUMNS and name != "split"]
    extra_columns = _without_identifier_columns(extra_columns, rows, problems)

    if salt == DEFAULT_SALT:
        problems.add(None, None, "public_salt", "warning", PUBLIC_SALT_WARNING)
    records = _check_fields(rows, labels, salt, problems, root_real)
    _check_duplicate_paths(records, problems)
    t_decode = time.perf_counter()
    unique_files = list(dict.fromkeys(r["file"] for r in records if r["file"] is not None and not r["duplicate"]))
    decoded, n_decoded = decode_with_cache(unique_files, io_options, threads, decode_cache)
    decode_seconds = time.perf_counter() - t_decode
    _check_images(records, decoded, problems)
    _check_duplicate_content(records, problems)
    _check_sample_ids(records, problems)
    _check_patients(records, options["mixed_label_patients"], problems)
    _check_channel_counts(records, io_options, problems)  # last: it counts only rows without errors
    return finish(records, extra_columns,
                  {"decode_seconds": round(decode_seconds, 3), "n_files": len(unique_files),
                   "n_files_decoded": n_decoded})


def _without_identifier_columns(columns, rows, problems):
    """``columns`` less those that identify patients, each left out with a warning.

    Extra columns are copied into the validated manifest, where patients appear only as salted
    hashes: a ``PatientID`` or ``mrn`` column, or any column repeating the patient field, would
    undo the hash in every output that copies the manifest. Known by name (``privacy.is_identifier_column``)
    or by value: equal to the row's patient field wherever it is filled, with two values at least.
    """
    kept = []
    patients = [fields.get("patient", "").strip() for _, fields in rows]
    for name in columns:
        if name == "split":
            kept.append(name)
            continue
        values = [fields.get(name, "").strip() for _, fields in rows]
        # Blanks allowed (an MRN missing for some rows is still an MRN column), but two values at
        # least: a sparse column whose one value happens to equal a patient id is no copy of it.
        filled = [(value, patient) for value, patient in zip(values, patients) if value]
        copies_patient = len({value for value, _ in filled}) > 1 and all(value == patient for value, patient in filled)
        if is_identifier_column(name):
            why = "names an identifying value"
        elif copies_patient:
            why = "repeats the patient column"
        else:
            kept.append(name)
            continue
        problems.add(None, None, "identifier_column", "warning",
                     f"column {name!r} {why}: left out of the validated manifest, which holds patients only as "
                     "salted hashes")
    return kept


def _check_fields(rows, labels, salt, problems, root_real):
    """Field-level checks; return one record per row."""
    allowed = list(labels) if labels else None
    records = []
    rows_without_split = []
    for number, fields in rows:
        path_text = fields["path"]
        record = {"row": number, "fields": fields, "path": path_text.strip() and path_text,
                  "file": None, "duplicate": False, "samples": [], "patient_hash": None}
        values = {}
        for column in REQUIRED_COLUMNS:
            value = fields[column]
            configured = column == "label" and allowed is not None and value.strip() in allowed
            if _is_missing(value) and not configured:  # a configured label "none" is a label
                shown = "empty" if not value.strip() else f"{value.strip()!r}, a missing-value marker"
                if column == "label" and value.strip():
                    shown += " (if it names a class, list the classes in the dataset's labels)"
                problems.add(number, path_text or None, "empty_field", "error",
                             f"row {number}: {column} is {shown}")
                values[column] = None
                continue
            if _has_control_character(value):
                problems.add(number, path_text or None, "control_character", "error",
                             f"row {number}: {_field(column, value)} contains a control character")
                values[column] = None
                continue
            if column != "path" and value != value.strip():
                problems.add(number, path_text, "whitespace_in_field", "warning",
                             f"row {number}: {_field(column, value.strip())} has leading/trailing spaces; "
                             "they were removed")
            values[column] = value if column == "path" else value.strip()
        record["label"], record["modality"] = values["label"], values["modality"]
        if values["patient"] is not None:
            record["patient_hash"] = hash_patient(values["patient"], salt)
        record["raw_patient"] = values["patient"]
        if allowed is not None and record["label"] is not None and record["label"] not in allowed:
            problems.add(number, path_text, "unknown_label", "error",
                         f"row {number}: label {record['label']!r} is not one of the configured labels "
                         f"{allowed}{_label_hint(record['label'], allowed)}")
        if "split" in fields:
            split = fields["split"].strip()
            if _is_missing(split):
                rows_without_split.append((number, path_text))
            elif split not in SPLIT_VALUES:
                problems.add(number, path_text, "invalid_split", "error",
                             f"row {number}: split {split!r} is not one of {list(SPLIT_VALUES)}")
        if values["path"] is not None:
            resolved, failure = resolve_manifest_path(values["path"], root_real)
            if failure:
                code, message = failure
                problems.add(number, path_text, code, "error", f"row {number}: {message}")
            record["file"] = resolved
        records.append(record)
    if allowed is None:
        _check_label_spellings(records, problems)
    _check_patient_ids_in_paths(records, problems)
    if len(rows_without_split) < len(records):  # an entirely empty split column is simply unused
        for number, path_text in rows_without_split:
            problems.add(number, path_text, "missing_split", "warning",
                         f"row {number}: the split column is empty here but not in other rows "
                         "(split.method: predefined needs every row's split)")
    return records


def _check_label_spellings(records, problems):
    """Labels that differ only in case, which would be separate classes: one class spelt two ways.

    Only without configured labels, which name every class exactly (unknown_label hints there).
    """
    rows_by_label = collections.defaultdict(list)
    for record in records:
        if record["label"] is not None:
            rows_by_label[record["label"]].append(record["row"])
    spellings = collections.defaultdict(list)
    for label in rows_by_label:
        spellings[label.casefold()].append(label)
    for variants in spellings.values():
        if len(variants) > 1:
            listed = "; ".join(f"{label!r} in {_rows_text(rows_by_label[label])}" for label in sorted(variants))
            problems.add(None, None, "label_case_variants", "error",
                         f"labels that differ only in case would be {len(variants)} classes: {listed}; "
                         "write each class one way, or set the dataset's labels")


def _check_patient_ids_in_paths(records, problems):
    """Rows whose path holds their raw patient id as a whole word (``patient00001/view1.png``).

    Paths reach results/ as sample ids, beside the salted hash of that id: the pseudonym would be
    undone. One warning for the manifest; the id itself is never written.
    """
    rows = [r["row"] for r in records if r["raw_patient"] and r["path"]
            and _path_names_patient(r["path"].casefold(), r["raw_patient"].casefold())]
    if rows:
        problems.add(None, None, "patient_id_in_path", "warning",
                     f"the raw patient id is part of the image path in {_rows_text(rows)}: paths reach results/ "
                     "as sample ids, next to the salted hash of the id, which undoes it; rename those files "
                     "or folders")


def _path_names_patient(path, patient_id):
    """Whether ``path`` names ``patient_id``: a folder or the file's stem is the id, or the id is a
    word within one, if long enough to be there by more than chance ("1" is in "img_1.png" and
    "12" in "2019-03-12" by coincidence; a medical record number of digits is longer)."""
    parts = path.split("/")
    if patient_id in parts[:-1] or patient_id == parts[-1].rsplit(".", 1)[0]:
        return True
    telling = len(patient_id) >= 5 if patient_id.isdigit() else len(patient_id) >= 3
    return telling and _holds_word(path, patient_id)


def _holds_word(text, word):
    if word not in text:  # most rows: no regular expression
        return False
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text) is not None


def _rows_text(numbers):
    more = f" and {len(numbers) - _MAX_LISTED} more" if len(numbers) > _MAX_LISTED else ""
    return f"row{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers[:_MAX_LISTED]))}{more}"


def _field(column, value):
    """How a message names a field: with its value, except a patient id, which never appears."""
    return "the patient id" if column == "patient" else f"{column} {value!r}"


def _has_control_character(value):
    # Tabs and newlines inside a quoted CSV field included: they break every report table.
    return any(ord(character) < 32 or ord(character) == 127 for character in value.strip())


def _label_hint(label, allowed):
    folded = {name.lower(): name for name in allowed}
    if label.lower() in folded:
        return f"; did you mean {folded[label.lower()]!r}? (labels are case-sensitive)"
    close = difflib.get_close_matches(label, allowed, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_duplicate_paths(records, problems):
    """The same file twice: identical rows are duplicates; differing rows conflict."""
    by_file = collections.defaultdict(list)
    for record in records:
        if record["file"] is not None:
            by_file[os.path.realpath(record["file"])].append(record)
    for group in by_file.values():
        if len(group) < 2:
            continue
        first = group[0]
        key = lambda r: (r["label"], r["raw_patient"], r["modality"],
                         # Spaces around a value are warned of apart, and make no other row.
                         tuple(sorted((k, (v or "").strip()) for k, v in r["fields"].items() if k != "path")))
        if all(key(r) == key(first) for r in group):
            for record in group[1:]:
                record["duplicate"] = True
                problems.add(record["row"], record["path"], "duplicate_row", "error",
                             f"row {record['row']} repeats row {first['row']} (same file, same fields)")
        else:
            numbers = ", ".join(str(r["row"]) for r in group)
            for record in group[1:]:
                record["duplicate"] = True
            for record in group:
                problems.add(record["row"], record["path"], "duplicate_path", "error",
                             f"rows {numbers} name the same file with different fields (label, patient or other)")


def unread_tiff_pages_message(pages):
    """What the ``unread_tiff_pages`` warning says of a file of ``pages`` pages; None when none went unread.

    TIFF pages are not selectable samples like DICOM frames: the reader reads the first page and
    counts them all in ``meta["pages"]`` (None for other formats). Validation and predict both warn
    with this, so that they agree on which files lose pages.
    """
    if (pages or 1) <= 1:
        return None
    return f"the TIFF holds {pages} pages; only the first was read"


def _check_images(records, decoded, problems):
    """Decoding failures and implausible images; attach decoded samples to records."""
    for record in records:
        if record["file"] is None or record["duplicate"]:
            continue
        result = decoded[record["file"]]
        number, path = record["row"], record["path"]
        if not result["ok"]:
            problems.add(number, path, result["code"], "error", f"row {number}: {result['message']}")
            continue
        record["samples"] = result["samples"]
        modality = (record["modality"] or "").upper()
        first = result["samples"][0]
        unread_pages = unread_tiff_pages_message(first["pages"])
        if unread_pages:
            problems.add(number, path, "unread_tiff_pages", "warning",
                         f"row {number}: {unread_pages} (save each page you need as its own file and list it in the manifest)")
        if first["extension_mismatch"]:
            problems.add(number, path, "extension_mismatch", "warning",
                         f"row {number}: the file is a {first['format'].upper()} image despite its name; it was read as such")
        header_modality = first["modality"]
        expected = _MODALITY_ALIASES.get(modality)
        if header_modality and expected and header_modality.upper() not in expected:
            problems.add(number, path, "modality_mismatch", "warning",
                         f"row {number}: the manifest says {record['modality']!r}, the DICOM header says {header_modality!r}")
        height, width = first["shape"][:2]
        if min(height, width) < _MIN_SIDE or max(height, width) / max(1, min(height, width)) > _MAX_ASPECT:
            problems.add(number, path, "implausible_dimensions", "warning",
                         f"row {number}: a {width}x{height} image is implausible for classification "
                         f"(side under {_MIN_SIDE} px or aspect over {_MAX_ASPECT:g}:1)")
        if modality in _GREY_MODALITIES and any(s["colour"] for s in result["samples"]):
            problems.add(number, path, "implausible_channels", "warning",
                         f"row {number}: a colour image for modality {record['modality']!r}, whose images are grey "
                         "(burnt-in annotations or a screenshot?)")
        blank = sum(s["constant"] for s in result["samples"])
        if blank == len(result["samples"]):
            problems.add(number, path, "constant_image", "warning",
                         f"row {number}: every pixel has the same value (a blank or failed export?)")
        elif blank:
            problems.add(number, path, "constant_image", "warning",
                         f"row {number}: {blank} of its {len(result['samples'])} slices or frames are blank (every "
                         "pixel the same value), and are trained on under the row's label; io.nifti_slice or "
                         "io.dicom_frame can name the slices to keep")
        non_finite, n_pixels = (sum(s[key] for s in result["samples"]) for key in ("non_finite", "n_pixels"))
        if non_finite:
            problems.add(number, path, "non_finite_pixels", "warning",
                         f"row {number}: {non_finite} of {n_pixels} pixel values are NaN or infinite; "
                         "preprocessing replaces them with the image's lowest finite value (0 when none is finite)")


def _check_channel_counts(records, io_options, problems):
    """Rows whose images have another channel count, under ``io.channels``, than most of the
    manifest's: the cache holds one (H, W, C), and the preprocess stage would refuse them after
    validation had passed (a colour PNG among grey ones, under the default keep_grey).

    Rows with errors of their own are left out, of the count and of the check: under drop_invalid
    they go anyway, and five invalid colour rows made four valid grey ones "the odd ones out".
    """
    erroneous = {p.row for p in problems.problems if p.severity == "error" and p.row is not None}
    channels_of = {}
    for record in records:
        if record["row"] in erroneous:
            continue
        counts = {len(s["shape"]) == 3 and s["shape"][2] or 1 for s in record["samples"]}
        if counts:
            channels_of[record["row"]] = (record, counts)
    totals = collections.Counter(c for _, counts in channels_of.values() for c in counts)
    if len(totals) < 2:
        return
    usual = max(sorted(totals), key=totals.__getitem__)
    policy = resolve_io_options(io_options)["channels"]
    for number, (record, counts) in channels_of.items():
        other = sorted(counts - {usual})
        if other:
            problems.add(number, record["path"], "channels_mismatch", "error",
                         f"row {number}: {other[0]} channel(s), where {totals[usual]} of the manifest's images have "
                         f"{usual} under io.channels: {policy}; the cache holds one channel count: set io.channels "
                         "to rgb_to_grey or grey_to_rgb, or convert the image")


def _check_duplicate_content(records, problems):
    """Identical decoded pixels in different rows: conflicting labels are errors, else warnings.

    Blank images (every pixel equal) are left out: the edge slices of volumes under
    ``nifti_slice: all`` are alike in every scan, and said nothing about the scans.
    """
    by_hash = collections.defaultdict(dict)
    for record in records:
        for sample in record["samples"]:
            if not is_constant_content(sample["content_hash"]):
                by_hash[sample["content_hash"]].setdefault(record["row"], record)
    for group in by_hash.values():
        if len(group) < 2:
            continue
        members = list(group.values())
        labels = {r["label"] for r in members}
        patients = {r["patient_hash"] for r in members}
        if len(labels) > 1:
            code, severity, why = "duplicate_content_conflicting_labels", "error", "under different labels"
        elif len(patients) > 1:
            code, severity, why = ("duplicate_content_across_patients", "warning",
                                   "under different patients (leakage risk across splits)")
        else:
            code, severity, why = "duplicate_content", "warning", "(the image is counted twice)"
        for record in members:
            others = [r for r in members if r is not record]
            listed = ", ".join(f"row {r['row']} ({r['path']}, label {r['label']!r}, patient {r['patient_hash']})"
                               for r in others[:_MAX_LISTED])
            more = f" and {len(others) - _MAX_LISTED} more" if len(others) > _MAX_LISTED else ""
            problems.add(record["row"], record["path"], code, severity,
                         f"row {record['row']}: same pixels as {listed}{more} {why}")


def _check_sample_ids(records, problems):
    """Rows whose sample id another row's sample has: a file named like a frame of another
    (``scan.dcm#1`` beside a multi-frame ``scan.dcm``). Splits and predictions key on the id."""
    first_row = {}
    for record in records:
        for sample_id in _sample_ids(record):
            if first_row.setdefault(sample_id, record["row"]) != record["row"]:
                problems.add(record["row"], record["path"], "duplicate_sample_id", "error",
                             f"row {record['row']}: its sample id {sample_id!r} is also one of row "
                             f"{first_row[sample_id]}'s (a frame or slice of a file is named path#index); "
                             "rename the file")


def _sample_ids(record):
    """The validated manifest's sample_id of each sample of a record (:func:`sample_id_of`)."""
    return [sample_id_of(record["path"], sample["index"], len(record["samples"])) for sample in record["samples"]]


def sample_id_of(path, index, n_samples):
    """The sample id of sample ``index`` of the ``n_samples`` a file gives: its path when it gives
    one (also one chosen frame or slice), else path#index. Validation and predict name samples so."""
    return path if n_samples == 1 else f"{path}#{index}"


def _check_patients(records, policy, problems):
    """A patient whose rows carry different labels (per validation.mixed_label_patients)."""
    if policy == "ignore":
        return
    by_patient = collections.defaultdict(list)
    for record in records:
        if record["patient_hash"] is not None and record["label"] is not None:
            by_patient[record["patient_hash"]].append(record)
    for patient, group in by_patient.items():
        labels = sorted({r["label"] for r in group})
        if len(labels) < 2:
            continue
        for record in group:
            problems.add(record["row"], record["path"], "mixed_label_patient", policy,
                         f"row {record['row']}: patient {patient} has images with labels {labels} "
                         "(set validation.mixed_label_patients to 'ignore' if that is expected)")


def _finish(manifest, root_real, problems, records, extra_columns, options, labels, threads, started, timings):
    """Apply strict and drop_invalid, check classes on what remains, build the table."""
    all_problems = problems.problems
    if options["strict"]:
        for problem in all_problems:
            if problem.severity == "warning":
                problem.severity = "error"
                problem.message += " (an error under validation.strict)"
    error_rows = collections.defaultdict(list)
    for problem in all_problems:
        if problem.severity == "error" and problem.row is not None:
            error_rows[problem.row].append(problem)
    row_path = {r["row"]: r["path"] for r in records}
    # malformed rows have no record; they still count as rows with errors.
    dropped = []
    if options["drop_invalid"]:
        for number in sorted(error_rows):
            if any(p.code in NOT_DROPPED for p in error_rows[number]):
                continue
            dropped.append({
                "row": number,
                "path": row_path.get(number) or next((p.path for p in error_rows[number] if p.path), None),
                "codes": sorted({p.code for p in error_rows[number]}),
                "reasons": [p.message for p in error_rows[number]],
            })
    kept = [r for r in records if r["row"] not in error_rows]
    class_counts = collections.Counter()
    for record in kept:
        class_counts[record["label"]] += len(record["samples"])
    # Every label seen, rows with errors included: a class all of whose rows drop_invalid dropped
    # must fail as a class without images, not vanish and leave a classifier of fewer classes.
    classes = list(labels) if labels else sorted({r["label"] for r in records if r["label"]})
    # Rows with errors count apart: "class 'a' has 0 image(s)" for a class all of whose rows are
    # named above as erroneous would send the user looking for missing rows.
    in_error_rows = collections.Counter()
    for record in records:
        if record["row"] in error_rows:
            in_error_rows[record["label"]] += max(len(record["samples"]), 1)
    if records or not any(p.row is None for p in all_problems):
        _check_classes(classes, class_counts, options, problems, in_error_rows)
    table = _build_table(kept, extra_columns)
    remaining_errors = [p for p in all_problems if p.severity == "error"
                        and (p.row is None or not options["drop_invalid"] or p.code in NOT_DROPPED)]
    ok = not remaining_errors and len(table) > 0
    elapsed = time.perf_counter() - started
    n_samples = sum(len(r["samples"]) for r in records)
    summary = {
        "ok": ok,
        "n_rows": len(records) + sum(1 for p in all_problems if p.code == "malformed_row"),
        "n_rows_valid": len(kept),
        "n_rows_dropped": len(dropped),
        "n_samples": len(table),
        "n_samples_decoded": n_samples,
        "n_patients": int(table["patient"].nunique()) if len(table) else 0,
        "n_errors": sum(p.severity == "error" for p in all_problems),
        "n_warnings": sum(p.severity == "warning" for p in all_problems),
        "class_counts": {name: int(class_counts.get(name, 0)) for name in classes},
        "modalities": {str(k): int(v) for k, v in table["modality"].value_counts().sort_index().items()} if len(table) else {},
        "problem_counts": dict(sorted(collections.Counter(p.code for p in all_problems).items())),
        "labels_configured": labels is not None,
        "threads": int(threads or 1),
        "seconds": round(elapsed, 3),
        "images_per_second": round(n_samples / elapsed, 1) if elapsed > 0 else None,
    }
    all_problems.sort(key=lambda p: (p.row is not None, p.row or 0))
    return ValidationResult(table=table, problems=all_problems, classes=classes, dropped=dropped, ok=ok,
                            summary=summary, manifest_path=str(manifest), root=str(root_real), timings=timings,
                            named_files=sorted({os.path.realpath(r["file"]) for r in records if r["file"] is not None}))


def _check_classes(classes, class_counts, options, problems, in_error_rows):
    def besides(count):
        return f" ({count} more in rows with errors)" if count else ""

    present = [name for name in classes if class_counts.get(name, 0) > 0]
    for name in classes:
        count = class_counts.get(name, 0)
        if count < options["min_images_per_class"]:
            problems.add(None, None, "too_few_images", "error",
                         f"class {name!r} has {count} image(s){besides(in_error_rows.get(name, 0))}; "
                         f"validation.min_images_per_class is {options['min_images_per_class']}")
    if len(present) < options["min_classes"]:
        erroneous = sum(in_error_rows.values())
        problems.add(None, None, "too_few_classes", "error",
                     f"{len(present)} class(es) with images ({present}){besides(erroneous)}; a classifier needs "
                     f"at least validation.min_classes = {options['min_classes']}")


def _build_table(records, extra_columns):
    """The validated manifest: one row per sample, in manifest order."""
    rows = []
    for record in records:
        for sample, sample_id in zip(record["samples"], _sample_ids(record)):
            index = sample["index"]
            row = {"sample_id": sample_id, "path": record["path"], "index": index,
                   "label": record["label"], "patient": record["patient_hash"],
                   "modality": record["modality"], "content_hash": sample["content_hash"],
                   "source_spacing": sample["spacing"]}
            for column in extra_columns:
                value = record["fields"][column]
                row[column] = value.strip() if column == "split" else value
            rows.append(row)
    columns = list(VALIDATED_COLUMNS) + list(extra_columns)
    table = pd.DataFrame(rows, columns=columns)
    table["index"] = pd.array(table["index"].tolist(), dtype="Int64")
    return table


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

def report_dict(result):
    """The content of ``report.json``."""
    return {
        "ok": result.ok,
        "manifest": result.manifest_path,
        "root": result.root,
        "classes": list(result.classes),
        "counts": result.summary,
        "problems": [p.to_dict() for p in result.problems],
        "dropped": result.dropped,
        "timings": result.timings,
    }


def report_markdown(result, max_problems=500):
    """A readable report: status, counts, classes, problems by kind, each problem, dropped rows."""
    s = result.summary
    lines = [
        "# Manifest validation",
        "",
        f"**{'OK' if result.ok else 'FAILED'}** — {s['n_errors']} error(s), {s['n_warnings']} warning(s); "
        f"{s['n_rows_valid']} of {s['n_rows']} rows valid, {s['n_samples']} samples, {s['n_patients']} patients"
        + (f", {s['n_rows_dropped']} rows dropped (validation.drop_invalid)" if s["n_rows_dropped"] else "") + ".",
        "",
        f"Manifest `{_md(result.manifest_path)}`; its paths are relative to `{_md(result.root)}`. Row numbers "
        "count data rows from 1 (the header is row 0).",
        "",
        "## Classes",
        "",
        "| class | images |",
        "| --- | ---: |",
    ]
    lines += [f"| {_md(name)} | {count} |" for name, count in s["class_counts"].items()]
    if s["problem_counts"]:
        lines += ["", "## Problems by kind", "", "| code | count |", "| --- | ---: |"]
        lines += [f"| `{code}` | {count} |" for code, count in s["problem_counts"].items()]
        lines += ["", "## Problems", "", "| row | path | severity | code | message |", "| ---: | --- | --- | --- | --- |"]
        for problem in result.problems[:max_problems]:
            row = "" if problem.row is None else problem.row
            lines.append(f"| {row} | {_md(problem.path or '')} | {problem.severity} | `{problem.code}` | {_md(problem.message)} |")
        if len(result.problems) > max_problems:
            lines.append(f"\n… {len(result.problems) - max_problems} more in report.json.")
    if result.dropped:
        lines += ["", "## Dropped rows", "", "| row | path | codes |", "| ---: | --- | --- |"]
        lines += [f"| {d['row']} | {_md(d['path'] or '')} | {', '.join(d['codes'])} |" for d in result.dropped]
    lines += ["", f"Decoded in {s['seconds']} s on {s['threads']} process(es).", ""]
    return "\n".join(lines)


def _md(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_validation_outputs(result, manifest_out, report_json, report_md):
    """Write the reports and, only when ``result.ok``, the validated manifest; all atomically.

    When the result is not ok, a validated manifest left at ``manifest_out`` by an earlier run is
    removed so that no later step can read stale data (a file of any other kind is left). The input manifest is never a target.
    """
    manifest_out = Path(manifest_out)
    targets = [manifest_out, Path(report_json), Path(report_md)]
    if result.manifest_path:
        source = os.path.realpath(result.manifest_path)
        if any(os.path.realpath(t) == source for t in targets):
            raise UsageError(f"refusing to overwrite the input manifest {result.manifest_path}")
    named = set(result.named_files)
    for target in targets:
        if os.path.realpath(target) in named:
            raise UsageError(f"refusing to overwrite {target}: it is an image that the manifest names")
        if os.path.isdir(target):
            raise UsageError(f"{target} is a folder: name the file to write")
    if len({os.path.realpath(t) for t in targets}) < len(targets):
        raise UsageError("the validated manifest, report.json and report.md must be three files, not "
                         f"{', '.join(map(str, targets))}")
    atomic_write_json(report_json, report_dict(result))
    atomic_write_text(report_md, report_markdown(result))
    if result.ok:
        with atomic_path(manifest_out) as tmp:
            result.table.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    elif manifest_out.is_file() and _is_validated_manifest(manifest_out):
        manifest_out.unlink()  # a file of another kind is not one a later step could take for this


def _is_validated_manifest(path):
    header = manifest_header(path)
    return header is not None and tuple(header[:len(VALIDATED_COLUMNS)]) == VALIDATED_COLUMNS


def raise_if_invalid(result, report_path=None):
    """Raise InputError listing the errors that made ``result`` not ok, and the report's path.

    Errors of rows that drop_invalid removed are not listed (they are in the report's
    ``dropped``); InputError shows the first 20.
    """
    if result.ok:
        return
    dropped_rows = {d["row"] for d in result.dropped}
    errors = [p for p in result.problems if p.severity == "error" and (p.row is None or p.row not in dropped_rows)]
    where = f"; full report: {report_path}" if report_path else ""
    lines = [str(p) for p in errors] or ["no valid row remains"]
    missing = sum(p.code == "missing_file" for p in errors)
    if missing:
        # First, where InputError's list of 20 cannot hide it: every row missing is a wrong root.
        lines.insert(0, f"{missing} file(s) not found: paths are looked up under {result.root}")
    raise InputError(f"manifest {result.manifest_path} failed validation with {len(errors)} error(s){where}", lines)

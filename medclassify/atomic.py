"""Atomic file output: write to a temporary name in the same folder, then rename.

A job killed at any moment therefore leaves either the previous file or nothing, never a
half-written file that a later step would accept. The same holds after a power loss or a node
crash: the file's data reach the disk (fsync) before the rename, and the rename itself (the
folder, fsync) before the job reports success. Without that a file system may persist the rename
first, leaving a complete-looking empty or partial file.
"""

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` ends the temporary name, for writers that choose the format by it (Keras).
    """
    path = Path(path)
    if path.is_dir():  # before the work the block does, not at its rename
        raise IsADirectoryError(errno.EISDIR, "is a folder: name the file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    # mkstemp makes the file private (0600); results are shared files, made as open() makes them.
    os.chmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as error:
        if not isinstance(error.filename, (str, os.PathLike)) or Path(error.filename) != tmp:
            raise
        # The user asked for path; the temporary name means nothing to them.
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder, names):
    """Delete the temporary files that :func:`atomic_path` left in ``folder`` (not below it) for
    outputs whose names match the regular expression ``names``; return how many.

    A job killed outright (SIGKILL, a node lost) runs no clean-up, and each kill of a training
    left a partial model or checkpoint (hundreds of MB with a large backbone). For a job to call
    at its start on its own folders: only its own outputs' temporary files are matched, so a
    file that another job is writing beside them, or a user's, is left alone.
    """
    # "." + the output's name + mkstemp's 8 characters + the suffix atomic_path was given
    temporary = re.compile(rf"\.(?:{names})\.[a-z0-9_]{{8}}(?:\.tmp|\.partial\.[A-Za-z0-9.]+)")
    removed = 0
    for path in Path(folder).glob(".*"):
        if temporary.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def fsync_file(path):
    """Flush the data of the file at ``path`` to the disk."""
    fd = os.open(path, os.O_RDONLY)  # fsync needs no write access on POSIX systems
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path):
    """Flush the entries of the folder ``path`` (a rename into it) to the disk, where the platform can.

    Windows cannot open a folder, and some file systems refuse to sync one; there the rename's
    durability is the file system's own, as it was before.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder):
    """Flush every file and folder under ``folder``, and ``folder`` itself, to the disk."""
    for parent, _, files in os.walk(folder):
        for name in files:
            fsync_file(os.path.join(parent, name))
        fsync_directory(parent)


def _current_umask():
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path, obj, *, indent=2):
    """Write ``obj`` as JSON to ``path`` atomically: indented for people to read, or on one line
    (``indent=None``), which Python's C encoder writes several times faster and in less memory."""
    separators = None if indent is not None else (",", ":")
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators, default=_json_default) + "\n")


def _json_default(value):
    # NumPy scalars and arrays reach JSON from metrics code; convert them plainly.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

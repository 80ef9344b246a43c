"""Writing a generated dataset so that an interrupted run never leaves a usable-looking half."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import fsync_directory, fsync_tree


@contextlib.contextmanager
def staged_folder(target):
    """Yield an empty temporary folder beside ``target`` that replaces ``target`` on success.

    The previous ``target`` (if any) is removed only once the new one is in place; on error the
    temporary folder is removed and ``target`` is left as it was. As with
    :func:`medclassify.atomic.atomic_path`, the files reach the disk before the rename, and the
    rename before the block's caller goes on.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        fsync_tree(staging)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        fsync_directory(target.parent)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

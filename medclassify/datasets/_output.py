"""Writing a generated dataset so that an interrupted run never leaves a usable-looking half."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import fsync_directory, fsync_tree
from ..errors import UsageError

# Beside a generated dataset's images/ and manifest.csv: it marks them as this library's to
# replace; a folder without it holds the user's own.
GENERATED_STAMP = ".written-by-medclassify"


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
        stamp = target.parent / GENERATED_STAMP
        if not stamp.exists():
            stamp.write_text(f"{target.name}/ and the manifest beside it are a generated dataset, which a new one "
                             "replaces\n")
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


def check_replaceable(out_dir, command):
    """UsageError unless ``out_dir``'s ``images/`` and ``manifest.csv``, where present, are a
    dataset that ``command`` (or the other generator) wrote: generating replaces both, and a
    user's own folder of scans there was deleted without a word."""
    out_dir = Path(out_dir)
    images, manifest = out_dir / "images", out_dir / "manifest.csv"
    present = [path for path in (images, manifest) if os.path.lexists(path)]
    if present and not (out_dir / GENERATED_STAMP).is_file():
        raise UsageError(f"refusing to replace {' and '.join(map(str, present))}: {command} writes its images and "
                         f"manifest there, and these are not a dataset it wrote; name a new or empty --out folder "
                         f"(a dataset that medclassify wrote before it marked them with {GENERATED_STAMP} has to be "
                         "deleted first)")

"""The ``preprocess`` options' names and their consistency check, without any image code.

Kept apart from :mod:`medclassify.preprocessing` so that reading the config can check these
options without importing Pillow, and so that the code inputs of the stages that only read the
config (validation, split) do not include the image code: editing how images are resized must
not rerun them.
"""

import numbers

from .errors import InputError

INTENSITY_MODES = ("minmax", "percentile", "window", "zscore", "none")
ASPECT_POLICIES = ("pad", "stretch", "crop")
# "area" is box averaging: every source pixel contributes in proportion to its overlap.
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "area", "lanczos")


def check_preprocess_options(options):
    """Raise InputError listing every inconsistent preprocess option (beyond the schema)."""
    problems = []
    if options.get("intensity") not in INTENSITY_MODES:
        problems.append(f"preprocess.intensity: {options.get('intensity')!r} is not one of {INTENSITY_MODES}")
    if options.get("aspect") not in ASPECT_POLICIES:
        problems.append(f"preprocess.aspect: {options.get('aspect')!r} is not one of {ASPECT_POLICIES}")
    if options.get("resize") not in RESIZE_METHODS:
        problems.append(f"preprocess.resize: {options.get('resize')!r} is not one of {RESIZE_METHODS}")
    size = options.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(int(s) >= 1 for s in size)):
        problems.append(f"preprocess.size: {size!r} is not [height, width]")
    if options.get("intensity") == "percentile" and not _is_percentile_range(options.get("percentiles")):
        problems.append(f"preprocess.percentiles: {options.get('percentiles')!r} must be [low, high] with 0 <= low < high <= 100")
    if options.get("intensity") == "window":
        window = options.get("window")
        if not window or window.get("width", 0) <= 0:
            problems.append("preprocess.window: intensity 'window' needs a window {center, width} with width > 0")
    if problems:
        raise InputError("invalid preprocess options", problems)


def _is_percentile_range(value):
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, numbers.Real) for v in value)
            and 0 <= value[0] < value[1] <= 100)

"""Versions of the libraries that change results, for model.json and the run card."""

import importlib.metadata
import platform

from . import __version__

# Distributions whose versions change results or their interpretation.
# The decoders too: a lossy JPEG's pixels can differ between decoder versions.
LIBRARIES = ("numpy", "pandas", "scipy", "scikit-learn", "h5py", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
             "pylibjpeg-openjpeg", "pylibjpeg-rle", "nibabel", "pillow", "tifffile", "imagecodecs", "matplotlib",
             "tensorflow", "tensorflow-cpu", "keras", "snakemake", "jsonschema", "pyyaml")


def library_versions(names=LIBRARIES):
    """Installed version of each distribution in ``names`` that is installed, plus Python's."""
    versions = {"python": platform.python_version(), "medclassify": __version__}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions

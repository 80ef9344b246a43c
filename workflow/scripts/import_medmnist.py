"""Rule import_medmnist: write a MedMNIST .npz as images plus a manifest with the official split."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.datasets.medmnist import import_medmnist

with log_output(snakemake.log[0]):
    manifest = import_medmnist(
        snakemake.params.name,
        Path(snakemake.output.manifest).parent,
        npz=snakemake.input.npz or None,  # no input: download the official file
        size=snakemake.params.size,
    )
    assert Path(manifest) == Path(snakemake.output.manifest), manifest

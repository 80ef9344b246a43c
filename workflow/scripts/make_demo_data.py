"""Rule make_demo_data: generate the synthetic demo dataset and its manifest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.datasets.demo import generate_demo_dataset

with log_output(snakemake.log[0]):
    manifest = generate_demo_dataset(
        Path(snakemake.output.manifest).parent,
        n_patients=snakemake.params.patients,
        seed=snakemake.params.seed,
    )
    assert Path(manifest) == Path(snakemake.output.manifest), manifest

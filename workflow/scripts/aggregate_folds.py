"""Rule aggregate_folds: mean ± std over folds and the metrics of the fold ensemble on test."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.evaluation import aggregate_folds

with log_output(snakemake.log[0]):
    aggregate_folds(
        snakemake.input.predictions,
        snakemake.input.manifest,
        Path(snakemake.output.metrics).parent,
        options=snakemake.params.options,
    )

"""Rule predict: classify a folder (or manifest) of new images with a trained model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.predict import predict_files

with log_output(snakemake.log[0]):
    predict_files(
        snakemake.input.model,
        [Path(snakemake.params.inputs)],
        snakemake.output.predictions,
        threads=snakemake.threads,
    )

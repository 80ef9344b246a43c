"""Rule predict: classify a folder (or manifest) of new images with a trained model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.predict import predict_files

with log_output(snakemake.log[0]):
    # Both input functions return lists, which Snakemake keeps as lists (one file, or none, too).
    ensemble_metrics = snakemake.input.ensemble_metrics
    predict_files(
        snakemake.input.model,
        [Path(snakemake.params.inputs)],
        snakemake.output.predictions,
        threads=snakemake.threads,
        ensemble_metrics=ensemble_metrics[0] if ensemble_metrics else None,
        record_json=snakemake.output.record,
    )

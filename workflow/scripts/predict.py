"""Rule predict: classify a folder (or manifest) of new images with a trained model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.predict import predict_files


def paths_of(named_input):
    """A named input's files as a list: Snakemake gives one file as a string."""
    return [named_input] if isinstance(named_input, str) else list(named_input)


with log_output(snakemake.log[0]):
    ensemble_metrics = paths_of(snakemake.input.ensemble_metrics)
    predict_files(
        paths_of(snakemake.input.model),
        [Path(snakemake.params.inputs)],
        snakemake.output.predictions,
        threads=snakemake.threads,
        ensemble_metrics=ensemble_metrics[0] if ensemble_metrics else None,
        record_json=snakemake.output.record,
    )

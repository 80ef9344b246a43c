"""Rule split: assign samples to train/val/test (or folds), grouped by patient."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.config import check_validated_manifest_fits
from medclassify.runlog import log_output
from medclassify.splits import make_splits, write_split_outputs

with log_output(snakemake.log[0]):
    table = pd.read_csv(snakemake.input.manifest, dtype=str, keep_default_na=False)
    # From snakemake.config, not params: a changed positive class or subgroup must not split again.
    check_validated_manifest_fits(snakemake.config, snakemake.wildcards.dataset, table)
    splits, report = make_splits(table, snakemake.params.split)
    out = snakemake.output
    write_split_outputs(splits, report, out.splits, out.report, out.plot)

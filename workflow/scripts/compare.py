"""Rule compare: one table and one plot of every run of a dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.evaluation import compare_runs

with log_output(snakemake.log[0]):
    out = snakemake.output
    compare_runs(snakemake.input.metrics, out.table, out.markdown, out.plot)

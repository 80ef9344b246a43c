"""Rule merge_cache: join the preprocessed parts into one cache and write the fingerprint."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.cache import default_blocks_dir, merge_cache_parts

with log_output(snakemake.log[0]):
    merge_cache_parts(
        snakemake.input.parts,
        snakemake.output.cache,
        snakemake.output.fingerprint,
        blocks=default_blocks_dir(snakemake.input.parts[0]),
    )

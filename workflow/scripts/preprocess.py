"""Rule preprocess: read, resize and normalise one shard of the validated manifest into HDF5."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.cache import build_cache_part, default_blocks_dir

with log_output(snakemake.log[0]):
    classes = json.loads(Path(snakemake.input.report).read_text())["classes"]
    summary = build_cache_part(
        snakemake.input.manifest,
        snakemake.params.root,
        snakemake.output.part,
        preprocess_options=snakemake.params.preprocess,
        io_options=snakemake.params.io,
        classes=classes,
        shard=int(snakemake.wildcards.shard),
        n_shards=int(snakemake.wildcards.nshards),
        threads=snakemake.threads,
        # Snakemake deletes the old part before this job runs, not the blocks folder beside it
        # (no rule's output): unchanged images are referenced there, not decoded again.
        blocks=default_blocks_dir(snakemake.output.part),
    )
    print(f"{snakemake.output.part}: {summary['rows']} images, {summary['decoded']} decoded, {summary['reused']} reused")

"""Rule validate_manifest: check every row and image; write the validated manifest and reports."""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.manifest import raise_if_invalid, validate_manifest, write_validation_outputs
from medclassify.runlog import log_output

with log_output(snakemake.log[0]):
    out = snakemake.output
    result = validate_manifest(
        snakemake.input.manifest,
        snakemake.params.root,
        io_options=snakemake.params.io,
        validation_options=snakemake.params.validation,
        labels=snakemake.params.labels,
        salt=snakemake.params.salt,
        threads=snakemake.threads,
        # Not an output (Snakemake deletes those before a rerun): it lets a grown manifest
        # revalidate by decoding only its new or changed files.
        decode_cache=snakemake.params.decode_cache,
    )
    write_validation_outputs(result, out.manifest, out.report, out.report_md)
    if not result.ok:
        # Snakemake deletes a failed job's outputs; keep the reports under a name it leaves alone.
        for path in (out.report, out.report_md):
            shutil.copy(path, Path(path).with_suffix(".failed" + Path(path).suffix))
        raise_if_invalid(result, Path(out.report_md).with_suffix(".failed.md"))

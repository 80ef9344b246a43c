"""Rule validate_manifest: check every row and image; write the validated manifest and reports."""

import shutil

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.errors import InputError
from medclassify.manifest import validate_manifest, write_validation_outputs

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
    )
    write_validation_outputs(result, out.manifest, out.report, out.report_md)
    if not result.ok:
        # Snakemake deletes a failed job's outputs; keep the reports under a name it leaves alone.
        kept = [shutil.copy(path, Path(path).with_suffix(".failed" + Path(path).suffix)) for path in (out.report, out.report_md)]
        problems = [f"row {p.row}: {p.path}: {p.code}: {p.message}" for p in result.problems if p.severity == "error" or snakemake.params.validation["strict"]]
        raise InputError(f"{len(problems)} problem(s) in {snakemake.input.manifest}; full list in {kept[1]}", problems)

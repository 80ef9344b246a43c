"""Rule validate_manifest: check every row and image; write the validated manifest and reports."""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.errors import UsageError
from medclassify.manifest import raise_if_invalid, validate_manifest, write_validation_outputs
from medclassify.privacy import SALT_ENVIRONMENT_VARIABLE, resolve_salt, salt_fingerprint
from medclassify.runlog import log_output

with log_output(snakemake.log[0]):
    out = snakemake.output
    salt = resolve_salt(snakemake.config["salt"])
    if salt_fingerprint(salt) != snakemake.params.salt_fingerprint:
        # A cluster job that does not inherit the environment would hash with the public default.
        raise UsageError(f"this job sees another salt than Snakemake did when it planned: pass "
                         f"{SALT_ENVIRONMENT_VARIABLE} on to the jobs")
    result = validate_manifest(
        snakemake.input.manifest,
        snakemake.params.root,
        io_options=snakemake.params.io,
        validation_options=snakemake.params.validation,
        labels=snakemake.params.labels,
        salt=salt,
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

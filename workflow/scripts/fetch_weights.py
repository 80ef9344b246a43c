"""Rule fetch_weights: download a backbone's ImageNet weights once, checksum-verified."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.models.weights import fetch_imagenet_weights

with log_output(snakemake.log[0]):
    fetch_imagenet_weights(snakemake.wildcards.backbone, snakemake.output[0])

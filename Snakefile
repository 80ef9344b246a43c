"""medclassify: train and evaluate medical image classifiers, reproducibly.

manifest → validate_manifest → preprocess (HDF5 cache) → split (by patient) → train_head
→ finetune → evaluate → compare / report. See docs/architecture.md.
"""

from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default; a --configfile replaces it instead of being merged over it,
# so that `--configfile config/breastmnist.yaml` runs BreastMNIST alone, with its own settings.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train_head.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        final_outputs(),

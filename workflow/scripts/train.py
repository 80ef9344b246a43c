"""Rules train_head and finetune: train one stage from the cache and the splits."""

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.atomic import atomic_write_json
from medclassify.cache import check_built_with
from medclassify.config import dataset_config, loading_options
from medclassify.training import train_stage
from medclassify.workflow_paths import parse_run

with log_output(snakemake.log[0]):
    stage = "head" if snakemake.rule == "train_head" else "finetune"
    options = copy.deepcopy(snakemake.params.options)
    # Not among the params, so that changing them retrains nothing (run_options, common.smk).
    run_name, _ = parse_run(snakemake.wildcards.run)
    options["train"].update(loading_options(snakemake.config, run_name))
    if options["train"]["weights"] != "none":
        options["train"]["weights"] = str(snakemake.input.weights) if stage == "head" else "none"
    dataset = snakemake.wildcards.dataset
    check_built_with(
        snakemake.input.cache,
        dataset_config(snakemake.config, dataset),
        f"the preprocess stage did not build it under this config (was it built by hand?): "
        f"delete results/{dataset}/cache.h5 and rerun",
    )
    started = time.time()
    train_stage(
        stage,
        snakemake.input.cache,
        snakemake.input.splits,
        Path(snakemake.output.model).parent,
        options=options,
        fold=snakemake.params.fold,
        init_model=snakemake.input.get("init_model"),
        threads=snakemake.threads,
    )
    atomic_write_json(snakemake.output.timing, {"started": started, "ended": time.time()})

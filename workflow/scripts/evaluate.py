"""Rule evaluate: metrics with confidence intervals, plots and the run card."""

import json
import time
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the library, at the repository root

from medclassify.runlog import log_output
from medclassify.cache import check_built_with
from medclassify.config import dataset_config
from medclassify.evaluation import run_evaluation
from medclassify.fitting import check_trained_with
from medclassify.runcard import write_run_card
from medclassify.splits import check_split_made_with

with log_output(snakemake.log[0]):
    evaluation_started = time.time()
    inp = snakemake.input
    # The run card states the config's options: refuse where the cache or the split were made with
    # others, which happens only where Snakemake keeps no record of their jobs (results/ copied
    # without .snakemake/metadata and accepted with a plain --touch).
    dataset = snakemake.wildcards.dataset
    copied = (" (or, for results copied without .snakemake/metadata, snakemake --touch --forceall with the "
              "config they were made with)")
    options = dataset_config(snakemake.config, dataset)
    check_built_with(inp.cache, options, "rebuild it: snakemake --forcerun preprocess" + copied)
    check_split_made_with(inp.split_report, options["split"], "split again: snakemake --forcerun split" + copied)
    check_trained_with(inp.model, snakemake.params.run_options, "train again: snakemake --forcerun train_head" + copied)
    out_dir = Path(snakemake.output.metrics).parent
    run_evaluation(
        inp.model,
        inp.cache,
        inp.splits,
        inp.manifest,
        out_dir,
        options=snakemake.params.options,
        histories={"head": inp.head_history, "finetune": inp.finetune_history},
        fold=snakemake.params.fold,
        threads=snakemake.threads,
    )
    head, finetune = (json.loads(Path(path).read_text()) for path in (inp.head_timing, inp.finetune_timing))
    ended = time.time()
    write_run_card(
        snakemake.output.run_card,
        config={"dataset": snakemake.params.dataset_options, "run": snakemake.params.run_options},
        dataset=snakemake.wildcards.dataset,
        run=snakemake.wildcards.run,
        fingerprint=json.loads(Path(inp.fingerprint).read_text()),
        splits=inp.splits,
        manifest=inp.manifest,
        cache=inp.cache,
        model=inp.model,
        started=head["started"],
        ended=ended,
        stages={
            "head": (head["started"], head["ended"]),
            "finetune": (finetune["started"], finetune["ended"]),
            "evaluate": (evaluation_started, ended),
        },
        # The script runs as a temporary file, whose name says nothing and differs at each run.
        command=f"snakemake rule {snakemake.rule} " + " ".join(f"{k}={v}" for k, v in snakemake.wildcards.items()),
    )

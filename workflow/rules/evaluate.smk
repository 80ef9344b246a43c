rule evaluate:
    input:
        model="results/{dataset}/{run}/finetune/model.keras",
        head_history="results/{dataset}/{run}/head/history.csv",
        finetune_history="results/{dataset}/{run}/finetune/history.csv",
        head_timing="results/{dataset}/{run}/head/timing.json",
        finetune_timing="results/{dataset}/{run}/finetune/timing.json",
        cache="results/{dataset}/cache.h5",
        fingerprint="results/{dataset}/fingerprint.json",
        splits="results/{dataset}/splits.csv",
        split_report="results/{dataset}/split/report.json",
        manifest="results/{dataset}/manifest.validated.csv",
        code=library_code("evaluation", "fitting", "runcard", "splits"),
    output:
        metrics=report(
            "results/{dataset}/{run}/evaluation/metrics.json",
            caption="../report/metrics.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"stage": "evaluation", "figure": "metrics", "format": "json"},
        ),
        # Not in the report, which is made to be shared: its sample ids are the images' paths,
        # which often carry patients' names (so do the validation report's).
        predictions="results/{dataset}/{run}/evaluation/predictions.csv",
        run_card=report(
            "results/{dataset}/{run}/run_card.json",
            caption="../report/run_card.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"stage": "evaluation", "figure": "run card", "format": "json"},
        ),
        png=[evaluation_plot(name, "png") for name in PLOT_NAMES],
        pdf=[evaluation_plot(name, "pdf") for name in PLOT_NAMES],
    log:
        "results/logs/{dataset}/{run}/evaluate.log",
    benchmark:
        "results/benchmarks/{dataset}/{run}/evaluate.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        options=lambda wildcards: {"evaluate": run_options(wildcards)["evaluate"]},
        fold=fold_of,
        # Recorded in the run card; every other option here already reruns an upstream stage.
        dataset_options=lambda wildcards: recorded_dataset_options(dataset(wildcards)),
        run_options=run_options,
    script:
        "../scripts/evaluate.py"

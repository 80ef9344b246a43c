rule compare:
    input:
        metrics=lambda wildcards: run_metrics(wildcards.dataset),
        code=library_code("evaluation"),
    output:
        table=report(
            "results/{dataset}/runs.csv",
            caption="../report/compare.rst",
            category="{dataset}",
            subcategory="all runs",
            labels={"stage": "compare", "figure": "table"},
        ),
        markdown="results/{dataset}/runs.md",
        plot=report(
            "results/{dataset}/runs_auc.png",
            caption="../report/compare.rst",
            category="{dataset}",
            subcategory="all runs",
            labels={"stage": "compare", "figure": "AUC by run"},
        ),
    log:
        "results/logs/{dataset}/compare.log",
    benchmark:
        "results/benchmarks/{dataset}/compare.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/compare.py"


rule aggregate_folds:
    input:
        predictions=lambda wildcards: expand(
            "results/{dataset}/{run}/fold_{fold}/evaluation/predictions.csv",
            dataset=wildcards.dataset,
            run=wildcards.run,
            fold=range(folds_of(wildcards.dataset) or 0),
        ),
        manifest="results/{dataset}/manifest.validated.csv",
        code=library_code("evaluation"),
    output:
        metrics=report(
            "results/{dataset}/{run}/aggregate/metrics.json",
            caption="../report/aggregate.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"stage": "aggregate", "figure": "metrics"},
        ),
        predictions="results/{dataset}/{run}/aggregate/predictions.csv",
    log:
        "results/logs/{dataset}/{run}/aggregate_folds.log",
    benchmark:
        "results/benchmarks/{dataset}/{run}/aggregate_folds.tsv"
    wildcard_constraints:
        run=r"[A-Za-z0-9_-]+",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        options=lambda wildcards: {"evaluate": run_options(wildcards)["evaluate"]},
    script:
        "../scripts/aggregate_folds.py"

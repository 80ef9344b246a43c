rule split:
    input:
        manifest="results/{dataset}/manifest.validated.csv",
        code=library_code("splits"),
    output:
        splits="results/{dataset}/splits.csv",
        report="results/{dataset}/split/report.json",
        plot=report(
            "results/{dataset}/split/report.png",
            caption="../report/split.rst",
            category="{dataset}",
            subcategory="data",
            labels={"stage": "split", "figure": "split"},
        ),
    log:
        "results/logs/{dataset}/split.log",
    benchmark:
        "results/benchmarks/{dataset}/split.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        split=lambda wildcards: dataset(wildcards)["split"],
    script:
        "../scripts/split.py"

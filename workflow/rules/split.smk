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
    params:
        split=lambda wildcards: dataset(wildcards)["split"],
    log:
        "results/logs/{dataset}/split.log",
    benchmark:
        "results/benchmarks/{dataset}/split.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/split.py"

rule preprocess:
    input:
        manifest="results/{dataset}/manifest.validated.csv",
        report="results/{dataset}/validation/report.json",
        code=library_code("cache"),
    output:
        part="results/{dataset}/cache/part-{shard}-of-{nshards}.h5",
    log:
        "results/logs/{dataset}/preprocess-{shard}-of-{nshards}.log",
    benchmark:
        "results/benchmarks/{dataset}/preprocess-{shard}-of-{nshards}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        root=root_of,
        preprocess=lambda wildcards: dataset(wildcards)["preprocess"],
        io=lambda wildcards: dataset(wildcards)["io"],
    script:
        "../scripts/preprocess.py"


rule merge_cache:
    input:
        parts=cache_parts,
        code=library_code("cache"),
    output:
        cache="results/{dataset}/cache.h5",
        fingerprint=report(
            "results/{dataset}/fingerprint.json",
            caption="../report/fingerprint.rst",
            category="{dataset}",
            subcategory="data",
            labels={"stage": "preprocess", "figure": "fingerprint"},
        ),
    log:
        "results/logs/{dataset}/merge_cache.log",
    benchmark:
        "results/benchmarks/{dataset}/merge_cache.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        "../scripts/merge_cache.py"

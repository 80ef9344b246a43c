rule preprocess:
    input:
        manifest="results/{dataset}/manifest.validated.csv",
        report="results/{dataset}/validation/report.json",
        code=library_code("cache", "preprocessing", "io"),
    output:
        part="results/{dataset}/cache/part-{shard}-of-{nshards}.h5",
    params:
        root=root_of,
        preprocess=lambda wildcards: dataset(wildcards)["preprocess"],
        io=lambda wildcards: dataset(wildcards)["io"],
    log:
        "results/logs/{dataset}/preprocess-{shard}-of-{nshards}.log",
    benchmark:
        "results/benchmarks/{dataset}/preprocess-{shard}-of-{nshards}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/preprocess.py"


rule merge_cache:
    input:
        parts=cache_parts,
        code=library_code("cache"),
    output:
        cache="results/{dataset}/cache.h5",
        fingerprint="results/{dataset}/fingerprint.json",
    log:
        "results/logs/{dataset}/merge_cache.log",
    benchmark:
        "results/benchmarks/{dataset}/merge_cache.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/merge_cache.py"

localrules:
    fetch_weights,


rule fetch_weights:
    input:
        code=library_code("models.weights"),
    output:
        "resources/weights/{backbone}.imagenet.weights.h5",
    log:
        "results/logs/fetch_weights/{backbone}.log",
    benchmark:
        "results/benchmarks/fetch_weights/{backbone}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/fetch_weights.py"

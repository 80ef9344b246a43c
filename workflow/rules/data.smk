rule make_demo_data:
    output:
        manifest="results/{dataset}/demo/manifest.csv",
    params:
        patients=lambda wildcards: dataset(wildcards)["demo_patients"],
        seed=0,
    log:
        "results/logs/{dataset}/make_demo_data.log",
    benchmark:
        "results/benchmarks/{dataset}/make_demo_data.tsv"
    threads: 1
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/make_demo_data.py"


rule import_medmnist:
    output:
        manifest="results/{dataset}/medmnist/manifest.csv",
    params:
        name=lambda wildcards: dataset(wildcards)["medmnist"],
        npz=lambda wildcards: dataset(wildcards)["npz"],
        size=lambda wildcards: dataset(wildcards)["medmnist_size"],
    log:
        "results/logs/{dataset}/import_medmnist.log",
    benchmark:
        "results/benchmarks/{dataset}/import_medmnist.tsv"
    threads: 1
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/import_medmnist.py"

from medclassify.datasets.medmnist_info import medmnist_memory_mb
from medclassify.workflow_paths import input_path


rule make_demo_data:
    input:
        code=library_code("datasets.demo"),
    output:
        manifest="results/{dataset}/demo/manifest.csv",
    log:
        "results/logs/{dataset}/make_demo_data.log",
    benchmark:
        "results/benchmarks/{dataset}/make_demo_data.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        patients=lambda wildcards: dataset(wildcards)["demo_patients"],
        seed=0,
    script:
        "../scripts/make_demo_data.py"


rule import_medmnist:
    input:
        # The local .npz (config npz: or MEDCLASSIFY_<NAME>_NPZ), an input so that replacing its
        # content reruns the import; none when the importer downloads it (MD5-checked).
        npz=lambda wildcards: input_path(dataset(wildcards)["npz"]),
        code=library_code("datasets.medmnist"),
    output:
        manifest="results/{dataset}/medmnist/manifest.csv",
    log:
        "results/logs/{dataset}/import_medmnist.log",
    benchmark:
        "results/benchmarks/{dataset}/import_medmnist.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        # The importer holds the file's arrays: MedMNIST+ at 224 px takes gigabytes.
        mem_mb=lambda wildcards: medmnist_memory_mb(
            dataset(wildcards)["medmnist"], dataset(wildcards)["medmnist_size"]
        ),
        runtime=120,
    params:
        name=lambda wildcards: dataset(wildcards)["medmnist"],
        size=lambda wildcards: dataset(wildcards)["medmnist_size"],
    script:
        "../scripts/import_medmnist.py"

from medclassify.privacy import (
    DEFAULT_SALT,
    PUBLIC_SALT_WARNING,
    resolve_salt,
    salt_fingerprint,
)

# On the console, where the validation report's own warning went unseen: the user's manifests
# hold real patient ids (the demo's and MedMNIST's are made up).
if resolve_salt(config["salt"]) == DEFAULT_SALT and any(
    source_kind(dataset_config(config, name)) == "manifest"
    for name in config["datasets"]
):
    print(f"medclassify: warning: {PUBLIC_SALT_WARNING}", file=sys.stderr)


rule validate_manifest:
    input:
        manifest=manifest_of,
        code=library_code("manifest"),
    output:
        manifest="results/{dataset}/manifest.validated.csv",
        report="results/{dataset}/validation/report.json",
        report_md="results/{dataset}/validation/report.md",
    log:
        "results/logs/{dataset}/validate_manifest.log",
    benchmark:
        "results/benchmarks/{dataset}/validate_manifest.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        root=root_of,
        io=lambda wildcards: dataset(wildcards)["io"],
        validation=lambda wildcards: validation_options(wildcards),
        labels=lambda wildcards: dataset(wildcards)["labels"],
        # A digest, not the salt: params are kept in plain text in .snakemake/metadata and printed
        # in rerun reasons. The script resolves the salt itself and checks it against this.
        salt_fingerprint=salt_fingerprint(resolve_salt(config["salt"])),
        decode_cache=lambda wildcards: f"results/{wildcards.dataset}/validation/.decode_cache.json",
        # Read by no script: a stamp of the images' sizes and times, so that an image changed in
        # place reruns validation (Snakemake reruns a job whose params changed).
        image_files=image_files_of,
    script:
        "../scripts/validate_manifest.py"

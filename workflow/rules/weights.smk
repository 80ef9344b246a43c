localrules:
    fetch_weights,


rule fetch_weights:
    output:
        "resources/weights/{backbone}.imagenet.weights.h5",
    log:
        "results/logs/fetch_weights/{backbone}.log",
    benchmark:
        "results/benchmarks/fetch_weights/{backbone}.tsv"
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/fetch_weights.py"


def weights_input(wildcards):
    """The ImageNet weights file when a run asks for them; nothing otherwise."""
    train = run_options(wildcards)["train"]
    if train["weights"] == "imagenet":
        return f"resources/weights/{train['backbone']}.imagenet.weights.h5"
    if train["weights"] != "none":
        return train["weights"]
    return []

rule train_head:
    input:
        cache="results/{dataset}/cache.h5",
        splits="results/{dataset}/splits.csv",
        weights=weights_input,
        code=library_code("training", "workflow_paths"),
    output:
        model="results/{dataset}/{run}/head/model.keras",
        meta="results/{dataset}/{run}/head/model.json",
        history="results/{dataset}/{run}/head/history.csv",
        timing="results/{dataset}/{run}/head/timing.json",
    log:
        "results/logs/{dataset}/{run}/train_head.log",
    benchmark:
        "results/benchmarks/{dataset}/{run}/train_head.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        # Only the options this stage reads, so that changing a fine-tune or evaluation
        # option (or the ensemble size) does not retrain the head.
        options=head_options,
        fold=fold_of,
    script:
        "../scripts/train.py"

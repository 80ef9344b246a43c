rule finetune:
    input:
        cache="results/{dataset}/cache.h5",
        splits="results/{dataset}/splits.csv",
        init_model="results/{dataset}/{run}/head/model.keras",
        code=library_code("training", "workflow_paths"),
    output:
        model="results/{dataset}/{run}/finetune/model.keras",
        meta="results/{dataset}/{run}/finetune/model.json",
        history="results/{dataset}/{run}/finetune/history.csv",
        timing="results/{dataset}/{run}/finetune/timing.json",
    log:
        "results/logs/{dataset}/{run}/finetune.log",
    benchmark:
        "results/benchmarks/{dataset}/{run}/finetune.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    params:
        options=finetune_options,
        fold=fold_of,
    script:
        "../scripts/train.py"

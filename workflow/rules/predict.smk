def predict_model():
    name = config["predict"]["dataset"] or next(iter(config["datasets"]))
    run = config["predict"]["run"] or next(iter(config["runs"]))
    run_id = runs_of(name)[list(config["runs"]).index(run) * (folds_of(name) or 1)]
    return f"results/{name}/{run_id}/finetune/model.keras"


rule predict:
    input:
        model=predict_model(),
        metrics=predict_model().replace("finetune/model.keras", "evaluation/metrics.json"),
        code=library_code("predict", "io", "preprocessing", "models"),
    output:
        predictions="results/predict/predictions.csv",
    params:
        inputs=config["predict"]["input"],
    log:
        "results/logs/predict.log",
    benchmark:
        "results/benchmarks/predict.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/predict.py"

rule predict:
    input:
        model=predict_models,
        metrics=predict_metrics,
        ensemble_metrics=predict_ensemble_metrics,
        images=predict_images,
        code=library_code("predict"),
    output:
        predictions="results/predict/predictions.csv",
        record="results/predict/predictions.json",
    log:
        "results/logs/predict.log",
    benchmark:
        "results/benchmarks/predict.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        inputs=config["predict"]["input"],
        unlisted_images=predict_unlisted_images,
    script:
        "../scripts/predict.py"

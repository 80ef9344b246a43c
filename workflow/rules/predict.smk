from medclassify.predict import files_read


rule predict:
    input:
        model=predict_models,
        metrics=predict_metrics,
        ensemble_metrics=predict_ensemble_metrics,
        # Every file predict reads (the folder's, or the manifest and its images): adding or
        # changing an image reruns it, which the path in params alone never did.
        images=lambda wildcards: files_read(config["predict"]["input"]),
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
    script:
        "../scripts/predict.py"

"""Accuracy benchmark: the default recipe on the real BreastMNIST (28x28, official split), 3 seeds.

    .venv/bin/python bench/accuracy.py                   # 3 seeds, test AUC/ACC, writes results
    .venv/bin/python bench/accuracy.py --val-only --set '{"finetune": {"epochs": 20}}'   # recipe search

Drives the library as the workflow does: cache (real preprocessing, ``config/breastmnist.yaml``
settings) -> head stage -> fine-tune stage -> predictions of the saved model on val and test.
AUC is the ROC AUC of class 1; ACC counts a class-1 probability > 0.5 as positive (arg-max), as
MedMNIST does. ``--val-only`` never touches the test split: recipes are chosen by validation AUC
only. Goal: mean test AUC >= 0.92 and ACC >= 0.87, each seed <= 15 min on 2 CPU cores.
Published at 28x28 (MedMNIST v2): ResNet-18 0.901 / 0.863; AutoML Vision AUC 0.919.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GOAL_AUC, GOAL_ACC, GOAL_MINUTES = 0.92, 0.87, 15.0


def options_for(seed, overrides):
    """run_config of config/breastmnist.yaml with the seed and any overrides."""
    from medclassify.config import deep_merge, load_config, run_config

    config = load_config(ROOT / "config" / "breastmnist.yaml", deep_merge(overrides, {"train": {"seed": seed}}))
    return run_config(config, next(iter(config["runs"])))


def split_scores(model_path, cache_path, splits_path, splits):
    """AUC and ACC of the saved model on each named split, computed from its predictions."""
    import keras
    import numpy as np

    from medclassify.cache import open_cache
    from medclassify.data import split_indices
    from medclassify.training import classification_auc

    model = keras.models.load_model(model_path, safe_mode=True)
    scores = {}
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path)
        for name in splits:
            probabilities = model.predict(cache.read(indices[name]), batch_size=256, verbose=0)
            labels = cache.labels[indices[name]]
            scores[name] = {"auc": classification_auc(labels, probabilities),
                            "acc": float(np.mean((probabilities[:, 1] > 0.5) == (labels == 1))), "n": int(len(labels))}
    return scores


def run_seed(seed, overrides, work_dir, splits, threads):
    """Train both stages for one seed; return scores on ``splits`` and the wall time."""
    from breastmnist_data import prepare_breastmnist

    from medclassify.training import train_stage

    from medclassify.config import config_hash

    data_options = {k: overrides[k] for k in ("preprocess", "io") if k in overrides}
    data_dir = Path(work_dir) / (f"data-{config_hash(data_options)}" if data_options else "data")
    cache_path, splits_path = prepare_breastmnist(data_dir, overrides=data_options)
    options = options_for(seed, overrides)
    run_dir = Path(work_dir) / f"seed_{seed}"
    started = time.perf_counter()
    head = train_stage("head", cache_path, splits_path, run_dir / "head", options=options, threads=threads)
    final = train_stage("finetune", cache_path, splits_path, run_dir / "finetune", options=options,
                        init_model=head, threads=threads)
    minutes = (time.perf_counter() - started) / 60
    meta = json.loads((run_dir / "finetune" / "model.json").read_text())
    members = meta.get("ensemble") or {"best_epoch": [meta["best_epoch"]], "epochs_trained": [meta["epochs_trained"]]}
    return {"seed": seed, "minutes": round(minutes, 2), "best_epoch": members["best_epoch"],
            "epochs_trained": members["epochs_trained"], **split_scores(final, cache_path, splits_path, splits)}


def summary(results, split):
    """Mean and standard deviation of AUC and ACC over seeds."""
    out = {}
    for metric in ("auc", "acc"):
        values = [r[split][metric] for r in results]
        out[metric] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", default="{}", help="config overrides as JSON (recipe search)")
    parser.add_argument("--val-only", action="store_true", help="score only the validation split (recipe search)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    args = parser.parse_args(argv)
    overrides = json.loads(args.set)
    splits = ("val",) if args.val_only else ("val", "test")
    with tempfile.TemporaryDirectory(prefix="medclassify-accuracy-") as tmp:
        work = args.work or Path(tmp)
        results = []
        for seed in args.seeds:
            result = run_seed(seed, overrides, work, splits, args.threads)
            results.append(result)
            print(json.dumps(result), flush=True)
    header = f"{'seed':>4} {'minutes':>8} {'best epochs':>11} " + " ".join(f"{s + ' ' + m:>9}" for s in splits for m in ("AUC", "ACC"))
    print("\nBreastMNIST 28x28, official split; ACC: class-1 probability > 0.5")
    print(header)
    for r in results:
        cells = " ".join(f"{r[s][m]:>9.4f}" for s in splits for m in ("auc", "acc"))
        best = "/".join(str(e or 0) for e in r["best_epoch"])
        print(f"{r['seed']:>4} {r['minutes']:>8.2f} {best:>11} {cells}")
    report = {"dataset": "breastmnist", "size": 28, "overrides": overrides, "seeds": results,
              "summary": {s: summary(results, s) for s in splits},
              "max_minutes": max(r["minutes"] for r in results)}
    for s in splits:
        m = report["summary"][s]
        print(f"{s}: AUC {m['auc']['mean']:.4f} ± {m['auc']['std']:.4f}   ACC {m['acc']['mean']:.4f} ± {m['acc']['std']:.4f}")
    if not args.val_only:
        m = report["summary"]["test"]
        report["goal"] = {"auc": GOAL_AUC, "acc": GOAL_ACC, "minutes_per_seed": GOAL_MINUTES,
                          "met": m["auc"]["mean"] >= GOAL_AUC and m["acc"]["mean"] >= GOAL_ACC
                          and report["max_minutes"] <= GOAL_MINUTES}
        print(f"goal (AUC >= {GOAL_AUC}, ACC >= {GOAL_ACC}, <= {GOAL_MINUTES} min/seed): "
              f"{'met' if report['goal']['met'] else 'NOT met'}")
        from medclassify.atomic import atomic_write_json

        atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()

"""Accuracy benchmark: the default recipe on the real BreastMNIST (28x28, official split), 3 seeds.

    .venv/bin/python bench/accuracy.py                   # 3 seeds, test AUC/ACC, writes results
    .venv/bin/python bench/accuracy.py --val-only --set '{"finetune": {"epochs": 20}}'   # recipe search
    .venv/bin/python bench/accuracy.py --cv 5 --seeds 0 --set '{...}'   # recipe search, 5-fold CV

Drives the library as the workflow does: cache (real preprocessing, ``config/breastmnist.yaml``
settings) -> head stage -> fine-tune stage -> predictions of the saved model on val and test.
AUC is the ROC AUC of class 1; ACC counts a class-1 probability > 0.5 as positive (arg-max), as
MedMNIST does. ``--val-only`` never touches the test split: recipes are chosen by validation AUC
only. Goal: mean test AUC >= 0.92 and ACC >= 0.87, each seed <= 15 min on 2 CPU cores.
Published at 28x28 (MedMNIST v2): ResNet-18 0.901 / 0.863; AutoML Vision AUC 0.919.

``--cv K`` is the less noisy recipe search: the official train and val images (624) are split
into K stratified folds (the test split stays untouched); fold k trains on the others and
predicts fold k, and the out-of-fold predictions of all 624 images give one AUC. The 78 official
validation images alone give AUCs whose spread over seeds (0.006 to 0.017) is as large as the
differences between the recipes compared so far. A 5-fold search takes about an hour on a fast
machine and three on a slow one: run with ``--work DIR``, it can be stopped and run again with the
same command, which trains only what is missing (finished folds are read back, a member stopped
mid-training resumes from its last epoch) and gives the same result as an unbroken run.
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


def split_predictions(model_path, cache_path, splits_path, splits, evaluate, fold=None):
    """{split: (labels, class probabilities)} of the saved model on each named split.

    Averaged over the test-time views that evaluation would use with ``evaluate`` (the run's
    ``evaluate`` options), as the workflow's evaluate stage predicts.
    """
    from medclassify.cache import open_cache
    from medclassify.data import split_indices
    from medclassify.evaluation.run import tta_views
    from medclassify.models import load_model
    from medclassify.model_info import model_json_beside
    from medclassify.inference import cache_reader, predict_probabilities

    views, _ = tta_views(model_json_beside(model_path), evaluate)
    model = load_model(model_path)
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path, fold)
        return {name: (cache.labels[indices[name]],
                       predict_probabilities(model, cache_reader(cache, indices[name]), len(indices[name]),
                                             views=views, batch_size=256))
                for name in splits}


def scores(labels, probabilities):
    """AUC (class 1) and ACC (class-1 probability > 0.5) of predictions."""
    import numpy as np

    from medclassify.training import classification_auc

    return {"auc": classification_auc(labels, probabilities),
            "acc": float(np.mean((probabilities[:, 1] > 0.5) == (labels == 1))), "n": int(len(labels))}


def split_scores(model_path, cache_path, splits_path, splits, evaluate):
    """AUC and ACC of the saved model on each named split, computed from its predictions."""
    return {name: scores(*predicted)
            for name, predicted in split_predictions(model_path, cache_path, splits_path, splits, evaluate).items()}


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
    members = meta.get("ensemble") or {key: [meta[key]] for key in ("best_epoch", "selected_epoch", "epochs_trained")}
    return {"seed": seed, "minutes": round(minutes, 2), "best_epoch": members["best_epoch"],
            "selected_epoch": members["selected_epoch"], "epochs_trained": members["epochs_trained"],
            **split_scores(final, cache_path, splits_path, splits, options["evaluate"])}


def deal_folds(labels, folds, seed):
    """The fold (0 to ``folds`` - 1) of each of ``labels``: each class shuffled (seeded) and dealt round-robin.

    So every fold holds its share of each class (the halves of ``bench/epoch_selection.py`` are
    its two folds).
    """
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype="int64")
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return fold


def cv_splits(splits_path, folds, seed):
    """splits.csv with a ``fold`` column: the official train+val rows in ``folds`` stratified folds.

    The folds are dealt by :func:`deal_folds`; test rows keep fold -1 and are never used.
    """
    import pandas as pd

    table = pd.read_csv(splits_path, dtype={"sample_id": str})
    labels = table["sample_id"].map(_official_labels(splits_path))
    in_cv = (table["split"] != "test").to_numpy()
    table["fold"] = -1
    table.loc[in_cv, "fold"] = deal_folds(labels[in_cv].to_numpy(), folds, seed)
    out = Path(splits_path).with_name(f"splits-cv{folds}-seed{seed}.csv")
    text = table.to_csv(index=False)
    # Rewriting the same folds would change the file's time, which finished ensemble members
    # record: a resumed search would then retrain them.
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        from medclassify.atomic import atomic_write_text

        atomic_write_text(out, text)
    return out


def _official_labels(splits_path):
    import pandas as pd

    manifest = pd.read_csv(Path(splits_path).with_name("manifest.validated.csv"), dtype=str)
    return dict(zip(manifest["sample_id"], manifest["label"].astype(int)))


def run_seed_cv(seed, overrides, work_dir, folds, threads):
    """Train each of ``folds`` folds for one seed; return per-fold and out-of-fold val AUC."""
    import numpy as np

    from breastmnist_data import prepare_breastmnist

    from medclassify.config import config_hash

    data_options = {k: overrides[k] for k in ("preprocess", "io") if k in overrides}
    data_dir = Path(work_dir) / (f"data-{config_hash(data_options)}" if data_options else "data")
    cache_path, base_splits = prepare_breastmnist(data_dir, overrides=data_options)
    splits_path = cv_splits(base_splits, folds, seed)
    options = options_for(seed, overrides)
    fold_auc, labels, probabilities, minutes = [], [], [], 0.0
    for fold in range(folds):
        run_dir = Path(work_dir) / f"seed_{seed}" / f"fold_{fold}"
        record = fold_record(run_dir, fold, cache_path, splits_path, options, threads)
        fold_labels, fold_probabilities = np.asarray(record["labels"]), np.asarray(record["probabilities"])
        fold_auc.append(scores(fold_labels, fold_probabilities)["auc"])
        labels.append(fold_labels)
        probabilities.append(fold_probabilities)
        minutes += record["minutes"]
        print(f"[cv] seed {seed} fold {fold}: val AUC {fold_auc[-1]:.4f}", flush=True)
    labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
    return {"seed": seed, "minutes": round(minutes, 2), "fold_auc": fold_auc, "oof": scores(labels, probabilities)}


def fold_record(run_dir, fold, cache_path, splits_path, options, threads):
    """Train fold ``fold`` and return its validation labels, probabilities and training minutes.

    The record is kept in ``run_dir/val_predictions.json`` with a key of everything that decides
    it (options, fold, the folds file's content, the cache file, the training code), so that a
    search stopped between folds (a 5-fold gate takes hours on a slow machine) resumes where it
    stopped; a record with another key is retrained.
    """
    import hashlib

    from medclassify.atomic import atomic_write_json
    from medclassify.config import config_hash
    from medclassify.training import cache_identity, train_stage, training_code_digest

    key = config_hash({"options": options, "fold": fold, "cache": cache_identity(cache_path),
                       "splits": hashlib.sha256(Path(splits_path).read_bytes()).hexdigest(),
                       "code": training_code_digest()})
    saved = Path(run_dir) / "val_predictions.json"
    if saved.exists():
        record = json.loads(saved.read_text(encoding="utf-8"))
        if record.get("key") == key:
            print(f"[cv] fold {fold}: trained before, reusing {saved}", flush=True)
            return record
    started = time.perf_counter()
    head = train_stage("head", cache_path, splits_path, run_dir / "head", options=options, fold=fold, threads=threads)
    final = train_stage("finetune", cache_path, splits_path, run_dir / "finetune", options=options,
                        init_model=head, fold=fold, threads=threads)
    labels, probabilities = split_predictions(final, cache_path, splits_path, ["val"], options["evaluate"], fold)["val"]
    record = {"key": key, "minutes": (time.perf_counter() - started) / 60, "labels": labels.tolist(),
              "probabilities": probabilities.tolist()}
    atomic_write_json(saved, record)
    return record


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
    parser.add_argument("--cv", type=int, metavar="K", help="score K-fold out-of-fold AUC on train+val instead "
                        "(recipe search; the test split is not used)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON report (default bench/results/accuracy.json, "
                        "or accuracy-cv.json with --cv)")
    args = parser.parse_args(argv)
    overrides = json.loads(args.set)
    if args.cv:
        return main_cv(args, overrides)
    splits = ("val",) if args.val_only else ("val", "test")
    with tempfile.TemporaryDirectory(prefix="medclassify-accuracy-") as tmp:
        work = args.work or Path(tmp)
        results = []
        for seed in args.seeds:
            result = run_seed(seed, overrides, work, splits, args.threads)
            results.append(result)
            print(json.dumps(result), flush=True)
    header = f"{'seed':>4} {'minutes':>8} {'kept epochs':>11} " + " ".join(f"{s + ' ' + m:>9}" for s in splits for m in ("AUC", "ACC"))
    print("\nBreastMNIST 28x28, official split; ACC: class-1 probability > 0.5")
    print(header)
    for r in results:
        cells = " ".join(f"{r[s][m]:>9.4f}" for s in splits for m in ("auc", "acc"))
        kept = "/".join(str(e or 0) for e in r["selected_epoch"])
        print(f"{r['seed']:>4} {r['minutes']:>8.2f} {kept:>11} {cells}")
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

        atomic_write_json(args.out or ROOT / "bench" / "results" / "accuracy.json", report)
    return report


def main_cv(args, overrides):
    if args.cv < 2:
        raise SystemExit("--cv needs at least 2 folds")
    with tempfile.TemporaryDirectory(prefix="medclassify-accuracy-cv-") as tmp:
        work = args.work or Path(tmp)
        results = []
        for seed in args.seeds:
            results.append(run_seed_cv(seed, overrides, work, args.cv, args.threads))
            print(json.dumps(results[-1]), flush=True)
    print(f"\nBreastMNIST 28x28, official train+val in {args.cv} stratified folds (test not used)")
    print(f"{'seed':>4} {'minutes':>8}  {'fold val AUC':<{8 * args.cv}} {'OOF AUC':>8} {'OOF ACC':>8}")
    for r in results:
        folds = " ".join(f"{a:.4f}" for a in r["fold_auc"])
        print(f"{r['seed']:>4} {r['minutes']:>8.2f}  {folds:<{8 * args.cv}} {r['oof']['auc']:>8.4f} {r['oof']['acc']:>8.4f}")
    report = {"dataset": "breastmnist", "cv_folds": args.cv, "overrides": overrides, "seeds": results,
              "summary": {"oof": summary(results, "oof")}}
    m = report["summary"]["oof"]
    print(f"out-of-fold: AUC {m['auc']['mean']:.4f} ± {m['auc']['std']:.4f}   ACC {m['acc']['mean']:.4f} ± {m['acc']['std']:.4f}")
    from medclassify.atomic import atomic_write_json

    atomic_write_json(args.out or ROOT / "bench" / "results" / "accuracy-cv.json", report)
    return report


if __name__ == "__main__":
    main()

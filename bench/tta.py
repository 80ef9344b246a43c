"""Does test-time augmentation with affine views help? Scored on the fold models of a CV search.

    .venv/bin/python bench/accuracy.py --cv 5 --seeds 0 --work /tmp/cv    # trains (40-60 min a seed)
    .venv/bin/python bench/accuracy.py --cv 5 --seeds 1 --work /tmp/cv
    .venv/bin/python bench/tta.py --work /tmp/cv --seeds 0 1                # scores (a minute)

Reads the fine-tuned model of every fold that ``bench/accuracy.py --cv K`` trained under
``--work`` and predicts its held-out fold with the image alone and averaged over the image and
its first N affine views (:func:`medclassify.inference.affine_views`: rotation, zoom and shift
drawn with seed 0 from the model's ``train.augment`` ranges, as ``evaluate.tta_views: N`` does).
Each N gives one out-of-fold AUC over all train+val images. The models are the same for every N,
so the comparison is paired; no view count is chosen on the images it is scored on, and the
test split is never read.

Decision rule, committed before any of these scores was seen: the candidate is N = 8. It
becomes the default (``evaluate.tta_views: 8``) if its out-of-fold AUC is higher than without
views (N = 0) on both fold assignments of the default recipe, seeds 0 and 1. The other N are
printed for the record and decide nothing.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CANDIDATE = 8
VIEW_COUNTS = (0, 2, 4, 8, 16)


def fold_view_probabilities(model_path, cache_path, splits_path, fold, n_views):
    """Labels of fold ``fold``'s held-out images and the model's probabilities per view, (1 + n_views, n, classes)."""
    import numpy as np

    from medclassify.cache import open_cache
    from medclassify.data import split_indices
    from medclassify.evaluation.run import tta_views
    from medclassify.models import load_model
    from medclassify.model_info import model_json_beside
    from medclassify.inference import mean_probabilities

    views, _ = tta_views(model_json_beside(model_path), {"tta_views": n_views})
    model = load_model(model_path)
    with open_cache(cache_path) as cache:
        indices = split_indices(cache.sample_ids, splits_path, fold)["val"]
        labels, images = np.asarray(cache.labels)[indices], np.asarray(cache.read(indices), dtype=np.float32)
    # A fold's held-out images (about 125) are read once and seen through every view.
    per_view = np.stack([mean_probabilities(model, images, [view], batch_size=256) for view in views])
    return labels, per_view


def score_seed(work, seed, folds):
    """Out-of-fold AUC and ACC for each view count, and the largest difference from the search's own record."""
    import numpy as np
    from accuracy import scores

    data = Path(work) / "data"
    splits_path = data / f"splits-cv{folds}-seed{seed}.csv"
    labels, per_view, drift = [], [], 0.0
    for fold in range(folds):
        run_dir = Path(work) / f"seed_{seed}" / f"fold_{fold}"
        fold_labels, probabilities = fold_view_probabilities(run_dir / "finetune" / "model.keras",
                                                             data / "cache.h5", splits_path, fold, max(VIEW_COUNTS))
        record = json.loads((run_dir / "val_predictions.json").read_text(encoding="utf-8"))
        drift = max(drift, float(np.abs(probabilities[0] - np.asarray(record["probabilities"])).max()))
        labels.append(fold_labels)
        per_view.append(probabilities)
    labels, per_view = np.concatenate(labels), np.concatenate(per_view, axis=1)
    return {"seed": seed, "record_max_abs_difference": drift,
            "views": {n: scores(labels, per_view[:1 + n].mean(axis=0)) for n in VIEW_COUNTS}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of bench/accuracy.py --cv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tta.json")
    args = parser.parse_args(argv)
    results = [score_seed(args.work, seed, args.folds) for seed in args.seeds]

    print(f"\nBreastMNIST 28x28, out-of-fold over official train+val ({args.folds} folds); "
          f"identity + N affine views")
    print(f"{'seed':>4} " + " ".join(f"{'N=' + str(n) + ' AUC':>10} {'ACC':>6}" for n in VIEW_COUNTS))
    for r in results:
        print(f"{r['seed']:>4} " + " ".join(f"{r['views'][n]['auc']:>10.4f} {r['views'][n]['acc']:>6.4f}"
                                            for n in VIEW_COUNTS))
    gains = [r["views"][CANDIDATE]["auc"] - r["views"][0]["auc"] for r in results]
    adopted = len(results) >= 2 and all(g > 0 for g in gains)
    print(f"N={CANDIDATE} minus N=0, AUC: " + ", ".join(f"seed {r['seed']} {g:+.4f}" for r, g in zip(results, gains)))
    print(f"decision (N={CANDIDATE} higher on every seed, at least two): {'adopt' if adopted else 'keep 0'}")
    print("largest |N=0 probability - the search's recorded one|: "
          f"{max(r['record_max_abs_difference'] for r in results):.1e}")
    from medclassify.atomic import atomic_write_json

    atomic_write_json(args.out, {"candidate": CANDIDATE, "seeds": results, "gains": gains, "adopt": adopted})
    return results


if __name__ == "__main__":
    main()

"""Which epoch should a fine-tuned model keep? Rules compared by cross-fitting on BreastMNIST.

    .venv/bin/python bench/epoch_selection.py --seed 1 --work /tmp/es    # about 2 h on 2 cores
    .venv/bin/python bench/epoch_selection.py --seed 1 --work /tmp/es    # again, same code: replays only

Trains the default recipe (config/breastmnist.yaml) in K-fold cross-validation on the official
train+val images, as ``bench/accuracy.py --cv K`` does, but with every member trained for all its
epochs (``early_stopping_patience: 0``) and every epoch's validation probabilities recorded
(``record_val_predictions``). The first epochs of such a run are exactly those of a run that
stops earlier (the cosine schedule spans ``finetune.epochs`` either way, and CPU training is
deterministic), so each rule of choosing the epoch is replayed from the recordings
(:mod:`medclassify.epoch_selection`) instead of trained again. The test split is never read.

Two scores per rule, each the AUC of the out-of-fold predictions of all train+val images, where a
fold's prediction is the mean probability of its ensemble members, each at its chosen epoch:

- in-fold: the epoch is chosen on the whole held-out fold and scored on it, as the CV gate of
  ``bench/accuracy.py`` does; optimistic, because the choice has seen the images it is scored on;
- cross-fitted: each held-out fold is split into two stratified halves; the epoch is chosen (and
  stopping decided) on one half and scored on the other, then the other way round, so no image
  scores a choice it helped make. This is what a new image gets from the rule.

Rules (patience counts epochs without a better validation AUC before stopping):
``A`` best val AUC, patience 20 (the default); ``B12`` best val AUC, patience 12; ``D`` last
epoch trained, patience 20; ``E`` lowest val loss, patience 20; ``max`` best val AUC of all
epochs; ``L`` the final epoch, no stopping.

Pre-registered before the seed-1 run (stop 23; seed 0 was measured at stop 22 with the same
definitions: cross-fitted A 0.8921, B12 0.8902, D 0.9134, E 0.9024, L 0.9172): a candidate (D, E,
L) replaces A only if its cross-fitted AUC beats A's on seed 1 as well as seed 0; among those, the
higher mean over both seeds wins (L costs about 17% more time). B12 is adopted only if A stays and
B12's seed-1 cross-fitted AUC is within 0.002 of A's. A change of default is then measured on the
official split (bench/accuracy.py), whose test figures are reported and do not feed back.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# name: (select_epoch rule, patience); patience 0 never stops.
RULES = {"A": ("best_auc", 20), "B12": ("best_auc", 12), "D": ("last", 20), "E": ("lowest_val_loss", 20),
         "max": ("best_auc", 0), "L": ("last", 0)}
RECORDING = {"finetune": {"early_stopping_patience": 0, "record_val_predictions": True}}


def member_recordings(finetune_dir):
    """[(labels, probabilities of shape (epochs, images, classes))] of each member of a fine-tune stage."""
    import numpy as np

    from medclassify.training import member_dir

    n_members = len(list(Path(finetune_dir).glob("members/member_*")))
    folders = [member_dir(finetune_dir, k) for k in range(n_members)] or [Path(finetune_dir)]
    recordings = []
    for folder in folders:
        record = folder / "val_predictions"
        epochs = sorted(record.glob("epoch_*.npy"))
        if not epochs:
            raise SystemExit(f"{record} holds no recorded epochs: was the stage trained with record_val_predictions?")
        recordings.append((np.load(record / "labels.npy"), np.stack([np.load(p) for p in epochs])))
    return recordings


def chosen_epochs(rule, patience, labels, trajectory):
    """(epoch chosen, epochs trained) of one member whose epochs score ``trajectory`` on ``labels``."""
    from medclassify.epoch_selection import crossentropy, selected_epoch, stopping_epoch
    from medclassify.training import classification_auc

    aucs = [classification_auc(labels, p) for p in trajectory]
    losses = [crossentropy(labels, p) for p in trajectory]
    stop = stopping_epoch(aucs, patience)
    # With no score to choose by, the stage keeps the model it has: the last epoch it trained.
    return (selected_epoch(rule, aucs, losses, patience) or stop), stop


def stratified_halves(labels, seed):
    """Two index arrays splitting ``labels`` in halves with each class shared out evenly."""
    import numpy as np

    from accuracy import deal_folds

    fold = deal_folds(labels, 2, seed)
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


def replay(fold_recordings, seed):
    """{rule: {"in_fold", "cross_fitted": {auc, acc}, "epochs_per_member"}} over all folds."""
    import numpy as np

    out = {}
    for name, (rule, patience) in RULES.items():
        in_fold, crossed, trained = ([], []), ([], []), []
        for fold, members in enumerate(fold_recordings):
            labels = members[0][0]
            picks = [chosen_epochs(rule, patience, labels, p) for _, p in members]
            trained += [stop for _, stop in picks]
            in_fold[0].append(labels)
            in_fold[1].append(np.mean([p[e - 1] for (_, p), (e, _) in zip(members, picks)], axis=0))
            halves = stratified_halves(labels, seed * 100 + fold)
            for chooser, scored in (halves, halves[::-1]):
                epochs = [chosen_epochs(rule, patience, labels[chooser], p[:, chooser])[0] for _, p in members]
                crossed[0].append(labels[scored])
                crossed[1].append(np.mean([p[e - 1][scored] for (_, p), e in zip(members, epochs)], axis=0))
        out[name] = {"in_fold": _scores(*in_fold), "cross_fitted": _scores(*crossed),
                     "epochs_per_member": float(np.mean(trained))}
    return out


def _scores(labels, probabilities):
    import numpy as np
    from accuracy import scores

    return scores(np.concatenate(labels), np.concatenate(probabilities))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="fold assignment and training seed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--set", default="{}", help="further config overrides as JSON (smoke runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="working folder, reused by a rerun (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON report (default bench/results/epoch_selection-seed<S>.json)")
    args = parser.parse_args(argv)
    from accuracy import run_seed_cv

    from medclassify.atomic import atomic_write_json
    from medclassify.config import deep_merge

    overrides = deep_merge(json.loads(args.set), RECORDING)
    with tempfile.TemporaryDirectory(prefix="medclassify-epoch-selection-") as tmp:
        work = args.work or Path(tmp)
        trained = run_seed_cv(args.seed, overrides, work, args.folds, args.threads)
        recordings = [member_recordings(work / f"seed_{args.seed}" / f"fold_{k}" / "finetune")
                      for k in range(args.folds)]
    results = replay(recordings, args.seed)
    print(f"\nBreastMNIST 28x28, official train+val in {args.folds} stratified folds, seed {args.seed} "
          f"(test not used); {trained['minutes']:.1f} min of training")
    print(f"{'rule':<5} {'select_epoch':<16} {'patience':>8} {'in-fold AUC':>11} {'cross-fit AUC':>13} "
          f"{'cross-fit ACC':>13} {'epochs/member':>13}")
    for name, (rule, patience) in RULES.items():
        r = results[name]
        print(f"{name:<5} {rule:<16} {patience:>8} {r['in_fold']['auc']:>11.4f} {r['cross_fitted']['auc']:>13.4f} "
              f"{r['cross_fitted']['acc']:>13.4f} {r['epochs_per_member']:>13.1f}")
    # The saved ensembles kept each member's best-AUC epoch of all it trained: rule "max", in-fold.
    check = abs(results["max"]["in_fold"]["auc"] - trained["oof"]["auc"])
    print(f"check: replayed 'max' in-fold AUC against the saved models' out-of-fold AUC "
          f"{trained['oof']['auc']:.4f}: |difference| {check:.1e}")
    report = {"dataset": "breastmnist", "seed": args.seed, "cv_folds": args.folds, "overrides": overrides,
              "rules": {name: {"select_epoch": rule, "patience": patience, **results[name]}
                        for name, (rule, patience) in RULES.items()},
              "training_minutes": trained["minutes"], "saved_models_oof": trained["oof"], "check_difference": check}
    atomic_write_json(args.out or ROOT / "bench" / "results" / f"epoch_selection-seed{args.seed}.json", report)
    return report


if __name__ == "__main__":
    main()

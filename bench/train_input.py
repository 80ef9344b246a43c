"""Input-throughput benchmark: training images/s fed from the HDF5 cache vs from in-memory tensors.

    .venv/bin/python bench/train_input.py [--rounds 6] [--epochs 1]

Same model (the default ResNet-18), same batch size, same process. Three feeds:
  tensors  tf.data.Dataset.from_tensor_slices over NumPy arrays already in memory (the baseline)
  memory   medclassify.data.TrainingBatches with the cache's images held in memory
  disk     medclassify.data.TrainingBatches reading every batch from the HDF5 file
Augmentation is off in all three so that only the input path differs, and tf.data's autotuning is
off in all three, as the training stage sets it: ending a pass waits for the autotuning thread,
which on a 2-core machine added 2-4 s to some passes at random, whatever the feed. The feeds are
measured in alternation, ``rounds`` times, and the fastest round of each is compared: outside
load only ever slows a round, so the fastest round is each feed's own speed (as ``timeit``
advises). Medians and images per CPU second are printed too.
Goal: memory/tensors and disk/tensors >= 0.95.
Data: BreastMNIST's 546 training images (28x28) as the real preprocessing stage caches them.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GOAL_RATIO = 0.95
NO_AUGMENT = {"horizontal_flip": False, "vertical_flip": False, "rotation_degrees": 0, "zoom": 0, "translate": 0,
              "warp_probability": 1.0, "brightness": 0, "contrast": 0, "noise_std": 0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="alternations of the three feeds")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_input.json")
    args = parser.parse_args(argv)

    from medclassify.gpu import configure_inference

    configure_inference(args.threads)  # threads and malloc as the training stage sets them
    import numpy as np
    import tensorflow as tf

    from breastmnist_data import prepare_breastmnist
    from medclassify.atomic import atomic_write_json
    from medclassify.cache import open_cache
    from medclassify.config import load_config, run_config
    from medclassify.data import ImageSource, TrainingBatches, split_indices, without_autotune
    from medclassify.fitting import compile_model, stage_options
    from medclassify.training import initial_model, seed_everything

    options = run_config(load_config(ROOT / "config" / "breastmnist.yaml"), "baseline")
    settings = stage_options(options, "finetune")
    batch_size = settings["batch_size"]
    seed_everything(0, deterministic=True)  # as the training stage runs by default
    with tempfile.TemporaryDirectory(prefix="medclassify-train-input-") as tmp:
        cache_path, splits_path = prepare_breastmnist(Path(tmp))
        with open_cache(cache_path) as cache:
            train = split_indices(cache.sample_ids, splits_path)["train"]
            labels = cache.labels[train]
            n_classes = len(cache.classes)
            memory = ImageSource(cache, train, in_memory=True)
            disk = ImageSource(cache, train, in_memory=False)
            images, targets = memory.images, np.eye(n_classes, dtype="float32")[labels]
            model, _ = initial_model("finetune", init_model=None, input_shape=memory.image_shape,
                                     class_counts=np.bincount(labels, minlength=n_classes),
                                     train_options=options["train"], settings=settings, zscore=None)
            compile_model(model, "finetune", settings, options["train"], int(np.ceil(len(train) / batch_size)), False)

            def tensors_feed(epoch):
                order = np.random.default_rng(epoch).permutation(len(images))
                feed = tf.data.Dataset.from_tensor_slices((images[order], targets[order])).batch(batch_size).prefetch(2)
                return without_autotune(feed)

            def cache_feed(source):  # built once, like the training stage's
                batches = TrainingBatches(source, labels, n_classes=n_classes, batch_size=batch_size, seed=0,
                                          augment=NO_AUGMENT)
                return batches.for_epoch

            feeds = {"tensors": tensors_feed, "memory": cache_feed(memory), "disk": cache_feed(disk)}
            for feed in feeds.values():  # trace each input signature once before timing
                model.fit(feed(0), epochs=1, verbose=0, shuffle=False)
            rates = {name: [] for name in feeds}
            cpu_rates = {name: [] for name in feeds}
            names = list(feeds)
            for round_ in range(args.rounds):
                # Rotate the order each round so that no feed always runs first after another.
                for name in names[round_ % 3:] + names[:round_ % 3]:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    for epoch in range(args.epochs):
                        model.fit(feeds[name](round_ * args.epochs + epoch + 1), epochs=1, verbose=0, shuffle=False)
                    n_images = len(train) * args.epochs
                    rates[name].append(n_images / (time.perf_counter() - started))
                    cpu_rates[name].append(n_images / (time.process_time() - cpu_started))

    fastest = {name: max(values) for name, values in rates.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_rates.items()}
    ratios = {name: fastest[name] / fastest["tensors"] for name in ("memory", "disk")}
    print(f"\nResNet-18 (width {options['train']['resnet_width']}), batch {batch_size}, {len(train)} images "
          f"28x28x1, {args.threads} threads, {args.rounds} rounds x {args.epochs} epochs")
    print("images/s, wall clock: the fastest round (the goal) and the median; per CPU second of this process: median")
    print(f"{'feed':<8} {'fastest':>8} {'ratio':>6} {'median':>7} {'ratio':>6} {'per CPU s':>10} {'ratio':>6}"
          "  wall images/s per round")
    for name in feeds:
        print(f"{name:<8} {fastest[name]:>8.1f} {fastest[name] / fastest['tensors']:>6.3f} "
              f"{median[name]:>7.1f} {median[name] / median['tensors']:>6.3f} "
              f"{cpu_median[name]:>10.1f} {cpu_median[name] / cpu_median['tensors']:>6.3f}  "
              f"{' '.join(f'{r:.0f}' for r in rates[name])}")
    met = all(r >= GOAL_RATIO for r in ratios.values())
    print(f"goal (memory and disk >= {GOAL_RATIO} x tensors): {'met' if met else 'NOT met'}")
    atomic_write_json(args.out, {"model": f"resnet18 width {options['train']['resnet_width']}", "batch_size": batch_size,
                                 "images": len(train), "threads": args.threads, "rounds": args.rounds,
                                 "epochs_per_round": args.epochs, "images_per_second": rates, "fastest": fastest,
                                 "median": median,
                                 "images_per_cpu_second": cpu_rates, "cpu_median": cpu_median,
                                 "ratio": ratios, "goal": GOAL_RATIO, "met": met})


if __name__ == "__main__":
    main()

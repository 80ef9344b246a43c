"""The ``medclassify`` command: one subcommand per workflow stage.

Each subcommand calls the same library function as the workflow rule of that stage, so a stage
can be run, debugged or scripted by hand. Exit status: 0 on success, 1 on invalid input (the
message names the problem) or on a file the system refuses to read or write (full disk,
read-only folder, permission: one line naming the file), 2 on usage errors.
"""

import argparse
import contextlib
import errno
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import InputError, UsageError
from .runlog import terminated_as_exit

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


def _at_least(minimum):
    """argparse type of a whole number of ``minimum`` or more."""
    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not {minimum} or more")
        return value
    return whole_number


# A count of threads: TensorFlow aborts the process on fewer than one.
positive_int = _at_least(1)


def _load_config(args):
    from .config import load_config

    overrides = _parse_overrides(args.set) if getattr(args, "set", None) else None
    return load_config(args.config, overrides)


def _parse_overrides(text):
    """The ``--set`` JSON object; a UsageError (exit 2) when it is not one."""
    from .config import json_object_noting_duplicates

    duplicates = []
    try:
        overrides = json.loads(text, object_pairs_hook=json_object_noting_duplicates(duplicates))
    except json.JSONDecodeError as error:
        raise UsageError(f"--set {text!r} is not valid JSON ({error})") from None
    if duplicates:
        raise UsageError(f"--set {text!r}: {'; '.join(duplicates)}")
    if not isinstance(overrides, dict):
        raise UsageError(f"--set {text!r} must be a JSON object such as '{{\"split\": {{\"seed\": 1}}}}', "
                         f"not a {type(overrides).__name__}")
    return overrides


def _require_files(*paths):
    """Raise InputError naming every input file that is not there, before any work starts.

    The stages open their inputs with pandas, Keras or json, whose FileNotFoundError would reach
    the user as a traceback; None stands for an option that was not given.
    """
    problems = [f"{path}: {'not a file' if path.exists() else 'not found'}"
                for path in paths if path is not None and not path.is_file()]
    if problems:
        raise InputError("missing input file(s)", problems)


def _require_file_targets(*paths):
    """Raise UsageError for an output file that names a folder, or lies below a file, before any
    work starts (the atomic write's rename would otherwise fail at the end, after the work);
    None is an option not given."""
    folders = [path for path in paths if path is not None and path.is_dir()]
    if folders:
        raise UsageError(f"{folders[0]} is a folder: name the file to write")
    _require_folder_ancestors(*paths)


def _require_folder_targets(*paths):
    """Raise UsageError for an output folder that is a file, or lies below one, before any work."""
    files = [path for path in paths if path is not None and path.exists() and not path.is_dir()]
    if files:
        raise UsageError(f"{files[0]} is a file: name a folder for the outputs")
    _require_folder_ancestors(*paths)


def _require_folder_ancestors(*paths):
    for path in paths:
        if path is None:
            continue
        existing = next((parent for parent in Path(path).absolute().parents if parent.exists()), None)
        if existing is not None and not existing.is_dir():
            raise UsageError(f"{path}: {existing} is a file, not a folder to write in")


def _refuse_writing_over_inputs(outputs, inputs, manifest=None):
    """UsageError, before any work, when an output would replace an input file, an image that
    ``manifest`` (a CSV with a path column) names, or another output.

    ``outputs`` holds every file the command writes, those it puts in its output folder or
    beside another output included; None is an option not given. An image is matched by the
    end of the output's path, so that the manifest's root need not be known: writing over
    ``…/images/p1.png`` is refused for a manifest naming ``images/p1.png`` wherever it lies.
    """
    outputs = [Path(path) for path in outputs if path is not None]
    read = {os.path.realpath(path): path for path in inputs if path is not None}
    clashes = [f"{path} is the input {read[os.path.realpath(path)]}" for path in outputs
               if os.path.realpath(path) in read]
    images = _manifest_paths(manifest) if manifest is not None else set()
    clashes += [f"{path} is an image that {manifest} names" for path in outputs if _path_endings(path) & images]
    if clashes:
        raise UsageError(f"refusing to write over an input: {'; '.join(clashes)}; name another output")
    seen = {}
    for path in outputs:
        earlier = seen.setdefault(os.path.realpath(path), path)
        if earlier is not path:
            raise UsageError(f"{earlier} and {path} are one file: the command writes two files there")


def _manifest_paths(manifest):
    import pandas as pd

    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["path"])
    except (ValueError, OSError, pd.errors.ParserError):
        return set()  # the command's own reading of the manifest names the problem
    return {os.path.normpath(path).replace(os.sep, "/") for path in table["path"] if path}


def _path_endings(path):
    """"a/b/c.png", "b/c.png" and "c.png" for …/a/b/c.png, as given and with links resolved (the
    images folder may be a link to where they lie)."""
    endings = set()
    for full in (os.path.abspath(path), os.path.realpath(path)):
        parts = Path(full).parts[1:]
        endings.update("/".join(parts[k:]) for k in range(len(parts)))
    return endings


def _add_config_options(parser, per_dataset=False):
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply for every key it leaves out)")
    parser.add_argument("--set", metavar="JSON", help='config overrides as JSON, e.g. \'{"preprocess": {"size": [32, 32]}}\'')
    if per_dataset:
        parser.add_argument("--dataset", help="dataset of the config whose overrides (io, preprocess, validation, "
                            "split) apply, as in the workflow (default: the config's first dataset)")


def _run_name(args):
    """The run named by --run (default: the config's first), checked against the config."""
    return _config_entry(args.loaded_config, "runs", args.run)


def _config_entry(config, section, name):
    """``name``, or by default the first entry of ``config[section]`` (runs, datasets), checked."""
    entries = config[section]
    name = name or next(iter(entries))
    if name not in entries:
        raise UsageError(f"unknown {section[:-1]} {name!r}; the config has {', '.join(entries)}")
    return name


def _dataset_name(args):
    """The dataset named by --dataset (default: the config's first), checked against the config."""
    return _config_entry(args.loaded_config, "datasets", args.dataset)


def _dataset_options(args):
    """The config's sections for one dataset: the top level with that dataset's overrides merged."""
    from .config import dataset_config

    return dataset_config(args.loaded_config, _dataset_name(args))


# --- validate ----------------------------------------------------------------------------------
def _add_validate(sub):
    p = sub.add_parser("validate", help="check a manifest and every image it names",
                       description="Validate a manifest: columns, labels, files, decoding, duplicates, "
                       "patients. Writes the validated manifest (only when valid) and a report.")
    p.add_argument("manifest", type=Path, help="manifest CSV (columns path, label, patient, modality)")
    p.add_argument("--root", type=Path, help="folder the manifest's paths are relative to (default: the config "
                   "dataset's root, else the manifest's folder)")
    p.add_argument("--report", type=Path, required=True, help="validation report (JSON; a .md is written beside it)")
    p.add_argument("--out", type=Path, help="validated manifest CSV (default: manifest.validated.csv beside the report)")
    p.add_argument("--labels", nargs="+", help="allowed labels, in class order (default: the config dataset's labels)")
    p.add_argument("--threads", type=positive_int, default=1, help="decoding processes")
    p.add_argument("--decode-cache", type=Path,
                   help="JSON file of per-file decoding results; revalidation decodes only new or changed files")
    _add_config_options(p, per_dataset=True)
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args):
    from .manifest import raise_if_invalid, validate_manifest, write_validation_outputs
    from .privacy import resolve_salt

    options = _dataset_options(args)
    # As the workflow: labels set the class order (and so the positive class), root the paths.
    root = args.root or (Path(options["root"]) if options.get("root") else args.manifest.parent)
    labels = args.labels or options.get("labels")
    out = args.out or args.report.parent / "manifest.validated.csv"
    _require_file_targets(out, args.report, args.decode_cache)  # before the decoding of every image
    result = validate_manifest(args.manifest, root, io_options=options["io"],
                               validation_options=options["validation"], labels=labels,
                               salt=resolve_salt(args.loaded_config["salt"]), threads=args.threads,
                               decode_cache=args.decode_cache)
    write_validation_outputs(result, out, args.report, args.report.with_suffix(".md"))
    # Exit 1 listing the first errors (with row, path and code) and the report's path.
    raise_if_invalid(result, args.report)
    for problem in result.problems:
        if problem.severity == "warning" and problem.row is None:  # the manifest's, not a row's: said here too
            warnings.warn(f"{problem.code}: {problem.message}", stacklevel=2)
    summary = result.summary
    print(f"{len(result.table)} samples valid ({summary['n_warnings']} warning(s), "
          f"{summary['n_rows_dropped']} row(s) dropped); wrote {out} and {args.report}")


# --- preprocess --------------------------------------------------------------------------------
def _add_preprocess(sub):
    p = sub.add_parser("preprocess", help="build the HDF5 cache from a validated manifest",
                       description="Read, resize and normalise every image of a validated manifest "
                       "into an HDF5 cache, and write the dataset fingerprint.")
    p.add_argument("manifest", type=Path, help="validated manifest (from 'medclassify validate')")
    p.add_argument("--root", type=Path, help="folder the manifest's paths are relative to, as given to validate "
                   "(default: the config dataset's root)")
    p.add_argument("--out", type=Path, required=True, help="cache file (.h5)")
    p.add_argument("--fingerprint", type=Path, required=True, help="fingerprint JSON")
    p.add_argument("--report", type=Path, help="validation report.json, for the class order (default: classes sorted)")
    p.add_argument("--threads", type=positive_int, default=1, help="decoding processes")
    p.add_argument("--shards", type=int, help="part files to write one after another (default: preprocess.shards)")
    p.add_argument("--no-reuse", action="store_true",
                   help="decode every image instead of reusing unchanged ones from the cache's blocks")
    _add_config_options(p, per_dataset=True)
    p.set_defaults(func=_cmd_preprocess)


def _cmd_preprocess(args):
    import pandas as pd

    from .cache import build_cache_part, default_blocks_dir, merge_cache_parts

    _require_files(args.manifest, args.report)
    _require_file_targets(args.out, args.fingerprint)
    _refuse_writing_over_inputs([args.out, args.fingerprint], [args.manifest, args.report], manifest=args.manifest)
    if args.out.suffix == "":  # its parts go in the folder named by its stem: the cache's own path
        raise UsageError(f"--out {args.out}: give the cache file a suffix, e.g. {args.out}.h5")
    if args.shards is not None and args.shards < 1:
        raise UsageError(f"--shards {args.shards}: give 1 or more part files")
    options = _dataset_options(args)
    root = args.root or (Path(options["root"]) if options.get("root") else None)
    if root is None:
        raise UsageError("--root: give the folder the manifest's paths are relative to (validate's --root), "
                         "or a config whose dataset names its root")
    table = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    if args.report:
        classes = _report_classes(args.report)
    else:
        classes = sorted(table["label"].unique())
    n_shards = args.shards if args.shards is not None else options["preprocess"]["shards"]
    # Same layout as the workflow: results/x/cache.h5 has its parts in results/x/cache/.
    parts = [args.out.parent / args.out.stem / f"part-{i}-of-{n_shards}.h5" for i in range(n_shards)]
    blocks = default_blocks_dir(parts[0])
    for shard, part in enumerate(parts):
        summary = build_cache_part(args.manifest, root, part, preprocess_options=options["preprocess"],
                                   io_options=options["io"], classes=classes, shard=shard, n_shards=n_shards,
                                   threads=args.threads, blocks=blocks, reuse=not args.no_reuse)
        print(f"{part}: {summary['rows']} images, {summary['decoded']} decoded, {summary['reused']} reused")
    merge_cache_parts(parts, args.out, args.fingerprint, blocks=blocks)  # removes other shard counts' parts
    print(f"wrote {args.out} and {args.fingerprint}")


def _report_classes(report):
    """The class list of a validation report.json; InputError naming the file when it has none."""
    from .model_info import read_json_object

    classes = read_json_object(report, "a validation report").get("classes")
    if not isinstance(classes, list) or not classes:
        raise InputError(f"{report}: not a validation report (no list of classes)",
                         ["give --report the report.json that medclassify validate wrote"])
    return classes


# --- split -------------------------------------------------------------------------------------
def _add_split(sub):
    p = sub.add_parser("split", help="assign samples to train/val/test, grouped by patient",
                       description="Split a validated manifest by patient (stratified by label), "
                       "or honour its split column (which must name train, val and test rows), or make k folds with a "
                       "held-out test set. A split or fold left empty is refused.")
    p.add_argument("manifest", type=Path, help="validated manifest")
    p.add_argument("--out", type=Path, required=True, help="splits CSV")
    p.add_argument("--report", type=Path, required=True, help="split report JSON (a .png is written beside it)")
    _add_config_options(p, per_dataset=True)
    p.set_defaults(func=_cmd_split)


def _cmd_split(args):
    import pandas as pd

    from .config import check_validated_manifest_fits
    from .splits import make_splits, write_split_outputs

    _require_files(args.manifest)
    _require_file_targets(args.out, args.report)
    _refuse_writing_over_inputs([args.out, args.report, args.report.with_suffix(".png")], [args.manifest],
                                manifest=args.manifest)
    options = _dataset_options(args)
    table = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    check_validated_manifest_fits(args.loaded_config, _dataset_name(args), table)
    splits, report = make_splits(table, options["split"])
    write_split_outputs(splits, report, args.out, args.report, args.report.with_suffix(".png"))
    print(f"wrote {args.out} and {args.report}")


# --- train -------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="train the head (frozen backbone) or fine-tune",
                       description="Train one stage from the HDF5 cache and the splits file.")
    p.add_argument("--stage", choices=["head", "finetune"], required=True, help="which stage to train")
    p.add_argument("--cache", type=Path, required=True, help="cache.h5")
    p.add_argument("--splits", type=Path, required=True, help="splits.csv")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.keras, history.csv, …)")
    p.add_argument("--init-model", type=Path, help="head model to fine-tune (stage finetune)")
    p.add_argument("--run", default=None, help="run name from the config's runs (default: the first)")
    p.add_argument("--fold", type=int, help="fold, with split.method kfold")
    p.add_argument("--threads", type=positive_int, help="CPU threads for TensorFlow")
    _add_config_options(p, per_dataset=True)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    # Before TensorFlow's import, so that a typo fails in a second; open_cache's own check of the
    # cache says how to build it.
    if args.stage == "head" and args.init_model is not None:
        raise UsageError(f"--init-model {args.init_model}: only --stage finetune starts from a model; the head "
                         "stage builds its own from the config (train.backbone, train.weights)")
    _require_files(args.splits, args.init_model)
    _require_folder_targets(args.out)
    _refuse_writing_over_inputs([args.out / name for name in ("model.keras", "model.json", "history.csv")],
                                [args.cache, args.splits, args.init_model])
    from .cache import check_built_with
    from .config import run_config
    from .training import train_stage

    options = run_config(args.loaded_config, _run_name(args))
    if args.stage == "finetune" and args.init_model is None and options["head"]["epochs"] > 0:
        warnings.warn(f"fine-tuning a new model: the config's head stage (head.epochs {options['head']['epochs']}) "
                      "is not run by this command; to fine-tune the head it trains, run --stage head first and "
                      "give its model.keras as --init-model", stacklevel=2)
    # A config file, or --set of preprocess, io or datasets, states the preprocessing, which the
    # cache must have had (a missing cache is named by the training's own open).
    stated = args.config or {"preprocess", "io", "datasets"} & set(_parse_overrides(args.set) if args.set else {})
    if stated and args.cache.is_file():
        check_built_with(args.cache, _dataset_options(args), "give the config the cache was built with (--config, "
                         "--set, --dataset), or build the cache with this one (medclassify preprocess)")
    train_stage(args.stage, args.cache, args.splits, args.out, options=options,
                fold=args.fold, init_model=args.init_model, threads=args.threads)
    print(f"wrote {args.out / 'model.keras'}")


# --- evaluate ----------------------------------------------------------------------------------
def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="metrics, confidence intervals and plots on the test split",
                       description="Evaluate a trained model: threshold chosen on val, metrics with "
                       "patient-level bootstrap CIs, calibration, subgroups and plots on test.")
    p.add_argument("--model", type=Path, required=True, help="model.keras")
    p.add_argument("--cache", type=Path, required=True, help="cache.h5")
    p.add_argument("--splits", type=Path, required=True, help="splits.csv")
    p.add_argument("--manifest", type=Path, required=True, help="validated manifest (for subgroups)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    # One option per stage: a run trained from scratch (weights: none, head.epochs: 0) has only a
    # fine-tuning history, which a positional list would have plotted as the head's.
    p.add_argument("--head-history", type=Path, help="history.csv of the head stage, for the training curves")
    p.add_argument("--finetune-history", type=Path, help="history.csv of the finetune stage, for the training curves")
    p.add_argument("--run", default=None, help="run name from the config's runs (default: the first)")
    p.add_argument("--fold", type=int, help="fold, with split.method kfold")
    p.add_argument("--threads", type=positive_int, help="CPU threads for TensorFlow")
    p.add_argument("--run-card", type=Path, help="also write the run card (config, versions, git state, data "
                   "fingerprint, splits hash, inputs by content, hardware) here, as the workflow writes "
                   "run_card.json")
    p.add_argument("--fingerprint", type=Path, help="fingerprint JSON of the cache, for --run-card "
                   "(default: fingerprint.json beside the cache)")
    p.add_argument("--split-report", type=Path, help="the split's report (medclassify split --report), for "
                   "--run-card: the card states the config's split options, which the split must have been made with")
    _add_config_options(p, per_dataset=True)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args):
    # As in train: before TensorFlow's import; the cache is checked by open_cache.
    histories = {stage: path for stage, path in (("head", args.head_history), ("finetune", args.finetune_history))
                 if path is not None}
    fingerprint = None
    if args.run_card is not None:
        fingerprint = args.fingerprint or args.cache.with_name("fingerprint.json")
        if args.split_report is None:
            raise UsageError("--run-card needs --split-report (the report medclassify split wrote): the card states "
                             "the config's split options, which are checked against the split's")
    _require_files(args.model, args.splits, args.manifest, *histories.values(), fingerprint, args.split_report)
    _require_file_targets(args.run_card)
    _require_folder_targets(args.out)
    from .workflow_paths import PLOT_NAMES

    written = [args.out / name for name in ("metrics.json", "predictions.csv")]
    written += [args.out / f"{name}.{suffix}" for name in PLOT_NAMES for suffix in ("png", "pdf")]
    _refuse_writing_over_inputs([args.run_card, *written],
                                [args.model, args.cache, args.splits, args.manifest, *histories.values(), fingerprint,
                                 args.split_report],
                                manifest=args.manifest)
    from .config import dataset_config, run_config, without_loading_options
    from .evaluation import run_evaluation
    from .runcard import recorded_dataset_options, write_run_card

    run = _run_name(args)
    options = run_config(args.loaded_config, run)
    dataset = _dataset_name(args)  # before the evaluation: a wrong --dataset costs nothing
    dataset_options = dataset_config(args.loaded_config, dataset)
    if args.run_card is not None:
        # Before the evaluation, which a card stating options the data and model were not made
        # with would waste: the card states the config's (--config, --set, --dataset, --run).
        fingerprint = _checked_run_card_inputs(args, fingerprint, options, dataset_options)
    started = time.time()
    run_evaluation(args.model, args.cache, args.splits, args.manifest, args.out,
                   options=options, histories=histories, fold=args.fold, threads=args.threads)
    print(f"wrote {args.out / 'metrics.json'}")
    if args.run_card is not None:
        ended = time.time()
        # The config as the workflow's card records it, so that the two cards' config_hash agree.
        config = {"dataset": recorded_dataset_options(dataset_options), "run": without_loading_options(options)}
        write_run_card(args.run_card, config=config, dataset=dataset, run=run, fingerprint=fingerprint,
                       splits=args.splits, manifest=args.manifest, cache=args.cache, model=args.model,
                       started=started, ended=ended, stages={"evaluate": (started, ended)},
                       command=" ".join(["medclassify", *args.argv]))
        print(f"wrote {args.run_card}")


def _checked_run_card_inputs(args, fingerprint_path, options, dataset_options):
    """The fingerprint for ``evaluate --run-card``, once the cache, the split, the model and the
    fingerprint are checked against the config the card will state; InputError otherwise."""
    from .cache import check_built_with, open_cache
    from .fitting import check_trained_with
    from .model_info import read_json_object
    from .splits import check_split_made_with

    remedy = "give the config they were made with (--config, --set, --dataset, --run)"
    check_built_with(args.cache, dataset_options, remedy)
    check_split_made_with(args.split_report, dataset_options["split"], remedy)
    check_trained_with(args.model, options, remedy)
    fingerprint = read_json_object(fingerprint_path, "the dataset fingerprint for the run card")
    with open_cache(args.cache) as cache:
        recorded = (fingerprint.get("params_hash"), fingerprint.get("n_samples"))
        if recorded != (cache.attrs["params_hash"], len(cache)):
            raise InputError(f"{fingerprint_path}: not the fingerprint of {args.cache}",
                             [f"it describes {recorded[1]} images of preprocessing {recorded[0]}; the cache holds "
                              f"{len(cache)} of {cache.attrs['params_hash']}",
                              "give --fingerprint the file medclassify preprocess wrote with this cache"])
    return fingerprint


# --- aggregate and compare ---------------------------------------------------------------------
def _add_aggregate(sub):
    p = sub.add_parser("aggregate", help="k-fold: mean ± std over folds and the fold ensemble on test",
                       description="Combine the evaluations of a k-fold run's folds: each fold's test metrics "
                       "with their mean and standard deviation, and the ensemble of the folds (test "
                       "probabilities averaged, threshold chosen on the pooled out-of-fold validation).")
    p.add_argument("predictions", type=Path, nargs="+", help="predictions.csv of each fold's evaluation")
    p.add_argument("--manifest", type=Path, required=True, help="validated manifest (for subgroups)")
    p.add_argument("--out", type=Path, required=True, help="output folder (metrics.json, predictions.csv)")
    p.add_argument("--run", default=None, help="run name from the config's runs (default: the first)")
    _add_config_options(p)
    p.set_defaults(func=_cmd_aggregate)


def _cmd_aggregate(args):
    _require_files(*args.predictions, args.manifest)
    _require_folder_targets(args.out)
    _refuse_writing_over_inputs([args.out / "metrics.json", args.out / "predictions.csv"],
                                [*args.predictions, args.manifest])
    from .config import run_config
    from .evaluation import aggregate_folds

    options = run_config(args.loaded_config, _run_name(args))
    aggregate_folds(args.predictions, args.manifest, args.out, options=options)
    print(f"wrote {args.out / 'metrics.json'}")


def _add_compare(sub):
    p = sub.add_parser("compare", help="one table and one AUC plot of several runs",
                       description="Tabulate the metrics.json of several runs (evaluations or k-fold "
                       "aggregates) as CSV and Markdown, and plot their AUC with confidence intervals.")
    p.add_argument("metrics", type=Path, nargs="+",
                   help="metrics.json of each run (results/<dataset>/<run>/evaluation or aggregate)")
    p.add_argument("--out", type=Path, required=True, help="output folder (runs.csv, runs.md, runs_auc.png)")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args):
    _require_files(*args.metrics)
    _require_folder_targets(args.out)
    _refuse_writing_over_inputs([args.out / name for name in ("runs.csv", "runs.md", "runs_auc.png")], args.metrics)
    from .evaluation import compare_runs

    args.out.mkdir(parents=True, exist_ok=True)
    compare_runs(args.metrics, args.out / "runs.csv", args.out / "runs.md", args.out / "runs_auc.png")
    print(f"wrote {args.out / 'runs.csv'}")


# --- predict -----------------------------------------------------------------------------------
def _add_predict(sub):
    p = sub.add_parser("predict", help="classify new images with a trained model",
                       description="Apply a trained model to image files or a manifest, with the "
                       "readers, preprocessing, classes and threshold saved with the model.")
    p.add_argument("--model", type=Path, nargs="+", required=True,
                   help="model.keras (model.json must lie beside it); several predict as an ensemble, "
                   "the mean of their probabilities (the folds of a k-fold run)")
    p.add_argument("--ensemble-metrics", type=Path,
                   help="metrics.json whose threshold decides for several models: a k-fold run's "
                   "aggregate/metrics.json (without it, a binary ensemble decides by arg-max)")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="image files, folders (every file below, hidden names left out with a warning), or one manifest CSV")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV")
    p.add_argument("--record", type=Path, help="JSON file for what made the predictions: models and their "
                   "sha256, threshold, test-time views, preprocessing, row counts")
    p.add_argument("--threads", type=positive_int, help="CPU threads for TensorFlow")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args):
    from .predict import predict_files

    _require_files(*args.model, args.ensemble_metrics)  # missing --input files become error rows of the output
    _require_file_targets(args.out, args.record)
    table = predict_files(args.model, args.input, args.out, threads=args.threads,
                          ensemble_metrics=args.ensemble_metrics, record_json=args.record)
    print(f"wrote {len(table)} rows to {args.out}")


# --- import-medmnist ---------------------------------------------------------------------------
def _add_import_medmnist(sub):
    p = sub.add_parser("import-medmnist", help="turn a MedMNIST .npz into images and a manifest",
                       description="Write a MedMNIST 2D dataset as PNG files plus a manifest that keeps "
                       "the official split. Downloads the official file (MD5-checked) unless --npz is given.")
    p.add_argument("name", help="MedMNIST dataset name, e.g. breastmnist")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--npz", type=Path, help="local .npz file (skips the download)")
    p.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224], help="image size of the file")
    p.set_defaults(func=_cmd_import_medmnist)


def _cmd_import_medmnist(args):
    from .datasets._output import check_replaceable
    from .datasets.medmnist import import_medmnist

    check_replaceable(args.out, "import-medmnist")
    manifest = import_medmnist(args.name, args.out, npz=args.npz, size=args.size)
    print(f"wrote {manifest}")


# --- demo-data ---------------------------------------------------------------------------------
def _add_demo_data(sub):
    p = sub.add_parser("demo-data", help="generate the synthetic demo dataset",
                       description="Generate a deterministic synthetic dataset in mixed real formats "
                       "(PNG, 16-bit TIFF/PNG, DICOM, NIfTI) with its manifest.")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=_at_least(3), default=60, help="number of synthetic patients (3 or more: "
                   "one a class; the default split needs 9)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo_data)


def _cmd_demo_data(args):
    from .datasets._output import check_replaceable
    from .datasets.demo import generate_demo_dataset

    check_replaceable(args.out, "demo-data")
    manifest = generate_demo_dataset(args.out, n_patients=args.patients, seed=args.seed)
    print(f"wrote {manifest}")


def build_parser():
    """Return the argument parser of the ``medclassify`` command."""
    parser = argparse.ArgumentParser(prog="medclassify", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"medclassify {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_validate, _add_preprocess, _add_split, _add_train, _add_evaluate, _add_aggregate,
                _add_compare, _add_predict, _add_import_medmnist, _add_demo_data):
        add(sub)
    return parser


@contextlib.contextmanager
def _warnings_as_messages(command):
    """Show warnings as the errors are shown, without Python's file, line and source line."""
    shown = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_: f"medclassify {command}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = shown


def main(argv=None):
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with status 2 on usage errors
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Validate the config before importing anything heavy, so a typo fails in a second.
        args.loaded_config = _load_config(args) if hasattr(args, "config") else None
        with _warnings_as_messages(args.command), terminated_as_exit():
            args.func(args)
    except InputError as error:
        print(f"medclassify {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except UsageError as error:
        print(f"medclassify {args.command}: usage error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        if error.errno not in _WRITE_ENVIRONMENT_ERRORS:
            raise
        # A full disk, a read-only folder or a file without permission is the machine's state, not a
        # bug: one line, no traceback.
        where = f" {error.filename}" if error.filename else ""
        print(f"medclassify {args.command}: error: cannot read or write{where}: {error.strerror or error}",
              file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


_WRITE_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


if __name__ == "__main__":
    sys.exit(main())

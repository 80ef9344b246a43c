import functools
import sys

# The library lives at the repository root; rule scripts put it on sys.path the same way.
sys.path.insert(0, workflow.basedir)

from medclassify.codedeps import rule_inputs
from medclassify.config import (
    config_file_problems,
    dataset_config,
    run_config,
    subgroup_column_problems,
    validate_config,
    without_loading_options,
    without_planning_options,
)
from medclassify.datasets import (
    DEMO_MANIFEST_COLUMNS,
    MEDMNIST_MANIFEST_COLUMNS,
    source_kind,
)
from medclassify.errors import InputError
from medclassify.manifest import (
    VALIDATED_COLUMNS,
    files_stamp,
    image_files_stamp,
    manifest_header,
)
from medclassify.predict import files_read, is_snakemake_pattern
from medclassify.runcard import recorded_dataset_options
from medclassify.workflow_paths import (
    PLOT_NAMES,
    input_path,
    manifest_root,
    parse_run,
    run_ids,
)

# The library's validation rather than snakemake.utils.validate, which stops at the first problem:
# this lists every one at once, those of each dataset and run (overrides merged) included, before
# any job is planned. Snakemake keeps the last of a key written twice in a config file, silently:
# the files are read again for those.
validate_config(config, file_problems=config_file_problems(workflow.configfiles))


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    run=r"[A-Za-z0-9_-]+(/fold_[0-9]+)?",
    shard=r"[0-9]+",
    backbone=r"[A-Za-z0-9_-]+",


def library_code(*modules):
    """Library files that a rule's script runs: the named modules and all they import.

    Listed among a rule's inputs, so that editing any of them reruns the rule; relative to the
    working directory, so that moving the project does not.
    """
    return rule_inputs("runlog", *modules)


def dataset(wildcards):
    """Resolved options of the dataset named by the wildcards."""
    return dataset_config(config, wildcards.dataset)


def run_options(wildcards):
    """Resolved options of the run named by the wildcards (fold suffix ignored).

    Less the options that only choose how training reads the images (LOADING_TRAIN_OPTIONS):
    rules pass these options as params, and a change of params reruns a job. train.py reads
    those from the config.
    """
    name, _ = parse_run(wildcards.run)
    return without_loading_options(run_config(config, name))


def head_options(wildcards):
    """What train_head reads: the train options (less the fine-tune ensemble size) and head."""
    options = run_options(wildcards)
    train = {key: value for key, value in options["train"].items() if key != "ensemble"}
    return {"train": train, "head": options["head"]}


def finetune_options(wildcards):
    """What finetune reads: train and finetune, and head's dropout, the classifier's in both stages
    (the members that an untrained head leaves to this stage are built with it). No more of head:
    in the params and the members' fingerprints, head.learning_rate would retrain every member even
    where the head stage trains nothing (head.epochs 0).
    """
    options = run_options(wildcards)
    return {
        "train": options["train"],
        "head": {"dropout": options["head"]["dropout"]},
        "finetune": options["finetune"],
    }


def fold_of(wildcards):
    """Fold of the run wildcard, or None outside k-fold cross-validation."""
    return parse_run(wildcards.run)[1]


def manifest_of(wildcards):
    """The dataset's source manifest: written by the workflow for demo and MedMNIST data."""
    options = dataset(wildcards)
    kind = source_kind(options)
    if kind != "manifest":
        return f"results/{wildcards.dataset}/{kind}/manifest.csv"
    manifest = options["manifest"]
    if manifest is None:
        raise ValueError(
            f"datasets.{wildcards.dataset}: set 'manifest' (or 'demo: true' or 'medmnist: <name>')"
        )
    # One spelling of the file (./m.csv, its absolute path): another would rerun every stage.
    return input_path(manifest)


def root_of(wildcards):
    """Folder that the dataset's manifest paths are relative to, spelled as input_path spells files."""
    options = dataset(wildcards)
    kind = source_kind(options)
    if kind != "manifest":
        return f"results/{wildcards.dataset}/{kind}"
    return manifest_root(options)


def validated_manifest_columns(name):
    """The columns dataset ``name``'s validated manifest will have; None while its manifest is
    missing or has a header that validation will refuse (it reports that, with every other problem).
    """
    options = dataset_config(config, name)
    kind = source_kind(options)
    if kind == "demo":
        header = DEMO_MANIFEST_COLUMNS
    elif kind == "medmnist":
        header = MEDMNIST_MANIFEST_COLUMNS
    else:
        header = manifest_header(options["manifest"]) if options["manifest"] else None
    return None if header is None else [*VALIDATED_COLUMNS, *header]


# Subgroup columns are read by evaluation, after training: check them before any job is planned.
_subgroup_problems = subgroup_column_problems(config, validated_manifest_columns)
if _subgroup_problems:
    raise InputError("invalid configuration", _subgroup_problems)


def validation_options(wildcards):
    """The dataset's validation options that validation reads: watch_images only steers planning,
    so that switching it does not change the params (and rerun every stage) by itself.
    """
    return without_planning_options(dataset(wildcards)["validation"])


def image_files_of(wildcards):
    """A stamp of the images that a user's manifest names, so that changing one reruns validation."""
    if source_kind(dataset(wildcards)) != "manifest":
        return "written by the workflow"  # its own rules rewrite them and the manifest together
    if not dataset(wildcards)["validation"]["watch_images"]:
        return "not watched"
    return image_files_stamp(manifest_of(wildcards), root_of(wildcards))


def shards_of(name):
    return dataset_config(config, name)["preprocess"]["shards"]


def cache_parts(wildcards):
    n = shards_of(wildcards.dataset)
    return [f"results/{wildcards.dataset}/cache/part-{i}-of-{n}.h5" for i in range(n)]


def folds_of(name):
    split = dataset_config(config, name)["split"]
    return split["folds"] if split["method"] == "kfold" else None


def runs_of(name):
    """Every {run} value of a dataset: run names, or name/fold_k under k-fold."""
    return run_ids(config["runs"], folds_of(name))


def run_metrics(name):
    """The metrics file that stands for each run of a dataset in the comparison table."""
    if folds_of(name):
        return [
            f"results/{name}/{run}/aggregate/metrics.json" for run in config["runs"]
        ]
    return [f"results/{name}/{run}/evaluation/metrics.json" for run in config["runs"]]


def final_outputs():
    outputs = []
    for name in config["datasets"]:
        outputs += [f"results/{name}/runs.csv", f"results/{name}/split/report.json"]
        outputs += [
            f"results/{name}/{run}/evaluation/metrics.json" for run in runs_of(name)
        ]
        outputs += run_metrics(name)
    if config["predict"]["input"]:
        outputs.append("results/predict/predictions.csv")
    return outputs


def weights_input(wildcards):
    """The ImageNet weights file when a run asks for them; nothing otherwise."""
    train = run_options(wildcards)["train"]
    if train["weights"] == "imagenet":
        return f"resources/weights/{train['backbone']}.imagenet.weights.h5"
    if train["weights"] != "none":
        return train["weights"]
    return []


def evaluation_plot(name, extension):
    return report(
        f"results/{{dataset}}/{{run}}/evaluation/{name}.{extension}",
        caption=f"../report/{name}.rst",
        category="{dataset}",
        subcategory="{run}",
        labels={"stage": "evaluation", "figure": name, "format": extension},
    )


def predict_run_ids():
    """Dataset, run and {run} values of predict's models, from predict.dataset and predict.run
    (by default the first of each) and, under k-fold, predict.fold: every fold, or the one named.

    Called only from input functions, which Snakemake calls only when it plans a predict job, so
    that a name that predict.dataset or predict.run kept after that dataset or run left the config
    stops nobody who does not predict.
    """
    name = config["predict"]["dataset"] or next(iter(config["datasets"]))
    run = config["predict"]["run"] or next(iter(config["runs"]))
    for option, value, section in [("dataset", name, "datasets"), ("run", run, "runs")]:
        if value not in config[section]:
            raise ValueError(
                f"predict.{option}: {value!r} is not in the config ({section}: {', '.join(config[section])})"
            )
    fold, folds = config["predict"]["fold"], folds_of(name)
    if not folds and fold != "all":
        raise ValueError(
            f"predict.fold: {fold} names a fold, but dataset {name!r} is not split by k-fold "
            f"(split.method: {dataset_config(config, name)['split']['method']}); leave predict.fold at all"
        )
    ids = run_ids([run], folds)
    if fold == "all":
        return name, run, ids
    if fold >= len(ids):
        raise ValueError(
            f"predict.fold: {fold} is not a fold of dataset {name!r} (split.folds: {folds}, so 0 to {folds - 1})"
        )
    return name, run, [ids[fold]]


def predict_models(wildcards):
    """The fine-tuned model(s) of predict; several predict as an ensemble."""
    name, _, run_ids = predict_run_ids()
    return [f"results/{name}/{run_id}/finetune/model.keras" for run_id in run_ids]


def predict_metrics(wildcards):
    """The evaluation of each of predict's models: predict applies its threshold and test-time views."""
    name, _, run_ids = predict_run_ids()
    return [f"results/{name}/{run_id}/evaluation/metrics.json" for run_id in run_ids]


def predict_ensemble_metrics(wildcards):
    """The k-fold aggregate whose threshold decides for the ensemble of every fold (else nothing)."""
    name, run, run_ids = predict_run_ids()
    return [f"results/{name}/{run}/aggregate/metrics.json"] if len(run_ids) > 1 else []


def predict_input():
    """predict.input, which a request for predict's outputs needs."""
    if not config["predict"]["input"]:
        raise ValueError(
            "results/predict/ was asked for, but predict.input is null: set it to a folder of new "
            "images, an image or a manifest CSV"
        )
    return config["predict"]["input"]


def predict_images(wildcards):
    """Every file predict reads (the folder's, or the manifest and its images), as rule inputs, so
    that adding or changing an image reruns predict; but those whose names Snakemake would read
    as a pattern (a '{' or '}'), which go into the stamp of predict_unlisted_images instead.
    """
    return [path for path in predict_files_read() if not is_snakemake_pattern(path)]


def predict_unlisted_images(wildcards):
    """Name, size and time stamp of the files predict reads that cannot be rule inputs."""
    return files_stamp(
        path for path in predict_files_read() if is_snakemake_pattern(path)
    )


@functools.cache
def predict_files_read():
    """files_read of predict.input, listed once per planning: the inputs and the params need it."""
    return files_read(predict_input())

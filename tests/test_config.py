"""The config schema, its defaults, the resolution of datasets and runs, and the docs."""

import pytest

from medclassify.config import (
    REPO_ROOT, config_hash, dataset_config, deep_merge, load_config, loading_options, run_config, schema_reference,
    subgroup_column_problems, validate_config, without_loading_options,
)
from medclassify.errors import InputError


def test_empty_config_gets_every_default():
    config = load_config()
    assert list(config["datasets"]) == ["demo"] and config["datasets"]["demo"]["demo"] is True
    assert config["preprocess"]["size"] == [64, 64]
    assert config["split"]["fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert set(config["runs"]) == {"baseline"}


def test_the_schema_offers_the_preprocess_choices_the_options_check_accepts():
    from medclassify.config import load_schema
    from medclassify.preprocess_options import ASPECT_POLICIES, INTENSITY_MODES, RESIZE_METHODS

    preprocess = load_schema()["properties"]["preprocess"]["properties"]
    assert tuple(preprocess["resize"]["enum"]) == RESIZE_METHODS
    assert tuple(preprocess["aspect"]["enum"]) == ASPECT_POLICIES
    assert tuple(preprocess["intensity"]["enum"]) == INTENSITY_MODES


def test_every_schema_key_has_a_description_and_a_default():
    from medclassify.config import load_schema

    missing = []

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub or "default" not in sub:
                missing.append(f"{path}{name}")
            walk(sub, f"{path}{name}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}<name>.")

    schema = load_schema()
    for name, sub in schema["properties"].items():
        if "description" not in sub or "default" not in sub:
            missing.append(name)
        walk(sub, f"{name}.")
    assert not missing


def test_every_schema_key_holds_only_schema_keywords():
    # An unquoted comma in a flow mapping's description ("(below 1, which would …)") ended it
    # there and made the rest a key of its own, cutting config/README.md's text (helper-78).
    from medclassify.config import load_schema

    keywords = {"type", "description", "default", "properties", "additionalProperties", "items", "enum", "const",
                "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "oneOf", "anyOf", "$ref", "required",
                "propertyNames", "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxLength",
                "minLength", "not", "if", "then", "else", "allOf", "examples"}
    strays = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        strays.extend(f"{path}: {key!r}" for key in node if key not in keywords)
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        for key in ("additionalProperties", "items"):
            walk(node.get(key), f"{path}.{key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for index, sub in enumerate(node.get(key, [])):
                walk(sub, f"{path}.{key}[{index}]")

    schema = load_schema()
    for name, sub in schema["properties"].items():
        walk(sub, name)
    for name, sub in schema.get("definitions", {}).items():
        walk(sub, f"definitions.{name}")
    assert not strays


def test_unknown_keys_and_bad_values_are_all_reported():
    with pytest.raises(InputError) as caught:
        load_config(overrides={"preprocess": {"sise": [32, 32], "dtype": "int7"}, "trian": {}})
    text = str(caught.value)
    assert "sise" in text and "int7" in text and "trian" in text


def test_fractions_must_sum_to_one():
    with pytest.raises(InputError, match="sum to"):
        load_config(overrides={"split": {"fractions": {"train": 0.8, "val": 0.15, "test": 0.15}}})


def test_dataset_overrides_merge_over_top_level_sections():
    config = load_config(overrides={
        "preprocess": {"size": [32, 32]},
        "datasets": {"ct": {"manifest": "m.csv", "preprocess": {"intensity": "window", "window": {"center": 40, "width": 400}}}},
    })
    options = dataset_config(config, "ct")
    assert options["preprocess"]["size"] == [32, 32]
    assert options["preprocess"]["window"] == {"center": 40, "width": 400}
    assert options["preprocess"]["intensity"] == "window"
    assert list(config["datasets"]) == ["ct"], "naming datasets replaces the demo default"


def test_bad_dataset_override_names_the_dataset():
    with pytest.raises(InputError, match="datasets.x.preprocess.dtype"):
        load_config(overrides={"datasets": {"x": {"manifest": "m.csv", "preprocess": {"dtype": "int7"}}}})


def test_run_overrides_merge_over_training_sections():
    config = load_config(overrides={"runs": {"a": {}, "b": {"finetune": {"epochs": 3}}}})
    assert run_config(config, "b")["finetune"]["epochs"] == 3
    assert run_config(config, "a")["finetune"]["epochs"] == config["finetune"]["epochs"]
    assert run_config(config, "b")["train"] == run_config(config, "a")["train"]


def test_how_training_reads_the_images_is_kept_apart_from_the_options_rules_rerun_on():
    config = load_config(overrides={"runs": {"a": {}, "b": {"train": {"cache_in_memory_max_gb": 0}}}})
    assert without_loading_options(run_config(config, "a")) == without_loading_options(run_config(config, "b"))
    assert "cache_in_memory_max_gb" not in without_loading_options(run_config(config, "a"))["train"]
    assert loading_options(config, "a") == {"cache_in_memory_max_gb": 4}
    assert loading_options(config, "b") == {"cache_in_memory_max_gb": 0}


def test_npz_path_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDCLASSIFY_BREASTMNIST_NPZ", "/data/b.npz")
    config = load_config(REPO_ROOT / "config" / "breastmnist.yaml")
    assert dataset_config(config, "breastmnist")["npz"] == "/data/b.npz"
    # A dataset name with a hyphen gives a variable a shell can export.
    monkeypatch.setenv("MEDCLASSIFY_BREAST_US_NPZ", "/data/c.npz")
    config = load_config(overrides={"datasets": {"breast-us": {"medmnist": "breastmnist"}}})
    assert dataset_config(config, "breast-us")["npz"] == "/data/c.npz"


def test_deep_merge_does_not_modify_its_arguments():
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"b": 2}})
    assert merged == {"a": {"b": 2, "c": [1]}} and base == {"a": {"b": 1, "c": [1]}}


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1}) != config_hash({"a": 2, "b": 1})


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "breastmnist.yaml"):
        load_config(REPO_ROOT / "config" / name)


def test_config_readme_documents_every_key():
    readme = (REPO_ROOT / "config" / "README.md").read_text()
    assert schema_reference() in readme, "regenerate config/README.md: python -m medclassify.config"


def test_resolved_options_do_not_depend_on_the_key_order_of_the_config():
    config = {"datasets": {"demo": {"demo": True}}, "runs": {"baseline": {}},
              "train": {"batch_size": 8, "backbone": "resnet18"}, "preprocess": {"size": [16, 16], "aspect": "pad"}}
    reordered = {key: dict(reversed(list(value.items()))) for key, value in reversed(list(config.items()))}
    for options in (config, reordered):
        validate_config(options)
    assert repr(run_config(config, "baseline")) == repr(run_config(reordered, "baseline"))
    assert repr(dataset_config(config, "demo")) == repr(dataset_config(reordered, "demo"))


def test_unquoted_on_and_off_are_read_as_the_switch_strings(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  mixed_precision: off\n  jit_compile: on\n  deterministic: false\n"
                    "runs:\n  fast:\n    train:\n      mixed_precision: on\n")
    config = load_config(path)
    assert run_config(config, "fast")["train"]["mixed_precision"] == "on"
    train = config["train"]
    assert (train["mixed_precision"], train["jit_compile"]) == ("off", "on")
    assert train["deterministic"] is False, "only keys whose schema allows on/off are changed"


def test_command_line_overrides_arrive_as_strings_and_are_read_as_the_schema_expects():
    # Snakemake reads a nested --config value with YAML's BaseLoader: config/README.md's
    # `--config 'finetune={"epochs": 20}'` gave the string '20', which the schema refused.
    config = load_config()
    config["finetune"].update(epochs="20", learning_rate="0.001")
    config["train"]["deterministic"] = "false"
    config["preprocess"]["size"] = ["48", "48"]
    config["salt"] = "12345"
    validate_config(config)
    assert (config["finetune"]["epochs"], config["finetune"]["learning_rate"]) == (20, 0.001)
    assert config["train"]["deterministic"] is False and config["preprocess"]["size"] == [48, 48]
    assert config["salt"] == "12345", "a string the schema accepts stays one"
    config["finetune"]["epochs"] = "twenty"
    with pytest.raises(InputError, match="finetune.epochs: 'twenty' is not of type 'integer'"):
        validate_config(config)


def test_command_line_overrides_of_a_run_or_a_dataset_are_read_as_the_schema_expects():
    # --config 'runs={"longer": {"finetune": {"epochs": 3}}}' gave '3', refused inside runs and datasets
    # although the same value at the top level was read as a number.
    config = load_config()
    config["runs"]["longer"] = {"finetune": {"epochs": "3"}, "train": {"augment": {"horizontal_flip": "true"}}}
    config["datasets"]["demo"]["preprocess"] = {"size": ["32", "32"], "window": {"center": "40", "width": "400"}}
    validate_config(config)
    longer = run_config(config, "longer")
    assert longer["finetune"]["epochs"] == 3 and longer["train"]["augment"]["horizontal_flip"] is True
    assert dataset_config(config, "demo")["preprocess"]["size"] == [32, 32]
    assert dataset_config(config, "demo")["preprocess"]["window"] == {"center": 40, "width": 400}, "inside a oneOf"
    config["runs"]["longer"]["finetune"]["epochs"] = "three"
    with pytest.raises(InputError, match="runs.longer.finetune.epochs: 'three' is not of type 'integer'"):
        validate_config(config)


@pytest.mark.parametrize("where", [("train",), ("runs", "fast", "train")])
def test_a_string_that_yaml_reads_as_another_wrong_value_is_reported_as_written(where):
    # --config 'runs={"fast": {"train": {"mixed_precision": "no"}}}': YAML reads "no" as false,
    # which the schema refused as "False is not of type 'string'", naming neither "no" nor the choices.
    config = load_config(overrides={"runs": {"fast": {}}})
    section = config
    for key in where:
        section = section.setdefault(key, {})
    section["mixed_precision"] = "no"
    with pytest.raises(InputError) as error:
        validate_config(config)
    assert f"{'.'.join(where)}.mixed_precision: 'no' is not one of ['auto', 'on', 'off']" in error.value.problems


@pytest.mark.parametrize("section, key, text, message", [
    ("train", "batch_size", "0", "train.batch_size: 0 is less than the minimum of 1"),
    ("finetune", "epochs", "-1", "finetune.epochs: -1 is less than the minimum of 0"),
    ("finetune", "learning_rate", "-1e-3", "finetune.learning_rate: -0.001 is not a number > 0 or 'auto'"),
    ("io", "nifti_axis", "3", "io.nifti_axis: 3 is not one of [0, 1, 2]"),  # a number among numbers
])
def test_a_command_line_number_out_of_range_is_reported_as_a_number(section, key, text, message):
    # '0' for a batch size was reported as "'0' is not of type 'integer'" (helper-42).
    config = load_config()
    config[section][key] = text
    with pytest.raises(InputError) as error:
        validate_config(config)
    assert any(problem.startswith(message) for problem in error.value.problems), error.value.problems


def test_xla_asked_for_under_op_determinism_is_refused_with_the_way_out():
    config = {"datasets": {"demo": {"demo": True}}, "train": {"jit_compile": "on"},
              "runs": {"baseline": {}, "fast": {"train": {"deterministic": False}}}}
    with pytest.raises(InputError) as error:
        validate_config(config)
    [problem] = error.value.problems
    assert problem.startswith("runs.baseline: train.jit_compile 'on' cannot take effect with train.deterministic true")
    assert "train.deterministic: false" in problem
    assert run_config(config, "fast")["train"]["jit_compile"] == "on"
    with pytest.raises(InputError, match="runs.baseline: train.jit_compile 'on'"):
        run_config(config, "baseline")


def test_auto_head_epochs_and_learning_rate_follow_the_weights():
    config = validate_config({"datasets": {"demo": {"demo": True}}, "runs": {
        "scratch": {}, "imagenet": {"train": {"backbone": "ResNet50", "weights": "imagenet"}},
        "file": {"train": {"weights": "/weights/resnet18.weights.h5"}},
        "chosen": {"train": {"backbone": "DenseNet121", "weights": "imagenet"}, "head": {"epochs": 2},
                   "finetune": {"learning_rate": 0.01}}}})
    assert config["head"]["epochs"] == "auto" and config["finetune"]["learning_rate"] == "auto"
    resolved = {run: (options["head"]["epochs"], options["finetune"]["learning_rate"])
                for run in config["runs"] for options in [run_config(config, run)]}
    assert resolved == {"scratch": (0, 0.002), "imagenet": (5, 0.0001), "file": (5, 0.0001), "chosen": (2, 0.01)}
    with pytest.raises(InputError) as error:
        validate_config({"head": {"epochs": "many"}})
    assert [problem.split(":")[0] for problem in error.value.problems] == ["head.epochs"]


def test_every_dataset_and_section_problem_is_listed_at_once():
    with pytest.raises(InputError) as error:
        load_config(overrides={"datasets": {
            "a": {"manifest": "m.csv", "preprocess": {"dtype": "int7"}, "io": {"channels": "purple"}},
            "b": {"manifest": "m.csv", "split": {"method": "random"}},
            "c": {"manifest": "m.csv", "split": {"fractions": {"train": 0.9, "val": 0.2, "test": 0.1}}},
            "d": {"manifest": "m.csv", "split": {"fractions": {"train": 0.9, "val": 0.3, "test": 0.1}}}}})
    assert [problem.split(" ")[0].rstrip(":") for problem in error.value.problems] == [
        "datasets.a.io.channels", "datasets.a.preprocess.dtype", "datasets.b.split.method",
        "datasets.c.split.fractions", "datasets.d.split.fractions"]


def test_top_level_problems_do_not_hide_dataset_problems_nor_repeat_for_each_dataset():
    with pytest.raises(InputError) as error:
        load_config(overrides={"preprocess": {"sise": 1},
                               "datasets": {"a": {"manifest": "m.csv", "preprocess": {"size": [32]}},
                                            "b": {"manifest": "m.csv"}}})
    assert [problem.split(":")[0] for problem in error.value.problems] == ["preprocess", "datasets.a.preprocess.size"]
    assert "'sise' was unexpected" in error.value.problems[0]


def test_every_run_is_validated_when_the_config_is_loaded():
    with pytest.raises(InputError) as error:
        load_config(overrides={"preprocess": {"dtype": "int7"}, "runs": {
            "r": {"train": {"batch_size": "big"}, "evaluate": {"threshold": "bogus"}},
            "s": {"train": {"epochs": 3}}, "ok": {}}})
    assert [problem.split(":")[0] for problem in error.value.problems] == [
        "preprocess.dtype", "runs.r.train.batch_size", "runs.r.evaluate.threshold", "runs.s.train"]


def test_fractions_that_do_not_sum_to_one_say_where_each_value_was_set():
    with pytest.raises(InputError) as error:
        load_config(overrides={"split": {"fractions": {"train": 0.8, "val": 0.1}}})
    [problem] = error.value.problems
    assert problem == ("datasets.demo.split.fractions sum to 1.05, not 1 "
                       "(train 0.8, val 0.1 from split.fractions; test 0.15 from the default)")


def test_a_dataset_resolved_on_its_own_reports_what_it_inherits_from_the_top_level():
    config = {"datasets": {"a": {"manifest": "m.csv"}}, "preprocess": {"dtype": "int7"}}
    with pytest.raises(InputError, match="datasets.a.preprocess.dtype: 'int7'"):
        dataset_config(config, "a")


@pytest.mark.parametrize("content, expected", [
    (None, "cannot be read (No such file or directory)"),
    ("preprocess: {size: [32\n", "is not valid YAML"),
    (b"preprocess: {size: [32, 32]}  # \xe9\n", "is not UTF-8"),
    ("- preprocess\n", "must hold a mapping of keys, not a list"),
])
def test_unreadable_config_file_is_an_input_error_naming_it(tmp_path, content, expected):
    path = tmp_path / "config.yaml"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as error:
        load_config(path, overrides={"split": {"seed": 1}})
    assert str(error.value).startswith(f"{path}: ") and expected in str(error.value)


def test_the_breastmnist_config_makes_the_disease_class_positive():
    from medclassify.datasets.medmnist import label_names

    evaluate = run_config(load_config(REPO_ROOT / "config" / "breastmnist.yaml"), "baseline")["evaluate"]
    assert evaluate["positive_class"] == "malignant" and "malignant" in label_names("breastmnist")


def test_what_a_stage_would_refuse_is_listed_when_the_config_is_read():
    # These failed only when preprocess or evaluate ran, after validation (or training), one at a time.
    with pytest.raises(InputError) as error:
        load_config(overrides={
            "preprocess": {"intensity": "window"},
            "datasets": {"demo": {"demo": True, "labels": ["benign", "malignant"]},
                         "ct": {"manifest": "m.csv", "root": "r",
                                "preprocess": {"intensity": "percentile", "percentiles": [50, 10]}}},
            "runs": {"baseline": {}, "other": {"evaluate": {"positive_class": "malignnat"}}}})
    assert error.value.problems == [
        "datasets.demo: preprocess.window: intensity 'window' needs a window {center, width} with width > 0",
        "datasets.ct: preprocess.percentiles: [50, 10] must be [low, high] with 0 <= low < high <= 100",
        "runs.other: evaluate.positive_class 'malignnat' is not one of datasets.demo.labels ['benign', 'malignant']",
    ]


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; the schema then refused `learning_rate: 1e-3`.
    path = tmp_path / "config.yaml"
    path.write_text("finetune:\n  learning_rate: 1e-3\n  weight_decay: 5E-2\nevaluate:\n  positive_class: 1e3\n")
    config = load_config(path)
    assert config["finetune"]["learning_rate"] == 0.001 and config["finetune"]["weight_decay"] == 0.05
    assert config["evaluate"]["positive_class"] == "1e3", "a string the schema accepts stays one"


def test_a_positive_class_is_checked_against_binary_datasets_only():
    # Every run applies to every dataset, and evaluation ignores positive_class with more than two classes.
    config = load_config(overrides={
        "datasets": {"lesions": {"manifest": "l.csv", "root": "l", "labels": ["benign", "malignant"]},
                     "skin": {"manifest": "s.csv", "root": "s", "labels": ["melanoma", "nevus", "keratosis"]}},
        "evaluate": {"positive_class": "malignant"}})
    assert run_config(config, "baseline")["evaluate"]["positive_class"] == "malignant"


def test_subgroup_columns_are_checked_against_each_dataset_whose_columns_are_known():
    config = load_config(overrides={
        "datasets": {"own": {"manifest": "o.csv", "root": "o"}, "pending": {"manifest": "p.csv", "root": "p"}},
        "evaluate": {"subgroups": ["site"]},
        "runs": {"baseline": {}, "by_scanner": {"evaluate": {"subgroups": ["site", "scanner", "sex"]}}}})
    columns = {"own": ["path", "label", "patient", "modality", "site"], "pending": None}

    problems = subgroup_column_problems(config, columns.get)

    assert problems == ["runs.by_scanner: evaluate.subgroups ['scanner', 'sex'] are not columns of the manifest of "
                        "dataset 'own' (columns: path, label, patient, modality, site)"]


def test_backbone_names_and_imagenet_weights_are_checked_when_the_config_is_read():
    # Found by the training job otherwise, after validation, preprocessing and the split.
    with pytest.raises(InputError) as error:
        load_config(overrides={"runs": {
            "typo": {"train": {"backbone": "resnet50"}},
            "unknown": {"train": {"backbone": "ViT"}},
            "builtin": {"train": {"weights": "imagenet"}},
            "unpublished": {"train": {"backbone": "MobileNetV2", "weights": "imagenet"}},
            "fine": {"train": {"backbone": "EfficientNetB0", "weights": "imagenet"}},
            "own_file": {"train": {"weights": "my/resnet18.weights.h5"}}}})
    problems = error.value.problems
    assert len(problems) == 4, problems
    assert "runs.typo: train.backbone 'resnet50' is neither the built-in resnet18 nor a keras.applications model " \
           "(did you mean ResNet50?)" in problems
    assert any(p.startswith("runs.unknown: train.backbone 'ViT'") and "e.g. ResNet50" in p for p in problems)
    assert any(p.startswith("runs.builtin: train.weights 'imagenet': no ImageNet weights with a published hash "
                            "for resnet18") for p in problems)
    assert any(p.startswith("runs.unpublished: train.weights 'imagenet': no ImageNet weights with a published "
                            "hash for MobileNetV2") for p in problems)


@pytest.mark.parametrize("salt", [12345, 83, True])
def test_a_salt_read_as_a_number_is_refused_with_the_environment_variable_as_the_way_out(salt):
    # `--config salt=0123` arrives as 83: turned back into a string it would hash with another salt.
    with pytest.raises(InputError) as error:
        load_config(overrides={"salt": salt})
    (problem,) = error.value.problems
    kind = "a boolean" if salt is True else "a number"
    assert problem.startswith(f"salt: {salt!r} was read as {kind}") and "MEDCLASSIFY_SALT" in problem


@pytest.mark.parametrize("train, message", [
    ({"seed": -5}, "train.seed: -5 is less than the minimum of 0"),
    ({"seed": 2 ** 32}, "is greater than the maximum of 4294967295"),
    ({"seed": 2 ** 32 - 1, "ensemble": 2}, "the last member's seed, 4294968295, is beyond NumPy's 4294967295"),
])
def test_a_seed_numpy_would_refuse_is_refused_when_the_config_is_read(train, message):
    # -5 was a NumPy traceback at the training's start; 2**32 - 1 with two members one after the first member.
    with pytest.raises(InputError) as error:
        load_config(overrides={"train": train})
    assert any(message in problem for problem in error.value.problems), error.value.problems


def test_a_medmnist_sets_name_and_its_classes_are_checked_when_the_config_is_read():
    # positive_class 'malignant' on PneumoniaMNIST failed in evaluate, after training; chestmnist
    # and a misspelt name failed in a rule's resource function with a traceback.
    with pytest.raises(InputError) as error:
        load_config(overrides={"datasets": {"pneumonia": {"medmnist": "PneumoniaMNIST"},
                                            "chest": {"medmnist": "chestmnist"}, "typo": {"medmnist": "pathmnst"}},
                               "evaluate": {"positive_class": "malignant"}})
    problems = error.value.problems
    assert any(p.startswith("datasets.chest.medmnist: chestmnist is multi-label") for p in problems), problems
    assert any(p.startswith("datasets.typo.medmnist: unknown MedMNIST dataset 'pathmnst'") for p in problems), problems
    assert ("runs.baseline: evaluate.positive_class 'malignant' is not one of the classes of PneumoniaMNIST "
            "(datasets.pneumonia) ['normal', 'pneumonia']") in problems
    load_config(overrides={"datasets": {"pneumonia": {"medmnist": "pneumoniamnist"}},
                           "evaluate": {"positive_class": "pneumonia"}})


def test_positive_class_problems_name_each_run_whose_class_the_manifest_lacks():
    # A manifest without labels: the classes are known when the split stage reads it, which now
    # refuses a wrong positive class there rather than in evaluate after training (helper-59).
    from medclassify.config import load_config, positive_class_problems

    config = load_config(overrides={"runs": {"a": {}, "b": {"evaluate": {"positive_class": "zzz"}}}})
    assert positive_class_problems(config, "demo", ["benign", "malignant"]) == [
        "runs.b: evaluate.positive_class 'zzz' is not one of the classes of dataset demo ['benign', 'malignant']"]
    assert positive_class_problems(config, "demo", ["x", "y", "z"]) == []  # ignored beyond two classes


def test_a_zero_fraction_of_a_needed_split_is_refused_when_the_config_is_read():
    # Only the split stage refused it, after validation had decoded every image (helper-59).
    from medclassify.config import load_config

    with pytest.raises(InputError) as error:
        load_config(overrides={"split": {"fractions": {"train": 0.8, "val": 0.2, "test": 0.0}}})
    assert any("split.fractions.test must be above 0" in problem for problem in error.value.problems)


def test_a_subgroup_column_that_identifies_patients_is_refused_when_the_config_is_read():
    # Validation leaves such a column out; evaluate failed on it after training (helper-61).
    from medclassify.config import load_config, subgroup_column_problems

    config = load_config(overrides={"evaluate": {"subgroups": ["site", "PatientID"]}})
    problems = subgroup_column_problems(config, lambda dataset: ["site", "PatientID"])
    assert problems == ["runs.baseline: evaluate.subgroups ['PatientID'] identify patients: validation leaves such "
                        "columns out of the validated manifest"]


def test_a_subgroup_column_validation_left_out_is_refused_before_training():
    # A column repeating the patient field under a harmless name passes planning (which reads the
    # raw header) and is left out by validation; evaluate failed on it after training.
    import pandas as pd

    from medclassify.config import load_config, validated_manifest_problems

    config = load_config(overrides={"datasets": {"own": {"manifest": "o.csv", "root": "o"}},
                                    "evaluate": {"subgroups": ["site", "record"]}})
    table = pd.DataFrame({"sample_id": ["1.png", "2.png", "3.png"], "path": ["1.png", "2.png", "3.png"],
                          "label": ["a", "b", "a"], "patient": ["h1", "h2", "h2"], "modality": ["US"] * 3,
                          "site": ["x", "x", "y"]})

    problems = validated_manifest_problems(config, "own", table)

    assert problems == [
        "runs.baseline: evaluate.subgroups ['record'] are not columns of the manifest of dataset 'own' (columns: "
        "sample_id, path, label, patient, modality, site); validation leaves out columns that identify patients "
        "(its report lists them as identifier_column)"]
    assert validated_manifest_problems(config, "own", table.assign(record=["r", "r", "s"])) == []


@pytest.mark.parametrize("values, how", [
    (["1.png", "2.png", "3.png", "4.png"], "repeats each row's image path"),
    (["k1", "k2", "k3", "k4"], "holds a different value in every row"),
    (["s1", "s2", "s2", "s3"], "gives most of its values to a single patient each (group them, as age groups)"),
])
def test_a_subgroup_column_naming_each_image_or_patient_is_refused_by_its_values(values, how):
    # A column image_file = path put every test image's path in metrics.json and the report (helper-73).
    import pandas as pd

    from medclassify.config import load_config, validated_manifest_problems

    config = load_config(overrides={"datasets": {"own": {"manifest": "o.csv"}}, "evaluate": {"subgroups": ["code"]}})
    table = pd.DataFrame({"sample_id": ["1.png", "2.png", "3.png", "4.png"], "path": ["1.png", "2.png", "3.png", "4.png"],
                          "label": ["a", "b", "a", "b"], "patient": ["h1", "h2", "h2", "h3"], "code": values})
    assert validated_manifest_problems(config, "own", table) == [
        f"evaluate.subgroups 'code' of dataset 'own' {how}: metrics.json and the report would list them all"]
    assert validated_manifest_problems(config, "own", table.assign(code=["x", "x", "x", "y"])) == []


def test_the_split_stage_checks_the_positive_class_against_the_validated_classes():
    import pandas as pd

    from medclassify.config import load_config, validated_manifest_problems

    config = load_config(overrides={"datasets": {"own": {"manifest": "o.csv", "root": "o"}},
                                    "evaluate": {"positive_class": "malignant"}})
    table = pd.DataFrame({"sample_id": ["1", "2"], "path": ["1", "2"], "label": ["benign", "tumour"],
                          "patient": ["h1", "h2"]})

    assert validated_manifest_problems(config, "own", table) == [
        "runs.baseline: evaluate.positive_class 'malignant' is not one of the classes of dataset own "
        "['benign', 'tumour']"]


# Each refused when the config is read, as one problem naming the key:
# - a top-level value of the wrong type: the checks that read resolved values (seeds, fractions,
#   windows) ran on values the schema had refused, and stopped with a TypeError (helper-70);
# - a key of several forms: "is not valid under any of the given schemas" said nothing of what is (helper-70);
# - values that failed late or silently: a capital Imagenet was a missing file of rule train_head,
#   dropout 1.0 zeroed every feature, demo with medmnist trained on the demo's images (helper-70).
@pytest.mark.parametrize("overrides, problem", [
    ({"train": {"seed": None}}, "train.seed: None is not of type 'integer'"),
    ({"train": {"backbone": ["resnet18"]}}, "train.backbone: ['resnet18'] is not of type 'string'"),
    ({"split": {"fractions": [0.7, 0.15, 0.15]}}, "split.fractions: [0.7, 0.15, 0.15] is not of type 'object'"),
    ({"split": {"fractions": {"test": None}}}, "split.fractions.test: None is not of type 'number'"),
    ({"preprocess": {"size": [None, 32]}}, "preprocess.size.0: None is not of type 'integer'"),
    ({"preprocess": {"intensity": "window", "window": {"center": 40, "width": "wide"}}},
     "preprocess.window: {'center': 40, 'width': 'wide'} is not null or {center, width} "
     "(width: 'wide' is not of type 'number')"),
    ({"finetune": {"unfreeze": "top"}}, "finetune.unfreeze: 'top' is not an integer >= 0 or 'all'"),
    ({"io": {"nifti_slice": "mid"}}, "io.nifti_slice: 'mid' is not an integer >= 0 or one of middle, all"),
    # DICOM's LINEAR window refused every image of a width below 1, each as undecodable (helper-74).
    ({"io": {"dicom_window": {"center": 0.5, "width": 0.5}}},
     "io.dicom_window: {'center': 0.5, 'width': 0.5} is not one of file, none, ct_lung, ct_mediastinum, ct_bone, "
     "ct_brain, ct_abdomen or {center, width} (width: 0.5 is less than the minimum of 1)"),
    ({"io": {"dicom_window": {"centre": 40, "width": 400}}},
     "io.dicom_window: {'centre': 40, 'width': 400} is not one of file, none, ct_lung, ct_mediastinum, ct_bone, "
     "ct_brain, ct_abdomen or {center, width} (Additional properties are not allowed ('centre' "
     "was unexpected))"),
    ({"train": {"weights": "Imagenet"}},
     "runs.baseline: train.weights 'Imagenet': write 'imagenet' in lower case (any other value is the path of a "
     ".weights.h5 file)"),
    ({"head": {"dropout": 1.0}}, "head.dropout: 1.0 is greater than or equal to the maximum of 1"),
    ({"datasets": {"x": {"demo": True, "medmnist": "breastmnist"}}},
     'datasets.x: demo: true and medmnist: "breastmnist" name 2 sources of images; keep one'),
    ({"datasets": {"x": {"medmnist": "breastmnist", "manifest": "m.csv"}}},
     'datasets.x: medmnist: "breastmnist" and manifest: "m.csv" name 2 sources of images; keep one'),
])
def test_a_config_value_that_cannot_work_is_one_problem_naming_the_key(overrides, problem):
    with pytest.raises(InputError) as error:
        load_config(overrides=overrides)
    assert error.value.problems == [problem]


def test_a_whole_number_written_as_a_float_becomes_an_integer():
    # jsonschema took 2.0 for an integer and it reached range() and np.empty: planning stopped on
    # preprocess.shards 2.0, evaluate on bootstrap 1000.0, after the training (helper-70).
    config = load_config(overrides={"preprocess": {"shards": 2.0, "size": [32.0, 32.0]},
                                    "evaluate": {"bootstrap": "1e3"},
                                    "runs": {"baseline": {"evaluate": {"seed": 1.0}}}})
    evaluate = run_config(config, "baseline")["evaluate"]
    values = [config["preprocess"]["shards"], *config["preprocess"]["size"], evaluate["bootstrap"], evaluate["seed"]]
    assert values == [2, 32, 32, 1000, 1] and all(type(value) is int for value in values)
    with pytest.raises(InputError) as error:
        load_config(overrides={"finetune": {"epochs": 2.5}})
    assert error.value.problems == ["finetune.epochs: 2.5 is not of type 'integer'"]


def test_a_run_or_dataset_name_read_as_a_number_is_refused():
    # The name pattern checks only strings: runs {1: {}} failed planning with KeyError: '1' (helper-70).
    with pytest.raises(InputError) as error:
        load_config(overrides={"datasets": {2024: {"demo": True}}, "runs": {1: {}}})
    assert error.value.problems == [
        "datasets: 2024 was read as a number, not as a name; quote it in the config file",
        "runs: 1 was read as a number, not as a name; quote it in the config file"]
    with pytest.raises(InputError) as error:
        load_config(overrides={"runs": {True: {}}})
    assert error.value.problems == ["runs: True was read as a boolean, not as a name; quote it in the config file"]


def test_a_key_written_twice_in_a_config_file_is_refused(tmp_path):
    # PyYAML and Snakemake keep the last: the first train section was dropped without a word (helper-70).
    from medclassify.config import config_file_problems

    path = tmp_path / "c.yaml"
    path.write_text("train: {batch_size: 16}\nfinetune: {epochs: 5}\ntrain: {ensemble: 1}\n"
                    "runs:\n  a: {}\n  b: {}\n  a: {finetune: {epochs: 2}}\n")
    expected = [f"{path}: line 3: key 'train' is written twice in one mapping (first on line 1); only this one "
                "would count",
                f"{path}: line 7: key 'a' is written twice in one mapping (first on line 5); only this one would count"]
    with pytest.raises(InputError) as error:
        load_config(path)
    assert error.value.problems == expected
    assert config_file_problems([path]) == expected
    # Listed with the config's own problems, not one pass before them.
    path.write_text(path.read_text() + "preprocess: {dtype: int7}\n")
    with pytest.raises(InputError) as error:
        load_config(path)
    assert error.value.problems[:2] == expected and "preprocess.dtype" in error.value.problems[2]
    path.write_text("train: {batch_size: 16}\nfinetune: {epochs: 5}\n")
    assert config_file_problems([path]) == []


def test_a_subgroup_of_a_column_naming_each_image_or_patient_is_refused():
    # evaluate.subgroups [path] put every test image's path in metrics.json and report.zip (helper-72).
    config = load_config(overrides={"evaluate": {"subgroups": ["site", "path", "sample_id"]},
                                    "runs": {"baseline": {}, "mine": {"evaluate": {"subgroups": ["patient"]}}}})
    assert subgroup_column_problems(config, lambda dataset: None) == [
        "runs.baseline: evaluate.subgroups ['path', 'sample_id'] name each image or patient: metrics.json and the "
        "report would list every one of them",
        "runs.mine: evaluate.subgroups ['patient'] name each image or patient: metrics.json and the report would "
        "list every one of them"]


def test_a_medmnist_dataset_numbers_its_classes_as_medmnist_does():
    # Sorted by name, DermaMNIST's melanoma (official label 4) came after melanocytic_nevi (5) (helper-69).
    from medclassify.config import dataset_config
    from medclassify.datasets.medmnist import label_names

    config = load_config(overrides={"datasets": {"derma": {"medmnist": "dermamnist"},
                                                 "mine": {"medmnist": "dermamnist", "labels": ["x", "y"]}}})
    assert dataset_config(config, "derma")["labels"] == label_names("dermamnist")
    assert dataset_config(config, "derma")["labels"][4] == "melanoma"
    assert dataset_config(config, "mine")["labels"] == ["x", "y"]


def test_merge_keys_json_with_tabs_and_odd_keys_read_as_before(tmp_path):
    # The duplicate-key reader refused "<<: *anchor" as invalid YAML, tab-indented JSON (which
    # Snakemake reads as JSON first) too, and crashed on a list as a key (helper-73).
    from medclassify.config import config_file_problems

    merged = tmp_path / "merged.yaml"
    merged.write_text("runs:\n  a: {finetune: &short {epochs: 1, learning_rate: 0.001}}\n"
                      "  b: {finetune: {<<: *short, epochs: 2}}\n")
    config = load_config(merged)
    assert [run_config(config, run)["finetune"]["epochs"] for run in ("a", "b")] == [1, 2]
    assert run_config(config, "b")["finetune"]["learning_rate"] == 0.001
    tabs = tmp_path / "tabs.json"
    tabs.write_text('{\n\t"runs": {\n\t\t"a": {},\n\t\t"a": {"finetune": {"epochs": 2}}\n\t}\n}\n')
    assert config_file_problems([tabs, tabs]) == [
        f"{tabs}: key 'a' is written twice in one object; only the last would count"]
    tabs.write_text('{\n\t"runs": {\n\t\t"a": {}\n\t}\n}\n')
    assert list(load_config(tabs)["runs"]) == ["a"]
    listed = tmp_path / "listed.yaml"
    listed.write_text("runs:\n  ? [a, b]\n  : {}\n")
    with pytest.raises(InputError, match="config file is not valid YAML") as error:
        load_config(listed)
    assert "found unhashable key" in error.value.problems[0] and str(listed) in error.value.problems[0]


def test_overrides_are_told_the_forms_and_cross_option_problems_come_with_schema_ones():
    # A run's or a dataset's own value got jsonschema's "is not valid under any of the given
    # schemas"; a wrong top-level value hid a run's backbone problem until it was mended (helper-73).
    with pytest.raises(InputError) as error:
        load_config(overrides={"evaluate": {"bootstrap": -1}, "train": {"backbone": "resnet19"},
                               "datasets": {"d": {"demo": True, "preprocess": {"window": {"center": 1, "width": 0}}}},
                               "runs": {"r": {"finetune": {"unfreeze": "x"}}}})
    assert error.value.problems == [
        "evaluate.bootstrap: -1 is less than the minimum of 0",
        "datasets.d.preprocess.window: {'center': 1, 'width': 0} is not null or {center, width} (width: 0 is less "
        "than or equal to the minimum of 0)",
        "runs.r.finetune.unfreeze: 'x' is not an integer >= 0 or 'all'",
        "runs.r: train.backbone 'resnet19' is neither the built-in resnet18 nor a keras.applications model (did you "
        "mean resnet18 or DenseNet169?)"]


def test_a_number_or_boolean_where_text_is_wanted_says_to_quote_it():
    # labels [yes, no] and a positive class 0 were told only "is not of type 'string'" (helper-69).
    with pytest.raises(InputError) as error:
        load_config(overrides={"evaluate": {"positive_class": 0},
                               "datasets": {"d": {"manifest": "m.csv", "labels": [True, "no"]}}})
    assert error.value.problems == [
        "datasets.d.labels.0: True is not of type 'string': it was read as a boolean; quote it to make it text",
        "evaluate.positive_class: 0 is not of type 'string', 'null': it was read as a number; quote it to make it "
        "text"]


def test_options_built_by_hand_read_their_values_as_a_config_file_does():
    # A config file's epochs 2.0 became 2, complete_run_options refused it (helper-73).
    from medclassify.config import complete_run_options

    by_hand = {"finetune": {"epochs": 2.0, "learning_rate": "1e-3"}}
    options = complete_run_options(by_hand)
    assert options["finetune"]["epochs"] == 2 and type(options["finetune"]["epochs"]) is int
    assert options["finetune"]["learning_rate"] == 0.001
    assert by_hand == {"finetune": {"epochs": 2.0, "learning_rate": "1e-3"}}  # the caller's dict is left alone

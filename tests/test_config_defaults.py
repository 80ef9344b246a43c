"""The schema is the one source of the options' defaults, whichever way the options reach the library.

A key left out of a config file, of ``--set`` or of the options a library caller builds by hand
must get the schema's default, not a private fallback of the code that reads it: the defaults
were chosen by measured experiments (see their descriptions in the schema).
"""

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

import medclassify
from medclassify.config import load_schema

LIBRARY = Path(medclassify.__file__).parent
SCHEMA = load_schema()
# Every key but one left out: what a library caller may pass, or a minimal config file holds.
MINIMAL_TRAIN = {"seed": 1}


def schema_default(section, key):
    return SCHEMA["properties"][section]["properties"][key]["default"]


@pytest.fixture
def stage_calls(monkeypatch):
    """The trainings that train_stage starts, recorded instead of run: (kind, members, options)."""
    import medclassify.training as training

    calls = []

    def train_model(stage, *paths, options, **keywords):
        calls.append(("model", 1, options))

    def train_ensemble(n_members, *paths, options, **keywords):
        calls.append(("ensemble", n_members, options))

    monkeypatch.setattr(training, "_train_model", train_model)
    monkeypatch.setattr(training, "train_ensemble", train_ensemble)
    return calls


def new_model(stage, options):
    """The model that ``stage`` builds with ``options`` when it is given no head model."""
    from medclassify.fitting import stage_options
    from medclassify.training import initial_model

    model, _ = initial_model(stage, init_model=None, input_shape=(16, 16, 1), class_counts=np.array([4, 4]),
                             train_options=options["train"], settings=stage_options(options, stage), zscore=None)
    return model


def first_stage_filters(options):
    """Filters of the stem convolution of the model that the head stage builds with ``options``."""
    from medclassify.models import backbone_of

    return backbone_of(new_model("head", options)).get_layer("stem_conv").filters


def test_train_stage_fills_the_options_a_library_caller_left_out_with_the_schema_defaults(stage_calls, tmp_path):
    from medclassify.training import train_stage

    train_stage("finetune", tmp_path / "cache.h5", tmp_path / "splits.csv", tmp_path / "finetune",
                options={"train": MINIMAL_TRAIN})
    train_stage("head", tmp_path / "cache.h5", tmp_path / "splits.csv", tmp_path / "head",
                options={"train": MINIMAL_TRAIN})
    (kind, members, _), (_, _, head_options) = stage_calls
    assert (kind, members) == ("ensemble", schema_default("train", "ensemble"))
    assert first_stage_filters(head_options) == schema_default("train", "resnet_width")
    assert head_options["train"]["seed"] == MINIMAL_TRAIN["seed"]


def test_the_train_command_with_a_minimal_config_trains_with_the_schema_defaults(stage_calls, tmp_path):
    from medclassify.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": MINIMAL_TRAIN}))
    (tmp_path / "splits.csv").write_text("sample_id,split\n")
    for stage in ("finetune", "head"):
        assert main(["train", "--stage", stage, "--cache", str(tmp_path / "cache.h5"), "--splits",
                     str(tmp_path / "splits.csv"), "--out", str(tmp_path / stage), "--config", str(config)]) == 0
    (kind, members, _), (_, _, head_options) = stage_calls
    assert (kind, members) == ("ensemble", schema_default("train", "ensemble"))
    assert first_stage_filters(head_options) == schema_default("train", "resnet_width")


def test_the_fine_tune_stage_builds_its_own_model_with_the_configured_dropout():
    # An ensemble's members start from their own seeds' weights, not from the head stage's model.
    from medclassify.config import load_config, run_config

    options = run_config(load_config(overrides={"train": {"resnet_width": 4}, "head": {"dropout": 0.5}}), "baseline")
    assert new_model("finetune", options).get_layer("dropout").rate == 0.5


# --- the library's own fallbacks ----------------------------------------------------------------
# Readers of files an earlier version wrote (model.json, cache attributes): a key missing there
# means what that version did without it, which is not the schema's default of today.
RECORDED_FILE_READERS = {
    # model.json's train.augment: a range it does not record was not augmented in training.
    ("inference.py", "rotation_degrees"), ("inference.py", "zoom"), ("inference.py", "translate"),
    # metrics.json's threshold record (method and value), not the evaluate.threshold option.
    ("compare.py", "threshold"),
}


def schema_defaults_by_key():
    """Every default the schema gives a key of each name, in whatever section."""
    defaults = {}

    def walk(node):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    defaults.setdefault(key, []).append(sub["default"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(SCHEMA)
    return defaults


def _is_lookup_with_literal_fallback(node):
    """Whether ``node`` is ``x.get(key, fallback)`` or ``x.setdefault(key, fallback)`` with a literal fallback."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "setdefault") and len(node.args) == 2):
        return False
    try:
        ast.literal_eval(node.args[1])
    except ValueError:
        return False
    return True


def _constant_strings(node):
    """The strings of a literal tuple or list of them; else None."""
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [element.value for element in node.elts]
    return None


def literal_fallbacks(tree):
    """(key, fallback, line) of every lookup with a literal fallback in the module ``tree``.

    Keys are string constants, or the variable of a comprehension that runs over a tuple of
    them, written out or a module constant (``options.get(k, 0.0) for k in ("zoom", "translate")``).
    """
    constants = {target.id: _constant_strings(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name) and _constant_strings(node.value)}
    for node in ast.walk(tree):
        if _is_lookup_with_literal_fallback(node) and isinstance(node.args[0], ast.Constant):
            yield node.args[0].value, ast.literal_eval(node.args[1]), node.lineno
        if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
            keys = {}
            for generator in node.generators:
                values = (constants.get(generator.iter.id) if isinstance(generator.iter, ast.Name)
                          else _constant_strings(generator.iter))
                if isinstance(generator.target, ast.Name) and values:
                    keys[generator.target.id] = values
            for call in ast.walk(node):
                if _is_lookup_with_literal_fallback(call) and isinstance(call.args[0], ast.Name):
                    for key in keys.get(call.args[0].id, []):
                        yield key, ast.literal_eval(call.args[1]), call.lineno


def test_every_fallback_the_library_keeps_for_a_config_key_is_the_schema_default():
    defaults = schema_defaults_by_key()
    disagreements = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for key, fallback, line in literal_fallbacks(ast.parse(path.read_text(encoding="utf-8"))):
            if key in defaults and fallback not in defaults[key] and (path.name, key) not in RECORDED_FILE_READERS:
                disagreements.append(f"{path.relative_to(LIBRARY)}:{line}: {key} falls back to {fallback!r}, "
                                     f"the schema's default is {' or '.join(map(repr, defaults[key]))}")
    assert not disagreements, "\n".join(disagreements)


def _keyword_defaults():
    """(function, parameter, schema section, key) of the library's parameters that take a config option."""
    from medclassify.datasets.demo import generate_demo_dataset
    from medclassify.evaluation.bootstrap import bootstrap_ci
    from medclassify.evaluation.threshold import choose_threshold
    from medclassify.models.backbones import build_backbone
    from medclassify.models.heads import build_classifier

    return [
        (build_classifier, "dropout", "head", "dropout"),
        (build_classifier, "small_input", "train", "small_input"),
        (build_classifier, "resnet_width", "train", "resnet_width"),
        (build_classifier, "seed", "train", "seed"),
        (build_classifier, "min_size", "train", "min_input_size"),
        (build_backbone, "width", "train", "resnet_width"),
        (choose_threshold, "method", "evaluate", "threshold"),
        (choose_threshold, "fixed", "evaluate", "fixed_threshold"),
        (choose_threshold, "target_sensitivity", "evaluate", "target_sensitivity"),
        (bootstrap_ci, "n_resamples", "evaluate", "bootstrap"),
        (bootstrap_ci, "seed", "evaluate", "seed"),
        (bootstrap_ci, "confidence", "evaluate", "confidence"),
        (generate_demo_dataset, "n_patients", "datasets", "demo_patients"),
    ]


def _default_of(section, key):
    properties = SCHEMA["properties"][section]
    if "properties" not in properties:  # datasets: its entries' keys
        properties = properties["additionalProperties"]
    return properties["properties"][key]["default"]


def test_the_library_parameters_that_take_a_config_option_default_to_the_schema_default():
    disagreements = [f"{function.__module__}.{function.__name__}({parameter}={default!r}): "
                     f"{section}.{key} defaults to {_default_of(section, key)!r}"
                     for function, parameter, section, key in _keyword_defaults()
                     if (default := inspect.signature(function).parameters[parameter].default)
                     != _default_of(section, key)]
    assert not disagreements, "\n".join(disagreements)

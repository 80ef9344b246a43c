"""Load, validate and resolve the workflow configuration.

The schema in ``workflow/schemas/config.schema.yaml`` is the one source of truth: it gives every
key's description and default. The Snakefile validates with :func:`validate_config`; the command
line and tests use :func:`load_config`, which applies it to a file and overrides.
"""

import copy
import functools
import hashlib
import json
import os
import re
from pathlib import Path

import jsonschema
import yaml

from .backbone_names import backbone_problems
from .errors import InputError
from .datasets.medmnist_info import check_name, label_names
from .preprocess_options import check_preprocess_options
from .privacy import PER_SAMPLE_COLUMNS, SALT_ENVIRONMENT_VARIABLE, is_identifier_column, names_each_sample

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DATASET_SECTIONS = ("io", "preprocess", "validation", "split")
RUN_SECTIONS = ("train", "head", "finetune", "evaluate")


def load_schema():
    """Return the config schema as a dict (a copy the caller may change)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema():
    # Parsed once per process: Snakemake resolves the options of every job while it plans, and
    # parsing the YAML each time made planning 69 jobs take 30 s.
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.cache
def _switch_names():
    """Names of the keys whose schema allows the strings ``"on"`` and ``"off"``."""
    names = set()

    def collect(node):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and {"on", "off"} <= set(sub.get("enum", [])):
                    names.add(name)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(_parsed_schema())
    return frozenset(names)


def switches_as_strings(config):
    """Turn the booleans YAML made of an unquoted ``on`` or ``off`` back into strings, in place.

    PyYAML and Snakemake read YAML 1.1, where ``mixed_precision: off`` means false; without this
    the schema would reject it as "False is not of type 'string'". Only keys whose schema allows
    ``"on"`` and ``"off"`` are changed.
    """
    if isinstance(config, dict):
        for key, value in config.items():
            if key in _switch_names() and isinstance(value, bool):
                config[key] = "on" if value else "off"
            else:
                switches_as_strings(value)
    elif isinstance(config, list):
        for value in config:
            switches_as_strings(value)
    return config


_YAML11_MISSED_FLOAT = re.compile(r"^[-+]?(\d+|\d*\.\d+)[eE][-+]?\d+$")


def values_from_strings(config, validator):
    """Read as YAML, in place, each string the schema refuses where YAML reads it as another type.

    Snakemake reads a nested ``--config`` value with YAML's BaseLoader, so that
    ``--config 'finetune={"epochs": 20}'`` gives the string '20'; and YAML 1.1, which PyYAML
    reads, takes ``1e-3`` (no dot) for a string in a config file too. A string the schema accepts
    stays a string (a salt of digits); a value YAML cannot read, or reads as a value the schema
    refuses there too, is left to the error. A whole number written as a float (``epochs: 2.0``,
    ``bootstrap: 1e3``) becomes an integer where the schema wants one.
    """
    for _ in range(1000):  # each pass fixes at least one value; nested ones show up in later passes
        fixed = False
        for error in _with_branch_errors(validator.iter_errors(copy.deepcopy(config))):
            if not isinstance(error.instance, (str, float)) or not error.absolute_path:
                continue
            try:
                value = yaml.safe_load(error.instance) if isinstance(error.instance, str) else error.instance
            except yaml.YAMLError:
                continue
            if isinstance(value, str) and _YAML11_MISSED_FLOAT.match(value):
                value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            if isinstance(value, str):
                continue
            if isinstance(value, float) and value.is_integer() and not _of_a_kind_allowed(validator, error.schema, value):
                value = int(value)
            if not isinstance(value, (dict, list)) and not _of_a_kind_allowed(validator, error.schema, value):
                continue  # "no" is no better as False: the string's own error names the choices
            *parents, key = error.absolute_path
            container = config
            for part in parents:
                container = container[part]
            if container[key] == error.instance:
                container[key] = value
                fixed = True
        if not fixed:
            return config
    return config


def _of_a_kind_allowed(validator, schema, value):
    """Whether ``schema`` allows ``value``'s type (and choice), whatever its range: "0" for a
    batch size reads as 0, for the error "less than the minimum of 1"; "no" for a switch stays."""
    return not any(_refuses_the_kind(error) for error in validator.evolve(schema=schema).iter_errors(value))


def _refuses_the_kind(error):
    if error.validator == "type":
        return True
    if error.validator in ("enum", "const"):  # "3" read as 3 for choices [0, 1, 2]: a number all the same
        choices = error.validator_value if error.validator == "enum" else [error.validator_value]
        return not any(type(choice) is type(error.instance) for choice in choices)
    if error.validator in ("anyOf", "oneOf"):
        by_branch = {}
        for sub in error.context:
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        # A branch with no error takes the value (oneOf then failed on two matches, not the kind).
        return len(by_branch) == len(error.validator_value) and all(
            any(_refuses_the_kind(sub) for sub in subs) for subs in by_branch.values())
    return False


def _with_branch_errors(errors):
    """The errors and, under each oneOf or anyOf error, those of its branches: a window's
    ``{"center": "40", ...}`` is reported as a whole, while its "40" is wrong in a branch."""
    for error in errors:
        yield error
        yield from _with_branch_errors(error.context)


def _is_integer(checker, instance):
    # jsonschema counts 2.0 as an integer; range(2.0), np.empty(2.0) and default_rng(1.0) do not.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _validator_filling_defaults(schema):
    draft = jsonschema.Draft202012Validator
    base = jsonschema.validators.extend(draft, type_checker=draft.TYPE_CHECKER.redefine("integer", _is_integer))

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    filling = jsonschema.validators.extend(base, {"properties": set_defaults})
    return filling(schema)


def validate_config(config, schema=None, file_problems=()):
    """Validate ``config`` in place, filling defaults; raise InputError listing every problem.

    Every problem at once: ``file_problems`` (what the config files hold that ``config`` cannot
    show, see :func:`config_file_problems`), the schema's, then those of each dataset and run as
    resolved (its overrides merged over the top-level sections), so one run of the workflow
    shows them all.
    """
    schema = schema or _parsed_schema()
    switches_as_strings(config)
    validator = _validator_filling_defaults(schema)
    values_from_strings(config, validator)
    _override_values_from_strings(config)
    written = copy.deepcopy(config)  # before the defaults, to tell where a value came from
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    problems = [*file_problems, *(_schema_problem(e) for e in errors), *_unquoted_name_problems(config)]
    problems += _datasets_problems(config, written) + _runs_problems(config)
    if problems:
        raise InputError("invalid configuration", problems)
    return config


def _unquoted_name_problems(config):
    """Dataset and run names that YAML read as numbers or booleans (``runs: {1: {}}``), which the
    schema's name pattern does not check and which become paths and wildcards as text."""
    return [f"{key}: {name!r} was read as {_kind_of(name)}, not as a name; "
            "quote it in the config file"
            for key in ("datasets", "runs") if isinstance(config.get(key), dict)
            for name in config[key] if not isinstance(name, str)]


def _kind_of(value):
    return "null" if value is None else "a boolean" if isinstance(value, bool) else "a number"


def _schema_problem(error):
    """One schema error in words: where, then what."""
    if list(error.absolute_path) == ["salt"] and isinstance(error.instance, (int, float)):
        # Turned back into a string it could differ from what was typed (YAML 1.1 reads 0123 as 83).
        kind = "a boolean" if isinstance(error.instance, bool) else "a number"
        return (f"salt: {error.instance!r} was read as {kind}, not as the characters typed (YAML reads "
                f"--config salt=12345 as one); set the environment variable {SALT_ENVIRONMENT_VARIABLE} instead, "
                "which also keeps the secret out of Snakemake's records, or quote the salt in a config file")
    return f"{_key_path(error.absolute_path) or '<top>'}: {_error_text(error)}"


def _error_text(error):
    """What a schema error says is wrong, in words; a key with several forms is told them."""
    types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    if error.validator == "type" and "string" in types and isinstance(error.instance, (bool, int, float)):
        # labels [yes, no] read as booleans, a positive class 0 as a number.
        return f"{error.message}: it was read as {_kind_of(error.instance)}; quote it to make it text"
    if error.validator not in ("oneOf", "anyOf"):
        return error.message
    forms = " or ".join(_form_of(alternative) for alternative in error.validator_value)
    text = f"{error.instance!r} is not {forms}"
    # Of a mapping, say what is wrong inside it, not that it is no other form (null).
    inside = [e for e in error.context if e.absolute_path != error.absolute_path
              or e.validator in ("required", "additionalProperties")]
    if isinstance(error.instance, dict) and inside:
        inner = jsonschema.exceptions.best_match(inside)
        key = _key_path(list(inner.absolute_path)[len(error.absolute_path):])
        text += f" ({key + ': ' if key else ''}{inner.message})"
    return text


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "null": "null", "object": "a mapping", "array": "a list"}


def _form_of(schema):
    """One form a value of ``schema`` can take, in words: ``an integer >= 0``, ``one of middle, all``."""
    if "$ref" in schema:
        schema = _parsed_schema()["definitions"][schema["$ref"].rsplit("/", 1)[-1]]
    if "enum" in schema:
        values = schema["enum"]
        return repr(values[0]) if len(values) == 1 else "one of " + ", ".join(map(str, values))
    if "const" in schema:
        return repr(schema["const"])
    if schema.get("type") == "object" and "properties" in schema:
        return "{" + ", ".join(schema["properties"]) + "}"
    words = _TYPE_WORDS.get(schema.get("type"), str(schema.get("type")))
    bounds = [f"{sign} {schema[key]}" for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                          ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in schema]
    return " ".join([words, *bounds])


def _entries(config, key):
    """The entries of ``config[key]`` (datasets or runs) that are mappings; the schema reports the rest."""
    entries = config.get(key)
    if not isinstance(entries, dict):
        return {}
    return {name: entry for name, entry in entries.items() if isinstance(entry, dict)}


def _override_values_from_strings(config):
    """values_from_strings for the sections a dataset or run overrides, which the schema leaves
    untyped: the strings of a nested --config (runs={"long": {"finetune": {"epochs": 30}}}).
    Once here, in place, rather than at every resolution of a run or dataset while planning."""
    for key, sections in (("datasets", DATASET_SECTIONS), ("runs", RUN_SECTIONS)):
        for entry in _entries(config, key).values():
            for section in sections:
                if isinstance(entry.get(section), dict):
                    values_from_strings(entry[section], _section_validator(section))


def _datasets_problems(config, written):
    problems = []
    for name, entry in _entries(config, "datasets").items():
        sources = [f"{key}: {json.dumps(entry[key])}" for key in ("demo", "medmnist", "manifest")
                   if entry.get(key) not in (None, False, "")]
        if len(sources) > 1:
            # One would be used and the other ignored without a word (the demo's synthetic images
            # trained where MedMNIST, or the user's manifest, was meant).
            problems.append(f"datasets.{name}: {' and '.join(sources)} name {len(sources)} sources of images; keep one")
        if entry.get("medmnist"):
            problems += _medmnist_problems(entry, name)
        resolved, section_problems = _resolve_sections(config, entry, DATASET_SECTIONS, f"datasets.{name}",
                                                       top_level_checked=True)
        problems += section_problems
        if "split" in resolved:
            problems += _fractions_problems(resolved["split"]["fractions"], name, written)
            problems += [f"datasets.{name}: {problem}" for problem in empty_split_problems(resolved["split"])]
        if "preprocess" in resolved:
            problems += _preprocess_problems(resolved["preprocess"], name)
    return problems


def _preprocess_problems(preprocess, dataset):
    """What the preprocess stage would refuse (a window without its width, …), found before any job."""
    try:
        check_preprocess_options(preprocess)
    except InputError as error:
        return [f"datasets.{dataset}: {problem}" for problem in error.problems]
    return []


def _positive_class_problems(config, run, evaluate):
    """Run ``run``'s evaluate.positive_class where it is not among the labels a binary dataset fixes.

    Every run applies to every dataset; evaluation ignores positive_class where there are more
    than two classes, so only two-label datasets are checked.
    """
    positive = evaluate.get("positive_class")
    problems = []
    for name, entry in _entries(config, "datasets").items():
        labels, source = entry.get("labels"), f"datasets.{name}.labels"
        if not isinstance(labels, list) and entry.get("medmnist"):
            labels, source = _medmnist_labels(entry["medmnist"]), f"the classes of {entry['medmnist']} (datasets.{name})"
        if positive is not None and isinstance(labels, list) and len(labels) == 2 and positive not in labels:
            problems.append(f"runs.{run}: evaluate.positive_class {positive!r} is not one of {source} {labels}")
    return problems


def positive_class_problems(config, dataset, classes):
    """Runs whose evaluate.positive_class is not one of ``classes``, the two classes ``dataset``'s
    manifest holds, in words.

    Where the config fixes no classes (a manifest without ``labels:``) they are known only once
    the manifest is read: the split stage checks them then, before any training, rather than
    evaluate after it.
    """
    if len(classes) != 2:
        return []
    problems = []
    for run in _entries(config, "runs"):
        positive = run_config(config, run)["evaluate"].get("positive_class")
        if positive is not None and positive not in classes:
            problems.append(f"runs.{run}: evaluate.positive_class {positive!r} is not one of the classes of "
                            f"dataset {dataset} {list(classes)}")
    return problems


def _medmnist_labels(medmnist):
    """The class names of a MedMNIST set; None for a name :func:`_medmnist_problems` refuses."""
    try:
        return label_names(medmnist)
    except InputError:
        return None


def _medmnist_problems(entry, dataset):
    """A MedMNIST name the import would refuse (multi-label, 3D, unknown), found before any job;
    the schema checks the size."""
    try:
        check_name(entry["medmnist"])
    except InputError as error:
        return [f"datasets.{dataset}.medmnist: {error.args[0]} ({'; '.join(error.problems)})"]
    return []


# The splits each method takes a size from split.fractions, which a later stage needs filled:
# training needs train and val, evaluation val and test; k-fold deals train and val as folds.
NEEDED_FRACTIONS = {"grouped_stratified": ("train", "val", "test"), "kfold": ("test",)}


def empty_split_problems(split):
    """The fractions of ``split`` (a resolved ``split`` section) that would leave a needed split empty."""
    method = split.get("method")
    return [f"split.fractions.{name} must be above 0 (method {method}): training needs train and val, "
            "evaluation val and test"
            for name in NEEDED_FRACTIONS.get(method, ()) if float(split["fractions"][name]) <= 0]


def _fractions_problems(fractions, dataset, written):
    total = sum(fractions.values())
    if abs(total - 1.0) <= 1e-6:
        return []
    # A fraction the user left out comes from the default (test: 0.15 when only train and val are
    # written), so the message says where each value was set, not only the dataset it ends up in.
    by_source = {}
    for key, value in fractions.items():
        by_source.setdefault(_fraction_source(written, dataset, key), []).append(f"{key} {value:g}")
    sources = "; ".join(f"{', '.join(values)} from {source}" for source, values in by_source.items())
    return [f"datasets.{dataset}.split.fractions sum to {total:g}, not 1 ({sources})"]


def _fraction_source(written, dataset, key):
    """Where the user set a dataset's split fraction ``key``: its own entry, the top level, or nowhere."""
    own = _get(written, "datasets", dataset, "split", "fractions")
    if key in own:
        return f"datasets.{dataset}.split.fractions"
    if key in _get(written, "split", "fractions"):
        return "split.fractions"
    return "the default"


def _get(mapping, *keys):
    for key in keys:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping if isinstance(mapping, dict) else {}


def _runs_problems(config):
    """Each run's problems as resolved, then (for the runs that have none) its positive class's."""
    problems, positive_class_problems = [], []
    for name, overrides in _entries(config, "runs").items():
        resolved, run_problems_ = _resolve_run(config, name, overrides, top_level_checked=True)
        problems += run_problems_
        if not run_problems_:
            positive_class_problems += _positive_class_problems(config, name, resolved.get("evaluate", {}))
    return problems + positive_class_problems


def subgroup_column_problems(config, columns_of):
    """Each run's ``evaluate.subgroups`` that a dataset's validated manifest will not have.

    Evaluation reads those columns after training: found there, a misspelt column costs the
    training. ``columns_of(dataset)`` gives the columns of the dataset's validated manifest, or
    None where they cannot be known yet. Every run applies to every dataset.
    """
    subgroups = {run: run_config(config, run)["evaluate"]["subgroups"] for run in _entries(config, "runs")}
    problems = []
    for dataset in _entries(config, "datasets"):
        columns = columns_of(dataset)
        if columns is None:
            continue
        for run, wanted in subgroups.items():
            missing = [c for c in wanted if c not in columns]
            if missing:
                problems.append(f"runs.{run}: evaluate.subgroups {missing} are not columns of the manifest of "
                                f"dataset {dataset!r} (columns: {', '.join(dict.fromkeys(columns))})")
    for run, wanted in subgroups.items():
        identifying = [c for c in wanted if is_identifier_column(c)]
        if identifying:
            problems.append(f"runs.{run}: evaluate.subgroups {identifying} identify patients: validation leaves "
                            "such columns out of the validated manifest")
        per_sample = [c for c in wanted if c in PER_SAMPLE_COLUMNS]
        if per_sample:
            problems.append(f"runs.{run}: evaluate.subgroups {per_sample} name each image or patient: metrics.json "
                            "and the report would list every one of them")
    return problems


def validated_manifest_problems(config, dataset, table):
    """What evaluation would refuse of the config, known once ``dataset``'s manifest is validated.

    ``table`` is the validated manifest. Planning reads the raw manifest's header, but validation
    can still leave out a column that repeats the patient field, which a subgroup may name; a
    manifest without ``labels:`` shows its classes only here; and only the values show a subgroup
    column that names each image or patient. The split stage checks them, before any training.
    """
    if not {"sample_id", "path", "label", "patient"} <= set(table.columns):
        return []  # not a validated manifest: the split says which of its columns are missing
    problems = positive_class_problems(config, dataset, sorted(set(table["label"])))
    for problem in subgroup_column_problems(config, lambda name: list(table.columns) if name == dataset else None):
        problems.append(f"{problem}; validation leaves out columns that identify patients (its report "
                        "lists them as identifier_column)")
    subgroups = {column for run in _entries(config, "runs") for column in run_config(config, run)["evaluate"]["subgroups"]}
    for column in sorted(subgroups & set(table.columns)):
        how = names_each_sample(table, column)
        if how:
            problems.append(f"evaluate.subgroups {column!r} of dataset {dataset!r} {how}: metrics.json and the report "
                            "would list them all")
    return problems


def check_validated_manifest_fits(config, dataset, table):
    """InputError listing :func:`validated_manifest_problems`, for the split stage to refuse them."""
    problems = validated_manifest_problems(config, dataset, table)
    if problems:
        raise InputError("evaluate options that the validated manifest does not fit", problems)


def load_config(path=None, overrides=None):
    """Read a YAML config (or start empty), merge ``overrides``, validate and fill defaults."""
    config, problems = ({}, []) if path is None else _read_config_file(path)
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config, file_problems=problems)


class _KeysOnceLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting each key a mapping holds twice (``duplicates``): plain
    PyYAML, and Snakemake, keep the last one, so a second ``train:`` section silently replaced
    the first."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates = []

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor": its keys are defaults that written keys may override
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # PyYAML refuses an unhashable key itself, with its line
            if key in first_line:
                self.duplicates.append(f"line {key_node.start_mark.line + 1}: key {key!r} is written twice in one "
                                       f"mapping (first on line {first_line[key]}); only this one would count")
            first_line.setdefault(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def json_object_noting_duplicates(duplicates):
    """A json ``object_pairs_hook`` that notes in ``duplicates`` each key an object holds twice."""
    def object_from_pairs(pairs):
        keys = [key for key, _ in pairs]
        duplicates.extend(f"key {key!r} is written twice in one object; only the last would count"
                          for key in dict.fromkeys(keys) if keys.count(key) > 1)
        return dict(pairs)
    return object_from_pairs


def _read_config_text(f):
    """The config in an open file and the keys it writes twice (in words): JSON if it parses as
    JSON, else YAML, as Snakemake reads a config file (tabs indent JSON, not YAML)."""
    text, duplicates = f.read(), []
    try:
        config = json.loads(text, object_pairs_hook=json_object_noting_duplicates(duplicates))
    except ValueError:
        f.seek(0)  # the file itself, not its text: PyYAML's messages then name it
        loader = _KeysOnceLoader(f)
        try:
            config = loader.get_single_data()
        finally:
            loader.dispose()
        duplicates = loader.duplicates
    return config, duplicates


def config_file_problems(paths):
    """The problems of the config files ``paths`` that the config they make up cannot show (a key
    written twice), in words; for the workflow, whose config Snakemake reads."""
    problems = []
    for path in dict.fromkeys(paths):  # --configfile a.yaml a.yaml reads one file
        try:
            problems += _read_config_file(path)[1]
        except InputError as error:
            problems += [f"{error.args[0]}: {problem}" for problem in error.problems] or [error.args[0]]
    return problems


def _read_config_file(path):
    """The YAML mapping in ``path`` and the keys it writes twice, each a problem naming the file
    (they are listed with the config's own problems); InputError naming the file when it cannot
    be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            config, duplicates = _read_config_text(f)
            config = config or {}
    except OSError as error:
        raise InputError(f"{path}: config file cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: config file is not UTF-8 text") from None
    except yaml.YAMLError as error:
        # PyYAML's message says where: 'while parsing … in "<file>", line 1, column 11'.
        raise InputError(f"{path}: config file is not valid YAML", [" ".join(str(error).split())]) from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: config file must hold a mapping of keys, not a {type(config).__name__}")
    return config, [f"{path}: {duplicate}" for duplicate in duplicates]


def deep_merge(base, override):
    """Return a new dict: ``override`` merged into ``base``, recursing into nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@functools.cache
def _section_validator(section):
    schema = _parsed_schema()
    sub = dict(schema["properties"][section])
    sub["definitions"] = schema.get("definitions", {})
    return _validator_filling_defaults(sub)


def with_section_defaults(section, options):
    """A copy of ``options``, the top-level section ``section`` (e.g. "split"), with the schema's
    default of every key it leaves out; its values are left for the caller to check."""
    filled = copy.deepcopy(options)
    _section_errors(section, filled)  # checking fills the defaults in
    return filled


def _section_errors(section, value):
    """(key path, message) of each schema problem of one section; fills its defaults in place."""
    return [(_key_path(e.absolute_path), _error_text(e)) for e in _section_validator(section).iter_errors(value)]


def _key_path(parts):
    return ".".join(map(str, parts))


def _resolve_sections(config, overrides, sections, where, top_level_checked=False):
    """Each of ``sections``: the top level with ``overrides`` merged and defaults filled, and the problems.

    With ``top_level_checked`` (the schema has already reported the top-level sections' own
    problems) a problem that the top-level section has by itself is left out, instead of being
    listed again for every dataset or run that inherits it. A section with any problem, listed
    or left out, is not among those resolved: the checks that read resolved values (fractions,
    seeds, windows) would fail on it with a traceback.
    """
    resolved, problems = {}, []
    for section in sections:
        top, own = config.get(section, {}), overrides.get(section, {})
        if not (isinstance(top, dict) and isinstance(own, dict)):
            continue  # the schema reports a section that is not a mapping
        merged = deep_merge(top, own)
        errors = _section_errors(section, merged)
        if not errors:
            resolved[section] = merged
            continue
        inherited = _section_errors(section, copy.deepcopy(top)) if top_level_checked else []
        problems += [f"{_key_path([where, section, path] if path else [where, section])}: {message}"
                     for path, message in errors if (path, message) not in inherited]
    return resolved, problems


def npz_variable(name):
    """The environment variable that gives dataset ``name`` a local ``.npz``: MEDCLASSIFY_<NAME>_NPZ,
    other characters than letters and digits as ``_`` (a shell cannot export ``MEDCLASSIFY_PATH-MNIST_NPZ``)."""
    return f"MEDCLASSIFY_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_NPZ"


def dataset_config(config, name):
    """Options of one dataset: its entry plus the top-level sections with its overrides merged."""
    entry = config["datasets"][name]
    sections, problems = _resolve_sections(config, entry, DATASET_SECTIONS, f"datasets.{name}")
    if problems:
        raise InputError("invalid configuration", problems)
    resolved = {key: value for key, value in entry.items() if key not in DATASET_SECTIONS}
    resolved.update(sections)
    env_npz = os.environ.get(npz_variable(name))
    if env_npz and resolved.get("medmnist"):
        resolved["npz"] = env_npz
    if resolved.get("medmnist") and resolved.get("labels") is None:
        # MedMNIST's own class numbering, which sorting the names would change for DermaMNIST and PathMNIST.
        resolved["labels"] = _medmnist_labels(resolved["medmnist"])
    return sorted_keys(resolved)


def run_config(config, run):
    """Options of one run: the top-level train/head/finetune/evaluate with the run's overrides.

    Raises InputError listing every schema problem, or else every combination of options that
    cannot take effect together (:func:`run_problems`).
    """
    resolved, problems = _resolve_run(config, run, config["runs"][run])
    if problems:
        raise InputError("invalid configuration", problems)
    return sorted_keys(resolve_automatic(resolved))


def complete_run_options(options):
    """A run's options as :func:`run_config` returns them, from ``options`` that may leave keys out.

    For callers of the library that build a run's options by hand: every section (train, head,
    finetune, evaluate) or key they leave out gets the schema's default, exactly as a config
    file would, and "auto" values are resolved. Options from :func:`run_config` come back equal.
    Raises InputError listing every problem.
    """
    problems = [f"options.{section}: {type(options[section]).__name__} is not a mapping"
                for section in RUN_SECTIONS if not isinstance(options.get(section, {}), dict)]
    if problems:
        raise InputError("invalid options", problems)
    options = copy.deepcopy(options)
    for section in RUN_SECTIONS:  # as a config's values are read: 2.0 epochs are 2, "1e-3" a number
        if section in options:
            values_from_strings(options[section], _section_validator(section))
    resolved, problems = _resolve_sections({}, options, RUN_SECTIONS, "options")
    if not problems:
        problems = run_problems(resolved)
    if problems:
        raise InputError("invalid options", problems)
    return sorted_keys(resolve_automatic({**options, **resolved}))


def _resolve_run(config, run, overrides, top_level_checked=False):
    """A run's sections resolved, and its problems: the schema's, or else its combinations of options."""
    resolved, problems = _resolve_sections(config, overrides, RUN_SECTIONS, f"runs.{run}", top_level_checked)
    if "train" in resolved:  # all that run_problems reads: listed with any other section's problems
        problems += [f"runs.{run}: {problem}" for problem in run_problems(resolved)]
    return resolved, problems


# Values of the options that default to "auto": (training from scratch, from pretrained weights).
# From scratch: the BreastMNIST recipe (no head stage; 0.002). Pretrained: Keras's transfer-learning
# recipe, a few epochs of head training on the frozen backbone and then a learning rate low enough
# to keep the pretrained features (not measured here: no pretrained weights can be downloaded).
AUTOMATIC = {("head", "epochs"): (0, 5), ("finetune", "learning_rate"): (0.002, 0.0001)}


def resolve_automatic(options):
    """Replace each "auto" value of a run's options by its value for the run's ``train.weights``."""
    pretrained = options["train"]["weights"] != "none"
    for (section, key), (scratch, with_weights) in AUTOMATIC.items():
        if options[section][key] == "auto":
            options[section][key] = with_weights if pretrained else scratch
    return options


MAX_SEED = 2 ** 32 - 1  # NumPy's legacy seeding refuses more
MEMBER_SEED_STRIDE = 1000  # ensemble member k trains with seed + k × this (medclassify.training)


def run_problems(options):
    """Combinations of a run's resolved options that cannot take effect together, in words."""
    train = options["train"]
    problems = backbone_problems(train)
    last_member_seed = train["seed"] + MEMBER_SEED_STRIDE * (train["ensemble"] - 1)
    if last_member_seed > MAX_SEED:
        problems.append(f"train.seed {train['seed']} with train.ensemble {train['ensemble']}: the last member's seed, "
                        f"{last_member_seed}, is beyond NumPy's {MAX_SEED}; take a smaller seed")
    if train["jit_compile"] == "on" and train["deterministic"]:
        # keras.src.trainers.trainer.model_supports_jit: under op determinism compile drops XLA.
        problems.append("train.jit_compile 'on' cannot take effect with train.deterministic true: Keras compiles "
                        "without XLA while TensorFlow's op determinism is on. Set train.deterministic: false to "
                        "train with XLA, or train.jit_compile: auto")
    return problems


# Train options that choose how the same images reach training (held in memory or read from
# the HDF5 file, same values in the same order), not what is trained. The workflow keeps them
# out of its rules' params, on which Snakemake reruns a job, so that changing them retrains
# nothing; the training script reads them from the config itself (loading_options).
LOADING_TRAIN_OPTIONS = ("cache_in_memory_max_gb",)


def without_loading_options(options):
    """A run's options (:func:`run_config`) less :data:`LOADING_TRAIN_OPTIONS`."""
    train = {key: value for key, value in options["train"].items() if key not in LOADING_TRAIN_OPTIONS}
    return {**options, "train": train}


PLANNING_VALIDATION_OPTIONS = ("watch_images",)


def without_planning_options(validation):
    """A dataset's validation options less :data:`PLANNING_VALIDATION_OPTIONS`, which only steer
    the workflow's planning: as params they would rerun validation, and every stage after it."""
    return {key: value for key, value in validation.items() if key not in PLANNING_VALIDATION_OPTIONS}


def loading_options(config, run):
    """The :data:`LOADING_TRAIN_OPTIONS` of run ``run`` (a name, no fold) in the whole config."""
    train = run_config(config, run)["train"]
    return {key: train[key] for key in LOADING_TRAIN_OPTIONS}


def sorted_keys(value):
    """The value with the keys of every nested dict in sorted order.

    Snakemake compares a rule's params as written, so options passed in the config file's
    key order would rerun the stage when the user merely reorders keys.
    """
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


def config_hash(obj):
    """Stable short hash of a JSON-serialisable object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def schema_reference(schema=None):
    """Markdown table of every config key: its path, default and description (config/README.md)."""
    schema = schema or load_schema()
    rows = []

    def walk(node, prefix):
        for name, sub in node.get("properties", {}).items():
            path = f"{prefix}{name}"
            if "properties" in sub and sub.get("type") == "object":
                rows.append((path, "", sub.get("description", "")))
                walk(sub, path + ".")
            else:
                default = json.dumps(sub.get("default"))
                rows.append((path, default, " ".join(sub.get("description", "").split())))
                if isinstance(sub.get("additionalProperties"), dict):  # datasets: the keys of each entry
                    walk(sub, path + ".")
        entries = node.get("additionalProperties")
        if isinstance(entries, dict) and "properties" in entries:
            walk(entries, f"{prefix}<name>.")

    walk(schema, "")
    lines = ["| key | default | description |", "| --- | --- | --- |"]
    lines += [f"| `{path}` | {f'`{default}`' if default else ''} | {description} |" for path, default, description in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # Regenerates the key reference in config/README.md from the schema.
    readme = REPO_ROOT / "config" / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- keys:start -->\n", "<!-- keys:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    readme.write_text(head + start + schema_reference() + end + tail, encoding="utf-8")

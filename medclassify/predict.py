"""Classify new images with a trained model, exactly as the workflow prepared its training data.

``model.json`` beside the model records the class names and the reading (``io``) and
preprocessing options; the images go through the same reader (:func:`medclassify.io.read_sample`),
the same :func:`medclassify.preprocessing.preprocess_image` and the same storage quantisation
as the cache, so the model sees the values it saw in training. For a binary model the decision
threshold chosen on the validation split is read from ``../evaluation/metrics.json`` when the
run was evaluated; otherwise the arg-max decides (and the output says so).

Several models (the folds of a k-fold run) predict as one ensemble: the mean of their
probabilities, as ``medclassify.evaluation.aggregate_folds`` scored them on the test split, decided
by the threshold that aggregation chose on the pooled out-of-fold validation predictions (its
``metrics.json``). No single fold's threshold fits the ensemble's probabilities.

Every input gives at least one row: unreadable files get ``status = error`` and the reason, and a
warning counts them; nothing is skipped silently. What reading left out of a file that was predicted
(the pages after the first of a TIFF, as validation's ``unread_tiff_pages`` warns) is in the
``warning`` column, and a warning counts those rows too.
"""

import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, atomic_write_json
from .errors import InputError, UsageError
from .inference import IDENTITY, check_finite_probabilities, is_view, mean_probabilities
from .model_info import model_json_path, read_json_object, weights_digest
from .workflow_paths import input_path

BATCH = 256  # images preprocessed and predicted at once; bounds memory on large folders
# The version of a model.json that records none. Training has recorded the cache's
# preprocessing_version in params since PREPROCESSING_VERSION was introduced at 1, so only a
# hand-written model.json lacks it; taken as 1, it is refused once preprocessing changes.
UNRECORDED_PREPROCESSING_VERSION = 1
STATUS_OK = "ok"
STATUS_ERROR = "error"
ARGMAX = {"method": "argmax", "threshold": None, "positive": None, "source": None, "views": [IDENTITY]}


def load_model_info(model_path):
    """``model.json`` beside the model, with ``classes``, ``preprocess`` and ``io`` resolved.

    The preprocess and io options may sit at the top level or under ``params`` (the cache's
    parameter record). Raises InputError naming the file and every missing entry, or when the
    model was trained under another preprocessing version (:func:`_check_preprocessing_version`).
    """
    info_path = model_json_path(model_path)
    if not info_path.exists():
        raise InputError(f"{info_path}: not found", [f"the model {model_path} must have its model.json beside it"])
    info = read_json_object(info_path, "the model's description")
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    resolved = {
        "classes": info.get("classes"),
        "preprocess": info.get("preprocess") or params.get("preprocess"),
        "io": info.get("io") or params.get("io") or {},
    }
    problems = [f"no {key!r}" for key in ("classes", "preprocess") if not resolved[key]]
    if problems:
        raise InputError(f"{info_path}: incomplete model description", problems)
    _check_preprocessing_version(model_path, info, params)
    resolved["classes"] = [str(c) for c in resolved["classes"]]
    return resolved


def load_ensemble_info(model_paths):
    """:func:`load_model_info` of every model, which must agree on classes, reading and preprocessing.

    An ensemble averages probabilities image by image, so its models must read the same pixels and
    name the same classes in the same order. Raises InputError listing every model that differs.
    """
    infos = [load_model_info(path) for path in model_paths]
    problems = [f"{path}: {key} {info[key]!r} against {infos[0][key]!r} in {model_paths[0]}"
                for path, info in zip(model_paths[1:], infos[1:]) for key in ("classes", "preprocess", "io")
                if info[key] != infos[0][key]]
    if problems:
        raise InputError("the models of the ensemble do not read or name images alike (their model.json)", problems)
    return infos[0]


def _check_preprocessing_version(model_path, info, params):
    """Refuse a model whose training images went through another version of the preprocessing.

    predict preprocesses with this library's code, so such a model would be fed values unlike
    those it learnt from, and predict wrongly without any error.
    """
    from .preprocessing import PREPROCESSING_VERSION

    recorded = info.get("preprocessing_version", params.get("preprocessing_version", UNRECORDED_PREPROCESSING_VERSION))
    if recorded == PREPROCESSING_VERSION:
        return
    trained_with = f"medclassify {info['library_version']}" if info.get("library_version") else "its medclassify version"
    raise InputError(
        f"{model_path}: trained on images of preprocessing version {recorded} (model.json), but this medclassify "
        f"preprocesses by version {PREPROCESSING_VERSION}",
        [f"retrain the model with this medclassify (rerun the workflow), or predict with {trained_with}"])


def load_decision(model_path, classes):
    """The decision rule: ``{"method", "threshold", "positive", "source", "views"}`` from the run's evaluation.

    Binary models use the threshold recorded in ``<run>/evaluation/metrics.json`` (chosen on the
    validation split) when that file exists; otherwise, and for several classes, the arg-max.
    ``views`` are the test-time augmentation views that evaluation averaged over (just the image
    without a metrics.json): the threshold was chosen on probabilities computed that way.
    """
    metrics_path = _evaluation_metrics_path(model_path)
    if not metrics_path.exists():
        if len(classes) == 2:
            warnings.warn(f"{metrics_path} not found: deciding by arg-max (threshold 0.5), not by a threshold "
                          "chosen on validation", stacklevel=2)
        return dict(ARGMAX)
    metrics = _read_metrics(metrics_path)
    if not _evaluated(metrics, model_path):
        warnings.warn(f"{metrics_path} is the evaluation of another model ({metrics['inputs'].get('model')}), not "
                      f"of {model_path}: deciding by arg-max over the image alone, without its threshold and "
                      "test-time views", stacklevel=2)
        return dict(ARGMAX)
    return {**_decision_of(metrics, metrics_path, classes, "val"),
            "evaluated_weights": {model_path: _recorded_weights(metrics)}}


def load_ensemble_decision(model_paths, classes, ensemble_metrics=None):
    """The decision rule for the mean probability of several models, as :func:`load_decision` gives it for one.

    ``views`` come from each model's evaluation, as for one model, and must be the same for all: the
    ensemble's probabilities were averaged over them. The threshold is the one recorded in
    ``ensemble_metrics`` (the k-fold aggregate's ``metrics.json``, chosen on the pooled out-of-fold
    validation predictions); without that file a binary ensemble decides by arg-max, with a warning.
    """
    views_of, weights_of = {}, {}
    for path in model_paths:
        metrics_path = _evaluation_metrics_path(path)
        metrics = _read_metrics(metrics_path) if metrics_path.exists() else None
        if metrics is not None and not _evaluated(metrics, path):
            raise InputError(f"{metrics_path} is the evaluation of another model ({metrics['inputs'].get('model')})",
                             [f"the ensemble's member {path} must be the model its run evaluated"])
        views_of[path] = _recorded_views(metrics, metrics_path) if metrics is not None else [IDENTITY]
        weights_of[path] = _recorded_weights(metrics) if metrics is not None else None
    first, views = next(iter(views_of.items()))
    differing = [f"{path}: views {other} against {views} for {first}" for path, other in views_of.items() if other != views]
    if differing:
        raise InputError("the models of the ensemble were evaluated through different test-time views", differing)
    if ensemble_metrics is None:
        if len(classes) == 2:
            warnings.warn(f"no metrics.json of the ensemble of {len(model_paths)} models: deciding by arg-max "
                          "(threshold 0.5); each model's own threshold was chosen for that model alone", stacklevel=2)
        return {**ARGMAX, "views": views, "evaluated_weights": weights_of}
    metrics_path = Path(ensemble_metrics)
    if not metrics_path.exists():
        raise InputError(f"{metrics_path}: not found", ["the ensemble's threshold is read from this file"])
    return {**_decision_of(_read_metrics(metrics_path), metrics_path, classes, "out-of-fold val"), "views": views,
            "evaluated_weights": weights_of}


def _evaluation_metrics_path(model_path):
    return Path(model_path).resolve().parent.parent / "evaluation" / "metrics.json"


def _evaluated(metrics, model_path):
    """Whether ``metrics`` is the evaluation of ``model_path``, by the model's folder and name (the
    run's head model lies beside its fine-tuned one). Not by the file's hash: a ``.keras`` file's
    bytes differ between identical trainings. The weights, once loaded, are checked against the
    evaluation's digest of them by :func:`_unless_retrained`."""
    recorded = _recorded_inputs(metrics).get("model")
    return not recorded or Path(recorded).parts[-2:] == Path(model_path).resolve().parts[-2:]


def _recorded_inputs(metrics):
    return metrics.get("inputs") if isinstance(metrics.get("inputs"), dict) else {}


def _recorded_weights(metrics):
    """The digest of the weights an evaluation evaluated (None in one written before it was recorded)."""
    return _recorded_inputs(metrics).get("model_weights")


def _unless_retrained(decision, model_paths, models, *, ensemble):
    """``decision``, unless a model's weights differ from those its evaluation recorded (it was
    trained again in its run's folder since): then the arg-max for one model, an error for an
    ensemble, as for a model the evaluation did not evaluate."""
    evaluated = decision.get("evaluated_weights") or {}
    changed = [f"{path}: its weights are not those {_evaluation_metrics_path(path)} evaluated (trained again since?)"
               for path, model in zip(model_paths, models)
               if evaluated.get(path) and evaluated[path] != weights_digest(model)]
    if not changed:
        return decision
    if ensemble:
        raise InputError("the ensemble's members must be the models their runs evaluated", changed)
    warnings.warn(f"{changed[0]}: deciding by arg-max over the image alone, without the evaluation's threshold "
                  "and test-time views; rerun its evaluation", stacklevel=2)
    return dict(ARGMAX)


def _read_metrics(metrics_path):
    return read_json_object(metrics_path, "the evaluation whose threshold and views predict applies")


def _decision_of(metrics, metrics_path, classes, chosen_on):
    """The threshold rule recorded in ``metrics`` (arg-max for several classes or without one)."""
    # Relative inside the working folder, as the ensemble's metrics are usually given: the record
    # then holds no machine's paths.
    recorded = {**ARGMAX, "source": _as_recorded(metrics_path), "views": _recorded_views(metrics, metrics_path)}
    if len(classes) != 2:
        return recorded
    threshold = (metrics.get("threshold") or {}).get("value")
    positive_class = metrics.get("positive_class") or classes[1]
    if threshold is None or positive_class not in classes:
        return recorded
    return {**recorded, "method": f"threshold ({metrics['threshold'].get('method')}, chosen on {chosen_on})",
            "threshold": float(threshold), "positive": classes.index(positive_class)}


def _as_recorded(path):
    """``path`` as the record names it: relative inside the working folder, where it holds no
    machine's paths, and absolute outside it (``input_path`` of the absolute path)."""
    return input_path(os.path.abspath(path))


def _recorded_views(metrics, metrics_path):
    views = (metrics.get("tta") or {}).get("views") or [IDENTITY]
    unknown = [f"unknown view {view!r}" for view in views if not is_view(view)]
    if unknown:
        raise InputError(f"{metrics_path}: unreadable test-time augmentation views", unknown)
    return views


def as_path_list(paths):
    """``paths`` as a list: one path (str or Path) becomes a list of one."""
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def folder_entries(folder):
    """``(entries, n_hidden)``: every entry below ``folder`` that is not a folder, sorted, and how
    many hidden files and folders (names starting with ".") were left out.

    Linked folders are followed (once each: a link back up the tree is not), and broken links and
    other non-files are entries too, so that each gets its error row instead of no row at all.
    """
    entries, hidden, seen = [], 0, set()
    for base, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(base)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        hidden += sum(name.startswith(".") for name in folders + names)
        # Sorted: the first of two links to one folder lists its files, whatever the disk's order.
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        entries += [Path(base) / name for name in names if not name.startswith(".")]
    return sorted(entries), hidden


def expand_inputs(inputs, hidden=None):
    """Rows ``{"input", "path", "label"?}`` for image files, folders (every non-hidden entry below,
    sorted: :func:`folder_entries`) or manifest CSVs (column ``path``, relative to the CSV's folder).

    ``hidden``, a list, receives ``(folder, count)`` for each folder with hidden entries left out.
    """
    inputs = as_path_list(inputs)
    rows = []
    problems = []
    for item in map(Path, inputs):
        if item.is_dir():
            files, n_hidden = folder_entries(item)
            if not files:
                problems.append(f"{item}: folder holds no files")
            if n_hidden and hidden is not None:
                hidden.append((item, n_hidden))
            rows += [{"input": str(p), "path": p} for p in files]
        elif item.suffix.lower() == ".csv" and item.is_file():
            rows += _manifest_rows(item, problems)
        else:
            # A missing file is listed as an error row like any unreadable one.
            rows.append({"input": str(item), "path": item})
    if problems:
        raise InputError("cannot read the inputs to predict", problems)
    return rows


def is_snakemake_pattern(path):
    """Whether Snakemake would read ``path`` as a pattern: a ``{`` or ``}`` in it opens a wildcard."""
    return "{" in str(path) or "}" in str(path)


def files_read(inputs):
    """The existing files that :func:`predict_files` reads for ``inputs``, sorted: manifests and images.

    The workflow declares them as inputs of rule predict, so that adding, removing or changing
    an image reruns it (``inputs`` itself is a folder or a manifest, whose own time says neither).
    Missing files are left out, and inputs it cannot expand give what exists of them: predict
    reports both, as error rows or as its InputError, in its log rather than while Snakemake plans.
    """
    inputs = as_path_list(inputs)
    files = {Path(item) for item in inputs if Path(item).is_file()}
    try:
        files |= {row["path"] for row in expand_inputs(inputs) if row["path"].is_file()}
    except InputError:  # a malformed manifest: predict itself reports it
        pass
    return sorted(map(str, files))


def _manifest_rows(manifest, problems):
    """Rows of a manifest CSV; its problems go to ``problems`` as ``"<file>: row N …"`` lines.

    Read as ``medclassify validate`` reads manifests (:func:`medclassify.manifest.read_manifest_rows`),
    so both number the rows alike (header row 0, blank lines not counted) and a row with more or
    fewer fields than the header is an error, never a shifted set of columns. A trailing comma
    (Excel exports) is such a row too: validate refuses it, and predict must not read a file
    differently.
    """
    from .manifest import ProblemCollector, read_manifest_rows

    found = ProblemCollector()
    header, records = read_manifest_rows(manifest, found, root=manifest.parent)
    for problem in found.problems:
        if problem.severity == "error":
            problems.append(f"{manifest}: {problem.message}")
        else:
            warnings.warn(f"{manifest}: {problem.message}", stacklevel=3)
    if header is None:
        return []
    if "path" not in header:
        problems.append(f"{manifest}: no 'path' column (columns: {', '.join(header)})")
        return []
    if not records and not any(problem.severity == "error" for problem in found.problems):
        problems.append(f"{manifest}: the manifest has a header but no rows")
    rows = []
    for number, record in records:
        problem = _manifest_row_problem(record)
        if problem:
            problems.append(f"{manifest}: row {number}: {problem}")
            continue
        row = {"input": record["path"], "path": manifest.parent / record["path"]}
        if "label" in header:
            row["label"] = record["label"]  # kept to compare; patient ids are deliberately not copied
        rows.append(row)
    return rows


def _manifest_row_problem(record):
    # A path or label spanning lines (an unclosed quote) never gets here: read_manifest_rows refuses it.
    if not record["path"].strip():
        return "empty path"
    return None


def _read_preprocessed(path, index, info, storage_dtype):
    """The sample's preprocessed image and its reader's ``meta``."""
    from .io import ReadError, read_sample
    from .preprocessing import from_storage, intensity_input_problem, preprocess_image, to_storage

    sample = read_sample(path, index, info["io"])
    unfit = intensity_input_problem(sample.pixels, sample.meta, info["preprocess"], info["io"])
    if unfit:  # refused in training too: the model never saw such an image
        raise ReadError(*unfit)
    image = preprocess_image(sample.pixels, info["preprocess"])
    # The cache stores images as uint8 or float16; quantise the same way so that the model
    # sees exactly the values it was trained on.
    # The reader's meta already holds the facts validation checks (constant, non_finite); the pixel
    # count is validation's too, for the same message.
    return from_storage(to_storage(image, storage_dtype)), {**sample.meta, "n_pixels": int(sample.pixels.size)}


def _reading_warning(meta):
    """What reading a sample left out or found suspect, as ``"<code>: <message>"`` like the error
    column (the codes validation gives the same images), "; "-separated; "" when nothing."""
    from .manifest import unread_tiff_pages_message

    warnings_ = []
    unread_pages = unread_tiff_pages_message(meta.get("pages"))
    if unread_pages:
        warnings_.append(f"unread_tiff_pages: {unread_pages}, and predicted (save each page you need as its own file)")
    if meta.get("constant"):
        warnings_.append("constant_image: every pixel has the same value (a blank or failed export?), and predicted")
    if meta.get("non_finite"):
        warnings_.append(f"non_finite_pixels: {meta['non_finite']} of {meta['n_pixels']} pixel values are NaN or "
                         "infinite, replaced by the image's lowest finite value, and predicted")
    return "; ".join(warnings_)


def _samples(rows, info):
    """Yield ``(row, sample_id, index, image or None, error or None, warning)`` for every sample of every row."""
    from .io import sample_indices
    from .manifest import sample_id_of

    storage_dtype = info["preprocess"].get("dtype", "uint8")
    for row in rows:
        path = row["path"]
        try:
            if Path(path).is_dir():
                raise IsADirectoryError(f"{path} is a folder, not an image file")
            if not Path(path).is_file():
                # A FIFO, a device or a link loop exists: saying "no such file" sent users looking.
                exists = os.path.lexists(path)
                raise (OSError if exists else FileNotFoundError)(
                    f"not a regular file (a special file or a broken link): {path}" if exists else f"no such file: {path}")
            indices = sample_indices(path, info["io"])
        except Exception as error:  # noqa: BLE001 - any reader failure is reported, not raised
            yield row, row["input"], None, None, _reason(error), ""
            continue
        for index in indices:
            sample_id = sample_id_of(row["input"], index, len(indices))  # as in the validated manifest
            try:
                image, meta = _read_preprocessed(path, index, info, storage_dtype)
            except Exception as error:  # noqa: BLE001
                yield row, sample_id, index, None, _reason(error), ""
                continue
            yield row, sample_id, index, image, None, _reading_warning(meta)


def _reason(error):
    from .io import ReadError

    # A ReadError already reads "<code>: <message>"; others get their type for context.
    text = str(error) if isinstance(error, ReadError) else f"{type(error).__name__}: {error}"
    if isinstance(error, ReadError) and re.search(r"\bset io\.[a-z_]+", error.message):
        # "set io.nifti_volume": here the model's io options, fixed when it was trained
        text += " (predict reads the io options from the model's model.json, as the model was trained)"
    return " ".join(text.split())  # one line per CSV cell


def predict_files(model_path, inputs, out_csv, *, threads=None, ensemble_metrics=None, record_json=None):
    """Predict every image of ``inputs``; write ``out_csv`` (and ``record_json``) and return the table.

    Columns: ``input, sample_id, index, status, error, warning, [label], predicted, prob_<class>…``.
    ``status`` is ``ok`` or ``error`` (``error`` then says why and the prediction is empty);
    ``warning`` says what reading left out of a predicted image.
    ``model_path`` may be a list of models (a k-fold run's folds), which predict as one ensemble:
    the mean of their probabilities, decided by the threshold of ``ensemble_metrics``
    (:func:`load_ensemble_decision`). ``threads`` caps TensorFlow's CPU threads.
    ``record_json``, when given, receives :func:`prediction_record`: which models, decision rule
    and preprocessing made the table.
    """
    from .evaluation.threshold import decide
    from .models import load_model
    from .gpu import configure_inference

    configure_inference(threads)

    model_paths = as_path_list(model_path)
    inputs = as_path_list(inputs)
    if not model_paths:
        raise InputError("no model to predict with", ["give one model.keras, or several to predict as an ensemble"])
    info = load_ensemble_info(model_paths)
    classes = info["classes"]
    if len(model_paths) == 1 and ensemble_metrics is None:
        decision = load_decision(model_paths[0], classes)
    else:
        decision = load_ensemble_decision(model_paths, classes, ensemble_metrics)
    hidden = []
    rows = expand_inputs(inputs, hidden)
    read = [*inputs, *(row["path"] for row in rows), *model_paths, *map(model_json_path, model_paths),
            *map(_evaluation_metrics_path, model_paths), *([ensemble_metrics] if ensemble_metrics else [])]
    _refuse_writing_over_inputs([out_csv, record_json], read)
    for folder, count in hidden:
        warnings.warn(f"{folder}: {count} hidden file(s) or folder(s) (names starting with '.') were left out",
                      stacklevel=2)
    models = [load_model(path) for path in model_paths]
    decision = _unless_retrained(decision, model_paths, models, ensemble=len(model_paths) > 1 or ensemble_metrics)
    expected_shape = tuple(models[0].input_shape[1:])

    records, batch_images, batch_records = [], [], []

    def flush():
        if not batch_images:
            return
        images = np.stack(batch_images).astype(np.float32)
        # The mean over models of each model's mean over views, the order aggregate_folds averages in.
        probs = np.mean([mean_probabilities(model, images, decision["views"]) for model in models], axis=0)
        check_finite_probabilities(", ".join(map(str, model_paths)), predicted=probs)
        positive = None if decision["threshold"] is None else decision["positive"]
        for record, prob, predicted in zip(batch_records, probs, decide(probs, decision["threshold"], positive)):
            record.update({f"prob_{c}": float(p) for c, p in zip(classes, prob)})
            record["predicted"] = classes[predicted]
        batch_images.clear()
        batch_records.clear()

    for row, sample_id, index, image, error, warning in _samples(rows, info):
        record = {"input": row["input"], "sample_id": sample_id, "index": "" if index is None else index,
                  "status": STATUS_OK, "error": "", "warning": warning}
        if "label" in row:
            record["label"] = row["label"]
        if image is not None and tuple(image.shape) != expected_shape:
            image, error = None, (f"preprocessed image has shape {tuple(image.shape)}, the model expects "
                                  f"{expected_shape} (check io.channels in model.json)")
        if image is None:
            record.update({"status": STATUS_ERROR, "error": error, "predicted": ""})
        else:
            batch_images.append(image)
            batch_records.append(record)
            if len(batch_images) >= BATCH:
                flush()
        records.append(record)
    flush()

    columns = ["input", "sample_id", "index", "status", "error", "warning"]
    columns += ["label"] if any("label" in r for r in records) else []
    columns += ["predicted"] + [f"prob_{c}" for c in classes]
    table = pd.DataFrame(records).reindex(columns=columns)
    failed = table[table["status"] == STATUS_ERROR]
    warned = table[(table["status"] == STATUS_OK) & (table["warning"] != "")]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    if record_json is not None:
        rows = {"total": len(table), "ok": len(table) - len(failed), "error": len(failed), "with_warning": len(warned)}
        atomic_write_json(record_json, prediction_record(model_paths, info, decision, inputs, rows))
    if len(failed):
        warnings.warn(f"{len(failed)} of {len(table)} inputs could not be predicted (see the status and error "
                      f"columns of {out_csv}): {_first_five(failed, 'error')}", stacklevel=2)
    if len(warned):
        warnings.warn(f"{len(warned)} of {len(table)} inputs were predicted with a warning (see the warning column "
                      f"of {out_csv}): {_first_five(warned, 'warning')}", stacklevel=2)
    return table


def _refuse_writing_over_inputs(targets, inputs):
    """UsageError when an output would replace a file predict reads (``--out`` naming the manifest
    to predict, or the model) or both outputs are one file."""
    read = {os.path.realpath(path) for path in inputs}
    clashes = [str(target) for target in targets if target is not None and os.path.realpath(target) in read]
    if clashes:
        raise UsageError(f"refusing to write over an input (an image, a manifest, a model or its description): "
                         f"{', '.join(clashes)}; write the predictions outside the folders of images (a file "
                         "there, an earlier table included, is one of the inputs)")
    given = [os.path.realpath(target) for target in targets if target is not None]
    if len(set(given)) < len(given):
        raise UsageError(f"the predictions and their record must be two files, not {targets[0]} twice")


def prediction_record(model_paths, info, decision, inputs, rows):
    """What made a predictions table, for the file beside it: the models (path and sha256), the
    decision rule (threshold, positive class, the metrics file it came from, test-time views), the
    reading and preprocessing options, the inputs and the row counts ``rows``."""
    from . import __version__
    from .content import file_digest
    from .runcard import timestamp

    classes = info["classes"]
    return {
        "models": [{"path": str(path), "sha256": file_digest(path)} for path in model_paths],
        "ensemble": f"mean probability of {len(model_paths)} models" if len(model_paths) > 1 else None,
        "classes": classes,
        "decision": {"method": decision["method"], "threshold": decision["threshold"],
                     "positive_class": None if decision["positive"] is None else classes[decision["positive"]],
                     "source": decision["source"], "views": decision["views"]},
        "preprocess": info["preprocess"],
        "io": info["io"],
        "inputs": [str(item) for item in inputs],
        "rows": rows,
        "library_version": __version__,
        "created": timestamp(time.time()),
    }


def _first_five(rows, column):
    return "; ".join(f"{i}: {text}" for i, text in zip(rows["input"][:5], rows[column][:5]))



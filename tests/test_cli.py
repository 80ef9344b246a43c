"""The command line: subcommands, help, and exit codes."""

import json
import subprocess
import sys
import warnings

import pytest

from medclassify.cli import build_parser, main

SUBCOMMANDS = ["validate", "preprocess", "split", "train", "evaluate", "aggregate", "compare", "predict",
               "import-medmnist", "demo-data"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "medclassify", *args], capture_output=True, text=True)


def test_every_stage_has_a_subcommand_with_help():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(SUBCOMMANDS) <= set(choices)
    for name in SUBCOMMANDS:
        assert choices[name].description, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_exits_zero(name):
    with pytest.raises(SystemExit) as caught:
        main([name, "--help"])
    assert caught.value.code == 0


def test_usage_error_exits_two():
    result = run_cli("train", "--stage", "sideways")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_invalid_config_exits_one_with_the_problem(tmp_path):
    result = run_cli("split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.csv"),
                     "--report", str(tmp_path / "r.json"), "--set", '{"split": {"method": "random"}}')
    assert result.returncode == 1
    assert "split.method" in result.stderr and "random" in result.stderr


def test_dataset_stages_apply_the_overrides_of_the_named_dataset(tmp_path):
    import pandas as pd
    import yaml

    from splits_fixtures import random_manifest

    manifest = tmp_path / "manifest.validated.csv"
    random_manifest(60).to_csv(manifest, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"datasets": {"plain": {"demo": True},
                                                   "folded": {"demo": True, "split": {"method": "kfold", "folds": 3}}}}, sort_keys=False))

    def split(*extra):
        out = tmp_path / f"splits{len(extra)}.csv"
        assert main(["split", str(manifest), "--out", str(out), "--report", str(tmp_path / "r.json"),
                     "--config", str(config), *extra]) == 0
        return pd.read_csv(out)

    assert "fold" not in split().columns
    assert set(split("--dataset", "folded")["fold"]) == {-1, 0, 1, 2}  # -1: the held-out test set
    result = run_cli("split", str(manifest), "--out", str(tmp_path / "x.csv"), "--report", str(tmp_path / "x.json"),
                     "--config", str(config), "--dataset", "missing")
    assert result.returncode == 2 and "unknown dataset 'missing'" in result.stderr


def test_split_refuses_evaluate_options_that_the_validated_manifest_does_not_fit(tmp_path):
    # The workflow's split rule did; by hand a wrong positive class failed at evaluation (helper-71).
    from splits_fixtures import random_manifest

    manifest = tmp_path / "manifest.validated.csv"
    table = random_manifest(90)
    table[table["label"] != "normal"].to_csv(manifest, index=False)
    result = run_cli("split", str(manifest), "--out", str(tmp_path / "s.csv"), "--report", str(tmp_path / "r.json"),
                     "--set", '{"evaluate": {"positive_class": "nowhere", "subgroups": ["scanner"]}}')
    assert result.returncode == 1, result.stderr
    assert "evaluate.positive_class 'nowhere' is not one of the classes" in result.stderr
    assert "evaluate.subgroups ['scanner'] are not columns" in result.stderr
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("overrides, expected", [
    ("{bad", "is not valid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"train": {"seed": 1}, "train": {"ensemble": 1}}', "key 'train' is written twice in one object"),  # helper-80
])
def test_set_that_is_not_a_json_object_is_a_usage_error(tmp_path, overrides, expected, capsys):
    status = main(["split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.csv"),
                   "--report", str(tmp_path / "r.json"), "--set", overrides])
    assert status == 2 and expected in capsys.readouterr().err


def test_missing_config_file_exits_one_naming_it(tmp_path, capsys):
    config = tmp_path / "nope.yaml"
    status = main(["split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.csv"),
                   "--report", str(tmp_path / "r.json"), "--config", str(config)])
    assert status == 1 and f"{config}: config file cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["split", "{missing}", "--out", "{tmp}/s.csv", "--report", "{tmp}/r.json"],
    ["preprocess", "{missing}", "--root", "{tmp}", "--out", "{tmp}/c.h5", "--fingerprint", "{tmp}/f.json"],
    ["train", "--stage", "head", "--cache", "{tmp}/c.h5", "--splits", "{missing}", "--out", "{tmp}/o"],
    ["evaluate", "--model", "{missing}", "--cache", "{tmp}/c.h5", "--splits", "{tmp}/s.csv",
     "--manifest", "{tmp}/m.csv", "--out", "{tmp}/e"],
    ["predict", "--model", "{missing}", "--input", "{tmp}", "--out", "{tmp}/p.csv"],
])
def test_missing_input_file_exits_one_naming_it(tmp_path, command, capsys):
    missing = tmp_path / "missing.csv"
    status = main([part.format(missing=missing, tmp=tmp_path) for part in command])
    assert status == 1 and f"{missing}: not found" in capsys.readouterr().err


def test_evaluate_by_hand_writes_the_run_card_the_workflow_writes(tmp_path, monkeypatch):
    import medclassify.evaluation

    import medclassify.cache

    import medclassify.cli
    from medclassify.model_info import read_json_object

    monkeypatch.setattr(medclassify.evaluation, "run_evaluation", lambda *args, **kwargs: None)
    monkeypatch.setattr(medclassify.cache, "cache_identity", lambda path: ["p", "r"])
    # the checks of the cache, split and model against the config: test_evaluate_run_card_checks_...
    monkeypatch.setattr(medclassify.cli, "_checked_run_card_inputs",
                        lambda args, path, options, dataset_options: read_json_object(path, "the fingerprint"))
    for name in ("model.keras", "m.csv", "split.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "s.csv").write_text("sample_id,split\n")
    (tmp_path / "fingerprint.json").write_text('{"n_images": 3}')
    config = tmp_path / "config.yaml"
    config.write_text("datasets: {own: {manifest: m.csv, preprocess: {size: [32, 32]}}}\n"
                      "runs: {short: {finetune: {epochs: 2}}}\n")
    arguments = ["evaluate", "--model", str(tmp_path / "model.keras"), "--cache", str(tmp_path / "c.h5"),
                 "--splits", str(tmp_path / "s.csv"), "--manifest", str(tmp_path / "m.csv"),
                 "--out", str(tmp_path / "e"), "--config", str(config), "--run-card", str(tmp_path / "card.json"),
                 "--split-report", str(tmp_path / "split.json")]

    assert main(arguments) == 0
    card = json.loads((tmp_path / "card.json").read_text())
    assert (card["dataset"], card["run"], card["fingerprint"]) == ("own", "short", {"n_images": 3})
    assert card["config"]["dataset"]["preprocess"]["size"] == [32, 32]
    assert card["config"]["run"]["finetune"]["epochs"] == 2
    assert list(card["stages"]) == ["evaluate"] and card["compute_s"] >= 0
    # What the workflow's card leaves out, so that both cards of one config have one config_hash.
    assert "npz" not in card["config"]["dataset"] and "watch_images" not in card["config"]["dataset"]["validation"]
    assert "cache_in_memory_max_gb" not in card["config"]["run"]["train"]
    assert card["command"].startswith("medclassify evaluate --model ")
    assert card["inputs"]["cache"] == {"path": str(tmp_path / "c.h5"), "params_hash": "p", "rows_sha256": "r"}
    assert set(card["inputs"]) == {"manifest", "cache", "model"}

    evaluated = []
    monkeypatch.setattr(medclassify.evaluation, "run_evaluation", lambda *args, **kwargs: evaluated.append(1))
    (tmp_path / "fingerprint.json").write_text("not json")  # read before the evaluation, not after it
    assert main(arguments) == 1 and evaluated == []
    (tmp_path / "fingerprint.json").unlink()
    assert main(arguments) == 1 and evaluated == []


def test_evaluate_names_each_history_by_its_stage(tmp_path, monkeypatch):
    # A run trained from scratch has only a fine-tuning history: it must not be plotted as the head's.
    import medclassify.evaluation

    seen = {}
    monkeypatch.setattr(medclassify.evaluation, "run_evaluation", lambda *args, histories, **kwargs: seen.update(histories))
    for name in ("model.keras", "s.csv", "m.csv", "finetune.csv"):
        (tmp_path / name).write_text("")
    status = main(["evaluate", "--model", str(tmp_path / "model.keras"), "--cache", str(tmp_path / "c.h5"),
                   "--splits", str(tmp_path / "s.csv"), "--manifest", str(tmp_path / "m.csv"),
                   "--out", str(tmp_path / "e"), "--finetune-history", str(tmp_path / "finetune.csv")])
    assert status == 0 and seen == {"finetune": tmp_path / "finetune.csv"}


def test_a_warning_is_shown_as_a_message_without_python_source():
    # predict printed "cli.py:312: UserWarning: ... table = predict_files(...)" to the terminal.
    import warnings

    from medclassify.cli import _warnings_as_messages

    shown = warnings.formatwarning
    with _warnings_as_messages("predict"):
        text = warnings.formatwarning("2 of 5 inputs could not be predicted", UserWarning, "cli.py", 312,
                                      "table = predict_files(args.model)")
    assert text == "medclassify predict: warning: 2 of 5 inputs could not be predicted\n"
    assert warnings.formatwarning is shown


@pytest.mark.parametrize("extra, message", [
    (["--out", "{tmp}/mycache"], "give the cache file a suffix"),  # its parts folder would be the cache itself
    (["--out", "{tmp}/c.h5", "--shards", "0"], "--shards 0: give 1 or more"),
    (["--out", "{tmp}/c.h5", "--shards", "-1"], "--shards -1: give 1 or more"),
])
def test_preprocess_refuses_an_output_or_shard_count_it_cannot_write_before_any_work(tmp_path, capsys, extra, message):
    (tmp_path / "m.csv").write_text("sample_id\n")
    status = main(["preprocess", str(tmp_path / "m.csv"), "--root", str(tmp_path), "--fingerprint",
                   str(tmp_path / "f.json"), *[part.format(tmp=tmp_path) for part in extra]])
    assert status == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


@pytest.mark.parametrize("command", [
    ["predict", "--model", "{tmp}/m.keras", "--input", "{tmp}/a.png", "--out", "{tmp}/folder"],
    ["predict", "--model", "{tmp}/m.keras", "--input", "{tmp}/a.png", "--out", "{tmp}/p.csv", "--record", "{tmp}/folder"],
    ["split", "{tmp}/m.csv", "--out", "{tmp}/folder", "--report", "{tmp}/r.json"],
    ["evaluate", "--model", "{tmp}/m.keras", "--cache", "{tmp}/c.h5", "--splits", "{tmp}/m.csv", "--manifest",
     "{tmp}/m.csv", "--out", "{tmp}/e", "--fingerprint", "{tmp}/m.csv", "--run-card", "{tmp}/folder",
     "--split-report", "{tmp}/m.csv"],
])
def test_an_output_file_naming_a_folder_is_a_usage_error_before_any_work(tmp_path, capsys, command, monkeypatch):
    # A traceback from the atomic rename, after the whole prediction or split (helper-55).
    import medclassify.evaluation
    import medclassify.predict

    def work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(medclassify.predict, "predict_files", work)
    monkeypatch.setattr(medclassify.evaluation, "run_evaluation", work)
    (tmp_path / "folder").mkdir()
    for name in ("m.keras", "m.csv", "a.png"):
        (tmp_path / name).write_text("")
    assert main([part.format(tmp=tmp_path) for part in command]) == 2
    assert f"{tmp_path / 'folder'} is a folder: name the file to write" in capsys.readouterr().err


def test_atomic_path_refuses_a_folder_before_the_block_runs(tmp_path):
    from medclassify.atomic import atomic_path

    with pytest.raises(IsADirectoryError, match="is a folder"):
        with atomic_path(tmp_path):
            raise AssertionError("the block ran")


def test_train_refuses_a_cache_built_with_other_preprocessing_than_the_config_states(tmp_path, capsys):
    # It trained on a 32x32 cache under a config of 96x96, and recorded the cache's size in model.json.
    from training_fixtures import make_training_cache

    cache, splits = make_training_cache(tmp_path / "data", n=8, size=16)
    arguments = ["train", "--stage", "head", "--cache", str(cache), "--splits", str(splits), "--out",
                 str(tmp_path / "out")]
    status = main([*arguments, "--set", '{"preprocess": {"size": [96, 96]}}'])
    err = capsys.readouterr().err
    assert status == 1 and "built with other preprocessing parameters" in err and "the config's" in err, err
    assert "medclassify preprocess" in err and not (tmp_path / "out").exists()


def test_train_with_only_training_options_set_takes_the_cache_as_built(tmp_path, monkeypatch):
    # --set of train options states no preprocessing: the defaults' 64 px must not be held against a 16 px cache.
    import medclassify.training
    from training_fixtures import make_training_cache

    monkeypatch.setattr(medclassify.training, "train_stage", lambda *args, **kwargs: None)
    cache, splits = make_training_cache(tmp_path / "data", n=8, size=16)
    assert main(["train", "--stage", "head", "--cache", str(cache), "--splits", str(splits), "--out",
                 str(tmp_path / "out"), "--set", '{"head": {"epochs": 1}}']) == 0


@pytest.mark.parametrize("head_epochs, warned", [(1, True), (0, False)])
def test_finetune_without_init_model_warns_when_the_config_trains_a_head(tmp_path, monkeypatch, head_epochs, warned):
    # It fine-tuned a new model without a word, where the workflow fine-tunes the head (helper-55).
    import medclassify.training
    from training_fixtures import make_training_cache

    monkeypatch.setattr(medclassify.training, "train_stage", lambda *args, **kwargs: None)
    cache, splits = make_training_cache(tmp_path / "data", n=8, size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--stage", "finetune", "--cache", str(cache), "--splits", str(splits), "--out",
                     str(tmp_path / "out"), "--set", json.dumps({"head": {"epochs": head_epochs}})]) == 0
    assert any("fine-tuning a new model" in str(w.message) for w in caught) == warned


def test_train_head_with_an_init_model_is_a_usage_error(tmp_path, capsys):
    # The head stage builds its model from the config: the given model was ignored without a word.
    (tmp_path / "head.keras").write_bytes(b"")
    status = main(["train", "--stage", "head", "--cache", str(tmp_path / "c.h5"), "--splits", str(tmp_path / "s.csv"),
                   "--out", str(tmp_path / "out"), "--init-model", str(tmp_path / "head.keras")])
    assert status == 2 and "only --stage finetune starts from a model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_a_thread_count_below_one_is_a_usage_error(tmp_path, capsys, threads):
    # TensorFlow aborted the process ("Check failed: num_threads >= 1") on a negative count.
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", str(tmp_path / "m.keras"), "--input", str(tmp_path), "--out",
              str(tmp_path / "p.csv"), "--threads", threads])
    assert exit_.value.code == 2 and "--threads" in capsys.readouterr().err


def test_a_write_the_disk_refuses_is_one_line_not_a_traceback(tmp_path):
    # A full disk or a read-only folder ended in an 11-frame traceback (helper-75); a file size
    # limit refuses the writes as a full disk does.
    from splits_fixtures import random_manifest

    manifest = tmp_path / "manifest.validated.csv"
    random_manifest(60).to_csv(manifest, index=False)
    code = ("import resource, signal, sys; from medclassify.cli import main; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "split", str(manifest), "--out", str(tmp_path / "s.csv"),
                             "--report", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("medclassify split: error: cannot read or write") and "File too large" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.csv").exists()


def test_split_of_a_manifest_lacking_columns_names_them_not_a_key_error(tmp_path):
    # The evaluate-options check ran first and stopped with KeyError: 'label' (helper-77).
    from splits_fixtures import random_manifest

    manifest = tmp_path / "m.csv"
    random_manifest(60).drop(columns=["label"]).to_csv(manifest, index=False)
    result = run_cli("split", str(manifest), "--out", str(tmp_path / "s.csv"), "--report", str(tmp_path / "r.json"))
    assert result.returncode == 1 and "missing column 'label'" in result.stderr, result.stderr


def _user_files(tmp_path):
    """A manifest naming two images, a report, a model and a splits file, with their bytes."""
    (tmp_path / "images").mkdir()
    files = {"images/p0.png": b"png 0", "images/p1.png": b"png 1", "report.json": b'{"classes": ["a", "b"]}',
             "head/model.keras": b"model", "splits.csv": b"sample_id,split\n", "cache.h5": b"cache",
             "fingerprint.json": b"{}"}
    (tmp_path / "head").mkdir()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "m.csv").write_text("path,label,patient,modality\nimages/p0.png,a,p,US\nimages/p1.png,b,q,US\n")
    files["m.csv"] = (tmp_path / "m.csv").read_bytes()
    return files


@pytest.mark.parametrize("command, clash", [
    (["preprocess", "m.csv", "--root", ".", "--out", "c.h5", "--fingerprint", "images/p0.png"], "is an image"),
    (["preprocess", "m.csv", "--root", ".", "--out", "m.csv", "--fingerprint", "f.json"], "is the input"),
    (["preprocess", "m.csv", "--root", ".", "--out", "c.h5", "--fingerprint", "c.h5"], "are one file"),
    (["split", "m.csv", "--out", "s.csv", "--report", "images/p1.json"], "is an image"),  # the plot beside it
    (["split", "m.csv", "--out", "m.csv", "--report", "r.json"], "is the input"),
    (["train", "--stage", "finetune", "--cache", "cache.h5", "--splits", "splits.csv", "--init-model",
      "head/model.keras", "--out", "head"], "is the input"),
    (["evaluate", "--model", "head/model.keras", "--cache", "cache.h5", "--splits", "splits.csv", "--manifest", "m.csv",
      "--out", "e", "--run-card", "m.csv", "--split-report", "report.json"], "is the input"),
])
def test_a_stage_refuses_to_write_over_its_inputs_or_the_images(tmp_path, monkeypatch, capsys, command, clash):
    # preprocess, split, train and evaluate wrote over a manifest, an image, the head model they
    # fine-tuned or each other, with exit 0 (helper-85); validate and predict already refused.
    files = _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "refusing to write over an input" in err or "are one file" in err
    assert clash in err
    assert {name: (tmp_path / name).read_bytes() for name in files} == files


def test_preprocess_names_a_report_that_is_not_a_validation_report(tmp_path, monkeypatch, capsys):
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", "m.csv", "--root", ".", "--out", "c.h5", "--fingerprint", "f.json",
                 "--report", "m.csv"]) == 1
    assert "m.csv: cannot be read as JSON" in capsys.readouterr().err
    (tmp_path / "r.json").write_text('{"summary": {}}')
    assert main(["preprocess", "m.csv", "--root", ".", "--out", "c.h5", "--fingerprint", "f.json",
                 "--report", "r.json"]) == 1
    assert "r.json: not a validation report" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["demo-data", "--patients", "3"],
                                     ["import-medmnist", "breastmnist", "--npz", "nothere.npz"]])
def test_generating_a_dataset_refuses_a_folder_of_the_users_own(tmp_path, monkeypatch, capsys, command):
    # demo-data and import-medmnist replaced the images/ folder and manifest.csv under --out, a
    # user's own scans included, with exit 0 (helper-85).
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "scan001.dcm").write_bytes(b"precious")
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", "."]) == 2
    assert "refusing to replace images" in capsys.readouterr().err
    assert (tmp_path / "images" / "scan001.dcm").read_bytes() == b"precious"
    (tmp_path / "images" / "scan001.dcm").unlink()
    (tmp_path / "images").rmdir()
    (tmp_path / "manifest.csv").write_text("path,label\n")
    assert main([*command, "--out", "."]) == 2
    assert (tmp_path / "manifest.csv").read_text() == "path,label\n"


def test_demo_data_replaces_its_own_dataset_and_asks_for_three_patients(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "demo"), "--patients", "3"]) == 0
    assert main(["demo-data", "--out", str(tmp_path / "demo"), "--patients", "4"]) == 0
    assert (tmp_path / "demo" / "manifest.csv").is_file()
    with pytest.raises(SystemExit) as caught:
        main(["demo-data", "--out", str(tmp_path / "other"), "--patients", "2"])
    assert caught.value.code == 2 and "2 is not 3 or more" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["validate", "m.csv", "--report", "notes.txt/report.json"],
    ["preprocess", "m.csv", "--root", ".", "--out", "notes.txt/c.h5", "--fingerprint", "f.json"],
    ["compare", "fingerprint.json", "--out", "notes.txt"],
    ["train", "--stage", "head", "--cache", "cache.h5", "--splits", "splits.csv", "--out", "notes.txt"],
    ["aggregate", "splits.csv", "splits.csv", "--manifest", "m.csv", "--out", "notes.txt/a"],
])
def test_an_output_in_or_as_a_file_is_a_usage_error_before_any_work(tmp_path, monkeypatch, capsys, command):
    # NotADirectoryError and FileExistsError tracebacks, and TensorFlow's FailedPreconditionError
    # once the model was built (helper-85).
    _user_files(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_preprocess_takes_the_config_datasets_root_as_validate_does(tmp_path, monkeypatch, capsys):
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", "m.csv", "--out", "c.h5", "--fingerprint", "f.json"]) == 2
    assert "--root: give the folder" in capsys.readouterr().err
    # with the config's root it goes on, to the images (not real PNGs here)
    assert main(["preprocess", "m.csv", "--out", "c.h5", "--fingerprint", "f.json", "--set",
                 json.dumps({"datasets": {"mine": {"manifest": "m.csv", "root": str(tmp_path)}}})]) == 1
    assert "--root" not in capsys.readouterr().err


def test_validate_tells_the_manifests_own_warnings(tmp_path, monkeypatch, capsys):
    # "1 warning(s)" without a word of the public salt it was (helper-88).
    monkeypatch.delenv("MEDCLASSIFY_SALT", raising=False)
    assert main(["demo-data", "--out", str(tmp_path / "d"), "--patients", "3"]) == 0
    result = run_cli("validate", str(tmp_path / "d" / "manifest.csv"), "--report", str(tmp_path / "r" / "report.json"))
    assert result.returncode == 0
    assert "validate: warning: public_salt: patient ids were hashed with the public default salt" in result.stderr


def test_evaluate_run_card_checks_the_cache_split_model_and_fingerprint_against_the_config(tmp_path, capsys,
                                                                                           monkeypatch):
    # The card stated whatever config evaluate was given: a split seed, fractions and training
    # options the split and the model were not made with, or another dataset's fingerprint (helper-89).
    from evaluation_fixtures import synthetic_dataset, write_cache, write_splits

    import medclassify.cache

    checked = []  # the fixture's cache has no preprocessing record: the check itself is the workflow's, tested there
    monkeypatch.setattr(medclassify.cache, "check_built_with", lambda path, options, remedy: checked.append(path))

    from medclassify.config import load_config, run_config
    from medclassify.fitting import stage_options

    manifest, images, classes = synthetic_dataset(n_patients=8, images_per_patient=1)
    manifest.to_csv(tmp_path / "m.csv", index=False)
    write_cache(tmp_path / "c.h5", manifest, images, classes)
    write_splits(tmp_path / "s.csv", manifest)
    options = run_config(load_config(overrides={"finetune": {"epochs": 2}}), "baseline")
    (tmp_path / "model.keras").write_text("")
    (tmp_path / "model.json").write_text(json.dumps({"stage": "finetune", "train_options": options["train"],
                                                     "settings": stage_options(options, "finetune")}))
    from medclassify.config import dataset_config
    from medclassify.splits import recorded_options

    config = load_config()
    split_options = dataset_config(config, next(iter(config["datasets"])))["split"]
    (tmp_path / "split.json").write_text(json.dumps({"options": recorded_options(split_options)}))
    (tmp_path / "fingerprint.json").write_text(json.dumps({"n_samples": 8, "params_hash": "other"}))

    def evaluate(*extra):
        return main(["evaluate", "--model", str(tmp_path / "model.keras"), "--cache", str(tmp_path / "c.h5"),
                     "--splits", str(tmp_path / "s.csv"), "--manifest", str(tmp_path / "m.csv"),
                     "--out", str(tmp_path / "e"), "--run-card", str(tmp_path / "card.json"), *extra])

    assert evaluate() == 2 and "--run-card needs --split-report" in capsys.readouterr().err
    assert evaluate("--split-report", str(tmp_path / "split.json"), "--set", '{"finetune": {"epochs": 5}}') == 1
    err = capsys.readouterr().err
    assert "the model was trained with other options than the config's" in err
    assert "finetune.epochs: trained with 2, the config states 5" in err
    assert evaluate("--split-report", str(tmp_path / "split.json"), "--set", '{"finetune": {"epochs": 2}}') == 1
    assert "fingerprint.json: not the fingerprint of" in capsys.readouterr().err
    assert evaluate("--split-report", str(tmp_path / "split.json"), "--set", '{"split": {"seed": 99}}') == 1
    assert "split.seed: made with" in capsys.readouterr().err
    assert not (tmp_path / "card.json").exists() and checked == [tmp_path / "c.h5"] * 3

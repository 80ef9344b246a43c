"""write_run_card: config and hash, git state, versions, split hash, seeds, times, hardware."""

import datetime as dt
import hashlib
import json
import subprocess

from medclassify import runcard
from medclassify.config import config_hash, load_config, run_config


def _write(tmp_path, **overrides):
    splits = tmp_path / "splits.csv"
    splits.write_text("sample_id,split\na.png,train\nb.png,test\n")
    config = {"dataset": {"split": {"seed": 42}}, "run": run_config(load_config(), "baseline")}
    arguments = dict(config=config, dataset="demo", run="baseline", fingerprint={"n_samples": 2},
                     splits=splits, started=1_700_000_000.0, ended=dt.datetime(2023, 11, 14, 22, 15, tzinfo=dt.timezone.utc))
    arguments.update(overrides)
    card = runcard.write_run_card(tmp_path / "run_card.json", **arguments)
    return card, json.loads((tmp_path / "run_card.json").read_text()), config, splits


def test_run_card_records_config_hash_split_hash_seeds_and_times(tmp_path, monkeypatch):
    monkeypatch.setattr(runcard, "gpu_names", lambda: ["Fake GPU"])  # keep the test free of TensorFlow
    card, on_disk, config, splits = _write(tmp_path)
    assert on_disk == json.loads(json.dumps(card))
    assert on_disk["config"] == config and on_disk["config_hash"] == config_hash(config)
    assert on_disk["splits"]["sha256"] == hashlib.sha256(splits.read_bytes()).hexdigest()
    assert on_disk["seeds"] == {"dataset.split.seed": 42, "run.train.seed": 0, "run.evaluate.seed": 0}
    assert on_disk["started"] == "2023-11-14T22:13:20Z"
    assert on_disk["ended"] == "2023-11-14T22:15:00Z"
    assert on_disk["duration_s"] == 100.0
    assert on_disk["fingerprint"] == {"n_samples": 2}
    assert on_disk["hardware"]["gpus"] == ["Fake GPU"] and on_disk["hardware"]["cpu"]
    for library in ("python", "numpy", "h5py", "pydicom", "scikit-learn", "medclassify"):
        assert library in on_disk["versions"], library


def test_git_state_matches_git(tmp_path):
    state = runcard.git_state()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=runcard.REPO_ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)
    # Outside a checkout the state is unknown, not an error.
    assert runcard.git_state(tmp_path) == {"commit": None, "dirty": None, "untracked": None}


def test_git_state_counts_untracked_files_apart_from_changed_tracked_ones(tmp_path):
    # A rule file not yet added changes results as much as an edit, and "dirty" cannot see it.
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("results/\n")
    (tmp_path / "Snakefile").write_text("rule all:\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text("{}")  # ignored: not counted
    assert runcard.git_state(tmp_path)["dirty"] is False and runcard.git_state(tmp_path)["untracked"] == 0
    (tmp_path / "new_rule.smk").write_text("rule new:\n")
    assert runcard.git_state(tmp_path)["dirty"] is False and runcard.git_state(tmp_path)["untracked"] == 1
    (tmp_path / "Snakefile").write_text("rule all:\n    input: []\n")
    assert runcard.git_state(tmp_path)["dirty"] is True and runcard.git_state(tmp_path)["untracked"] == 1


def test_run_card_records_what_the_run_read_by_content(tmp_path, monkeypatch):
    import medclassify.cache

    monkeypatch.setattr(runcard, "gpu_names", lambda: None)
    monkeypatch.setattr(medclassify.cache, "cache_identity", lambda path: ["params-hash", f"rows of {path.name}"])
    manifest = tmp_path / "manifest.validated.csv"
    manifest.write_text("sample_id,label\na.png,x\n")
    model = tmp_path / "finetune" / "model.keras"
    model.parent.mkdir()
    model.write_text("")
    (model.parent / "model.json").write_text(json.dumps({"versions": {"tensorflow": "2.0"}}))
    _, on_disk, _, _ = _write(tmp_path, manifest=manifest, cache=tmp_path / "cache.h5", model=model)
    assert on_disk["inputs"] == {
        "manifest": {"path": str(manifest), "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()},
        "cache": {"path": str(tmp_path / "cache.h5"), "params_hash": "params-hash", "rows_sha256": "rows of cache.h5"},
        "model": {"path": str(model), "training_versions": {"tensorflow": "2.0"}},
    }
    # A model trained before model.json had versions: unknown, not an error.
    (model.parent / "model.json").write_text("{}")
    _, on_disk, _, _ = _write(tmp_path, model=model)
    assert on_disk["inputs"] == {"model": {"path": str(model), "training_versions": None}}


def test_git_state_without_git_executable(monkeypatch, tmp_path):
    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(runcard.subprocess, "run", missing)
    assert runcard.git_state() == {"commit": None, "dirty": None, "untracked": None}


def test_fingerprint_may_be_a_path_and_times_iso_text(tmp_path, monkeypatch):
    monkeypatch.setattr(runcard, "gpu_names", lambda: None)
    fingerprint = tmp_path / "fingerprint.json"
    fingerprint.write_text(json.dumps({"n_patients": 7}))
    _, on_disk, _, _ = _write(tmp_path, fingerprint=fingerprint, started="2024-01-01T10:00:00Z",
                              ended="2024-01-01T11:00:00+00:00")
    assert on_disk["fingerprint"] == {"n_patients": 7}
    assert on_disk["duration_s"] == 3600.0
    assert on_disk["hardware"]["gpus"] is None


def test_compute_time_sums_the_stages_where_the_duration_spans_a_rerun(tmp_path, monkeypatch):
    # Fine-tuning rerun a day after the head stage: duration_s counts the day, compute_s does not.
    monkeypatch.setattr(runcard, "gpu_names", lambda: None)
    day = 86_400
    _, on_disk, _, _ = _write(tmp_path, started=0, ended=day + 700,
                              stages={"head": (0, 300), "finetune": (day, day + 600), "evaluate": (day + 600, day + 700)})
    assert on_disk["duration_s"] == day + 700 and on_disk["compute_s"] == 1000
    assert on_disk["stages"]["finetune"] == {"started": "1970-01-02T00:00:00Z", "ended": "1970-01-02T00:10:00Z",
                                             "seconds": 600.0}


def test_recorded_dataset_options_spell_a_users_dataset_one_way_and_leave_other_sources_keys_out(tmp_path, monkeypatch):
    # They are rule evaluate's params: ./data/m.csv, an absolute path or an unused demo_patients reran it.
    from medclassify.config import dataset_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()

    def recorded(**entry):
        config = load_config(overrides={"datasets": {"own": entry}})
        return runcard.recorded_dataset_options(dataset_config(config, "own"))

    plain = recorded(manifest="data/m.csv", root="data")
    assert plain["manifest"] == "data/m.csv" and plain["root"] == "data"
    assert not {"demo", "demo_patients", "medmnist", "medmnist_size", "npz"} & set(plain)
    for entry in ({"manifest": "./data/m.csv", "root": "data/"}, {"manifest": str(tmp_path / "data/m.csv")},
                  {"manifest": "data/m.csv", "demo_patients": 30, "medmnist_size": 64}):
        assert recorded(**entry) == plain, entry
    demo = runcard.recorded_dataset_options(dataset_config(load_config(), "demo"))
    assert demo["demo"] is True and "demo_patients" in demo and not {"manifest", "root", "medmnist"} & set(demo)

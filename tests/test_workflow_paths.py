"""workflow_paths: the run wildcard and one spelling per input file."""

import os

from medclassify.workflow_paths import input_path, parse_run


def test_parse_run_splits_the_fold_off():
    assert parse_run("baseline/fold_2") == ("baseline", 2)
    assert parse_run("baseline") == ("baseline", None)


def test_input_path_gives_one_spelling_per_file(tmp_path, monkeypatch):
    workdir = tmp_path / "repo"
    (workdir / "data").mkdir(parents=True)
    (workdir / "data/x.npz").write_bytes(b"x")
    outside = tmp_path / "shared.npz"
    outside.write_bytes(b"y")
    os.symlink(outside, workdir / "data/link.npz")
    monkeypatch.chdir(workdir)

    # The config's relative spelling and the Makefile's absolute one name the same input.
    assert input_path("data/x.npz") == input_path(str(workdir / "data/x.npz")) == "data/x.npz"
    assert input_path("./data/../data/x.npz") == "data/x.npz"
    assert input_path("data/link.npz") == "data/link.npz"  # as written: links are not followed
    assert input_path("../shared.npz") == "../shared.npz"
    assert input_path(str(outside)) == str(outside)  # absolute outside: the user's kind of path
    assert input_path(None) == []


def test_a_data_folder_linked_into_the_project_keeps_one_spelling_when_the_project_moves(tmp_path, monkeypatch):
    # data -> /scratch/ds: the path was spelled relative to the link's target, which changed when
    # the project moved, and differed from the absolute spelling: every stage reran (helper-54).
    (tmp_path / "scratch" / "ds").mkdir(parents=True)
    spellings = []
    for place in ("before", "after/deeper"):
        project = tmp_path / place / "repo"
        project.mkdir(parents=True)
        os.symlink(tmp_path / "scratch" / "ds", project / "data")
        monkeypatch.chdir(project)
        monkeypatch.setenv("PWD", str(project))
        spellings += [input_path("data/m.csv"), input_path(str(project / "data" / "m.csv"))]
    assert spellings == ["data/m.csv"] * 4


def test_a_project_reached_through_a_linked_folder_takes_the_shells_spelling_too(tmp_path, monkeypatch):
    # /home/u -> /data/home/u: getcwd() names the real folder, the user's absolute paths the link.
    (tmp_path / "real" / "repo" / "data").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "home")
    monkeypatch.chdir(tmp_path / "home" / "repo")
    monkeypatch.setenv("PWD", str(tmp_path / "home" / "repo"))
    assert input_path(str(tmp_path / "home" / "repo" / "data" / "m.csv")) == "data/m.csv"
    assert input_path(str(tmp_path / "real" / "repo" / "data" / "m.csv")) == "data/m.csv"


def test_input_path_outside_the_project_survives_moving_both(tmp_path, monkeypatch):
    # ../data/m.csv became absolute: moving the project and its data reran every stage.
    # And /shared/m.csv, written absolute, stays one input when only the project moves.
    (tmp_path / "shared").mkdir()
    spellings = []
    for place in ("before", "after/deeper"):
        (tmp_path / place / "repo").mkdir(parents=True)
        (tmp_path / place / "data").mkdir()
        monkeypatch.chdir(tmp_path / place / "repo")
        spellings.append((input_path("../data/m.csv"), input_path(str(tmp_path / "shared" / "m.csv"))))
    assert spellings[0] == spellings[1] == ("../data/m.csv", str(tmp_path / "shared" / "m.csv"))

"""The workstation profile (workflow/profiles/default) is what a plain `snakemake` runs with.

Snakemake looks for a workflow profile only at default/, profiles/default/ and
<Snakefile's folder>/profiles/default/; with the Snakefile at the repository root, the symlink
profiles/default → ../workflow/profiles/default is what it finds. These tests parse a command
line the way the `snakemake` command does, without running the workflow.
"""

import pytest
from snakemake.cli import parse_args

from snakemake_fixtures import REPO


def parsed(argv):
    _, args = parse_args(argv)
    return args


def gpu_limit(args):
    """The `gpu` resource the run may use at once, or None when nothing limits it."""
    gpu = (args.resources or {}).get("gpu")
    return None if gpu is None else gpu.value


@pytest.mark.parametrize(
    "where, argv",
    [
        ("the repository root", ["-n"]),
        ("another folder, naming the Snakefile", ["-n", "--snakefile", str(REPO / "Snakefile")]),
    ],
)
def test_a_plain_snakemake_loads_the_workstation_profile(where, argv, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO if where == "the repository root" else tmp_path)
    args = parsed(argv)
    assert gpu_limit(args) == 1  # two GPU jobs never share the GPU
    assert args.keep_going and args.rerun_incomplete
    assert args.printshellcmds and args.show_failed_logs


def test_the_command_line_overrides_the_workstation_profile(monkeypatch):
    monkeypatch.chdir(REPO)
    assert parsed(["-n", "--cores", "3"]).cores == 3


def test_workflow_profile_none_leaves_it_out(monkeypatch):
    monkeypatch.chdir(REPO)
    args = parsed(["-n", "--workflow-profile", "none"])
    assert gpu_limit(args) is None
    assert not args.keep_going and not args.rerun_incomplete

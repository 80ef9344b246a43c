"""The conda envs and the pip requirements pin the same versions, and every rule has an env."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def requirement_pins(path):
    pins = {}
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins.update(requirement_pins(line[3:]))
        elif line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def env_pins(path):
    env = yaml.safe_load((REPO / path).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {name.lower(): version for name, version in (p.split("==") for p in pip)}


def test_every_requirement_is_pinned_exactly():
    for name in ("requirements-data.txt", "requirements-train.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or line.startswith("-r ") or re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[0-9][^ ]*", line), line


def test_conda_envs_match_requirements():
    assert env_pins("envs/data.yaml") == requirement_pins("requirements-data.txt")
    assert env_pins("envs/train.yaml") == requirement_pins("requirements-train.txt")


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    mismatched = {name: (pin, version(name)) for name, pin in requirement_pins("requirements-dev.txt").items()
                  if version(name) != pin}
    assert not mismatched


def test_every_rule_declares_env_log_benchmark_threads_and_resources():
    # Without resources a cluster job gets the profile's defaults, whatever it needs.
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    for block in re.split(r"\n(?=rule )", rules)[1:]:
        name = block.split(":")[0]
        for directive in ("conda:", "log:", "benchmark:", "threads:", "resources:", "mem_mb=", "runtime="):
            assert directive in block, f"{name} lacks {directive}"

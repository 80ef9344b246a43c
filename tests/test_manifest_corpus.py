"""The bad-input corpus: every defect gives its exact problem code, and nothing is written that
should not be. The user's folder is never modified."""

import hashlib
import json
import os

import pandas as pd
import pytest

from medclassify.manifest import PROBLEM_CODES, VALIDATED_COLUMNS, validate_manifest, write_validation_outputs
from tests.badinput_corpus import BAD_ROW, CASES, VALID_CASES, build_case

SALT = "corpus-salt"


def folder_digest(folder):
    """Hash of every name, symlink target and file content under ``folder`` (links not followed)."""
    digest = hashlib.sha256()
    for base, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            digest.update(os.path.relpath(path, folder).encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    digest.update(f.read())
                digest.update(str(os.stat(path).st_mtime_ns).encode())
    return digest.hexdigest()


def run_case(case, out, **overrides):
    options = dict(case.validation_options, **overrides)
    before = folder_digest(case.root)
    result = validate_manifest(case.manifest, case.root, io_options=case.io_options,
                               validation_options=options, labels=case.labels, salt=SALT, threads=1)
    paths = (out / "manifest.validated.csv", out / "validation" / "report.json", out / "validation" / "report.md")
    write_validation_outputs(result, *paths)
    assert folder_digest(case.root) == before, "validation modified the input folder"
    return result, paths


def test_corpus_has_at_least_25_kinds():
    assert len(CASES) + len(VALID_CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_its_problem_code(name, tmp_path):
    case = build_case(name, tmp_path)
    result, (manifest_out, report_json, report_md) = run_case(case, tmp_path / "results")
    assert {p.code for p in result.problems} <= set(PROBLEM_CODES)
    matching = [p for p in result.problems if p.code == case.code]
    assert matching, f"expected {case.code}, got {[str(p) for p in result.problems]}"
    assert any(p.row == case.row and p.severity == case.severity for p in matching), [str(p) for p in matching]
    if case.row is not None:
        assert any(f"row {case.row}" in p.message for p in matching)
    assert result.ok == case.writes_manifest
    assert manifest_out.exists() == case.writes_manifest
    report = json.loads(report_json.read_text())
    assert case.code in {p["code"] for p in report["problems"]}
    assert case.code in report_md.read_text()


@pytest.mark.parametrize("name", sorted(VALID_CASES))
def test_tricky_but_valid_input_passes(name, tmp_path):
    case = build_case(name, tmp_path)
    result, (manifest_out, _, _) = run_case(case, tmp_path / "results")
    assert result.problems == [], [str(p) for p in result.problems]
    table = pd.read_csv(manifest_out, keep_default_na=False)
    assert len(table) == BAD_ROW
    assert table["path"].iloc[-1] == pd.read_csv(case.manifest)["path"].iloc[-1]


ROW_CASES = sorted(name for name, spec in CASES.items() if spec[3] is not None and spec[2] == "error"
                   and name not in ("same_pixels_two_labels", "mixed_label_patient", "duplicate_row",
                                    "file_named_like_a_frame_of_another"))  # two rows appended


@pytest.mark.parametrize("name", ROW_CASES)
def test_drop_invalid_writes_cleaned_manifest_listing_the_row(name, tmp_path):
    case = build_case(name, tmp_path)
    result, (manifest_out, report_json, _) = run_case(case, tmp_path / "results", drop_invalid=True)
    assert result.ok, [str(p) for p in result.problems]
    table = pd.read_csv(manifest_out, keep_default_na=False)
    assert len(table) == BAD_ROW - 1
    dropped = json.loads(report_json.read_text())["dropped"]
    assert [d["row"] for d in dropped] == [BAD_ROW]
    assert case.code in dropped[0]["codes"]


def test_conflicting_duplicate_content_drops_both_rows(tmp_path):
    case = build_case("same_pixels_two_labels", tmp_path)
    result, (manifest_out, _, _) = run_case(case, tmp_path / "results", drop_invalid=True)
    assert sorted(d["row"] for d in result.dropped) == [1, BAD_ROW]
    assert result.ok
    assert len(pd.read_csv(manifest_out)) == BAD_ROW - 2


def test_duplicate_row_keeps_the_first_occurrence(tmp_path):
    case = build_case("duplicate_row", tmp_path)
    result, _ = run_case(case, tmp_path / "results", drop_invalid=True)
    assert [d["row"] for d in result.dropped] == [BAD_ROW]
    assert result.table["path"].tolist().count("images/img_0.png") == 1


def test_strict_turns_warnings_into_errors(tmp_path):
    case = build_case("same_pixels_two_patients", tmp_path)
    result, (manifest_out, _, _) = run_case(case, tmp_path / "results", strict=True)
    assert not result.ok and not manifest_out.exists()
    assert {p.severity for p in result.problems if p.code == "duplicate_content_across_patients"} == {"error"}


def test_wrong_column_names_hint_at_the_near_miss(tmp_path):
    case = build_case("wrong_column_names", tmp_path)
    result, _ = run_case(case, tmp_path / "results")
    messages = {p.message for p in result.problems if p.code == "missing_column"}
    assert any("'Path'" in m and "rename it to 'path'" in m for m in messages)
    assert any("'class'" in m and "rename it to 'label'" in m for m in messages)


def test_label_typo_suggests_the_configured_label(tmp_path):
    case = build_case("label_typo", tmp_path)
    result, _ = run_case(case, tmp_path / "results")
    assert any("did you mean 'malignant'" in p.message for p in result.problems if p.code == "unknown_label")


def test_compressed_unsupported_names_the_transfer_syntax(tmp_path):
    case = build_case("dicom_compressed_unsupported", tmp_path)
    result, _ = run_case(case, tmp_path / "results")
    message = next(p.message for p in result.problems if p.code == "compressed_unsupported")
    assert "1.2.840.10008.1.2.4.92" in message and "JPEG 2000 Part 2" in message


def test_stale_validated_manifest_is_removed_when_validation_fails(tmp_path):
    case = build_case("missing_file", tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    (out / "manifest.validated.csv").write_text(",".join(VALIDATED_COLUMNS) + "\nstale\n")
    _, (manifest_out, _, _) = run_case(case, out)
    assert not manifest_out.exists()
    # A file of another kind at --out is the user's, not a stale result: it stays (helper-85).
    manifest_out.write_text("my notes\n")
    run_case(case, out)
    assert manifest_out.read_text() == "my notes\n"

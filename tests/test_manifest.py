"""validate_manifest and write_validation_outputs: the validated-manifest format, row numbers,
parallel decoding, warnings, policies and the command line."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
from PIL import Image

from medclassify.cli import main as cli_main
from medclassify.errors import InputError, UsageError
from medclassify.manifest import (VALIDATED_COLUMNS, image_files_stamp, manifest_header, raise_if_invalid,
                                  report_dict, validate_manifest, write_validation_outputs)
from medclassify.privacy import hash_patient, is_identifier_column
from tests.badinput_corpus import write_png

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SALT = "unit-salt"


def make_dataset(root, n=6, extra=""):
    """n PNGs (two classes, one patient each) and a manifest with a site column."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,patient,modality,site" + extra]
    for i in range(n):
        write_png(root / "img" / f"{i}.png", seed=i)
        lines.append(f"img/{i}.png,{'ab'[i % 2]},patient-{i},XR,site{i % 3}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def validate(manifest, root, threads=1, labels=None, io_options=None, **options):
    return validate_manifest(manifest, root, io_options=io_options or {}, validation_options=options,
                             labels=labels, salt=SALT, threads=threads)


def codes(result):
    return sorted({p.code for p in result.problems})


def test_validated_manifest_format(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    shutil.copy(PYDICOM_FILES / "rtdose.dcm", root / "dose.dcm")
    with open(manifest, "a") as f:
        f.write("dose.dcm,a,patient-dose,RTDOSE,site9\n")
    result = validate(manifest, root, io_options={"dicom_frame": "all"}, min_images_per_class=1)
    assert result.ok, [str(p) for p in result.problems]
    table = result.table
    assert list(table.columns) == list(VALIDATED_COLUMNS) + ["site"]
    assert len(table) == 6 + 15
    assert table["sample_id"].iloc[0] == "img/0.png" and pd.isna(table["index"].iloc[0])
    dose = table[table["path"] == "dose.dcm"]
    assert dose["sample_id"].tolist() == [f"dose.dcm#{k}" for k in range(15)]
    assert dose["index"].tolist() == list(range(15))
    assert table["patient"].iloc[0] == hash_patient("patient-0", SALT)
    assert not table["patient"].str.contains("patient-").any()
    assert table["content_hash"].str.len().eq(32).all()
    assert dose["source_spacing"].eq("10.0 10.0").all()  # PixelSpacing; a PNG has none
    assert table.loc[table["path"] != "dose.dcm", "source_spacing"].eq("").all()
    assert result.classes == ["a", "b"]
    middle = validate(manifest, root, min_images_per_class=1).table  # one frame: the path is the id
    assert middle[middle["path"] == "dose.dcm"][["sample_id", "index"]].values.tolist() == [["dose.dcm", 7]]

    out = tmp_path / "results"
    write_validation_outputs(result, out / "manifest.validated.csv", out / "validation" / "report.json",
                             out / "validation" / "report.md")
    written = pd.read_csv(out / "manifest.validated.csv", dtype={"index": "Int64"}, keep_default_na=False,
                          na_values={"index": [""]})
    assert written["sample_id"].tolist() == table["sample_id"].tolist()
    assert written["content_hash"].tolist() == table["content_hash"].tolist()
    assert written["source_spacing"].tolist() == table["source_spacing"].tolist()
    report = json.loads((out / "validation" / "report.json").read_text())
    assert {"classes", "counts", "problems", "dropped"} <= set(report)
    assert report["classes"] == ["a", "b"] and report["counts"]["class_counts"] == {"a": 18, "b": 3}
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporary file


def test_parallel_decoding_gives_the_same_result(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=12)
    one = validate(manifest, root, threads=1)
    two = validate(manifest, root, threads=2)
    pd.testing.assert_frame_equal(one.table, two.table)
    assert [str(p) for p in one.problems] == [str(p) for p in two.problems]


def test_class_order_follows_configured_labels(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    result = validate(manifest, root, labels=["b", "a"])
    assert result.ok and result.classes == ["b", "a"]
    result = validate(manifest, root, labels=["b", "a", "c"])
    assert not result.ok
    assert any(p.code == "too_few_images" and "'c'" in p.message for p in result.problems)


def test_rows_are_numbered_from_one_without_blank_lines(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    text = manifest.read_text().splitlines()
    text.insert(2, "")  # a blank line after the first data row
    manifest.write_text("\n".join(text + ["img/missing.png,a,p,XR,s"]) + "\n")
    result = validate(manifest, root, min_images_per_class=1)
    problem = next(p for p in result.problems if p.code == "missing_file")
    assert problem.row == 5 and problem.message.startswith("row 5:")
    assert str(problem).startswith("row 5 (img/missing.png): ")


def test_quoted_fields_and_whitespace(tmp_path):
    root = tmp_path / "data"
    write_png(root / "a, with comma.png", seed=1)
    write_png(root / "b.png", seed=2)
    write_png(root / "c.png", seed=3)
    write_png(root / "d.png", seed=4)
    manifest = root / "m.csv"
    manifest.write_text('path,label,patient,modality\n"a, with comma.png",x,p1,XR\nb.png, x ,p2,XR\n'
                        'c.png,y,p3,XR\nd.png,y,p4,XR\n')
    result = validate(manifest, root)
    assert result.ok
    assert codes(result) == ["whitespace_in_field"]
    assert result.table["label"].tolist() == ["x", "x", "y", "y"]


def test_a_colour_image_among_grey_ones_is_an_error_unless_io_channels_makes_them_alike(tmp_path):
    # Validation passed it and the preprocess stage refused it: "validate before spending GPU hours"
    # did not hold (helper-55).
    root = tmp_path / "data"
    manifest = make_dataset(root)
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "colour.png")
    with open(manifest, "a") as f:
        f.write("colour.png,a,q3,US,s\n")
    result = validate(manifest, root)
    [problem] = [p for p in result.problems if p.code == "channels_mismatch"]
    assert not result.ok and (problem.row, problem.path) == (7, "colour.png")
    assert problem.message == ("row 7: 3 channel(s), where 6 of the manifest's images have 1 under io.channels: "
                               "keep_grey; the cache holds one channel count: set io.channels to rgb_to_grey or "
                               "grey_to_rgb, or convert the image")
    for policy in ("rgb_to_grey", "grey_to_rgb"):
        assert validate(manifest, root, io_options={"channels": policy}).ok, policy
    # A setting of the whole dataset, not a defect of the row: drop_invalid does not drop it (helper-61).
    result = validate(manifest, root, drop_invalid=True)
    assert not result.ok and result.dropped == []
    with pytest.raises(InputError, match="channels_mismatch"):
        raise_if_invalid(result)


@pytest.mark.parametrize("n_invalid_colour", [3, 5])
def test_channel_counts_are_judged_on_rows_without_other_errors(tmp_path, n_invalid_colour):
    # Colour rows with unknown labels were kept (channels_mismatch is not dropped) and, when more
    # numerous, made the valid grey rows the odd ones out (helper-67).
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    with open(manifest, "a") as f:
        for i in range(n_invalid_colour):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"c{i}.png")
            f.write(f"c{i}.png,other,q{i},US,s\n")
    result = validate(manifest, root, labels=["a", "b"], drop_invalid=True, min_images_per_class=1)
    assert result.ok and len(result.table) == 4, [str(p) for p in result.problems]
    assert "channels_mismatch" not in codes(result)


def test_a_sparse_column_whose_one_value_equals_a_patient_id_is_kept(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    lines = manifest.read_text().splitlines()
    lines[1:] = [line.rsplit(",", 1)[0] + ("," + line.split(",")[2] if i == 0 else ",") for i, line in enumerate(lines[1:])]
    manifest.write_text("\n".join(lines) + "\n")
    result = validate(manifest, root, min_images_per_class=1)
    assert "site" in result.table.columns and "identifier_column" not in codes(result)


def test_a_copy_of_the_patient_column_with_blanks_is_left_out(tmp_path):
    # Filled in every row but one, it was kept, raw patient ids beside their salted hash (helper-71).
    root = tmp_path / "data"
    manifest = make_dataset(root, n=6)
    lines = manifest.read_text().splitlines()
    lines[0] = lines[0].rsplit(",", 1)[0] + ",ref"
    lines[1:] = [line.rsplit(",", 1)[0] + "," + ("" if i == 0 else line.split(",")[2]) for i, line in enumerate(lines[1:])]
    manifest.write_text("\n".join(lines) + "\n")
    result = validate(manifest, root, min_images_per_class=1)
    assert "ref" not in result.table.columns
    assert [p.message for p in result.problems if p.code == "identifier_column"] == [
        "column 'ref' repeats the patient column: left out of the validated manifest, which holds patients only as "
        "salted hashes"]


def test_a_class_all_of_whose_rows_are_dropped_fails_instead_of_vanishing(tmp_path):
    # Three broken images of class c under drop_invalid left a valid two-class manifest: the
    # three-class task became binary without a word, while two broken of three failed (helper-69).
    root = tmp_path / "data"
    manifest = make_dataset(root, n=6)
    with open(manifest, "a") as f:
        for i in range(3):
            (root / "img" / f"c{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
            f.write(f"img/c{i}.png,c,patient-c{i},XR,site0\n")
    result = validate(manifest, root, drop_invalid=True, min_images_per_class=1)
    assert not result.ok
    assert [p.message for p in result.problems if p.code == "too_few_images"] == [
        "class 'c' has 0 image(s) (3 more in rows with errors); validation.min_images_per_class is 1"]


def test_a_label_that_reads_as_a_missing_value_says_how_to_keep_it_as_a_class(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    manifest.write_text(manifest.read_text().replace("img/0.png,a,", "img/0.png,None,"))
    result = validate(manifest, root, min_images_per_class=1)
    assert [p.message for p in result.problems if p.code == "empty_field"] == [
        "row 1: label is 'None', a missing-value marker (if it names a class, list the classes in the dataset's "
        "labels)"]
    assert validate(manifest, root, labels=["None", "a", "b"], min_images_per_class=1).ok


def test_a_note_with_a_line_break_before_the_label_column_is_a_value(tmp_path):
    # Its last line, "…, no calcification",b,patient-1,XR", read alone has the header's field count
    # and a known label: the first stray-quote check refused this valid CSV (helper-61).
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    lines = manifest.read_text().splitlines()
    lines = [lines[0].replace("path,", "path,notes,")] + [line.replace(",", ",ok,", 1) for line in lines[1:]]
    lines[2] = lines[2].replace(",ok,", ',"Findings:\nmass in upper quadrant, no calcification",', 1)
    manifest.write_text("\n".join(lines) + "\n")
    result = validate(manifest, root, min_images_per_class=1)
    assert result.ok, [str(p) for p in result.problems]
    assert result.table["notes"].tolist()[1] == "Findings:\nmass in upper quadrant, no calcification"


@pytest.mark.parametrize("header, lines", [
    # A stray quote in a column before the label, closed on the next line: a.png took b.png's label
    # and patient, and b.png vanished (helper-63).
    ("path,site,label,patient,modality", ['a.png,"s2,a,pa,XR', 'b.png,s2",b,pb,XR']),
    # A quoted path whose closing quote is missing.
    ("path,label,patient,modality,site", ['"a.png,a,pa,XR,s0', '"b.png",b,pb,XR,s0']),
])
def test_a_stray_quote_over_two_lines_before_the_label_column_is_refused(tmp_path, header, lines):
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i in range(4):
        write_png(root / f"img{i}.png", seed=i)
        row = dict(path=f"img{i}.png", label="ab"[i % 2], patient=f"p{i}", modality="XR", site="s0")
        rows.append(",".join(row[column] for column in header.split(",")))
    for name in ("a.png", "b.png"):
        write_png(root / name, seed=ord(name[0]))
    (root / "m.csv").write_text("\n".join([header, *rows, *lines]) + "\n")
    for drop_invalid in (False, True):
        result = validate(root / "m.csv", root, drop_invalid=drop_invalid, min_images_per_class=1)
        assert not result.ok and "malformed_manifest" in codes(result), [str(p) for p in result.problems]


def test_rows_swallowed_by_a_stray_quote_are_found_by_the_files_they_name_not_their_labels(tmp_path):
    # Sorted by modality, the swallowed rows were the only MR ones: a check asking for a known
    # modality let them vanish; a note reading "…, benign, US" was refused (helper-64).
    root = tmp_path / "data"
    root.mkdir()
    lines = ["path,label,patient,modality,notes"]
    for i in range(9):
        write_png(root / f"img{i}.png", seed=i)
        lines.append(f"img{i}.png,{'ab'[i % 2]},p{i},{'CT' if i < 6 else 'MR'},ok")
    lines[6] = lines[6].replace(",ok", ',"see prior')
    lines[9] = lines[9].replace(",ok", ',size 2"')
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    result = validate(root / "m.csv", root, drop_invalid=True, min_images_per_class=1)
    assert not result.ok and "malformed_manifest" in codes(result)

    notes = ["path,patient,notes,label,modality"] + [f"img{i}.png,p{i},ok,{'ab'[i % 2]},US" for i in range(4)]
    notes[3] = 'img2.png,p2,"Compared with 2019 exam, a, US\r\nno interval change",a,US'
    (root / "n.csv").write_text("\r\n".join(notes) + "\r\n")
    result = validate(root / "n.csv", root, min_images_per_class=1)
    assert result.ok and len(result.table) == 4, [str(p) for p in result.problems]


def _write_rows(root, header, rows, name="m.csv", newline="\n"):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        write_png(root / "img" / f"{i}.png", seed=i)
    (root / name).write_text(newline.join([header, *rows]) + newline)
    return root / name


@pytest.mark.parametrize("header, rows, ok", [
    # Valid: a note before the path column; its last line holds the row's own path (helper-66).
    ("notes,path,label,patient,modality",
     ["ok,img/0.png,a,p0,US", '"seen twice\nstable",img/1.png,b,p1,US', "ok,img/2.png,a,p2,US",
      "ok,img/3.png,b,p3,US"], True),
    # A stray quote before the path column, closed on the next line.
    ("notes,path,label,patient,modality",
     ["ok,img/0.png,a,p0,US", '"see,img/1.png,b,p1,US', 'ok",img/2.png,a,p2,US', "ok,img/3.png,b,p3,US"], False),
    # Swallowed rows whose paths take a detour, or name files that are missing (helper-66).
    ("path,label,patient,modality,notes",
     ["img/../img/0.png,a,p0,US,ok", 'img/../img/1.png,b,p1,US,"ok', "img/../img/2.png,a,p2,US,ok",
      'img/../img/3.png,b,p3,US,ok"', "img/../img/4.png,a,p4,US,ok"], False),
    ("path,label,patient,modality,notes",
     ["img/0.png,a,p0,US,ok", "img/1.png,b,p1,US,ok", 'img/2.png,a,p2,US,"ok', "img/7.png,b,p7,US,ok",
      'img/8.png,a,p8,US,ok"', "img/3.png,b,p3,US,ok"], False),
    # A note spanning lines, then a stray quote in the label of the same row.
    ("path,notes,label,patient,modality",
     ['img/0.png,"a\nnote","a\nimg/1.png,b,p1,US\nimg/2.png,a",p2,US', "img/3.png,ok,b,p3,US",
      "img/4.png,ok,a,p4,US"], False),
])
def test_the_stray_quote_check_against_valid_notes_and_swallowed_rows(tmp_path, header, rows, ok):
    manifest = _write_rows(tmp_path / "data", header, rows)
    for drop_invalid in (False, True):
        result = validate(manifest, tmp_path / "data", drop_invalid=drop_invalid, min_images_per_class=1)
        assert ("malformed_manifest" not in codes(result)) == ok, [str(p) for p in result.problems]


def test_a_stray_quote_in_the_header_is_refused_not_a_column_named_by_rows(tmp_path):
    # The rows up to the closing quote became a column name, patient ids with it, written into the
    # validated manifest's header (helper-66).
    manifest = _write_rows(tmp_path / "data", 'path,label,patient,modality,"notes',
                           ["img/0.png,a,p0,US,ok", "img/1.png,b,p1,US,ok", 'img/2.png,a,p2,US,ok"',
                            "img/3.png,b,p3,US,ok"])
    result = validate(manifest, tmp_path / "data", drop_invalid=True, min_images_per_class=1)
    assert not result.ok and "malformed_manifest" in codes(result)


@pytest.mark.parametrize("note", [
    "seen twice,\nsecond look: a, b, c",  # valid CSV: a quoted value may hold a line break, and commas
    # Its second line read alone has the header's field count and a known label (helper-63).
    "Impression:\nBI-RADS 2, a, stable, 2y, f/u",
])
def test_a_note_with_a_line_break_is_a_value_not_swallowed_rows(tmp_path, note):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4, extra=",note")
    lines = manifest.read_text().splitlines()
    lines[1:] = [line + "," for line in lines[1:]]
    lines[2] += f'"{note}"'
    manifest.write_text("\n".join(lines) + "\n")
    result = validate(manifest, root, min_images_per_class=1)
    assert result.ok and len(result.table) == 4, [str(p) for p in result.problems]
    assert result.table["note"].tolist()[1] == note


def test_a_row_with_too_many_fields_names_its_row_once_and_its_path(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    manifest.write_text(manifest.read_text() + "img/3.png,b,patient-9,XR,site0,extra\n")
    [problem] = [p for p in validate(manifest, root).problems if p.code == "malformed_row"]
    assert str(problem) == ("row 5 (img/3.png): has 6 fields, the header has 5 (an unquoted comma in a value?) "
                            "[error malformed_row]")


def validate_four_images(tmp_path, rows):
    """Validate a manifest with ``rows`` (CSV lines after the header) over four PNGs a–d.png."""
    root = tmp_path / "data"
    for name in "abcd":
        write_png(root / f"{name}.png", seed=ord(name))
    manifest = root / "m.csv"
    manifest.write_text("path,label,patient,modality\n" + rows)
    return validate(manifest, root, min_images_per_class=1)


def test_control_characters_in_fields_are_errors(tmp_path):
    result = validate_four_images(tmp_path, 'a.png,x,p1,"X\x00R"\nb.png,x,"p\t2",XR\n'
                                            'c.png,y,p3,XR\nd.png,y,p4,XR\n')
    assert not result.ok
    problems = [(p.row, p.code) for p in result.problems if p.code == "control_character"]
    assert problems == [(1, "control_character"), (2, "control_character")]


def test_messages_about_a_patient_field_never_show_the_id(tmp_path):
    result = validate_four_images(tmp_path, 'a.png,x,Jane Doe ,XR\nb.png,x,"John\tRoe",XR\n'
                                            'c.png,y,p3,XR\nd.png,y,p4,XR\n')
    assert sorted(p.code for p in result.problems) == ["control_character", "whitespace_in_field"]
    text = "\n".join(str(p) for p in result.problems)
    assert "the patient id" in text and "Jane" not in text and "John" not in text


def test_mixed_label_patient_policies(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    text = manifest.read_text().replace("patient-1,", "patient-0,")
    manifest.write_text(text)
    assert codes(validate(manifest, root, mixed_label_patients="ignore")) == []
    result = validate(manifest, root, mixed_label_patients="warning")
    assert result.ok and {p.severity for p in result.problems} == {"warning"}
    assert [p.row for p in result.problems] == [1, 2]
    assert "patient-0" not in " ".join(p.message for p in result.problems)  # only the salted hash
    assert not validate(manifest, root, mixed_label_patients="error").ok


def test_image_plausibility_warnings(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "blank.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (4, 4), dtype=np.uint8)).save(root / "tiny.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "colour.png")
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", root / "ct.dcm")
    holes = np.random.default_rng(3).normal(size=(32, 32)).astype(np.float32)
    holes[0, :5], holes[1, 0] = np.nan, np.inf
    np.save(root / "holes.npy", holes)
    np.save(root / "nothing.npy", np.full((32, 32), np.nan, np.float32))
    with open(manifest, "a") as f:
        f.write("blank.png,a,q1,XR,s\ntiny.png,a,q2,XR,s\ncolour.png,a,q3,CT,s\nct.dcm,a,q4,MR,s\n"
                "holes.npy,a,q5,MR,s\nnothing.npy,a,q6,MR,s\n")
    # rgb_to_grey: the colour image among grey ones would otherwise be a channels_mismatch error.
    result = validate(manifest, root, io_options={"channels": "rgb_to_grey"})
    found = {(p.row, p.code, p.severity) for p in result.problems}
    assert found == {(7, "constant_image", "warning"), (8, "implausible_dimensions", "warning"),
                     (9, "implausible_channels", "warning"), (10, "modality_mismatch", "warning"),
                     (11, "non_finite_pixels", "warning"),
                     (12, "constant_image", "warning"), (12, "non_finite_pixels", "warning")}
    assert "6 of 1024 pixel values are NaN or infinite" in next(p.message for p in result.problems if p.row == 11)
    assert result.ok


def test_multi_page_tiff_warns_that_only_its_first_page_was_read(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    pages = np.random.default_rng(3).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    tifffile.imwrite(root / "pages.tif", pages, photometric="minisblack")  # three pages of 32x32
    tifffile.imwrite(root / "single.tif", pages[1], photometric="minisblack")  # not page 0: a duplicate
    with open(manifest, "a") as f:
        f.write("pages.tif,a,q1,XR,s\nsingle.tif,b,q2,XR,s\n")
    result = validate(manifest, root)
    assert [(p.row, p.path, p.code, p.severity) for p in result.problems] == [
        (7, "pages.tif", "unread_tiff_pages", "warning")]
    assert "3 pages; only the first was read" in result.problems[0].message
    assert result.ok and len(result.table) == 8


@pytest.mark.parametrize("row, hint", [
    ("img\\0.png,a,z,XR,s\n", "backslashes"),
    ('"img/0.png ",a,z,XR,s\n', "leading/trailing spaces; 'img/0.png' exists"),
])
def test_missing_path_gets_a_hint_of_what_was_meant(tmp_path, row, hint):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    with open(manifest, "a") as f:
        f.write(row)
    problem = next(p for p in validate(manifest, root).problems if p.code == "missing_file")
    assert hint in problem.message


def test_symlink_inside_root_is_accepted(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    (root / "links").mkdir()
    write_png(root / "target.png", seed=99)
    (root / "links" / "l.png").symlink_to(root / "target.png")
    with open(manifest, "a") as f:
        f.write("links/l.png,a,z,XR,s\n")
    assert validate(manifest, root).ok


def test_write_outputs_refuses_to_overwrite_the_input_manifest(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    result = validate(manifest, root)
    with pytest.raises(UsageError):
        write_validation_outputs(result, manifest, tmp_path / "r.json", tmp_path / "r.md")


@pytest.mark.parametrize("targets, message", [
    (["out", "r.json", "r.md"], "is a folder"),  # the CLI's --out naming a folder: IsADirectoryError before
    (["m.csv", "r.json", "r.json"], "three files"),  # --out equal to --report: the report overwritten by the CSV
    (["r.json", "r.json", "r.md"], "three files"),
])
def test_write_outputs_refuse_targets_that_are_folders_or_one_file_twice(tmp_path, targets, message):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    result = validate(manifest, root)
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match=message):
        write_validation_outputs(result, *(tmp_path / name for name in targets))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"], "nothing written"


@pytest.mark.parametrize("target", ["manifest", "image"])
def test_decode_cache_never_overwrites_a_file_that_is_not_one(tmp_path, target):
    # A mistyped --decode-cache once overwrote the manifest or an image with JSON, and passed.
    root = tmp_path / "data"
    manifest = make_dataset(root)
    victim = manifest if target == "manifest" else root / "img" / "3.png"
    before = victim.read_bytes()
    with pytest.raises(UsageError, match="is not one"):
        validate_manifest(manifest, root, io_options={}, validation_options={}, salt=SALT, decode_cache=victim)
    assert victim.read_bytes() == before


def test_write_outputs_refuse_to_overwrite_an_image_the_manifest_names(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    (root / "img" / "9.png").write_bytes(b"named by a row that fails")
    with open(manifest, "a") as f:
        f.write("img/9.png,a,patient-9,XR,site0\n")
    result = validate(manifest, root)
    assert not result.ok  # a failed validation removes the validated manifest it would have written
    image = root / "img" / "9.png"
    for targets in ([image, tmp_path / "r.json", tmp_path / "r.md"], [tmp_path / "m.csv", image, tmp_path / "r.md"]):
        with pytest.raises(UsageError, match="an image that the manifest names"):
            write_validation_outputs(result, *targets)
    assert image.read_bytes() == b"named by a row that fails"


@pytest.mark.parametrize("stray, lines", [
    ('"img/2.png,a,patient-2,XR,site2', "never closed"),  # opens a quote that runs to the end of the file
    ('img/2.png,a,patient-2,XR,"site2', "never closed"),  # in the last column: the field count still fits
    ('"img/2.png,a,patient-2,XR,site2\nimg/3.png,b,patient-3,XR,site0"', "closed only on line 5"),
    # Opened and closed in the last column: the field count fits, and row 3 swallowed the rows
    # between without a word (helper-56).
    ('img/2.png,a,patient-2,XR,"site2\nimg/3.png,b,patient-3,XR,site0"', "closed only on line 5"),
    ('img/2.png,a,"patient-2\nimg/3.png,b,patient-3",XR,site0', "closed only on line 5"),
])
def test_a_stray_quote_fails_validation_even_under_drop_invalid(tmp_path, stray, lines):
    # The csv module reads from a stray quote to the next quote or the end of the file as one value:
    # the rows in between were lost without a word, and drop_invalid passed what was left.
    root = tmp_path / "data"
    manifest = make_dataset(root, n=6)
    text = manifest.read_text().splitlines()
    text[3:5 if "\n" in stray else 4] = stray.split("\n")
    manifest.write_text("\n".join(text) + "\n")
    for drop_invalid in (False, True):
        result = validate(manifest, root, drop_invalid=drop_invalid, min_images_per_class=1)
        assert not result.ok and "malformed_manifest" in codes(result)
        [problem] = [p for p in result.problems if p.code == "malformed_manifest"]
        assert problem.row is None and re.search(r"\blines? 4\b", problem.message) and lines in problem.message
    # The rows before it are still checked, so that their problems are listed in the same run.
    assert result.summary["n_rows"] >= 2


def test_a_field_beyond_the_csv_size_limit_is_a_problem_not_a_traceback(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=2)
    with open(manifest, "a") as f:
        f.write('"' + "x" * 200_000 + "\n")
    result = validate(manifest, root)
    assert not result.ok and "malformed_manifest" in codes(result)
    assert "line 4 cannot be read" in str(result.problems)
    assert len(image_files_stamp(manifest, root)) == 64  # planning reads the manifest too, and never raises


def test_a_repeated_column_and_a_missing_one_are_listed_together(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=2)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(["path,label,label,patient,site", *lines[1:]]) + "\n")
    result = validate(manifest, root)
    assert codes(result) == ["duplicate_column", "missing_column"]


def test_repeated_labels_are_refused(tmp_path):
    # Each label is a class index: a repeat made a third, empty class and moved 'a' images to it.
    root = tmp_path / "data"
    manifest = make_dataset(root)
    with pytest.raises(UsageError, match="name 'a' more than once"):
        validate(manifest, root, labels=["a", "b", "a"])


def test_raise_if_invalid_lists_rows_and_the_report(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    with open(manifest, "a") as f:
        f.write("img/nope.png,a,z,XR,s\n")
    result = validate(manifest, root)
    with pytest.raises(InputError) as error:
        raise_if_invalid(result, "results/validation/report.json")
    text = str(error.value)
    assert "results/validation/report.json" in text and "row 7 (img/nope.png)" in text and "missing_file" in text
    raise_if_invalid(validate(manifest, root, drop_invalid=True))  # nothing left to complain about


def test_cli_validate_exit_codes(tmp_path, capsys):
    root = tmp_path / "data"
    manifest = make_dataset(root)
    report = tmp_path / "out" / "report.json"
    assert cli_main(["validate", str(manifest), "--report", str(report), "--threads", "2"]) == 0
    assert (tmp_path / "out" / "manifest.validated.csv").exists() and report.with_suffix(".md").exists()
    with open(manifest, "a") as f:
        f.write("../escape.png,a,z,XR,s\n")
    assert cli_main(["validate", str(manifest), "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert "path_outside_root" in err and "row 7" in err and str(report) in err
    assert not (tmp_path / "out" / "manifest.validated.csv").exists()


def test_cli_validate_takes_labels_and_root_from_the_config_as_the_workflow(tmp_path, capsys):
    # The CLI ignored them: a binary dataset's class order (and so its positive class) came out the
    # other way round from the workflow's, and the config's root was not where paths were looked up
    # (helper-55).
    root = tmp_path / "data"
    manifest = make_dataset(root)
    moved = tmp_path / "elsewhere" / "manifest.csv"
    moved.parent.mkdir()
    moved.write_text(manifest.read_text())
    config = tmp_path / "config.yaml"
    config.write_text(f"datasets: {{own: {{manifest: {moved}, root: {root}, labels: [b, a]}}}}\n")
    out = tmp_path / "out"
    assert cli_main(["validate", str(moved), "--report", str(out / "report.json"), "--config", str(config)]) == 0
    assert json.loads((out / "report.json").read_text())["classes"] == ["b", "a"]
    # Given on the command line, they still win.
    assert cli_main(["validate", str(moved), "--report", str(out / "report.json"), "--config", str(config),
                     "--labels", "a", "b", "--root", str(root)]) == 0
    assert json.loads((out / "report.json").read_text())["classes"] == ["a", "b"]


def test_missing_files_say_under_which_root_they_were_looked_for(tmp_path):
    # A wrong --root made every row missing_file, and nothing said where they were looked for (helper-55).
    root = tmp_path / "data"
    manifest = make_dataset(root)
    result = validate(manifest, tmp_path)
    with pytest.raises(InputError) as error:
        raise_if_invalid(result)
    assert error.value.problems[0] == f"6 file(s) not found: paths are looked up under {tmp_path}"
    report = report_dict(result)
    assert (report["manifest"], report["root"]) == (str(manifest), str(tmp_path))


def test_decode_cache_decodes_only_new_or_changed_files(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=6)
    cache = tmp_path / "results" / "decode_cache.json"
    first = validate_manifest(manifest, root, io_options={}, validation_options={}, salt=SALT, decode_cache=cache)
    assert first.timings["n_files_decoded"] == 6
    again = validate_manifest(manifest, root, io_options={}, validation_options={}, salt=SALT, decode_cache=cache)
    assert again.timings["n_files_decoded"] == 0
    pd.testing.assert_frame_equal(first.table, again.table)

    write_png(root / "img" / "6.png", seed=60)  # the manifest grows by one image
    write_png(root / "img" / "0.png", seed=61)  # and one image is replaced
    with open(manifest, "a") as f:
        f.write("img/6.png,a,patient-6,XR,site0\n")
    grown = validate_manifest(manifest, root, io_options={}, validation_options={}, salt=SALT, decode_cache=cache)
    assert grown.timings["n_files_decoded"] == 2
    assert grown.table["content_hash"].iloc[0] != first.table["content_hash"].iloc[0]
    assert grown.table["content_hash"].iloc[1:6].tolist() == first.table["content_hash"].iloc[1:6].tolist()

    other_options = validate_manifest(manifest, root, io_options={"channels": "grey_to_rgb"},
                                      validation_options={}, salt=SALT, decode_cache=cache)
    assert other_options.timings["n_files_decoded"] == 7  # io options are part of the key


def test_an_image_rewritten_in_place_with_its_size_and_time_kept_is_decoded_again(tmp_path):
    # Same size, same mtime (restored), same inode: the decode cache gave back the old content
    # hash, and the cache reused the old pixels (helper-58).
    import os

    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    cache = tmp_path / "decode_cache.json"
    first = validate_manifest(manifest, root, io_options={}, validation_options={}, salt=SALT, decode_cache=cache)
    image = root / "img" / "0.png"
    info = os.stat(image)
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0xFF  # same size once saved: PNG of the same dimensions and near content
    with open(image, "r+b") as f:  # in place, keeping the inode
        encoded = _png_bytes(pixels)
        f.truncate(0)
        f.write(encoded)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    again = validate_manifest(manifest, root, io_options={}, validation_options={}, salt=SALT, decode_cache=cache)
    assert again.timings["n_files_decoded"] == 1
    assert again.table["content_hash"].iloc[0] != first.table["content_hash"].iloc[0]


def _png_bytes(pixels):
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_files_stamp_follows_the_named_files_not_the_copies_or_their_order(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=4)
    stamp = image_files_stamp(manifest, root)
    assert image_files_stamp(manifest, root) == stamp  # reading changes nothing

    copy = tmp_path / "copy"  # another inode, the same sizes and times (cp -p, rsync -a)
    shutil.copytree(root, copy, copy_function=shutil.copy2)
    assert image_files_stamp(copy / "manifest.csv", copy) == stamp
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert image_files_stamp(manifest, root) == stamp  # the manifest's own change reruns validation anyway

    write_png(root / "img" / "2.png", seed=99)  # replaced in place, under the same name
    replaced = image_files_stamp(manifest, root)
    assert replaced != stamp
    (root / "img" / "3.png").unlink()
    missing = image_files_stamp(manifest, root)
    assert missing not in (stamp, replaced)
    shutil.copy2(copy / "img" / "3.png", root / "img" / "3.png")
    assert image_files_stamp(manifest, root) == replaced


def test_image_files_stamp_of_an_unreadable_manifest_or_path_does_not_raise(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, n=2)
    assert image_files_stamp(tmp_path / "absent.csv", root) == "unreadable manifest"
    (tmp_path / "utf16.csv").write_bytes("path,label\n".encode("utf-16"))
    assert image_files_stamp(tmp_path / "utf16.csv", root) == "unreadable manifest"
    with open(manifest, "a", encoding="utf-8") as f:
        f.write("bad\x00name.png,a,p,XR,s\n../../outside.png,a,p,XR,s\n,a,p,XR,s\n")
    assert len(image_files_stamp(manifest, root)) == 64  # validation reports these rows


def test_decoding_falls_back_to_threads_when_the_process_has_threads(tmp_path):
    import threading

    from medclassify.manifest import decode_files

    root = tmp_path / "data"
    make_dataset(root, n=5)
    paths = sorted((root / "img").glob("*.png")) + [root / "missing.png"]
    expected = decode_files(paths, {}, threads=1)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert threading.active_count() > 1
        assert decode_files(paths, {}, threads=2) == expected
    finally:
        stop.set()
        other.join()
    assert expected[-1]["ok"] is False and expected[0]["ok"] is True


def test_split_column(tmp_path):
    root = tmp_path / "data"
    manifest = make_dataset(root, extra=",split")
    lines = manifest.read_text().splitlines()
    unused = [lines[0]] + [line + "," for line in lines[1:]]
    manifest.write_text("\n".join(unused) + "\n")
    result = validate(manifest, root)
    assert result.ok and result.problems == [] and result.table["split"].tolist() == [""] * 6
    assert list(result.table.columns)[-2:] == ["split", "site"]  # split comes before other extras
    partial = [lines[0]] + [line + ("," if i == 2 else ",train") for i, line in enumerate(lines[1:])]
    manifest.write_text("\n".join(partial) + "\n")
    result = validate(manifest, root)
    assert [(p.row, p.code) for p in result.problems] == [(3, "missing_split")]


def test_public_default_salt_gets_a_warning_and_the_environment_can_set_a_secret(tmp_path):
    from medclassify.privacy import DEFAULT_SALT, resolve_salt

    root = tmp_path / "data"
    manifest = make_dataset(root)
    assert codes(validate(manifest, root)) == []
    public = validate_manifest(manifest, root, io_options={}, validation_options={}, salt=DEFAULT_SALT)
    assert [(p.row, p.code, p.severity) for p in public.problems] == [(None, "public_salt", "warning")]
    assert "MEDCLASSIFY_SALT" in public.problems[0].message and public.ok
    assert resolve_salt(None, {}) == DEFAULT_SALT
    assert resolve_salt(None, {"MEDCLASSIFY_SALT": "s3cret"}) == "s3cret"
    assert resolve_salt("configured", {"MEDCLASSIFY_SALT": "s3cret"}) == "configured"


@pytest.mark.parametrize("first_line, header", [
    (b"path,label,patient,modality,site\n", ["path", "label", "patient", "modality", "site"]),
    (b"\xef\xbb\xbfpath, label ,patient,modality\r\n", ["path", "label", "patient", "modality"]),
    (b"path,label,patient,modality,site\ra.png,x,p1,US,\r", ["path", "label", "patient", "modality", "site"]),
    (b"path,label,patient,modality\n\"a.png\nb\",x,p1,US\n", ["path", "label", "patient", "modality"]),
    (b'"path","label","patient","modality","site, city"\n', ["path", "label", "patient", "modality", "site, city"]),
    (b"path;label;patient;modality\n", None),  # validation names the delimiter
    (b"file,label,patient,modality\n", None),  # and the missing column
    (b"path,label,patient,modality,\xe9tude\n", None),  # and the encoding
    (b"", None),
])
def test_manifest_header_is_read_from_the_first_record_only_where_validation_will_accept_it(tmp_path, first_line, header):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(first_line + b"a.png,x,p1,US,")
    assert manifest_header(manifest) == header


def test_manifest_header_of_a_missing_manifest_is_none(tmp_path):
    assert manifest_header(tmp_path / "absent.csv") is None


def test_a_configured_label_spelt_like_a_missing_value_marker_is_a_label(tmp_path):
    # "none" (no finding) is a real class name; only configured labels are taken as written.
    root = tmp_path / "data"
    rows = []
    for i in range(6):
        write_png(root / f"img_{i}.png", seed=i)
        rows.append(f"img_{i}.png,{('none', 'mild')[i % 2]},P{i},XR")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,patient,modality\n" + "\n".join(rows) + "\n")
    options = {"min_images_per_class": 1}

    configured = validate_manifest(manifest, root, io_options={}, validation_options=options,
                                   labels=["none", "mild"], salt="s")
    unconfigured = validate_manifest(manifest, root, io_options={}, validation_options=options, salt="s")

    assert configured.ok and configured.summary["class_counts"] == {"none": 3, "mild": 3}
    assert [p.code for p in unconfigured.problems if p.severity == "error"].count("empty_field") == 3


@pytest.mark.parametrize("header, rows, values_kept", [
    ("path,label,patient,modality,,", ["img_{i}.png,{label},P{i},XR,,"], False),  # trailing commas
    (",path,label,patient,modality", ["{i},img_{i}.png,{label},P{i},XR"], True),  # pandas' index column
])
def test_unnamed_columns_are_left_out_with_a_warning(tmp_path, header, rows, values_kept):
    # Trailing commas were "column(s) [''] appear more than once" and no row was checked; an index
    # column was carried into the validated manifest without a name.
    root = tmp_path / "data"
    lines = []
    for i in range(6):
        write_png(root / f"img_{i}.png", seed=i)
        lines += [row.format(i=i, label=("a", "b")[i % 2]) for row in rows]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(header + "\n" + "\n".join(lines) + "\n")
    result = validate_manifest(manifest, root, io_options={}, validation_options={"min_images_per_class": 1},
                               salt="s")
    assert result.ok, [str(p) for p in result.problems]
    (warning,) = [p for p in result.problems if p.code == "unnamed_column"]
    assert ("not kept" in warning.message) == values_kept
    assert list(result.table.columns) == list(VALIDATED_COLUMNS)


@pytest.mark.parametrize("path, patient, warned", [
    ("P900/view1.png", "P900", True),
    ("images/p000001/img0.png", "P000001", True),  # folders in lower case
    ("mrn/1234567.png", "1234567", True),
    ("img_1.png", "1", False),  # a short number matches by chance
    ("2019-03-12/scan.png", "12", False),
    ("ct/1.25mm/x.png", "1", False),
    ("P9001/view1.png", "P900", False),  # part of a longer word
    ("patients/1234/scan.png", "1234", True),  # a whole folder or file name is the id however short
    ("0042.png", "0042", True),
    ("P7/img.png", "P7", True),
])
def test_patient_id_in_path_is_a_whole_word_in_any_case_and_not_a_short_number(path, patient, warned):
    from medclassify.manifest import ProblemCollector, _check_patient_ids_in_paths

    problems = ProblemCollector()
    _check_patient_ids_in_paths([{"row": 1, "path": path, "raw_patient": patient}], problems)
    assert bool(problems.problems) == warned


def test_a_short_row_under_an_unnamed_column_is_malformed_not_shifted(tmp_path):
    # "0,a.png,p1,XR" under ",path,label,patient,modality" was read as path "0", label "a.png" (helper-45).
    from medclassify.manifest import ProblemCollector, read_manifest_rows

    manifest = tmp_path / "m.csv"
    manifest.write_text(",path,label,patient,modality\n0,a.png,x,p1,XR\n1,b.png,p2,XR\n")
    problems = ProblemCollector()
    header, rows = read_manifest_rows(manifest, problems)
    assert header == ["path", "label", "patient", "modality"]
    assert rows == [(1, {"path": "a.png", "label": "x", "patient": "p1", "modality": "XR"})]
    assert [(p.row, p.code) for p in problems.problems] == [(None, "unnamed_column"), (2, "malformed_row")]


def test_a_class_whose_rows_all_have_errors_says_so_in_the_class_count(tmp_path):
    # "class 'b' has 0 image(s)" sent the user looking for rows that are there, named above with
    # their own errors (helper-56).
    root = tmp_path / "data"
    manifest = make_dataset(root, n=6)
    for i in (1, 3, 5):  # every image of class b
        (root / "img" / f"{i}.png").unlink()
    messages = [p.message for p in validate(manifest, root, min_images_per_class=1).problems
                if p.code in ("too_few_images", "too_few_classes")]
    assert messages == ["class 'b' has 0 image(s) (3 more in rows with errors); validation.min_images_per_class is 1",
                        "1 class(es) with images (['a']) (3 more in rows with errors); a classifier needs at "
                        "least validation.min_classes = 2"]
    messages = [p.message for p in validate(manifest, root, labels=["a", "b"], min_images_per_class=1).problems
                if p.code in ("too_few_images", "too_few_classes")]
    assert messages[0] == "class 'b' has 0 image(s) (3 more in rows with errors); validation.min_images_per_class is 1"


def _validate_volumes(root, make_volume):
    """Validate four NIfTI volumes of two labels, ``make_volume(rng)`` each, under nifti_slice: all."""
    import nibabel as nib

    root.mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,label,patient,modality"]
    for i in range(4):
        nib.save(nib.Nifti1Image(make_volume(rng), np.eye(4)), root / f"v{i}.nii.gz")
        lines.append(f"v{i}.nii.gz,{'ab'[i % 2]},p{i},MR")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return validate(root / "m.csv", root, io_options={"nifti_slice": "all"}, min_images_per_class=1)


def test_a_masked_volumes_nan_background_slices_are_blank_too(tmp_path):
    # A slice all NaN (SPM's and FSL's masked background), or zero but for a NaN, was hashed as
    # content: every row "same pixels under different labels" again (helper-61).
    def masked(rng):
        volume = rng.random((12, 12, 4)).astype(np.float32)
        volume[:, :, 0] = np.nan
        volume[:, :, 3] = 0
        volume[0, 0, 3] = np.nan
        return volume

    result = _validate_volumes(tmp_path / "data", masked)
    assert not any(p.code.startswith("duplicate") for p in result.problems), [str(p) for p in result.problems]


@pytest.mark.filterwarnings("ignore:the validation split of fold:UserWarning")  # 4 volumes, 2 folds
def test_blank_slices_shared_by_volumes_are_not_duplicates_and_are_counted(tmp_path):
    # Under nifti_slice: all, every volume's blank edge slices were "the same pixels under different
    # labels", an error on every row, and linked every patient into one split group (helper-56).
    def with_blank_edges(rng):
        volume = np.zeros((12, 12, 5), np.int16)
        volume[:, :, 1:4] = rng.integers(1, 1000, (12, 12, 3))
        return volume

    result = _validate_volumes(tmp_path / "data", with_blank_edges)
    assert result.ok, [str(p) for p in result.problems]
    assert {p.code for p in result.problems} == {"constant_image"}
    assert [p.message for p in result.problems][0] == (
        "row 1: 2 of its 5 slices or frames are blank (every pixel the same value), and are trained on under "
        "the row's label; io.nifti_slice or io.dicom_frame can name the slices to keep")

    from medclassify.splits import make_splits
    from tests.splits_fixtures import options

    table = result.table.assign(modality="MR")
    splits, report = make_splits(table, options("kfold", folds=2, train=0.5, val=0.25, test=0.25))
    assert report.get("linked_patients", []) == [] and report["dropped_duplicates"] == []


def test_a_row_repeated_with_spaces_around_a_value_is_a_repeat_not_a_conflict(tmp_path):
    # "normal ,P000" against "normal,P000" said "different fields" (helper-55).
    root = tmp_path / "data"
    manifest = make_dataset(root)
    with open(manifest, "a") as f:
        f.write("img/0.png,a ,patient-0, XR,site0\n")
    codes_of_row = {p.code for p in validate(manifest, root).problems if p.row == 7}
    assert "duplicate_row" in codes_of_row and "duplicate_path" not in codes_of_row


def test_columns_that_identify_patients_are_left_out_of_the_validated_manifest_with_a_warning(tmp_path):
    # A PatientID column beside the patient column was copied as it was, next to the salted hash
    # that it undid (helper-59).
    root = tmp_path / "data"
    manifest = make_dataset(root, extra=",PatientID,Patient's Birth Date,study_code,site2")
    lines = manifest.read_text().splitlines()
    lines[1:] = [line + f",{line.split(',')[2]},1911-01-0{i},{line.split(',')[2]}X,{line.split(',')[4]}"
                 for i, line in enumerate(lines[1:], start=1)]
    manifest.write_text("\n".join(lines) + "\n")
    result = validate(manifest, root)
    assert result.ok
    assert [p.message for p in result.problems if p.code == "identifier_column"] == [
        "column 'PatientID' names an identifying value: left out of the validated manifest, which holds patients "
        "only as salted hashes",
        "column \"Patient's Birth Date\" names an identifying value: left out of the validated manifest, which "
        "holds patients only as salted hashes"]
    assert list(result.table.columns)[-3:] == ["site", "study_code", "site2"]
    assert not is_identifier_column("name")  # as often a site's or a scanner's (helper-61)
    written = tmp_path / "v.csv"
    write_validation_outputs(result, written, tmp_path / "r.json", tmp_path / "r.md")
    assert "patient-0" not in written.read_text().replace("patient-0X", "")

    # A column of any name that repeats the patient field is an identifier too.
    lines = [line.rsplit(",", 3)[0] + "," + line.split(",")[2] for line in manifest.read_text().splitlines()]
    lines[0] = lines[0].rsplit(",", 1)[0] + ",subject"
    manifest.write_text("\n".join(lines) + "\n")
    result = validate(manifest, root)
    assert [p.message for p in result.problems if p.code == "identifier_column"][-1].startswith(
        "column 'subject' repeats the patient column")
    assert "subject" not in result.table.columns

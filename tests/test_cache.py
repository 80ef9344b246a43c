"""The HDF5 cache: building, sharding, merging, reuse, determinism, and refusing bad files."""

import json
import os
import functools
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medclassify.cache as cache_module
from medclassify.cache import (build_cache_part, cache_identity, merge_cache_parts, open_cache, params_hash,
                               referenced_blocks, shard_bounds, values_hash)
from medclassify.errors import InputError
from medclassify.io import read_sample
from medclassify.manifest import validate_manifest, write_validation_outputs
from medclassify.preprocessing import preprocess_image, to_storage

from cache_fixtures import CLASSES, make_dataset, manifest_row, options, random_image, write_manifest, write_png

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def reproducible_timestamp(monkeypatch):
    # The only attribute that depends on the clock; fixed, files are byte-for-byte reproducible.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = make_dataset(root, 24)
    return root, rows


def build(manifest, root, results, *, n_shards=1, threads=1, blocks=True, reuse=True, layout="virtual", **overrides):
    """Build every shard and merge, like the workflow does; return (cache path, summaries).

    Images go to blocks in ``results/cache/blocks`` (the workflow's layout) unless ``blocks`` is
    false (self-contained parts).
    """
    preprocess, io = options(**overrides)
    blocks = Path(results) / "cache" / "blocks" if blocks else None
    parts, summaries = [], []
    for shard in range(n_shards):
        part = Path(results) / "cache" / f"part-{shard}-of-{n_shards}.h5"
        summaries.append(build_cache_part(manifest, root, part, preprocess_options=preprocess, io_options=io,
                                          classes=CLASSES, shard=shard, n_shards=n_shards, threads=threads,
                                          blocks=blocks, reuse=reuse))
        parts.append(part)
    cache = Path(results) / "cache.h5"
    merge_cache_parts(parts, cache, Path(results) / "fingerprint.json", blocks=blocks, layout=layout)
    return cache, summaries


def expected_images(root, rows, **overrides):
    preprocess, io = options(**overrides)
    return np.stack([to_storage(preprocess_image(read_sample(Path(root) / r["path"], None, io).pixels, preprocess),
                                preprocess["dtype"]) for r in rows])


def test_params_hash_ignores_shards_but_not_values_or_storage():
    preprocess, io = options()
    base = params_hash(preprocess, io)
    assert params_hash({**preprocess, "shards": 8}, io) == base
    assert params_hash({**preprocess, "size": [32, 32]}, io) != base
    assert params_hash(preprocess, {**io, "channels": "grey_to_rgb"}) != base
    assert params_hash({**preprocess, "compression": "gzip"}, io) != base
    # compression changes no stored value: those images stay reusable
    assert values_hash({**preprocess, "compression": "gzip"}, io) == values_hash(preprocess, io)


def test_shard_bounds_are_contiguous_and_cover_all_rows():
    for n_rows in (0, 1, 7, 100):
        for n_shards in (1, 3, 8):
            bounds = [shard_bounds(n_rows, s, n_shards) for s in range(n_shards)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n_rows
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_cache_holds_preprocessed_images_and_metadata_in_manifest_order(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "manifest.validated.csv")
    cache_path, _ = build(manifest, root, tmp_path / "results")
    preprocess, io = options()
    with open_cache(cache_path, expected_params_hash=params_hash(preprocess, io)) as cache:
        assert len(cache) == len(rows)
        assert cache.classes == CLASSES
        assert cache.image_shape == (64, 64, 1)
        assert cache.sample_ids == [r["sample_id"] for r in rows]
        assert cache.patients == [r["patient"] for r in rows]
        assert cache.content_hashes == [r["content_hash"] for r in rows]
        assert cache.modalities == ["US"] * len(rows)
        np.testing.assert_array_equal(cache.labels, [CLASSES.index(r["label"]) for r in rows])
        assert cache.params["preprocess"]["size"] == [64, 64]
        images = cache.read(np.arange(len(rows)))
        assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
        np.testing.assert_array_equal(np.rint(images * 255).astype(np.uint8), expected_images(root, rows))
        with h5py.File(cache_path) as f:
            assert f.attrs["created"] == b"2023-11-14T22:13:20Z"  # fixed-length UTF-8 bytes (see _write_attrs)
            assert json.loads(f.attrs["params"])["preprocess"]["intensity"] == "percentile"


def test_strings_of_any_length_and_script_round_trip(dataset, tmp_path):
    root, rows = dataset
    modalities = ["US", "échographie", "超音波", "M" * 70]
    rows = [dict(r, sample_id=f"{r['sample_id']}-{'ü' * i}", modality=modalities[i % 4]) for i, r in enumerate(rows)]
    cache_path, _ = build(write_manifest(rows, tmp_path / "manifest.validated.csv"), root, tmp_path / "results")
    with open_cache(cache_path) as cache:
        assert cache.sample_ids == [r["sample_id"] for r in rows]
        assert cache.modalities == [r["modality"] for r in rows]
    fingerprint = json.loads((tmp_path / "results" / "fingerprint.json").read_text())
    assert fingerprint["modalities"] == {m: len(rows) // 4 for m in sorted(modalities)}


def test_reads_a_cache_with_variable_length_strings(dataset, tmp_path):
    # Caches written before the strings became fixed-length hold them variable-length.
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "manifest.validated.csv"), root, tmp_path / "results")
    for path in [cache_path, tmp_path / "results" / "cache" / "part-0-of-1.h5"]:
        with h5py.File(path, "r+") as f:
            for name in cache_module.STRING_DATASETS:
                values = f[name].asstr()[:]
                assert f[name].dtype.kind == "S"  # written fixed-length
                del f[name]
                f.create_dataset(name, data=values, dtype=h5py.string_dtype("utf-8"))
    with open_cache(cache_path) as cache:
        assert cache.sample_ids == [r["sample_id"] for r in rows]
        assert cache.content_hashes == [r["content_hash"] for r in rows]


def test_read_any_order_with_repeats(dataset, tmp_path):
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r", n_shards=3)
    with open_cache(cache_path) as cache:
        everything = cache.read(np.arange(len(rows)))
        picks = [17, 3, 3, 23, 0, 9, 8]  # across all three parts, unsorted, repeated
        np.testing.assert_array_equal(cache.read(picks), everything[picks])
        np.testing.assert_array_equal(cache.read(range(5, 13)), everything[5:13])
        assert cache.read([]).shape == (0, 64, 64, 1)
        with pytest.raises(IndexError):
            cache.read([len(rows)])


def test_sharded_build_reads_like_a_single_part(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    single, _ = build(manifest, root, tmp_path / "one")
    sharded, summaries = build(manifest, root, tmp_path / "four", n_shards=4)
    assert [s["rows"] for s in summaries] == [6, 6, 6, 6]
    with open_cache(single) as a, open_cache(sharded) as b:
        np.testing.assert_array_equal(a.read(range(len(a))), b.read(range(len(b))))
        assert a.sample_ids == b.sample_ids and a.params_hash == b.params_hash
    # the merged file is one HDF5 dataset for any other HDF5 reader
    with h5py.File(sharded) as f, open_cache(single) as a:
        assert f["images"].is_virtual and f["images"].shape == (len(rows), 64, 64, 1)
        np.testing.assert_array_equal(f["images"][:], np.rint(a.read(range(len(a))) * 255).astype(np.uint8))


def test_more_shards_than_rows_gives_empty_parts(dataset, tmp_path):
    root, rows = dataset
    cache_path, summaries = build(write_manifest(rows[:2], tmp_path / "m.csv"), root, tmp_path / "r", n_shards=3)
    assert [s["rows"] for s in summaries] == [0, 1, 1]
    with open_cache(cache_path) as cache:
        assert len(cache) == 2 and cache.read([1, 0]).shape == (2, 64, 64, 1)


def grey_and_colour_dataset(root, n_grey, n_colour):
    """``n_grey`` grey PNGs, then ``n_colour`` colour ones; returns their manifest rows."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n_grey + n_colour):
        grey = random_image(rng)
        relative = f"img/{i:03d}.png"
        write_png(Path(root) / relative, grey if i < n_grey else np.stack([grey, grey[::-1], 255 - grey], axis=2))
        rows.append(manifest_row(root, relative, CLASSES[i % 2], f"p{i}"))
    return rows


@pytest.mark.parametrize("layout", ["virtual", "copy"])
def test_an_empty_part_does_not_decide_the_image_shape(tmp_path, layout):
    # An empty shard decodes no image, so it cannot know that the images are colour.
    rows = grey_and_colour_dataset(tmp_path / "data", 0, 2)
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), tmp_path / "data", tmp_path / "r", n_shards=3,
                          layout=layout)
    with open_cache(cache_path) as cache:
        assert cache.image_shape == (64, 64, 3)
        np.testing.assert_array_equal(cache.read_stored([0, 1]), expected_images(tmp_path / "data", rows))
    assert json.loads((tmp_path / "r" / "fingerprint.json").read_text())["image_shape"] == [64, 64, 3]


def test_output_bytes_do_not_depend_on_thread_count(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    one, _ = build(manifest, root, tmp_path / "t1", n_shards=2, threads=1)
    two, _ = build(manifest, root, tmp_path / "t2", n_shards=2, threads=2)
    blocks = sorted(p.relative_to(tmp_path / "t1") for p in (tmp_path / "t1" / "cache" / "blocks").iterdir())
    assert len(blocks) == 2
    for name in ["cache/part-0-of-2.h5", "cache/part-1-of-2.h5", "cache.h5", "fingerprint.json"] + blocks:
        assert (tmp_path / "t1" / name).read_bytes() == (tmp_path / "t2" / name).read_bytes(), name


def test_incremental_build_decodes_only_new_and_changed_images(dataset, tmp_path):
    root, rows = dataset
    root = Path(shutil.copytree(root, tmp_path / "data"))
    results = tmp_path / "results"
    blocks = results / "cache" / "blocks"
    build(write_manifest(rows, results / "manifest.validated.csv"), root, results, n_shards=2)
    first_blocks = {p.name: p.read_bytes() for p in blocks.iterdir()}
    assert len(first_blocks) == 2 and all(name.startswith("block-") for name in first_blocks)

    # the manifest gains two images, loses one, and one image changes on disk
    grown = make_dataset(root, 2, start=100)
    rng = np.random.default_rng(99)
    write_png(root / rows[5]["path"], random_image(rng, 40, 52))
    changed = manifest_row(root, rows[5]["path"], rows[5]["label"], rows[5]["patient"])
    new_rows = rows[:5] + [changed] + rows[6:20] + grown + rows[21:]
    manifest = write_manifest(new_rows, results / "manifest.validated.csv")
    # Snakemake deletes the outputs before rerunning: only the blocks folder remains
    for part in (results / "cache").glob("part-*.h5"):
        part.unlink()
    (results / "cache.h5").unlink()
    _, summaries = build(manifest, root, results, n_shards=2)
    assert sum(s["decoded"] for s in summaries) == 3
    assert sum(s["reused"] for s in summaries) == len(new_rows) - 3
    # the unchanged images stay where they were, untouched; each shard wrote one new block
    now = {p.name: p for p in blocks.iterdir()}
    assert len(now) == 4 and all(now[name].read_bytes() == data for name, data in first_blocks.items())
    grown_block = next(name for name, path in now.items() if block_hashes(path) == [r["content_hash"] for r in grown])

    # reads like a full build from scratch
    full = tmp_path / "full"
    build(manifest, root, full, n_shards=2)
    assert (results / "fingerprint.json").read_bytes() == (full / "fingerprint.json").read_bytes()
    with open_cache(results / "cache.h5") as cache, open_cache(full / "cache.h5") as scratch:
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), expected_images(root, new_rows))
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), scratch.read_stored(range(len(scratch))))
        assert (cache.sample_ids, cache.content_hashes, cache.patients) == (
            scratch.sample_ids, scratch.content_hashes, scratch.patients)
        np.testing.assert_array_equal(cache.labels, scratch.labels)
    with h5py.File(results / "cache.h5") as f:  # the merged file maps the blocks for any HDF5 reader
        np.testing.assert_array_equal(f["images"][:], expected_images(root, new_rows))

    # dropping the two new images again: the merge deletes the block that only they were in
    for part in (results / "cache").glob("part-*.h5"):
        part.unlink()
    _, summaries = build(write_manifest(new_rows[:20] + new_rows[22:], results / "m2.csv"), root, results, n_shards=2)
    assert sum(s["decoded"] for s in summaries) == 0
    kept = {p.name for p in blocks.iterdir()}
    assert kept == set().union(*(referenced_blocks(p) for p in (results / "cache").glob("part-*.h5")))
    assert grown_block not in kept and set(first_blocks) < kept


def validated_manifest(root, entries, out):
    """Validate ``entries`` (path, label, patient) under ``root`` and write the validated manifest to ``out``."""
    manifest = Path(out).with_suffix(".input.csv")
    manifest.write_text("path,label,patient,modality\n" + "".join(f"{path},{label},{patient},MR\n"
                                                                  for path, label, patient in entries))
    result = validate_manifest(manifest, root, io_options=options()[1], validation_options={"min_images_per_class": 1},
                               salt="unit-salt")
    assert result.ok, [str(p) for p in result.problems]
    write_validation_outputs(result, out, Path(out).with_suffix(".report.json"), Path(out).with_suffix(".report.md"))
    return Path(out)


def test_identical_pixels_at_other_spacings_keep_their_own_spacing_when_reused(tmp_path):
    # Blocks are found by content hash, which covers the pixels only: a file whose pixels an
    # earlier build stored for another file at another spacing is referenced, not decoded,
    # and must not take over that file's spacing.
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    same = rng.uniform(0, 100, (40, 40, 1)).astype(np.float32)
    for name, pixels, spacing in [("other.nii", rng.uniform(0, 100, (40, 40, 1)).astype(np.float32), 1.0),
                                  ("coarse.nii", same, 2.0), ("fine.nii", same, 0.5)]:
        nib.save(nib.Nifti1Image(pixels, np.diag([spacing, spacing, 1.0, 1.0])), root / name)
    entries = [("other.nii", CLASSES[0], "p0"), ("coarse.nii", CLASSES[1], "p1"), ("fine.nii", CLASSES[1], "p2")]
    results = tmp_path / "results"
    build(validated_manifest(root, entries[:2], tmp_path / "before.csv"), root, results)
    for output in [*(results / "cache").glob("part-*.h5"), results / "cache.h5"]:
        output.unlink()  # as Snakemake does before rerunning
    manifest = validated_manifest(root, entries, tmp_path / "after.csv")
    _, summaries = build(manifest, root, results)
    assert summaries[0]["decoded"] == 0  # fine.nii's image is coarse.nii's

    build(manifest, root, tmp_path / "full")
    assert (results / "fingerprint.json").read_bytes() == (tmp_path / "full" / "fingerprint.json").read_bytes()
    spacings = json.loads((results / "fingerprint.json").read_text())["spacings"]
    assert spacings["row"] == spacings["column"] == {"min": 0.5, "median": 1.0, "max": 2.0, "mean": 3.5 / 3}


def block_hashes(path):
    with h5py.File(path, "r") as f:
        return f["content_hash"].asstr()[:].tolist()


def test_images_are_gathered_out_of_a_block_used_less_than_half(dataset, tmp_path):
    root, rows = dataset
    results = tmp_path / "results"
    blocks = results / "cache" / "blocks"
    build(write_manifest(rows, tmp_path / "m.csv"), root, results)
    (first,) = blocks.iterdir()
    # half of the block is still used: referenced where it is
    _, summaries = build(write_manifest(rows[:12], tmp_path / "m.csv"), root, results)
    assert summaries[0]["decoded"] == 0 and [p.name for p in blocks.iterdir()] == [first.name]
    # a third: the eight images move to a block of their own (re-encoded, not decoded) and the
    # old block, holding sixteen unused images, is deleted
    _, summaries = build(write_manifest(rows[:8], tmp_path / "m.csv"), root, results)
    assert summaries[0] == dict(summaries[0], rows=8, decoded=0, reused=8)
    (second,) = blocks.iterdir()
    assert second.name != first.name and block_hashes(second) == [r["content_hash"] for r in rows[:8]]
    with open_cache(results / "cache.h5") as cache:
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), expected_images(root, rows[:8]))


def test_resharding_reuses_every_image(dataset, tmp_path):
    root, rows = dataset
    results = tmp_path / "results"
    manifest = write_manifest(rows, tmp_path / "m.csv")
    build(manifest, root, results, n_shards=2)
    _, summaries = build(manifest, root, results, n_shards=3)
    assert sum(s["decoded"] for s in summaries) == 0
    with open_cache(results / "cache.h5") as cache:
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), expected_images(root, rows))


def part_names(results):
    return sorted(p.name for p in (Path(results) / "cache").glob("part-*.h5"))


def test_merging_removes_the_parts_of_another_shard_count(dataset, tmp_path):
    # preprocess.shards 1 → 3 → 1: the merge of three parts deletes the blocks that only
    # part-0-of-1.h5 used, so that part must go too, or Snakemake would take it as up to date.
    root, rows = dataset
    results = tmp_path / "results"
    manifest = write_manifest(rows, tmp_path / "m.csv")
    build(manifest, root, results, n_shards=1)
    build(manifest, root, results, n_shards=3)
    assert part_names(results) == ["part-0-of-3.h5", "part-1-of-3.h5", "part-2-of-3.h5"]
    build(manifest, root, results, n_shards=1)  # what Snakemake does for the missing part
    assert part_names(results) == ["part-0-of-1.h5"]
    with open_cache(results / "cache.h5") as cache:
        cache.verify()
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), expected_images(root, rows))


def test_reuse_needs_equal_values_but_not_equal_compression(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    build(manifest, root, tmp_path / "lzf")
    for name in ("small", "gzip"):
        shutil.copytree(tmp_path / "lzf" / "cache" / "blocks", tmp_path / name / "cache" / "blocks")
    _, resized = build(manifest, root, tmp_path / "small", size=[32, 32])
    assert resized[0]["decoded"] == len(rows)
    gzip_cache, recompressed = build(manifest, root, tmp_path / "gzip", compression="gzip")
    assert recompressed[0]["decoded"] == 0 and recompressed[0]["reused"] == len(rows)
    with open_cache(gzip_cache) as a, open_cache(tmp_path / "lzf" / "cache.h5") as b:
        assert a.sources[0][0].compression == "gzip"  # re-encoded into a block of its own
        np.testing.assert_array_equal(a.read(range(len(a))), b.read(range(len(b))))
    # the lzf block, no longer referenced there, is gone
    assert len(list((tmp_path / "gzip" / "cache" / "blocks").iterdir())) == 1


def test_a_part_points_into_a_bounded_number_of_blocks(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "MAX_BLOCKS_PER_PART", 2)
    root, rows = dataset
    results = tmp_path / "r"
    part = results / "cache" / "part-0-of-1.h5"
    for n in (20, 22, 24):  # each build adds two images: a new block each time
        _, summaries = build(write_manifest(rows[:n], tmp_path / "m.csv"), root, results)
        assert summaries[0]["decoded"] == (20 if n == 20 else 2)
    # the third build gathered the smaller earlier block's two images into its own block
    assert summaries[0]["reused"] == 22
    assert len(referenced_blocks(part)) == 2
    with open_cache(results / "cache.h5") as cache:
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), expected_images(root, rows))


def test_a_reordered_manifest_keeps_a_bounded_number_of_runs(dataset, tmp_path, monkeypatch):
    # A manifest sorted another way made one virtual-dataset mapping a row, about 28 KB each in
    # every process opening the cache, and a merge slower than linear (helper-83).
    monkeypatch.setattr(cache_module, "MIN_RUNS_ALLOWED", 4)
    root, rows = dataset
    results = tmp_path / "r"
    build(write_manifest(rows, tmp_path / "m.csv"), root, results)
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    _, summaries = build(write_manifest(shuffled, tmp_path / "m.csv"), root, results)
    assert summaries[0] == dict(summaries[0], decoded=0, reused=len(rows))  # re-encoded, not decoded
    with h5py.File(results / "cache" / "part-0-of-1.h5", "r") as f:
        assert len(f["image_runs"]) <= 4 + 1
    with open_cache(results / "cache.h5") as cache:
        cache.verify()
        np.testing.assert_array_equal(cache.read_stored(range(len(cache))), expected_images(root, shuffled))
    # rows added at the end, or a few removed, keep their runs where they are
    monkeypatch.setattr(cache_module, "MIN_RUNS_ALLOWED", 64)
    _, summaries = build(write_manifest(shuffled[:20], tmp_path / "m.csv"), root, results)
    _, summaries = build(write_manifest(shuffled[:20] + shuffled[21:], tmp_path / "m.csv"), root, results)
    assert summaries[0] == dict(summaries[0], decoded=0, reused=len(rows) - 1)


def test_no_reuse_decodes_every_image(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    build(manifest, root, tmp_path / "r")
    _, summaries = build(manifest, root, tmp_path / "r", reuse=False)
    assert summaries[0]["decoded"] == len(rows)


def test_copy_layout_is_self_contained(dataset, tmp_path):
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r", n_shards=2, layout="copy")
    moved = tmp_path / "alone.h5"
    shutil.move(cache_path, moved)
    shutil.rmtree(tmp_path / "r")
    with open_cache(moved) as cache:
        np.testing.assert_array_equal(np.rint(cache.read(range(len(cache))) * 255).astype(np.uint8),
                                      expected_images(root, rows))


def test_virtual_cache_survives_moving_the_results_folder(dataset, tmp_path):
    root, rows = dataset
    build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r", n_shards=2)
    shutil.move(tmp_path / "r", tmp_path / "moved")
    with open_cache(tmp_path / "moved" / "cache.h5") as cache:
        assert cache.read([0, len(rows) - 1]).shape == (2, 64, 64, 1)


def test_fingerprint_describes_the_dataset(dataset, tmp_path):
    root, rows = dataset
    build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r", n_shards=2)
    fingerprint = json.loads((tmp_path / "r" / "fingerprint.json").read_text())
    assert fingerprint["n_samples"] == 24
    assert fingerprint["n_patients"] == 8
    assert fingerprint["class_counts"] == {"benign": 12, "malignant": 12}
    assert fingerprint["sizes"]["height"]["min"] == 30 and fingerprint["sizes"]["width"]["max"] == 60
    assert fingerprint["sizes"]["channels"] == {"1": 24}
    us = fingerprint["intensity_percentiles"]["US"]
    assert 0 <= us["p0.5"] <= us["p50"] <= us["p99.5"] <= 255
    assert fingerprint["params_hash"] == params_hash(*options())


# ------------------------------------------------------------------ refusing bad input and bad files

def test_refuses_other_parameters(dataset, tmp_path):
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r")
    other = params_hash(*options(size=[32, 32]))
    with pytest.raises(InputError, match="other preprocessing parameters") as caught:
        open_cache(cache_path, expected_params_hash=other)
    assert str(cache_path) in str(caught.value)


def test_refuses_missing_truncated_and_garbage_files(dataset, tmp_path):
    root, rows = dataset
    build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r")
    part = tmp_path / "r" / "cache" / "part-0-of-1.h5"
    with pytest.raises(InputError, match="not found"):
        open_cache(tmp_path / "nothing.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated") as caught:
        open_cache(truncated)
    assert str(truncated) in str(caught.value)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(InputError, match="not a readable HDF5 cache"):
        open_cache(garbage)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["images"] = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(InputError, match="incomplete cache") as caught:
        open_cache(plain)
    assert "'labels' is missing" in str(caught.value) and "'params_hash' is missing" in str(caught.value)


@pytest.mark.parametrize("blocks", [True, False], ids=["in a block", "in a self-contained part"])
def test_detects_a_corrupted_image_chunk(dataset, tmp_path, blocks):
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r", blocks=blocks)
    stored = (next((tmp_path / "r" / "cache" / "blocks").iterdir()) if blocks
              else tmp_path / "r" / "cache" / "part-0-of-1.h5")
    with h5py.File(stored) as f:
        info = f["images"].id.get_chunk_info(7)
    data = bytearray(stored.read_bytes())
    for k in range(info.byte_offset + 10, info.byte_offset + 20):
        data[k] ^= 0xFF
    stored.write_bytes(bytes(data))
    with open_cache(cache_path) as cache:
        cache.read([0, 6, 8])  # intact rows still read
        with pytest.raises(InputError, match="corrupted cache") as caught:
            cache.read([3, 7])
        assert stored.name in str(caught.value)
        if blocks:  # a rebuild would reuse the block unread: the way out is to delete it
            assert f"delete {stored} and rerun the preprocess stage" in str(caught.value)
        with pytest.raises(InputError, match="corrupted cache"):
            cache.verify()


@pytest.mark.parametrize("name", ["labels", "patient", "modality", "sample_id", "content_hash"])
def test_detects_changed_row_metadata(dataset, tmp_path, name):
    # Each on its own: labels and strings carry no checksum, only the digest covers them.
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r")
    for path in (tmp_path / "r" / "cache" / "part-0-of-1.h5", cache_path):
        with h5py.File(path, "a") as f:
            values = f[name][:]
            changed = b"MG" if name == "modality" else values[5]  # every modality is US
            assert changed != values[0]
            f[name][0] = changed
        with pytest.raises(InputError, match="corrupted cache") as caught:
            open_cache(path)
        assert "row metadata does not match" in str(caught.value)


def test_detects_image_runs_pointing_at_other_images_of_a_block(dataset, tmp_path):
    # image_runs carries no checksum: one changed block or row number handed out other images, and
    # open_cache and verify() both passed.
    root, rows = dataset
    results = tmp_path / "r"
    build(write_manifest(rows[:12], tmp_path / "m.csv"), root, results)
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, results)  # rows 12.. in a second block
    part = results / "cache" / "part-0-of-1.h5"
    with h5py.File(part, "a") as f:
        runs = f["image_runs"][:]
        assert len(runs) == 2 and runs[0][1] != runs[1][1] and runs[0][3] == runs[1][3] == 12
        runs[1][1] = runs[0][1]  # the second run now reads the first run's block
        f["image_runs"][:] = runs
    for path in (part, cache_path):
        with pytest.raises(InputError, match=f"rows 12..23 point at other images of block {runs[0][1]}"):
            open_cache(path)


def test_detects_changed_parameters(dataset, tmp_path):
    # Only the hash was compared with the config: a changed parameter went into training's
    # model.json (which predict preprocesses by) unnoticed, and a broken one raised a bare JSONDecodeError.
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r")
    params = json.loads(h5py.File(cache_path, "r").attrs["params"])
    changed = dict(params, preprocess=dict(params["preprocess"], percentiles=[0.5, 99.4]))
    for value in (json.dumps(changed), json.dumps(params)[:-1] + "("):
        with h5py.File(cache_path, "a") as f:
            f.attrs["params"] = value
        with pytest.raises(InputError, match="corrupted cache"):
            open_cache(cache_path)


def test_detects_a_changed_class_list(dataset, tmp_path):
    # The labels are indices into ``classes``: a reordered or renamed class list relabels every
    # row as surely as changed labels do.
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r")
    for path in (tmp_path / "r" / "cache" / "part-0-of-1.h5", cache_path):
        with h5py.File(path, "a") as f:
            f.attrs["classes"] = json.dumps(CLASSES[::-1])
        with pytest.raises(InputError, match="corrupted cache") as caught:
            open_cache(path)
        assert "row metadata does not match" in str(caught.value)


def test_refuses_an_older_cache_format_and_reuses_its_blocks(dataset, tmp_path, monkeypatch):
    # A change of format (here: what the digest covers) must read as "rebuild", not "corrupted";
    # the blocks' images do not change with it, so the rebuild decodes none.
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    older = cache_module.CACHE_FORMAT_VERSION - 1
    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "CACHE_FORMAT_VERSION", older)
        cache_path, _ = build(manifest, root, tmp_path / "r")
    for path in (tmp_path / "r" / "cache" / "part-0-of-1.h5", cache_path):
        with pytest.raises(InputError, match=f"cache format {older}, this library reads") as caught:
            open_cache(path)
        assert "rerun the preprocess stage" in str(caught.value)
    _, summaries = build(manifest, root, tmp_path / "r")
    assert summaries[0]["decoded"] == 0
    open_cache(cache_path).close()


def test_refuses_a_virtual_cache_with_missing_or_replaced_parts(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    cache_path, _ = build(manifest, root, tmp_path / "r", n_shards=2)
    part = tmp_path / "r" / "cache" / "part-1-of-2.h5"
    saved = part.read_bytes()
    part.unlink()
    with pytest.raises(InputError, match="incomplete cache") as caught:
        open_cache(cache_path)
    assert "part-1-of-2.h5: missing" in str(caught.value)
    # a part rebuilt from another manifest is not silently mixed in
    preprocess, io = options()
    build_cache_part(write_manifest(rows[::-1], tmp_path / "other.csv"), root, part, preprocess_options=preprocess,
                     io_options=io, classes=CLASSES, shard=1, n_shards=2)
    with pytest.raises(InputError, match="not the part this cache was merged from"):
        open_cache(cache_path)
    part.write_bytes(saved)
    open_cache(cache_path).close()


def test_merge_refuses_parts_that_do_not_belong_together(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    build(manifest, root, tmp_path / "a", n_shards=2)
    build(manifest, root, tmp_path / "b", n_shards=2, size=[32, 32])
    parts_a = [tmp_path / "a" / "cache" / f"part-{i}-of-2.h5" for i in range(2)]
    parts_b = [tmp_path / "b" / "cache" / f"part-{i}-of-2.h5" for i in range(2)]
    with pytest.raises(InputError, match="do not form one cache") as caught:
        merge_cache_parts([parts_a[0], parts_b[1]], tmp_path / "x.h5", tmp_path / "x.json")
    assert "params_hash" in str(caught.value)
    with pytest.raises(InputError, match="do not form one cache"):
        merge_cache_parts([parts_a[1], parts_a[0]], tmp_path / "x.h5", tmp_path / "x.json")
    with pytest.raises(InputError, match="do not form one cache"):
        merge_cache_parts(parts_a[:1], tmp_path / "x.h5", tmp_path / "x.json")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.json").exists()


def test_merge_refuses_parts_whose_images_differ_in_channels(tmp_path):
    # io.channels keep_grey: the grey shard stores 1 channel, the colour shard 3
    rows = grey_and_colour_dataset(tmp_path / "data", 4, 4)
    with pytest.raises(InputError, match="do not form one cache") as caught:
        build(write_manifest(rows, tmp_path / "m.csv"), tmp_path / "data", tmp_path / "r", n_shards=2)
    text = str(caught.value)
    assert "part-1-of-2.h5: images (64, 64, 3) uint8, " in text and "part-0-of-2.h5's are (64, 64, 1)" in text
    assert "io.channels" in text
    assert not (tmp_path / "r" / "cache.h5").exists()


def test_open_cache_refuses_images_of_another_shape(tmp_path, monkeypatch):
    # e.g. a cache merged by a version that did not compare the parts' image shapes
    rows = grey_and_colour_dataset(tmp_path / "data", 4, 4)
    monkeypatch.setattr(cache_module, "_check_parts_agree", lambda parts, opened: None)
    cache_path, _ = build(write_manifest(rows, tmp_path / "m.csv"), tmp_path / "data", tmp_path / "r", n_shards=2)
    with pytest.raises(InputError, match="inconsistent cache") as caught:
        open_cache(cache_path)
    text = str(caught.value)
    assert "block-" in text and "images (64, 64, 3) uint8, the cache's are (64, 64, 1) uint8" in text
    assert "io.channels" in text


def test_labels_outside_classes_are_listed_with_rows(dataset, tmp_path):
    root, rows = dataset
    bad = [dict(r) for r in rows[:4]]
    bad[1]["label"] = "benignn"
    bad[3]["label"] = "other"
    preprocess, io = options()
    with pytest.raises(InputError) as caught:
        build_cache_part(write_manifest(bad, tmp_path / "m.csv"), root, tmp_path / "p.h5",
                         preprocess_options=preprocess, io_options=io, classes=CLASSES)
    assert "row 2" in str(caught.value) and "row 4" in str(caught.value) and "'benignn'" in str(caught.value)
    assert not (tmp_path / "p.h5").exists()


def test_a_malformed_or_missing_source_spacing_is_refused(dataset, tmp_path):
    root, rows = dataset
    preprocess, io = options()
    broken = [dict(row) for row in rows[:4]]
    broken[2]["source_spacing"] = "0.5"
    broken[3]["source_spacing"] = "0.5 abc"
    with pytest.raises(InputError, match="malformed source_spacing") as caught:
        build_cache_part(write_manifest(broken, tmp_path / "m.csv"), root, tmp_path / "p.h5",
                         preprocess_options=preprocess, io_options=io, classes=CLASSES)
    assert [line.split(":")[0] for line in caught.value.problems] == [
        f"row 3 ({rows[2]['path']})", f"row 4 ({rows[3]['path']})"]
    older = pd.DataFrame(rows).drop(columns="source_spacing")  # written before validation recorded it
    with pytest.raises(InputError, match="not a validated manifest") as caught:
        build_cache_part(older, root, tmp_path / "p.h5", preprocess_options=preprocess, io_options=io, classes=CLASSES)
    assert "missing column 'source_spacing'" in caught.value.problems and "rerun validation" in str(caught.value)


def test_images_changed_or_broken_since_validation_are_listed(dataset, tmp_path):
    root, rows = dataset
    root = Path(shutil.copytree(root, tmp_path / "data"))
    write_png(root / rows[2]["path"], random_image(np.random.default_rng(5)))
    (root / rows[4]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / rows[0]["path"]).unlink()  # the first row too: every problem is listed, not the first
    preprocess, io = options()
    out = tmp_path / "cache" / "part-0-of-1.h5"
    with pytest.raises(InputError, match="3 image") as caught:
        build_cache_part(write_manifest(rows, tmp_path / "m.csv"), root, out, preprocess_options=preprocess,
                         io_options=io, classes=CLASSES, threads=2)
    text = str(caught.value)
    assert f"row 3 ({rows[2]['path']}): content_changed" in text
    assert f"row 5 ({rows[4]['path']})" in text
    assert f"row 1 ({rows[0]['path']})" in text
    assert "undecodable: undecodable" not in text and "unreadable_file: unreadable_file" not in text  # helper-77
    assert not out.exists() and not list(out.parent.iterdir())


def test_sigkill_leaves_nothing_that_is_accepted_and_a_rerun_completes(tmp_path):
    root = tmp_path / "data"
    rows = make_dataset(root, 6, sizes=((512, 512),))
    rows = [dict(rows[i % 6], sample_id=f"{rows[i % 6]['path']}#{i}") for i in range(200)]
    manifest = write_manifest(rows, tmp_path / "m.csv")
    out = tmp_path / "results" / "cache" / "part-0-of-1.h5"
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from medclassify.cache import build_cache_part
        from cache_fixtures import CLASSES, options
        preprocess, io = options(compression="gzip", compression_level=9)
        build_cache_part({str(manifest)!r}, {str(root)!r}, {str(out)!r}, preprocess_options=preprocess,
                         io_options=io, classes=CLASSES, threads=1)
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    try:
        # kill once the temporary part holds some images, i.e. in the middle of writing
        while time.monotonic() < deadline:
            temporaries = list(out.parent.glob(".part-0-of-1.h5.*.tmp")) if out.parent.exists() else []
            if temporaries and temporaries[0].stat().st_size > 20_000:
                break
            assert process.poll() is None, "the build finished before it could be killed; make it larger"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = list(out.parent.glob(".*.tmp"))
    assert leftovers
    for leftover in leftovers:
        with pytest.raises(InputError):
            open_cache(leftover)
    preprocess, io = options()
    build_cache_part(manifest, root, out, preprocess_options=preprocess, io_options=io, classes=CLASSES, threads=2)
    with open_cache(out) as cache:
        assert len(cache) == 200
        cache.verify()


def test_accepts_a_dataframe_manifest(dataset, tmp_path):
    root, rows = dataset
    preprocess, io = options()
    summary = build_cache_part(pd.DataFrame(rows), root, tmp_path / "p.h5", preprocess_options=preprocess,
                               io_options=io, classes=CLASSES)
    assert summary == {**summary, "rows": len(rows), "decoded": len(rows), "reused": 0}
    with open_cache(tmp_path / "p.h5") as cache:
        assert cache.sample_ids == [r["sample_id"] for r in rows]


def test_fingerprint_pools_a_bounded_sample_of_pixels(dataset, tmp_path, monkeypatch):
    import medclassify.cache
    monkeypatch.setattr(medclassify.cache, "MAX_INTENSITY_VALUES", 64 * 6)  # every 4th of 24 images
    root, rows = dataset
    build(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "r", n_shards=2)
    fingerprint = json.loads((tmp_path / "r" / "fingerprint.json").read_text())
    assert fingerprint["intensity_percentiles"]["US"]["n_values"] == 64 * 6


def test_float16_storage(dataset, tmp_path):
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows[:6], tmp_path / "m.csv"), root, tmp_path / "r", dtype="float16")
    preprocess, io = options(dtype="float16")
    expected = np.stack([preprocess_image(read_sample(Path(root) / r["path"], None, io).pixels, preprocess)
                         for r in rows[:6]])
    with open_cache(cache_path) as cache:
        assert cache.sources[0][0].dtype == np.float16
        images = cache.read(range(6))
        assert images.dtype == np.float32
        np.testing.assert_allclose(images, expected, atol=1e-3)


def test_threads_replace_processes_when_forking_is_unsafe(dataset, tmp_path):
    import threading
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    build(manifest, root, tmp_path / "processes", threads=2)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # e.g. a log-forwarding thread in a rule script
    other.start()
    try:
        build(manifest, root, tmp_path / "threads", threads=2)
    finally:
        stop.set()
        other.join()
    for name in ("cache/part-0-of-1.h5", "cache.h5"):
        assert (tmp_path / "processes" / name).read_bytes() == (tmp_path / "threads" / name).read_bytes()


def test_refuses_a_part_whose_block_is_missing_or_replaced(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    cache_path, _ = build(manifest, root, tmp_path / "r", n_shards=2)
    part = tmp_path / "r" / "cache" / "part-1-of-2.h5"
    block = tmp_path / "r" / "cache" / "blocks" / next(iter(referenced_blocks(part)))
    saved = block.read_bytes()
    block.unlink()
    for path in (cache_path, part):
        with pytest.raises(InputError, match="incomplete cache") as caught:
            open_cache(path)
        assert f"{block.name}: missing" in str(caught.value)
    # another block under the same name (e.g. copied from elsewhere) is not silently mixed in
    other = next(p for p in block.parent.iterdir())
    shutil.copyfile(other, block)
    with pytest.raises(InputError, match="is not the block"):
        open_cache(cache_path)
    block.write_bytes(saved)
    open_cache(cache_path).close()


@pytest.mark.parametrize("damage", ["content_hash_not_utf8", "fingerprint_dataset_unreadable"])
def test_a_block_with_damaged_metadata_is_ignored_and_its_images_decoded_again(dataset, tmp_path, damage):
    # A flipped byte in a block's content hashes (UnicodeDecodeError) or a fingerprint dataset
    # HDF5 cannot open (KeyError at the open after the check) stopped every later build.
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    cache, _ = build(manifest, root, tmp_path / "r")
    (block,) = (tmp_path / "r" / "cache" / "blocks").iterdir()
    with h5py.File(block, "r+") as f:
        if damage == "content_hash_not_utf8":
            hashes = f["content_hash"]
            hashes.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.full(hashes.shape, b"\x99" * hashes.dtype.itemsize,
                                                                  dtype=f"S{hashes.dtype.itemsize}"),
                            mtype=hashes.id.get_type())
        else:
            del f["source_intensity"]
            f["source_intensity"] = h5py.SoftLink("/nowhere")  # listed, but opening it fails
    cache, summaries = build(manifest, root, tmp_path / "r")
    assert summaries[0]["decoded"] == len(rows)
    with h5py.File(block, "r") as f:  # the same images make a block of the same name, written anew
        assert len(f["content_hash"].asstr()[:]) == len(rows) and f["source_intensity"].shape[0] == len(rows)
    with open_cache(cache) as opened:
        assert len(opened) == len(rows)


def test_a_killed_block_write_is_ignored_and_removed(dataset, tmp_path):
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "m.csv")
    blocks = tmp_path / "r" / "cache" / "blocks"
    blocks.mkdir(parents=True)
    (blocks / ".block-0123.h5.tmp").write_bytes(b"half a block")
    (blocks / "block-0123.h5").write_bytes(b"not hdf5")  # e.g. truncated by a full disk
    _, summaries = build(manifest, root, tmp_path / "r")
    assert summaries[0]["decoded"] == len(rows)
    assert [p.name for p in blocks.iterdir()] == list(referenced_blocks(tmp_path / "r" / "cache" / "part-0-of-1.h5"))


def test_a_fixed_intensity_window_over_a_dicom_the_reader_windowed_is_refused(tmp_path):
    # The reader's window put the CT into [0, 1]; the 40/400 HU window then left one grey level.
    import pydicom

    from medclassify.io import content_hash, read_sample
    from medclassify.manifest import spacing_text

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", root / "ct.dcm")
    preprocess, io = options(intensity="window", window={"center": 40, "width": 400})
    for dicom_window, refused in (("ct_lung", True), ("none", False)):
        io = dict(io, dicom_window=dicom_window)
        sample = read_sample(root / "ct.dcm", None, io)
        row = {"sample_id": "ct.dcm", "path": "ct.dcm", "index": "", "label": CLASSES[0], "patient": "p_0",
               "modality": "CT", "content_hash": content_hash(sample.pixels),
               "source_spacing": spacing_text(sample.meta["spacing"])}
        out = tmp_path / dicom_window / "part-0-of-1.h5"
        build = functools.partial(build_cache_part, write_manifest([row], tmp_path / dicom_window / "m.csv"), root,
                                  out, preprocess_options=preprocess, io_options=io, classes=CLASSES)
        if refused:
            with pytest.raises(InputError, match="windowed_twice") as caught:
                build()
            assert "io.dicom_window 'ct_lung' windowed this DICOM" in str(caught.value) and not out.exists()
        else:
            build()
            with h5py.File(out) as f:
                assert len(np.unique(f["images"][0])) > 10


def test_intensity_none_refuses_pixels_it_would_clip(tmp_path):
    # "none" takes floats as in [0, 1]: a NIfTI in scanner units came out almost all 0 or 1.
    import nibabel as nib

    from medclassify.io import content_hash, read_sample
    from medclassify.manifest import spacing_text

    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    volumes = {"units.nii": rng.uniform(0, 800, (20, 20, 1)), "scaled.nii": rng.uniform(0, 1, (20, 20, 1)),
               "hair.nii": rng.uniform(-0.005, 1.005, (20, 20, 1))}
    preprocess, io = options(intensity="none")
    rows = []
    for name, volume in volumes.items():
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), root / name)
        sample = read_sample(root / name, None, io)
        rows.append({"sample_id": name, "path": name, "index": "", "label": CLASSES[len(rows) % 2],
                     "patient": f"p_{len(rows)}", "modality": "MR", "content_hash": content_hash(sample.pixels),
                     "source_spacing": spacing_text(sample.meta["spacing"])})
    with pytest.raises(InputError, match="1 image") as caught:
        build_cache_part(write_manifest(rows, tmp_path / "m.csv"), root, tmp_path / "part.h5",
                         preprocess_options=preprocess, io_options=io, classes=CLASSES)
    [problem] = caught.value.problems
    assert "row 1 (units.nii): outside_intensity_range" in problem and "span 0" in problem
    build_cache_part(write_manifest(rows[1:], tmp_path / "m2.csv"), root, tmp_path / "part2.h5",
                     preprocess_options=preprocess, io_options=io, classes=CLASSES)


def test_cache_identity_is_the_same_for_a_rebuilt_cache_and_differs_with_a_label(dataset, tmp_path):
    # The run card and the ensemble's member fingerprints record it: a cache built again from the
    # same images must keep it (its file's bytes and times differ), another label must not.
    root, rows = dataset
    manifest = write_manifest(rows, tmp_path / "manifest.validated.csv")
    first, _ = build(manifest, root, tmp_path / "first")
    again, _ = build(manifest, root, tmp_path / "again", blocks=False)
    relabelled_rows = [dict(row) for row in rows]
    relabelled_rows[3]["label"] = next(c for c in CLASSES if c != rows[3]["label"])
    relabelled, _ = build(write_manifest(relabelled_rows, tmp_path / "relabelled.csv"), root, tmp_path / "relabelled")
    assert cache_identity(first) == cache_identity(again)
    assert cache_identity(first)[0] == cache_identity(relabelled)[0]  # same preprocessing
    assert cache_identity(first)[1] != cache_identity(relabelled)[1]


def test_check_built_with_refuses_a_cache_of_other_preprocessing_naming_the_remedy(dataset, tmp_path):
    # The workflow trained on a cache built by hand at 16 px where its config said 24, and the run
    # card stated 24 (helper-55); the CLI already refused it.
    from medclassify.cache import check_built_with

    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "manifest.validated.csv"), root, tmp_path / "results")
    preprocess, io = options()
    check_built_with(cache_path, {"preprocess": preprocess, "io": io}, "rebuild it")
    with pytest.raises(InputError, match="other preprocessing") as error:
        check_built_with(cache_path, {"preprocess": {**preprocess, "size": [24, 24]}, "io": io}, "rebuild it")
    assert "rebuild it" in error.value.problems


def test_text_attributes_are_fixed_length_strings(dataset, tmp_path):
    # HDF5 loops for ever reading a variable-length string whose heap entry a flipped bit damaged:
    # open_cache hung instead of reporting the damage (helper-58).
    root, rows = dataset
    cache_path, _ = build(write_manifest(rows, tmp_path / "manifest.validated.csv"), root, tmp_path / "results")
    files = [cache_path, *sorted((tmp_path / "results").rglob("part-*.h5")), *sorted((tmp_path / "results").rglob("block-*.h5"))]
    assert len(files) >= 3
    for path in files:
        with h5py.File(path, "r") as f:
            for key in f.attrs:
                # A variable-length string reads as an object array: "O".
                assert f.attrs.get_id(key).dtype.kind != "O", (path, key)


def run_under_a_file_size_limit(limit, out, writes):
    """Run ``writes`` (code writing the HDF5 file ``f``) in a process whose files may not grow past
    ``limit`` bytes, as on a full disk, within atomic_path and _create_h5; its last printed word."""
    import subprocess

    script = f"""
import os, resource, signal, sys
import numpy as np
from medclassify.atomic import atomic_path
from medclassify.cache import _create_h5, _write_attrs, _write_strings
limit, out = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    with atomic_path(out) as tmp:
        with _create_h5(tmp) as f:
{textwrap.indent(textwrap.dedent(writes), " " * 12)}
    print("written", flush=True)
except OSError as error:
    print(error.errno, error.strerror, error.filename == out or error.filename.startswith(os.path.dirname(out)),
          flush=True)
"""
    run = subprocess.run([sys.executable, "-c", script, str(limit), str(out)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    # Its last word, whatever the exit: HDF5 itself may crash (SIGSEGV) once a write failed.
    return run, run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "crashed"


def test_an_hdf5_file_that_cannot_be_written_whole_never_reaches_its_name(tmp_path):
    # On a full disk HDF5 met the failure while closing, h5py only printed it from a destructor,
    # and the damaged block was renamed into place and reused by every later build (helper-75).
    # A file size limit fails the writes as a full disk does, at every point of the file.
    writes = """
        images = f.create_dataset("images", shape=(50, 32, 32), dtype="u1", chunks=(1, 32, 32))
        for i in range(50):
            images[i] = np.full((32, 32), i, np.uint8)
        f.create_dataset("spacing", data=np.arange(100.0))
        f.attrs.create("note", np.bytes_(b"x" * 1000))
    """
    outcomes = set()
    for limit in range(40000, 60000, 1000):
        out = tmp_path / f"{limit}.h5"
        run, outcome = run_under_a_file_size_limit(limit, out, writes)
        assert outcome == "crashed" or run.returncode in (0, -11), run.stderr[-500:]
        outcomes.add(outcome)
        if outcome == "written":
            with h5py.File(out) as f:
                assert [int(f["images"][i, 0, 0]) for i in range(50)] == list(range(50))
                assert f["spacing"][-1] == 99.0 and f.attrs["note"] == b"x" * 1000
        else:
            assert outcome in ("27 HDF5 could not write it (File too large) True", "crashed"), outcome
            assert not out.exists()
    assert {"written", "27 HDF5 could not write it (File too large) True"} <= outcomes, outcomes


def test_a_disk_full_in_a_files_first_kilobytes_is_told_and_leaves_no_temporary_file(tmp_path):
    # Closing a file whose first metadata HDF5 could not write crashed (SIGSEGV) before the error
    # was told, leaving the temporary file beside the block (helper-81). The file is abandoned
    # now; HDF5 may still crash at exit, after the one-line error and the clean-up.
    writes = """
        _write_strings(f, "content_hash", [f"{i:064x}" for i in range(10)])
        images = f.create_dataset("images", shape=(10, 8, 8, 1), dtype="u1", chunks=(1, 8, 8, 1))
        for i in range(10):
            images[i] = np.full((8, 8, 1), i, np.uint8)
        _write_attrs(f, {"values_hash": "x" * 32, "layout": "block"})
    """
    for limit in (48, 300, 1000, 2300):
        folder = tmp_path / str(limit)
        folder.mkdir()
        run, outcome = run_under_a_file_size_limit(limit, folder / "block.h5", writes)
        assert outcome == "27 HDF5 could not write it (File too large) True", (limit, run.stderr[-500:])
        assert list(folder.iterdir()) == [], limit

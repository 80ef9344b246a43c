"""MedMNIST import: the real BreastMNIST file, synthetic bad files, and the download path."""

import hashlib
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclassify.datasets import medmnist
from medclassify.content import file_digest
from medclassify.datasets.medmnist import DATASETS, import_medmnist, label_names, npz_file_name
from medclassify.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official:UserWarning")

BREASTMNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "breastmnist.npz"


def _write_npz(path, *, size=28, channels=1, counts=(6, 3, 3), n_classes=2, label_shape="flat", seed=0, **overrides):
    """A small MedMNIST-like file; ``overrides`` replace or (with None) remove arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, size, size) if channels == 1 else (n, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "column" else labels
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason="shared BreastMNIST file not present")
def test_breastmnist_import_keeps_split_labels_and_pixels(tmp_path):
    with pytest.warns(UserWarning, match="MD5 .* differs from the official breastmnist.npz"):
        manifest_path = import_medmnist("breastmnist", tmp_path / "bm", npz=BREASTMNIST)
    assert manifest_path == tmp_path / "bm" / "manifest.csv"
    manifest = pd.read_csv(manifest_path, dtype=str)
    assert tuple(manifest.columns) == medmnist.MANIFEST_COLUMNS
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    assert counts == {
        ("train", "malignant"): 147, ("train", "normal_benign"): 399,
        ("val", "malignant"): 21, ("val", "normal_benign"): 57,
        ("test", "malignant"): 42, ("test", "normal_benign"): 114,
    }
    assert manifest["split"].tolist() == ["train"] * 546 + ["val"] * 78 + ["test"] * 156
    assert manifest["patient"].is_unique  # one synthetic patient per image
    assert set(manifest["modality"]) == {"US"}
    with np.load(BREASTMNIST) as data:
        for row in (0, 545, 546, 779):
            split, index = manifest.at[row, "split"], int(manifest.at[row, "path"][-10:-4])
            with Image.open(tmp_path / "bm" / manifest.at[row, "path"]) as image:
                assert image.mode == "L"
                np.testing.assert_array_equal(np.asarray(image), data[f"{split}_images"][index])
            expected = ["malignant", "normal_benign"][int(data[f"{split}_labels"][index])]
            assert manifest.at[row, "label"] == expected


def test_column_labels_and_rgb_images_are_accepted(tmp_path):
    npz = _write_npz(tmp_path / "derma.npz", channels=3, n_classes=7, counts=(7, 2, 3), label_shape="column")
    with pytest.warns(UserWarning):
        manifest_path = import_medmnist("dermamnist", tmp_path / "out", npz=npz)
    manifest = pd.read_csv(manifest_path, dtype=str)
    assert len(manifest) == 12
    assert set(manifest.loc[manifest["split"] == "train", "label"]) == set(label_names("dermamnist"))
    with Image.open(tmp_path / "out" / manifest.at[0, "path"]) as image:
        assert image.mode == "RGB" and image.size == (28, 28)


def test_larger_sizes_are_read_at_their_size(tmp_path):
    npz = _write_npz(tmp_path / "pneu_64.npz", size=64)
    with pytest.warns(UserWarning):
        manifest_path = import_medmnist("pneumoniamnist", tmp_path / "out", npz=npz, size=64)
    first = pd.read_csv(manifest_path, dtype=str).at[0, "path"]
    with Image.open(tmp_path / "out" / first) as image:
        assert image.size == (64, 64)
    with pytest.raises(InputError, match="not a valid pneumoniamnist file") as caught:
        import_medmnist("pneumoniamnist", tmp_path / "out", npz=npz, size=28)
    assert "expected (N, 28, 28)" in str(caught.value)


def test_bad_files_list_every_problem(tmp_path):
    npz = _write_npz(
        tmp_path / "bad.npz",
        val_labels=None,  # missing
        train_images=np.zeros((6, 32, 32), dtype=np.uint8),  # wrong size
        test_labels=np.array([0, 1, 5], dtype=np.uint8),  # out of range
    )
    with pytest.raises(InputError) as caught:
        import_medmnist("breastmnist", tmp_path / "out", npz=npz)
    problems = "\n".join(caught.value.problems)
    assert "missing array 'val_labels'" in problems
    assert "train_images has shape (6, 32, 32)" in problems
    assert "test_labels has values outside 0..1 at rows 2" in problems
    assert not (tmp_path / "out" / "manifest.csv").exists()
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.parametrize("override, message", [
    ({"train_labels": np.zeros((6, 2), dtype=np.uint8)}, r"train_labels has shape \(6, 2\), expected \(N,\) or \(N, 1\)"),
    ({"train_labels": np.zeros(5, dtype=np.uint8)}, "train_labels has 5 labels for 6 images"),
    ({"train_labels": np.zeros(6, dtype=np.float32)}, "dtype float32, expected integers"),
    ({"val_images": np.zeros((3, 28, 28), dtype=np.float32)}, "val_images has dtype float32, expected uint8"),
    ({"test_images": np.zeros((3, 28, 28, 3), dtype=np.uint8)}, r"test_images has shape \(3, 28, 28, 3\)"),
])
def test_each_kind_of_bad_array_is_named(tmp_path, override, message):
    npz = _write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(InputError) as caught:
        import_medmnist("breastmnist", tmp_path / "out", npz=npz)
    assert re.search(message, "\n".join(caught.value.problems))


def test_unreadable_or_missing_files(tmp_path):
    not_npz = tmp_path / "broken.npz"
    not_npz.write_bytes(b"this is not a zip archive")
    with pytest.raises(InputError, match="not a readable .npz"):
        import_medmnist("breastmnist", tmp_path / "out", npz=not_npz)
    with pytest.raises(InputError, match="not found"):
        import_medmnist("breastmnist", tmp_path / "out", npz=tmp_path / "absent.npz")


def test_a_damaged_or_pickled_array_inside_the_npz_is_named(tmp_path):
    # np.load opens the zip at once but reads each array later: these were raw tracebacks.
    pickled = _write_npz(tmp_path / "pickled.npz", train_labels=np.array([0, 1, 0, 1, 0, 1], dtype=object))
    damaged = _write_npz(tmp_path / "damaged.npz")
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside an array: the zip's CRC no longer matches
    damaged.write_bytes(bytes(data))
    # As the official files are written: compressed, where damage breaks the deflate stream.
    arrays = dict(np.load(_write_npz(tmp_path / "plain.npz")))
    arrays["val_images"] = np.random.default_rng(1).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    arrays["val_labels"] = np.zeros(300, np.uint8)
    np.savez_compressed(tmp_path / "deflated.npz", **arrays)
    deflated = tmp_path / "deflated.npz"
    with zipfile.ZipFile(deflated) as archive:
        member = archive.getinfo("val_images.npy")
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)  # the deflate stream's start
    data = bytearray(deflated.read_bytes())
    for k in range(start, start + 60):
        data[k] ^= 0xFF
    deflated.write_bytes(bytes(data))
    for path in (pickled, damaged, deflated):
        with pytest.raises(InputError, match=f"{path.name} is not a valid breastmnist file") as error:
            import_medmnist("breastmnist", tmp_path / "out", npz=path)
        assert any("cannot be read" in problem for problem in error.value.problems)
    assert not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason="shared BreastMNIST file not present")
def test_another_sets_file_is_refused_not_imported_under_this_sets_labels(tmp_path, monkeypatch):
    # BreastMNIST's ultrasound images were imported as PneumoniaMNIST chest X-rays with a warning in a log.
    with pytest.raises(InputError, match="is not a pneumoniamnist file") as error:
        import_medmnist("pneumoniamnist", tmp_path / "out", npz=BREASTMNIST)
    assert "the official breastmnist's" in error.value.problems[0]
    official = _write_npz(tmp_path / "official.npz")  # stands for the published file: its MD5 is recorded
    monkeypatch.setitem(DATASETS["bloodmnist"]["md5"], 64, file_digest(official, "md5"))
    with pytest.raises(InputError, match="is not the pneumoniamnist.npz file") as error:
        import_medmnist("pneumoniamnist", tmp_path / "out", npz=official)
    assert "the official bloodmnist_64.npz's" in error.value.problems[0]
    counts = DATASETS["breastmnist"]["n_samples"]
    resaved = _write_npz(tmp_path / "resaved.npz", counts=(counts["train"], counts["val"], counts["test"]))
    with pytest.raises(InputError, match="is not a pneumoniamnist file") as error:
        import_medmnist("pneumoniamnist", tmp_path / "out", npz=resaved)
    assert "the official breastmnist's" in error.value.problems[0]
    assert not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.parametrize("name, message", [
    ("chestmnist", "multi-label"),
    ("organmnist3d", "3D"),
    ("mnist", "unknown MedMNIST dataset"),
])
def test_unsupported_datasets_are_refused(tmp_path, name, message):
    with pytest.raises(InputError, match=message):
        import_medmnist(name, tmp_path)


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(InputError, match="size 32 does not exist"):
        import_medmnist("breastmnist", tmp_path, size=32)


def test_catalogue_is_complete():
    expected = {"pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
                "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"}
    assert set(DATASETS) == expected
    for name, info in DATASETS.items():
        assert sorted(info["md5"]) == [28, 64, 128, 224]
        assert all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in info["md5"].values())
        assert info["channels"] in (1, 3)
        assert set(info["n_samples"]) == {"train", "val", "test"}
    assert DATASETS["breastmnist"]["md5"][28] == "750601b1f35ba3300ea97c75c52ff8f6"  # shared/data/README.md
    assert label_names("breastmnist") == ["malignant", "normal_benign"]
    assert npz_file_name("breastmnist", 64) == "breastmnist_64.npz"
    assert medmnist.official_url("breastmnist") == "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1"


# --- download -------------------------------------------------------------------------------------
@pytest.fixture
def fake_zenodo(tmp_path, monkeypatch):
    """Serve a synthetic breastmnist.npz through a file:// URL and publish its MD5."""
    served = _write_npz(tmp_path / "served.npz", counts=(546, 78, 156))
    monkeypatch.setitem(DATASETS["breastmnist"]["md5"], 28, hashlib.md5(served.read_bytes()).hexdigest())
    requested = []

    def open_url(url):
        requested.append(url)
        return urllib.request.urlopen(served.as_uri())

    monkeypatch.setattr(medmnist, "_open_url", open_url)
    return served, requested


def test_download_checks_md5_and_is_reused(tmp_path, fake_zenodo):
    served, requested = fake_zenodo
    manifest_path = import_medmnist("breastmnist", tmp_path / "out")
    assert requested == [medmnist.official_url("breastmnist")]
    downloaded = tmp_path / "out" / "breastmnist.npz"
    assert downloaded.read_bytes() == served.read_bytes()
    assert len(pd.read_csv(manifest_path)) == 780
    import_medmnist("breastmnist", tmp_path / "out")
    assert len(requested) == 1  # the verified file is reused, not fetched again
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".written-by-medclassify", "breastmnist.npz", "images",
                                                                     "manifest.csv"]


def test_corrupt_download_is_refused_and_removed(tmp_path, fake_zenodo, monkeypatch):
    monkeypatch.setitem(DATASETS["breastmnist"]["md5"], 28, "0" * 32)
    with pytest.raises(InputError, match="corrupt") as caught:
        import_medmnist("breastmnist", tmp_path / "out")
    assert "published 00000000000000000000000000000000" in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_offline_download_names_the_alternative(tmp_path, monkeypatch):
    def no_network(url):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(medmnist, "_open_url", no_network)
    with pytest.raises(InputError, match="could not download breastmnist") as caught:
        import_medmnist("breastmnist", tmp_path / "out")
    assert "MEDCLASSIFY_<NAME>_NPZ" in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_the_import_asks_for_memory_enough_for_the_images():
    from medclassify.datasets.medmnist import DATASETS, medmnist_memory_mb

    assert medmnist_memory_mb("breastmnist") == 1000 + 1  # 780 images of 28 x 28
    tissue = DATASETS["tissuemnist"]
    assert medmnist_memory_mb("tissuemnist", 224) * 1e6 > sum(tissue["n_samples"].values()) * 224 * 224

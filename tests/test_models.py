"""Models: ResNet-18 stems and blocks, the classifier's input handling, saving, weights, GPU policy."""

import hashlib
import platform
import subprocess
import sys
import textwrap
import urllib.error

import keras
import numpy as np
import pytest

from medclassify import backbone_names
from medclassify.errors import InputError
from medclassify import gpu
from medclassify.gpu import keep_freed_memory, mixed_precision_policy, strategy_kind, use_jit, visible_gpu_ids
from medclassify.models import (ImageNetNormalization, backbone_blocks, backbone_of, build_backbone,
                                build_classifier, build_resnet18, log_prior_bias, set_trainable_blocks)
from medclassify.models import weights as weights_module
from medclassify.models.backbones import available_backbones, min_input_size, normalisation_mode


def test_resnet18_small_stem_keeps_resolution_for_small_images():
    small = build_resnet18((28, 28, 1), width=8)
    large = build_resnet18((128, 128, 1), width=8)
    # 3x3 stride-1 stem: only the three stage transitions halve 28 px (28 -> 14 -> 7 -> 4).
    assert small.output_shape == (None, 4, 4, 64)
    # ImageNet stem: /4 before the stages, then /8: 128 -> 4.
    assert large.output_shape == (None, 4, 4, 64)
    assert small.get_layer("stem_conv").kernel_size == (3, 3)
    assert large.get_layer("stem_conv").kernel_size == (7, 7)


def test_resnet18_has_eighteen_weighted_layers():
    model = build_resnet18((32, 32, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and "proj" not in layer.name]
    assert len(convs) == 17  # + the classifier dense layer = 18
    assert model.count_params() == pytest.approx(11.17e6, rel=0.01)


def test_backbone_blocks_and_unfreezing_the_top_blocks():
    backbone = build_resnet18((16, 16, 1), width=4)
    names = [name for name, _ in backbone_blocks(backbone)]
    assert names == ["stem"] + [f"stage{s}_block{b}" for s in range(1, 5) for b in (1, 2)]
    trainable = set_trainable_blocks(backbone, 2, freeze_batchnorm=True)
    assert trainable == ["stage4_block1", "stage4_block2"]
    assert not backbone.get_layer("stage3_block2_1_conv").trainable
    assert backbone.get_layer("stage4_block2_1_conv").trainable
    assert not backbone.get_layer("stage4_block2_1_bn").trainable
    set_trainable_blocks(backbone, "all", freeze_batchnorm=False)
    assert all(layer.trainable for layer in backbone.layers)


def test_keras_applications_blocks_are_found_by_name():
    backbone = build_backbone("MobileNetV2", (32, 32, 3))
    names = [name for name, _ in backbone_blocks(backbone)]
    assert names[-1] == "block_16" and "block_1" in names
    # The stem (Conv1 with block 0, named expanded_conv) and blocks 1..16 with the final conv.
    assert names[0] == "Conv1" and len(names) == 17


def _parameter_count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _unfreeze_top_block(name):
    """Build ``name`` at its smallest size, unfreeze its top block; return (backbone, blocks)."""
    size = max(min_input_size(name), 32)
    backbone = build_backbone(name, (size, size, 3))
    blocks = backbone_blocks(backbone)
    assert set_trainable_blocks(backbone, 1, freeze_batchnorm=False) == [blocks[-1][0]]
    return backbone, blocks


def _assert_top_block_is_a_real_block(backbone, blocks):
    names = [block for block, _ in blocks]
    assert len(set(names)) == len(names), f"a block split in two: {names}"
    trainable = _parameter_count(backbone.trainable_weights)
    assert 0 < trainable < _parameter_count(backbone.weights)
    # The backbone's output, which the classifier pools, comes out of the top block.
    assert backbone.layers[-1] in blocks[-1][1]


# Layer names give blocks in each naming scheme: Inception's mixedK (branches auto-named conv2d_N,
# which once read as a block "conv2"), InceptionResNetV2's block17_N, Xception's blockN,
# ConvNeXt's <name>_stage_N_block_M, MobileNet's conv_dw_N, MobileNetV3's expanded_conv_N, NASNet's cells.
NAMING_SCHEMES = [
    ("InceptionV3", 11, "mixed10"), ("InceptionResNetV2", 43, "block8_10"), ("Xception", 14, "block14"),
    ("ConvNeXtTiny", 19, "stage_3_block_2"), ("MobileNet", 14, "conv_block_13"),
    ("MobileNetV3Small", 11, "expanded_conv_10"), ("NASNetMobile", 17, "cell_12")]


@pytest.mark.parametrize("name, n_blocks, top", NAMING_SCHEMES)
def test_unfreezing_one_block_trains_the_top_block_of_each_naming_scheme(name, n_blocks, top):
    backbone, blocks = _unfreeze_top_block(name)
    assert len(blocks) == n_blocks and blocks[-1][0] == top
    _assert_top_block_is_a_real_block(backbone, blocks)


# The sizes of a family (EfficientNetB0..B7, ConvNeXtTiny..XLarge) come from one builder that
# names its layers one way, so the smallest stands for the rest: building all 41 took 126 s of
# a make test near its limit. A family that a later Keras adds is tested by its first name.
SMALLEST_OF_FAMILY = {"DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "ResNet50", "ResNet50V2"}


def test_the_backbone_names_known_without_keras_are_those_of_the_installed_keras():
    # The config check (medclassify.backbone_names) must not import Keras; these pin its lists.
    assert backbone_names.KERAS_APPLICATIONS == tuple(available_backbones()[len(backbone_names.BUILTIN):])
    assert sorted(backbone_names.WITH_IMAGENET_WEIGHTS) == sorted(weights_module.IMAGENET_WEIGHTS)


def backbone_families():
    """One backbone per keras.applications module (family) and the built-ins, less NAMING_SCHEMES'."""
    tested = {name for name, _, _ in NAMING_SCHEMES}
    families = {}
    for name in available_backbones():
        builder = getattr(keras.applications, name, None)
        families.setdefault(builder.__module__ if builder else name, []).append(name)
    chosen = [min(names, key=lambda name: (name not in SMALLEST_OF_FAMILY, name)) for names in families.values()]
    return [name for name, names in zip(chosen, families.values()) if not tested & set(names)]


@pytest.mark.slow
@pytest.mark.parametrize("name", backbone_families())
def test_unfreezing_one_block_trains_the_top_block_of_every_family(name):
    _assert_top_block_is_a_real_block(*_unfreeze_top_block(name))



def test_a_backbone_without_named_blocks_refuses_a_number_of_blocks():
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3)(keras.layers.Conv2D(4, 3)(inputs))  # auto-named conv2d_<n>
    backbone = keras.Model(inputs, features)
    with pytest.raises(InputError, match="blocks of this backbone could not be identified"):
        set_trainable_blocks(backbone, 1, freeze_batchnorm=False)
    set_trainable_blocks(backbone, "all", freeze_batchnorm=False)
    assert len(backbone.trainable_weights) == 4


def test_unknown_backbone_is_an_input_error():
    with pytest.raises(InputError, match="unknown backbone"):
        build_backbone("NoSuchNet", (32, 32, 3))


def test_untrained_classifier_predicts_the_class_priors_in_float32():
    model = build_classifier((16, 16, 1), 3, backbone="resnet18", class_counts=[10, 30, 60], resnet_width=4)
    probabilities = model.predict(np.random.default_rng(0).random((4, 16, 16, 1), dtype="float32"), verbose=0)
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities, np.tile([0.1, 0.3, 0.6], (4, 1)), atol=1e-6)
    np.testing.assert_allclose(np.exp(log_prior_bias([1, 3])), [0.25, 0.75], rtol=1e-6)


def test_saved_model_loads_in_safe_mode_with_identical_predictions(tmp_path):
    rng = np.random.default_rng(1)
    model = build_classifier((20, 20, 1), 2, backbone="resnet18", class_counts=[5, 5], resnet_width=4)
    dense = model.get_layer("classifier")
    dense.kernel.assign(rng.normal(size=dense.kernel.shape).astype("float32"))
    images = rng.random((3, 20, 20, 1), dtype="float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded._flatten_layers())


def test_pretrained_backbone_gets_rgb_minimum_size_and_imagenet_normalisation(tmp_path):
    # Stand-in "pretrained" weights: a random MobileNetV2 saved as .weights.h5.
    source = build_backbone("MobileNetV2", (32, 32, 3))
    source.save_weights(tmp_path / "mobilenet.weights.h5")
    model = build_classifier((20, 24, 1), 2, backbone="MobileNetV2", class_counts=[1, 1],
                             weights_path=tmp_path / "mobilenet.weights.h5", small_input="pad")
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["image", "to_rgb", "fit_size", "imagenet_norm", "backbone_runner"]
    assert model.get_layer("fit_size").compute_output_shape((None, 20, 24, 3)) == (None, 32, 32, 3)
    np.testing.assert_array_equal(backbone_of(model).get_weights()[0], source.get_weights()[0])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    images = np.random.default_rng(2).random((2, 20, 24, 1), dtype="float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)


def test_resize_keeps_the_aspect_ratio_up_to_the_minimum_size():
    model = build_classifier((16, 24, 1), 2, backbone="MobileNetV2", class_counts=[1, 1])
    assert model.get_layer("fit_size").compute_output_shape((None, 16, 24, 1)) == (None, 32, 48, 1)


def test_min_input_size_upsamples_small_images_inside_the_model():
    model = build_classifier((14, 21, 1), 2, backbone="resnet18", class_counts=[1, 1], resnet_width=4, min_size=28)
    assert model.get_layer("fit_size").compute_output_shape((None, 14, 21, 1)) == (None, 28, 42, 1)
    constant = np.full((1, 14, 21, 1), 0.25, dtype="float32")
    np.testing.assert_allclose(np.asarray(model.get_layer("fit_size")(constant)), 0.25, atol=1e-6)
    # The built-in ResNet takes any size: without min_size, nothing is inserted.
    plain = build_classifier((14, 21, 1), 2, backbone="resnet18", class_counts=[1, 1], resnet_width=4)
    assert "fit_size" not in [layer.name for layer in plain.layers]
    at_least = build_classifier((32, 32, 1), 2, backbone="resnet18", class_counts=[1, 1], resnet_width=4, min_size=28)
    assert "fit_size" not in [layer.name for layer in at_least.layers]


@pytest.mark.parametrize("backbone, module", [("ResNet50", "resnet"), ("ResNet50V2", "resnet_v2"),
                                              ("DenseNet121", "densenet"), ("VGG16", "vgg16")])
def test_imagenet_normalisation_matches_keras_preprocess_input(backbone, module):
    images = np.random.default_rng(3).random((2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(images * 255.0)
    layer = ImageNetNormalization(normalisation_mode(backbone, pretrained=True))
    np.testing.assert_allclose(np.asarray(layer(images)), expected, rtol=1e-5, atol=1e-3)


def test_missing_imagenet_weights_name_the_fetch_rule_and_the_alternatives(tmp_path):
    with pytest.raises(InputError) as error:
        weights_module.imagenet_weights_path("ResNet50", tmp_path)
    text = str(error.value)
    assert "fetch_weights" in text and "train.weights: none" in text and ".weights.h5" in text


def test_backbone_without_a_published_hash_has_no_imagenet_weights():
    with pytest.raises(InputError, match="no published ImageNet weights"):
        weights_module.imagenet_weights_path("MobileNetV2")


def test_download_is_kept_only_with_the_published_hash(tmp_path):
    source = tmp_path / "weights.h5"
    source.write_bytes(b"not really weights")
    url = source.as_uri()
    with pytest.raises(InputError, match="does not match its published hash"):
        weights_module.download_checked(url, tmp_path / "out.h5", "0" * 32)
    assert not (tmp_path / "out.h5").exists()
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    assert weights_module.download_checked(url, tmp_path / "a.h5", md5).read_bytes() == source.read_bytes()
    assert weights_module.hash_matches(tmp_path / "a.h5", sha256)


def test_fetch_offline_is_an_input_error_with_the_alternatives(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", offline)
    with pytest.raises(InputError) as error:
        weights_module.fetch_imagenet_weights("ResNet50", tmp_path / "ResNet50.imagenet.weights.h5")
    assert "train.weights: none" in str(error.value)


def test_published_weight_table_uses_keras_urls_and_hashes():
    for name, (file_name, url, digest) in weights_module.IMAGENET_WEIGHTS.items():
        assert url.startswith("https://storage.googleapis.com/") and url.endswith(file_name), name
        assert len(digest) in (32, 64) and int(digest, 16) >= 0, name


def test_gpu_policy_decisions():
    assert mixed_precision_policy("auto", 0) == "float32"
    assert mixed_precision_policy("auto", 1) == "mixed_float16"
    assert mixed_precision_policy("off", 4) == "float32"
    assert mixed_precision_policy("on", 0) == "mixed_float16"
    assert [use_jit("auto", 0, False), use_jit("auto", 2, False), use_jit("off", 2, False), use_jit("on", 0, False)] \
        == [False, True, False, True]
    # Keras compiles without XLA under op determinism, so auto does not ask for it there.
    assert use_jit("auto", 2, True) is False
    assert (strategy_kind(0), strategy_kind(1), strategy_kind(2)) == ("default", "default", "mirrored")
    assert visible_gpu_ids({}) is None
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []


# Frees 32 MiB of small blocks from the top of the main heap; prints how much glibc keeps (MiB).
KEPT_AFTER_FREE = textwrap.dedent("""
    import ctypes, sys
    from medclassify.gpu import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "keep":
        assert keep_freed_memory(64 << 20)
    blocks = [libc.malloc(64 << 10) for _ in range(512)]
    for block in reversed(blocks):
        libc.free(block)
    print(libc.mallinfo2().keepcost >> 20)
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's top pad is glibc's")
def test_keep_freed_memory_makes_glibc_keep_the_freed_top_of_the_heap():
    kept = {mode: int(subprocess.run([sys.executable, "-c", KEPT_AFTER_FREE, mode], capture_output=True, text=True,
                                     check=True, timeout=120).stdout)
            for mode in ("default", "keep")}
    assert kept["default"] < 16 and kept["keep"] >= 32, kept


def test_keep_freed_memory_does_nothing_without_mallopt(monkeypatch):
    monkeypatch.setattr(gpu.ctypes, "CDLL", lambda name: object())
    assert keep_freed_memory() is False

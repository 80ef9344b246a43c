"""ImageNet weights for keras.applications backbones: where they come from and where they live.

Training nodes often have no internet. Rule ``fetch_weights`` therefore downloads the weights once,
on a machine that has it, into ``resources/weights/`` of the workflow's working directory, and the
training rule is given that file. The command line (``medclassify train`` with ``train.weights:
imagenet``) looks in ``$MEDCLASSIFY_WEIGHTS_DIR``, else in the repository's ``resources/weights/``. URLs and hashes are exactly those that keras.applications publishes in
its source (``keras/src/applications/*.py``, ``WEIGHTS_PATH``/``file_hash``; 32 hex digits are
MD5, 64 are SHA-256). Backbones for which Keras publishes no hash (MobileNetV2, Xception, ...)
are not listed: a download that cannot be checked is not accepted; give a local file instead.
"""

import os
import urllib.error
import urllib.request
from pathlib import Path

from ..atomic import atomic_path
from ..config import REPO_ROOT
from ..content import file_digest
from ..errors import InputError

_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_KERAS_EFFICIENTNET = "https://storage.googleapis.com/keras-applications/"


def _resnet(name, md5):
    file_name = f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return file_name, f"{_KERAS}resnet/{file_name}", md5


def _densenet(name, md5):
    file_name = f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return file_name, f"{_KERAS}densenet/{file_name}", md5


def _efficientnet(variant, md5):
    file_name = f"efficientnet{variant}_notop.h5"
    return file_name, f"{_KERAS_EFFICIENTNET}{file_name}", md5


# Backbone name (as keras.applications spells it) -> (file name, URL, hash) of the no-top weights.
IMAGENET_WEIGHTS = {
    "ResNet50": _resnet("resnet50", "4d473c1dd8becc155b73f8504c6f6626"),
    "ResNet101": _resnet("resnet101", "88cf7a10940856eca736dc7b7e228a21"),
    "ResNet152": _resnet("resnet152", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "ResNet50V2": _resnet("resnet50v2", "fac2f116257151a9d068a22e544a4917"),
    "ResNet101V2": _resnet("resnet101v2", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "ResNet152V2": _resnet("resnet152v2", "ed17cf2e0169df9d443503ef94b23b33"),
    "DenseNet121": _densenet("densenet121", "30ee3e1110167f948a6b9946edeeb738"),
    "DenseNet169": _densenet("densenet169", "b8c4d4c20dd625c148057b9ff1c1176b"),
    "DenseNet201": _densenet("densenet201", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "EfficientNetB0": _efficientnet("b0", "50bc09e76180e00e4465e1a485ddc09d"),
    "EfficientNetB1": _efficientnet("b1", "74c4e6b3e1f6a1eea24c589628592432"),
    "EfficientNetB2": _efficientnet("b2", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "EfficientNetB3": _efficientnet("b3", "af6d107764bb5b1abb91932881670226"),
    "EfficientNetB4": _efficientnet("b4", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "EfficientNetB5": _efficientnet("b5", "38879255a25d3c92d5e44e04ae6cec6f"),
    "EfficientNetB6": _efficientnet("b6", "9ecce42647a20130c1f39a5d4cb75743"),
    "EfficientNetB7": _efficientnet("b7", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
    "VGG16": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              f"{_KERAS}vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "6d6bbae143d832006294945121d1f1fc"),
    "VGG19": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              f"{_KERAS}vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "253f8cb515780f3b799900260a226db6"),
    "InceptionV3": ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    f"{_KERAS}inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "bcbd6486424b2319ff4ef7d526e38f63"),
}


def weights_dir():
    """Folder holding fetched ImageNet weights: ``$MEDCLASSIFY_WEIGHTS_DIR`` or ``resources/weights``."""
    return Path(os.environ.get("MEDCLASSIFY_WEIGHTS_DIR") or REPO_ROOT / "resources" / "weights")


def imagenet_weights_file(backbone, directory=None):
    """Where rule fetch_weights puts the backbone's weights: ``{backbone}.imagenet.weights.h5``."""
    return Path(directory or weights_dir()) / f"{backbone}.imagenet.weights.h5"


def hash_matches(path, expected):
    """True when the file's MD5 (32 hex digits) or SHA-256 (64) equals ``expected``."""
    algorithm = "sha256" if len(expected) == 64 else "md5"
    return file_digest(path, algorithm) == expected.lower()


def _entry(backbone):
    if backbone not in IMAGENET_WEIGHTS:
        known = ", ".join(sorted(IMAGENET_WEIGHTS))
        raise InputError(f"no published ImageNet weights with a hash for backbone {backbone!r}", [
            f"backbones with ImageNet weights: {known}",
            "use train.weights: none (random initialisation) or a path to a .weights.h5 file",
        ])
    return IMAGENET_WEIGHTS[backbone]


def imagenet_weights_path(backbone, directory=None):
    """Path of the fetched ImageNet weights of ``backbone``; InputError naming the remedies if absent.

    The usual cause of a missing file is a training node without internet on which the weights
    were never fetched, so the error names the ``fetch_weights`` rule and the alternatives.
    """
    _, url, _ = _entry(backbone)
    path = imagenet_weights_file(backbone, directory)
    if not path.exists():
        raise InputError(f"ImageNet weights for {backbone} are not in {path.parent}", [
            f"run the fetch_weights rule once on a machine with internet "
            f"(snakemake {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}); "
            f"it downloads {url}, checks its published hash and writes {path.name}",
            "or set train.weights: none (random initialisation)",
            "or set train.weights to the path of a local .weights.h5 file",
        ])
    return path


def download_checked(url, out_path, expected, timeout=60):
    """Download ``url`` to ``out_path`` atomically; InputError if its hash is not ``expected``."""
    with atomic_path(out_path) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        if not hash_matches(tmp, expected):
            raise InputError(f"download of {url} does not match its published hash {expected}",
                             ["the file was corrupted in transit or replaced upstream; it was not kept"])
    return Path(out_path)


def convert_to_weights_h5(backbone, legacy_h5, out_path):
    """Load keras.applications' legacy .h5 into our backbone and save it as a Keras .weights.h5.

    The legacy file matches layers by name, a format Keras 3 reads only for ``.h5`` names; the
    converted file loads into the backbone exactly as :func:`build_backbone` builds it.
    """
    from .backbones import build_backbone, load_backbone_weights

    out_path = Path(out_path)
    net = build_backbone(backbone, (224, 224, 3))
    load_backbone_weights(net, legacy_h5)
    # Keras requires the .weights.h5 suffix, so the temporary name keeps it.
    with atomic_path(out_path, suffix=".partial.weights.h5") as tmp:
        net.save_weights(str(tmp))
    return out_path


def fetch_imagenet_weights(backbone, out_path=None, timeout=60):
    """Download the published ImageNet weights of ``backbone``, check the hash, convert.

    Writes ``out_path`` (default :func:`imagenet_weights_file`), a .weights.h5 that training loads
    into the backbone. A legacy .h5 already downloaded beside it with a matching hash is reused,
    so the file can also be copied in by hand on machines without internet.
    """
    file_name, url, expected = _entry(backbone)
    out_path = Path(out_path) if out_path else imagenet_weights_file(backbone)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    legacy = out_path.parent / file_name
    if not (legacy.exists() and hash_matches(legacy, expected)):
        try:
            download_checked(url, legacy, expected, timeout=timeout)
        except (urllib.error.URLError, OSError) as error:
            raise InputError(f"cannot download ImageNet weights for {backbone} from {url}: {error}", [
                f"fetch_weights needs internet; on a machine without it, copy {file_name} "
                f"(from {url}) into {out_path.parent} and rerun",
                "or set train.weights: none, or a path to a local .weights.h5 file",
            ]) from error
    return convert_to_weights_h5(backbone, legacy, out_path)

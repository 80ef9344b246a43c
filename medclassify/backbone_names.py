"""The backbone names ``train.backbone`` accepts, known without importing Keras.

The config is read at every Snakemake start (each Slurm job's included) and importing Keras takes
seconds, so a misspelt backbone, or ImageNet weights asked for a backbone that has none, would
otherwise be found only when its training job runs. tests/test_models.py pins these lists to the
installed Keras's keras.applications and to the ImageNet weights that rule fetch_weights knows.
"""

import difflib

BUILTIN = ("resnet18",)
KERAS_APPLICATIONS = (
    "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge",
    "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3", "EfficientNetB4", "EfficientNetB5",
    "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2L",
    "EfficientNetV2M", "EfficientNetV2S",
    "InceptionResNetV2", "InceptionV3",
    "MobileNet", "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small",
    "NASNetLarge", "NASNetMobile",
    "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50", "ResNet50V2",
    "VGG16", "VGG19", "Xception",
)
# Those whose ImageNet weights Keras publishes with a hash (medclassify.models.weights.IMAGENET_WEIGHTS).
WITH_IMAGENET_WEIGHTS = (
    "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3", "EfficientNetB4", "EfficientNetB5",
    "EfficientNetB6", "EfficientNetB7",
    "InceptionV3",
    "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50", "ResNet50V2",
    "VGG16", "VGG19",
)


def backbone_problems(train):
    """What is wrong with ``train.backbone`` and ``train.weights`` together, in words (none: [])."""
    backbone, weights = train["backbone"], train["weights"]
    if backbone not in BUILTIN + KERAS_APPLICATIONS:
        return [f"train.backbone {backbone!r} is neither the built-in resnet18 nor a keras.applications model"
                f"{_did_you_mean(backbone)}"]
    if weights != weights.lower() and weights.lower() in ("imagenet", "none"):
        # Otherwise a path, and Snakemake's "Missing input files for rule train_head" names no key.
        return [f"train.weights {weights!r}: write {weights.lower()!r} in lower case (any other value is the path "
                "of a .weights.h5 file)"]
    if weights == "imagenet" and backbone not in WITH_IMAGENET_WEIGHTS:
        return [f"train.weights 'imagenet': no ImageNet weights with a published hash for {backbone} "
                f"(those with: {', '.join(WITH_IMAGENET_WEIGHTS)}); set train.weights to none or to the path "
                "of a .weights.h5 file"]
    return []


def _did_you_mean(name):
    names = BUILTIN + KERAS_APPLICATIONS
    by_case = [known for known in names if known.lower() == name.lower()]
    close = by_case or difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {' or '.join(close)}?)" if close else " (e.g. ResNet50, DenseNet121, EfficientNetB0)"

"""A deep ensemble as one saveable Keras model: the members' softmax outputs, averaged.

The ensemble takes the same input as each member and outputs probabilities, so evaluation,
prediction and test-time augmentation treat it like any classifier. Members keep their layers
(and names) inside nested models called ``member_<k>``; the file loads with ``safe_mode=True``.
"""

import keras

MEMBER_PREFIX = "member_"


def build_ensemble(members, name="ensemble"):
    """One model averaging the probabilities of ``members`` (classifiers with equal input shapes)."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    shapes = {tuple(m.inputs[0].shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different input shapes: {sorted(shapes)}")
    inputs = keras.Input(shape=shapes.pop(), dtype="float32", name="image")
    outputs = []
    for k, model in enumerate(members):
        # A functional wrapper gives each member a unique name without renaming its layers.
        member = keras.Model(model.inputs[0], model.outputs[0], name=f"{MEMBER_PREFIX}{k}")
        outputs.append(member(inputs))
    averaged = keras.layers.Average(dtype="float32", name="probabilities")(outputs)
    return keras.Model(inputs, averaged, name=name)


def ensemble_members(model):
    """The member models of an ensemble from :func:`build_ensemble`; [] for a single classifier."""
    return [layer for layer in model.layers
            if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)]

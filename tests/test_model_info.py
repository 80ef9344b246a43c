"""The one reader of the model.json beside a model."""

import pytest

from medclassify.errors import InputError
from medclassify.model_info import model_json_beside, model_json_path


def test_a_model_without_a_description_has_an_empty_one(tmp_path):
    assert model_json_beside(tmp_path / "model.keras") == {}


def test_the_description_is_the_model_json_in_the_models_folder(tmp_path):
    (tmp_path / "model.json").write_text('{"classes": ["a", "b"]}', encoding="utf-8")
    assert model_json_path(tmp_path / "model.keras") == tmp_path / "model.json"
    assert model_json_beside(tmp_path / "model.keras") == {"classes": ["a", "b"]}


@pytest.mark.parametrize("content, message", [
    ('{"classes": ["a"', "cannot be read as JSON"),
    ("", "cannot be read as JSON"),
    ('["a", "b"]', "not a JSON object"),
])
def test_a_damaged_description_is_an_input_error_naming_the_file_and_the_model(tmp_path, content, message):
    (tmp_path / "model.json").write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        model_json_beside(tmp_path / "model.keras")
    assert str(tmp_path / "model.json") in str(error.value)
    assert any(str(tmp_path / "model.keras") in problem for problem in error.value.problems)


def test_saved_weights_digest_tells_weights_apart_not_files(tmp_path):
    # Read from the .keras file's weights without building the model (helper-90).
    import keras
    import numpy as np

    from medclassify.model_info import saved_weights_digest

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "a.keras")
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((2, 3)), np.zeros((2, 2)), verbose=0, epochs=1)  # an optimizer state, not in the digest
    model.layers[0].kernel.assign(keras.ops.convert_to_numpy(keras.models.load_model(tmp_path / "a.keras")
                                                              .layers[0].kernel))
    model.layers[0].bias.assign(np.zeros(2, np.float32))
    model.save(tmp_path / "b.keras")  # the same weights in another file
    model.layers[0].kernel.assign(np.ones((3, 2), np.float32))
    model.save(tmp_path / "c.keras")
    digests = [saved_weights_digest(tmp_path / f"{name}.keras") for name in "abc"]
    assert digests[0] == digests[1] != digests[2]
    (tmp_path / "d.keras").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable Keras model"):
        saved_weights_digest(tmp_path / "d.keras")

"""preprocess_image: intensity modes, aspect policies, interpolation, storage round trip."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medclassify.errors import InputError
from medclassify.preprocessing import (apply_aspect, from_storage, intensity_percentiles,
                                       preprocess_image, to_storage)

BASE = {"size": [16, 16], "resize": "nearest", "aspect": "stretch", "intensity": "minmax",
        "percentiles": [0.5, 99.5], "window": None, "dtype": "uint8", "compression": "lzf",
        "compression_level": 4, "shards": 1}


def opts(**changes):
    return {**BASE, **changes}


def normalize_intensity(image, options):
    """preprocess_image at the image's own size: its intensity mapping alone (resizing to the same
    size copies)."""
    return preprocess_image(image, {**options, "size": list(np.shape(image)[:2])})


@pytest.mark.parametrize("pixels", [
    np.arange(20 * 30, dtype=np.uint8).reshape(20, 30),
    (np.arange(20 * 30, dtype=np.uint16) * 100).reshape(20, 30, 1),
    np.linspace(-1000, 2000, 20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3),
])
@pytest.mark.parametrize("intensity", ["minmax", "percentile", "zscore", "none"])
@pytest.mark.parametrize("aspect", ["pad", "stretch", "crop"])
@pytest.mark.parametrize("resize", ["nearest", "bilinear", "bicubic", "area", "lanczos"])
def test_output_is_float32_in_unit_range_with_target_shape(pixels, intensity, aspect, resize):
    out = preprocess_image(pixels, opts(size=[12, 10], intensity=intensity, aspect=aspect, resize=resize))
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    assert out.shape == (12, 10, channels)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_minmax_maps_extremes_to_zero_and_one():
    pixels = np.array([[10, 20], [30, 50]], dtype=np.uint8)
    out = preprocess_image(pixels, opts(size=[2, 2]))
    np.testing.assert_allclose(out[:, :, 0], [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_zscore_stores_minmax_values():
    pixels = np.random.default_rng(0).integers(0, 4000, (20, 20)).astype(np.uint16)
    np.testing.assert_array_equal(preprocess_image(pixels, opts(intensity="zscore")),
                                  preprocess_image(pixels, opts(intensity="minmax")))


def test_constant_image_becomes_zeros():
    out = preprocess_image(np.full((9, 9), 77, np.uint8), opts(intensity="minmax"))
    assert not out.any()


@pytest.mark.parametrize("intensity", ["minmax", "percentile", "zscore"])
def test_a_range_too_narrow_for_a_float32_reciprocal_gives_no_nan(intensity):
    # 1 / 1e-39 overflows float32: the scaling made 0 * inf = NaN of the darkest pixel.
    pixels = np.array([[0, 1e-39], [5e-40, 1e-39]], np.float32)
    out = preprocess_image(pixels, opts(intensity=intensity, size=[2, 2]))
    assert np.isfinite(out).all() and out.min() == 0 and out.max() == 1


def test_percentile_clips_outliers():
    pixels = np.full((100, 100), 100, np.uint16)
    pixels[:50] = 200
    pixels[0, 0] = 60000  # one hot pixel must not compress the range of the rest
    out = normalize_intensity(pixels[:, :, None], opts(intensity="percentile", percentiles=[0.5, 99.5]))
    assert out[0, 0, 0] == 1.0
    assert out[10, 10, 0] == 1.0 and out[60, 60, 0] == 0.0


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16]), st.tuples(st.integers(1, 30), st.integers(1, 30))),
       st.floats(0, 50), st.floats(50, 100))
def test_histogram_percentiles_equal_numpy(values, low, high):
    np.testing.assert_allclose(intensity_percentiles(values, [low, high]), np.percentile(values, [low, high]),
                               rtol=1e-9, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), st.integers(1, 400),
                  elements=(st.floats(-2.0 ** 100, 2.0 ** 100, width=32, allow_subnormal=False)
                            | st.sampled_from([0.0, 1.0, -2.5]))),
       st.lists(st.floats(0, 100), min_size=1, max_size=4))
def test_float_percentiles_equal_numpy_bit_for_bit(values, percentiles):
    # Ties, values only at the ends (a windowed CT slice) and spans of 60 orders of magnitude.
    assert intensity_percentiles(values, percentiles) == tuple(float(v) for v in np.percentile(values, percentiles))


def test_float_percentiles_of_a_saturated_window_and_of_noise():
    rng = np.random.default_rng(0)
    windowed = np.clip(rng.normal(0.2, 0.5, 65536), 0, 1).astype(np.float32)  # a third at 0, some at 1
    noise = rng.normal(0, 1, 65536)
    tiny = np.float32([0, 1e-37, 2e-37, 3e-37, 5e-37] * 20)  # a span too narrow to bin in float32
    for values in (windowed, noise, np.float32(7.0) * np.ones(100, np.float32), tiny):
        for q in ([0.5, 99.5], [0, 100], [50, 1 / 3]):
            assert intensity_percentiles(values, q) == tuple(float(v) for v in np.percentile(values, q))


def test_float_percentiles_of_nan_inf_and_of_a_span_beyond_float32_follow_numpy():
    wide = np.float32([-3e38, 3e38, 0, 1, 2])  # max - min overflows float32
    for values in (wide, np.float32([np.inf, 0, 1, 2]), np.array([np.nan, 0.0, 1.0, 2.0])):
        for q in ([0.5, 99.5], [0, 100], [50, 1 / 3]):
            with np.errstate(invalid="ignore"):  # NumPy's own inf - inf
                np.testing.assert_array_equal(intensity_percentiles(values, q), np.percentile(values, q))


def test_window_maps_hounsfield_units():
    hu = np.array([[-2000.0, -160.0], [40.0, 3000.0]], dtype=np.float32)
    out = normalize_intensity(hu[:, :, None], opts(intensity="window", window={"center": 40, "width": 400}))
    np.testing.assert_allclose(out[:, :, 0], [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)


def test_none_divides_integers_by_dtype_maximum_and_clips_floats():
    np.testing.assert_allclose(normalize_intensity(np.array([[[0], [65535], [32768]]], np.uint16), opts(intensity="none")).ravel(),
                               [0.0, 1.0, 32768 / 65535], rtol=1e-6)
    np.testing.assert_allclose(normalize_intensity(np.array([[[-0.5], [0.25], [2.0]]], np.float32), opts(intensity="none")).ravel(),
                               [0.0, 0.25, 1.0])


def test_non_finite_values_count_as_the_minimum():
    pixels = np.array([[np.nan, 1.0], [2.0, np.inf]], dtype=np.float32)
    out = preprocess_image(pixels, opts(size=[2, 2]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, :, 0], [[0.0, 0.0], [1.0, 0.0]])


def test_pad_centres_the_image_and_fills_with_its_minimum():
    image = np.ones((2, 6, 1), np.float32)
    image[0, 0, 0] = 0.25
    padded = apply_aspect(image, 1.0, "pad")
    assert padded.shape == (6, 6, 1)
    np.testing.assert_array_equal(padded[:2, :, 0], 0.25)
    np.testing.assert_array_equal(padded[2:4, :, 0], image[:, :, 0])
    np.testing.assert_array_equal(padded[4:, :, 0], 0.25)


def test_crop_keeps_the_centre_and_stretch_keeps_everything():
    image = np.arange(4 * 8, dtype=np.float32).reshape(4, 8, 1)
    np.testing.assert_array_equal(apply_aspect(image, 1.0, "crop"), image[:, 2:6])
    assert apply_aspect(image, 1.0, "stretch") is image


def test_pad_then_resize_keeps_aspect():
    pixels = np.zeros((10, 40), np.uint8)
    pixels[:, :] = 200
    pixels[0, 0] = 0
    out = preprocess_image(pixels, opts(size=[40, 40], aspect="pad", resize="nearest"))
    # the 10 rows of content sit in rows 15..24; the padding above and below is background (0)
    assert out[:15].max() == 0 and out[25:].max() == 0
    assert out[16:24, 1:].min() == 1.0


def test_nearest_upscale_replicates_pixels():
    pixels = np.array([[0, 255], [255, 0]], np.uint8)
    out = preprocess_image(pixels, opts(size=[4, 4], resize="nearest"))
    np.testing.assert_array_equal(out[:, :, 0], np.kron([[0, 1], [1, 0]], np.ones((2, 2))))


def test_area_downscale_averages_blocks():
    pixels = np.kron([[0, 100], [200, 255]], np.ones((4, 4))).astype(np.uint8)
    out = preprocess_image(pixels, opts(size=[2, 2], resize="area", intensity="none"))
    np.testing.assert_allclose(out[:, :, 0], np.array([[0, 100], [200, 255]]) / 255, atol=1e-6)


def test_pure_function_of_pixels_and_options():
    pixels = np.random.default_rng(3).integers(0, 255, (33, 47, 3)).astype(np.uint8)
    before = pixels.copy()
    options = opts(size=[20, 20], intensity="percentile", aspect="pad", resize="bicubic")
    first = preprocess_image(pixels, options)
    np.testing.assert_array_equal(first, preprocess_image(pixels, options))
    np.testing.assert_array_equal(pixels, before)


def test_invalid_options_list_every_problem():
    with pytest.raises(InputError) as caught:
        preprocess_image(np.zeros((4, 4), np.uint8), opts(intensity="window", window=None, aspect="squash"))
    text = str(caught.value)
    assert "preprocess.window" in text and "preprocess.aspect" in text


def test_every_resize_method_the_options_accept_has_a_pillow_filter():
    from medclassify.preprocess_options import RESIZE_METHODS
    from medclassify.preprocessing import RESAMPLING

    assert tuple(RESAMPLING) == RESIZE_METHODS


def test_rejects_non_image_arrays():
    with pytest.raises(ValueError, match="shape"):
        preprocess_image(np.zeros((2, 3, 4, 5)), opts())


def test_storage_round_trip():
    values = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(from_storage(to_storage(values, "uint8")) - values).max() <= 1 / 510 + 1e-7
    assert np.abs(from_storage(to_storage(values, "float16")) - values).max() <= 1e-3
    assert from_storage(to_storage(values, "uint8")).dtype == np.float32


@pytest.mark.parametrize("shape", [(256, 256), (128, 64), (100, 100)])
def test_area_resize_by_whole_factor_equals_box_filter(shape):
    from PIL import Image

    from medclassify.preprocessing import resize_image
    image = np.random.default_rng(1).random(shape + (2,)).astype(np.float32)
    fast = resize_image(image, (32, 32), "area")
    for channel in range(2):
        box = np.asarray(Image.fromarray(image[:, :, channel]).resize((32, 32), Image.Resampling.BOX))
        np.testing.assert_allclose(fast[:, :, channel], box, atol=1e-6)

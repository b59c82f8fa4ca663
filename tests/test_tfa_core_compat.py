"""pipeline.ops.tfa_core where tfa's own test suite found it differing from tfa (no tfa needed:
each case compares tfa_core with itself): images of unknown rank, tf.functions, error types and
messages, non-float32 flows, the stateful random ops and `name=`."""
import numpy as np
import pytest
import tensorflow as tf

from pipeline.ops import tfa_core as core
from tests.conftest import real_photo

PHOTO = real_photo(12, 16)[0]  # float32 [12, 16, 3] in [0, 1]
UNKNOWN_RANK = tf.TensorSpec(None, tf.float32)


@pytest.mark.parametrize("name, fn", [
    ("transform", lambda x: core.transform(x, [1.0, 0.2, -1.0, 0.1, 1.0, 2.0, 0.0, 0.0],
                                           interpolation="bilinear")),
    ("rotate", lambda x: core.rotate(x, 0.3, interpolation="bilinear", fill_mode="reflect")),
    ("mean_filter2d", lambda x: core.mean_filter2d(x, (3, 5))),
    ("median_filter2d", lambda x: core.median_filter2d(x, 3)),
])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_images_of_unknown_rank_give_what_known_rank_gives(name, fn, rank):
    image = {2: PHOTO[..., 0], 3: PHOTO, 4: PHOTO[None]}[rank]
    unknown = tf.function(fn, input_signature=[UNKNOWN_RANK])
    assert unknown.get_concrete_function().structured_outputs.shape.rank is None
    out = unknown(image).numpy()
    assert out.shape == image.shape
    np.testing.assert_array_equal(out, tf.function(fn)(image).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="2/3/4-D"):
        unknown(tf.zeros([1, 1, 4, 4, 3]))


def test_warps_of_unknown_rank_and_concrete_functions():
    image = PHOTO[None]
    flow = tf.random.stateless_uniform([1, 12, 16, 2], [1, 2], -2.0, 2.0)
    known = core.dense_image_warp(image, flow)
    concrete = core.dense_image_warp.get_concrete_function(UNKNOWN_RANK, UNKNOWN_RANK)
    np.testing.assert_array_equal(concrete(image, flow), known)
    queries = tf.random.stateless_uniform([1, 5, 2], [3, 4], 0.0, 11.0)
    concrete = core.interpolate_bilinear.get_concrete_function(UNKNOWN_RANK, UNKNOWN_RANK)
    np.testing.assert_array_equal(concrete(image, queries),
                                  core.interpolate_bilinear(image, queries))
    concrete = core.median_filter2d.get_concrete_function(UNKNOWN_RANK)
    np.testing.assert_array_equal(concrete(PHOTO), core.median_filter2d(PHOTO))


@pytest.mark.parametrize("dtype", [tf.float16, tf.float64])
def test_flows_of_other_float_types_inside_tf_function(dtype):
    image = PHOTO[None]
    flow = tf.random.stateless_uniform([1, 12, 16, 2], [5, 6], -2.0, 2.0)
    expected = core.dense_image_warp(image, flow).numpy()
    out = tf.function(core.dense_image_warp)(image, tf.cast(flow, dtype)).numpy()
    np.testing.assert_allclose(out, expected, atol=2e-2 if dtype == tf.float16 else 1e-6)


def test_errors_are_tfas():
    with pytest.raises(ValueError, match="filter_shape must be an int or a tuple of 2 ints"):
        core.mean_filter2d(PHOTO, (3, None, 3))
    with pytest.raises(ValueError, match="filter_shape"):
        core.median_filter2d(PHOTO, (3, None))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Grid width must be at least 2"):
        core.dense_image_warp(PHOTO[None, :, :1], tf.zeros([1, 12, 1, 2]))


def test_random_cutout_and_random_hsv_in_yiq_draw_anew_or_per_seed():
    images = tf.tile(PHOTO[None], [2, 1, 1, 1])
    cut = core.random_cutout(images, (4, 6), constant_values=1.0).numpy()
    assert cut.shape == images.shape
    for one in cut:  # exactly one 4x6 box of ones per image, the rest untouched
        boxed = np.all(one == 1.0, axis=2) & ~np.all(PHOTO.numpy() == 1.0, axis=2)
        assert boxed.sum() == 24 and np.ptp(np.argwhere(boxed), axis=0).tolist() == [3, 5]
        np.testing.assert_array_equal(one[~boxed], PHOTO.numpy()[~boxed])
    tf.random.set_seed(1)
    first = core.random_hsv_in_yiq(PHOTO, 0.5, 0.5, 1.5, 0.8, 1.2, seed=3)
    tf.random.set_seed(1)
    again = core.random_hsv_in_yiq(PHOTO, 0.5, 0.5, 1.5, 0.8, 1.2, seed=3)
    np.testing.assert_array_equal(first, again)  # the op-level seed repeats, as in tfa
    assert not np.array_equal(first, PHOTO)
    assert not np.array_equal(first, core.random_hsv_in_yiq(PHOTO, 0.5, 0.5, 1.5, 0.8, 1.2))


def test_name_arguments_name_the_ops():
    graph = tf.function(lambda x: (
        core.gaussian_filter2d(x, name="g"), core.mean_filter2d(x, name="m"),
        core.median_filter2d(x, name="md"),
        core.equalize(x * 255, name="e"), core.sharpness(x * 255, 0.5, name="s"),
        core.adjust_hsv_in_yiq(x, 0.1, name="h"),
        core.random_hsv_in_yiq(x, 0.1, name="rh"),
        core.dense_image_warp(x[None], tf.zeros([1, 12, 16, 2]), name="w"),
        core.interpolate_bilinear(x[None], tf.zeros([1, 1, 2]), name="ib"),
        core.compose_transforms([core.angles_to_projective_transforms(0.1, 12.0, 16.0, name="a"),
                                 core.translations_to_projective_transforms([1.0, 2.0],
                                                                            name="t")],
                                name="ct"),
        core.matrices_to_flat_transforms(tf.eye(3), name="mf"),
        core.flat_transforms_to_matrices(tf.zeros([8]), name="fm"),
    )).get_concrete_function(tf.TensorSpec([12, 16, 3], tf.float32)).graph
    scopes = {op.name.split("/")[0] for op in graph.get_operations()}
    assert {"e", "s", "h", "rh", "a", "t", "ct", "mf", "fm"} <= scopes, scopes

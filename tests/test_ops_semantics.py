"""What the ops compute, checked against an independent reference: numpy for fixed ops, TF's own
stateless ops for tf.image.stateless_random_*, Keras' own stateless mode for Keras layers, and
the documented numpy Generator for python ops."""
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline.ops import registry
from tests import user_ops
from tests.conftest import SAMPLE_IMAGES, decode_file

SEEDS = tf.constant([[5, 6], [-7, 8]], tf.int32)


def photo(name, height=32, width=48):
    image = decode_file(os.path.join(SAMPLE_IMAGES, name))[None].astype(np.float32) / 255.0
    return tf.clip_by_value(tf.image.resize(image, (height, width)), 0.0, 1.0)


@pytest.fixture(scope="module")
def photos():
    """Two real photos (colour, grey), float32 [2, 32, 48, 3] in [0, 1]."""
    return tf.concat([photo("objects/coffee_01.jpg"), photo("objects/clock_motion_01.jpg")], 0)


def run(name, images, seeds=SEEDS, **params):
    op = registry.get(name)
    return op.build(op.resolve(params, "augment.chain[0]"))(images, seeds).numpy()


# --- fixed tf.image ops against numpy ------------------------------------------------------------

def test_flips_rotations_and_transpose_match_numpy(photos):
    x = photos.numpy()
    np.testing.assert_array_equal(run("tf.image.flip_left_right", photos),
                                  np.stack([np.fliplr(i) for i in x]))
    np.testing.assert_array_equal(run("tf.image.flip_up_down", photos),
                                  np.stack([np.flipud(i) for i in x]))
    np.testing.assert_array_equal(run("tf.image.rot90", photos, k=1),
                                  np.stack([np.rot90(i) for i in x]))
    np.testing.assert_array_equal(run("tf.image.transpose", photos), x.transpose(0, 2, 1, 3))


def test_random_flips_mirror_whole_images_or_leave_them(photos):
    """Random flips on uint8 (the chain's head) and float pixels: each image is exactly its
    numpy mirror or untouched, and both happen."""
    seeds = tf.constant([[i, 3 * i + 1] for i in range(8)], tf.int32)
    for dtype_images in (tf.image.convert_image_dtype(photos, tf.uint8), photos):
        x = tf.concat([dtype_images] * 4, 0)
        for name, mirror in (("tf.image.random_flip_left_right", np.fliplr),
                             ("tf.image.random_flip_up_down", np.flipud)):
            out = run(name, x, seeds)
            flipped = [np.array_equal(o, mirror(i)) for o, i in zip(out, x.numpy())]
            kept = [np.array_equal(o, i) for o, i in zip(out, x.numpy())]
            assert all(f or k for f, k in zip(flipped, kept)), name
            assert any(flipped) and any(kept), name


def test_crop_pad_and_crop_or_pad_match_numpy(photos):
    x = photos.numpy()
    np.testing.assert_array_equal(
        run("tf.image.crop_to_bounding_box", photos, offset_height=3, offset_width=5,
            target_height=20, target_width=30), x[:, 3:23, 5:35])
    np.testing.assert_array_equal(
        run("tf.image.pad_to_bounding_box", photos, offset_height=2, offset_width=4,
            target_height=40, target_width=60),
        np.pad(x, [(0, 0), (2, 6), (4, 8), (0, 0)]))
    # Smaller target: a centred crop; larger: centred zero padding.
    np.testing.assert_array_equal(
        run("tf.image.resize_with_crop_or_pad", photos, target_height=20, target_width=40),
        x[:, 6:26, 4:44])
    np.testing.assert_array_equal(
        run("tf.image.resize_with_crop_or_pad", photos, target_height=36, target_width=48),
        np.pad(x, [(0, 0), (2, 2), (0, 0), (0, 0)]))


def test_resize_with_pad_letterboxes(photos):
    out = run("tf.image.resize_with_pad", photos, target_height=48, target_width=48)
    # 32x48 fits 48 wide as 32 high: 8 black rows above and below, the photo between.
    assert out.shape == (2, 48, 48, 3)
    assert (out[:, :8] == 0).all() and (out[:, 40:] == 0).all()
    np.testing.assert_allclose(out[:, 8:40], photos.numpy(), atol=1e-5)


def test_rgb_to_grayscale_keeps_three_equal_channels(photos):
    out = run("tf.image.rgb_to_grayscale", photos)
    grey = tf.image.rgb_to_grayscale(photos).numpy()
    assert out.shape == photos.shape
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel:channel + 1], grey)


# --- tf.image.stateless_random_*: equal to TF's op for each example's seed ---------------------

STATELESS = [
    ("stateless_random_brightness", {"max_delta": 0.3}, lambda i, s: (i, 0.3, s)),
    ("stateless_random_contrast", {"lower": 0.5, "upper": 1.5}, lambda i, s: (i, 0.5, 1.5, s)),
    ("stateless_random_hue", {"max_delta": 0.2}, lambda i, s: (i, 0.2, s)),
    ("stateless_random_saturation", {"lower": 0.3, "upper": 1.7},
     lambda i, s: (i, 0.3, 1.7, s)),
    ("stateless_random_jpeg_quality", {"min_jpeg_quality": 10, "max_jpeg_quality": 90},
     lambda i, s: (i, 10, 90, s)),
    ("stateless_random_flip_left_right", {}, lambda i, s: (i, s)),
    ("stateless_random_flip_up_down", {}, lambda i, s: (i, s)),
    ("stateless_random_crop", {"size": [20, 30]}, lambda i, s: (i, [20, 30, 3], s)),
]


@pytest.mark.parametrize("name,params,args", STATELESS, ids=[s[0] for s in STATELESS])
def test_stateless_ops_equal_tf_per_example(photos, name, params, args):
    seeds = tf.constant([[s, 2 * s + 1] for s in range(1, 7)], tf.int32)
    images = tf.repeat(photos, 3, axis=0)
    out = run(f"tf.image.{name}", images, seeds, **params)
    tf_op = getattr(tf.image, name)
    expected = np.stack([tf_op(*args(images[i], seeds[i])).numpy() for i in range(6)])
    np.testing.assert_array_equal(out, expected)
    assert len({o.tobytes() for o in out}) > 1  # the seeds made a difference


@pytest.mark.parametrize("core,stateless,params", [
    ("random_brightness", "stateless_random_brightness", {"max_delta": 0.3}),
    ("random_contrast", "stateless_random_contrast", {"lower": 0.5, "upper": 1.5}),
    ("random_saturation", "stateless_random_saturation", {"lower": 0.3, "upper": 1.7}),
    ("random_hue", "stateless_random_hue", {"max_delta": 0.2}),
    ("random_jpeg_quality", "stateless_random_jpeg_quality",
     {"min_jpeg_quality": 10, "max_jpeg_quality": 90}),
])
def test_core_random_ops_draw_like_tf_stateless_ops(photos, core, stateless, params):
    np.testing.assert_allclose(run(f"tf.image.{core}", photos, **params),
                               run(f"tf.image.{stateless}", photos, **params), atol=1e-6)


def test_sample_distorted_bounding_box_crops_tf_box_and_resizes_back(photos):
    out = run("tf.image.stateless_sample_distorted_bounding_box", photos, area_range=[0.3, 0.6])
    for i in range(2):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(photos[i]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), SEEDS[i],
            min_object_covered=0.1, aspect_ratio_range=[0.75, 1.33], area_range=[0.3, 0.6],
            use_image_if_no_bounding_boxes=True)
        crop = tf.slice(photos[i], begin, size)
        np.testing.assert_allclose(out[i], tf.image.resize(crop, (32, 48)), atol=1e-6)


# --- Keras layers ------------------------------------------------------------------------------
# "Same seed": an example whose seed is (a, 0) gets the output Keras' own stateless seeding gives
# for the integer seed a, whose stateless seed is [a, 0] (Keras 2: the layer's generator in
# `rng_type="stateless"` mode; Keras 3: `get_random_transformation(..., seed=a)`), on that image
# alone, in [0, 255], with training=True. This holds for layers that draw once per call; later
# draws of a call fold in their index (keras_layers.py).

KERAS_2 = hasattr(tf.keras.layers.RandomFlip(), "_random_generator")
KERAS_SINGLE_DRAW = [
    ("RandomFlip", {"mode": "horizontal"}),
    ("RandomContrast", {"factor": 0.5}),
    ("RandomBrightness", {"factor": 0.3}),
    ("RandomRotation", {"factor": 0.2}),
    ("RandomZoom", {"height_factor": 0.3}),
] + ([("RandomCrop", {"height": 20, "width": 30})] if KERAS_2 else [])


def keras_stateless_reference(name, params, image, seed):
    layer = getattr(tf.keras.layers, name)(**params)
    images = image[None] * 255.0
    if KERAS_2:
        from keras.src import backend
        layer._random_generator = backend.RandomGenerator(seed, rng_type="stateless")
        out = layer(images, training=True)
    else:
        transformation = layer.get_random_transformation(images, training=True, seed=seed)
        out = layer.transform_images(images, transformation, training=True)
    return np.asarray(out)[0] / 255.0


@pytest.mark.parametrize("name,params", KERAS_SINGLE_DRAW, ids=[k[0] for k in KERAS_SINGLE_DRAW])
def test_keras_layer_equals_keras_stateless_seeding_for_the_same_seed(photos, name, params):
    images = tf.repeat(photos, 2, axis=0)
    keys = [3, 4, 1001, 77]  # non-negative: Keras 3 reads a negative integer seed as uint32
    out = run(f"keras.layers.{name}", images, tf.constant([[k, 0] for k in keys]), **params)
    for i, key in enumerate(keys):
        np.testing.assert_allclose(out[i], keras_stateless_reference(name, params, images[i], key),
                                   atol=1e-5)
    assert len({o.tobytes() for o in out}) > 1


def test_keras_layers_see_0_255_and_give_back_0_1(photos):
    # A fixed brightness shift of 0.25 of the value range: +63.75 in [0, 255], +0.25 here,
    # clipped at the top of the range.
    out = run("keras.layers.RandomBrightness", photos, factor=[0.25, 0.25])
    np.testing.assert_allclose(out, np.clip(photos.numpy() + 0.25, 0.0, 1.0), atol=1e-5)
    # Rescaling by 0.5 halves the [0, 255] values, so the [0, 1] ones too.
    np.testing.assert_allclose(run("keras.layers.Rescaling", photos, scale=0.5),
                               photos.numpy() * 0.5, atol=1e-6)


def test_keras_multi_draw_layer_draws_independently():
    # RandomTranslation draws the vertical shift, then the horizontal one. With equal factors on
    # a square image, one seed for both draws (Keras' stateless mode) would shift every image
    # equally along both axes; here the second draw has its own seed.
    ones = tf.ones([8, 64, 64, 3])
    out = run("keras.layers.RandomTranslation", ones,
              tf.constant([[s, 0] for s in range(8)], tf.int32), height_factor=0.2,
              width_factor=0.2, fill_mode="constant", interpolation="nearest")[..., 0]
    empty_rows = (out.max(axis=2) == 0).sum(axis=1)
    empty_columns = (out.max(axis=1) == 0).sum(axis=1)
    assert (empty_rows + empty_columns > 0).all()  # every image moved
    assert (empty_rows != empty_columns).any()


# --- python ops ----------------------------------------------------------------------------------

def test_python_op_calls_the_function_with_the_documented_rng(photos):
    out = run("python", photos, function="tests.user_ops:salt_and_pepper")
    as_uint8 = tf.image.convert_image_dtype(photos, tf.uint8, saturate=True).numpy()
    for i, (a, b) in enumerate(SEEDS.numpy()):
        rng = np.random.Generator(np.random.Philox(key=(int(a) & 0xFFFFFFFF) << 32
                                                   | (int(b) & 0xFFFFFFFF)))
        expected = user_ops.salt_and_pepper(as_uint8[i], rng) / 255.0
        np.testing.assert_allclose(out[i], expected, atol=1e-7)


def test_python_op_accepts_float_output_and_declared_sizes(photos):
    gamma = run("python", photos, function="tests.user_ops:random_gamma")
    assert gamma.shape == photos.shape and 0.0 <= gamma.min() and gamma.max() <= 1.0
    thumbs = run("python.sized", photos, function="tests.user_ops:random_square_thumbnail",
                 height=32, width=32)
    assert thumbs.shape == (2, 32, 32, 3)


def test_python_op_wrong_shape_names_the_function(photos):
    op = registry.get("python")
    fn = tf.function(op.build(op.resolve({"function": "tests.user_ops:drops_a_row"}, "")))
    with pytest.raises(tf.errors.InvalidArgumentError, match="tests.user_ops:drops_a_row "
                       r"returned shape \(31, 48, 3\), expected \(32, 48, 3\)"):
        fn(photos, SEEDS)

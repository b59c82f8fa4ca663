"""The `idg` op against Keras's own ImageDataGenerator, on real photos."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

try:  # Keras 2
    from keras.src.preprocessing.image import ImageDataGenerator as KerasIDG
except ImportError:  # Keras 3 keeps it, unexported, as legacy
    from keras.src.legacy.preprocessing.image import ImageDataGenerator as KerasIDG

from pipeline import chain
from pipeline.errors import ConfigError
from pipeline.ops import geometry, registry
from pipeline.ops.idg import ImageDataGenerator
from tests.conftest import SAMPLE_IMAGES, decode_file


def photos(count, height, width):
    """`count` real sample photos resized to height x width, float32 in [0, 1], in whole 0-255
    levels as decoded images are."""
    paths = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*.jpg")))[-count:]
    images = [tf.image.resize(decode_file(p), (height, width)) for p in paths]
    return tf.round(tf.clip_by_value(tf.stack(images), 0.0, 255.0)) / 255.0


IMAGES = photos(2, 48, 64)
SEEDS = tf.constant([[11, 12], [-3, 40]], tf.int32)


def build(params):
    """The op as a config builds it: fn(images, seeds) -> numpy, traced."""
    op = registry.get("idg")
    fn = tf.function(op.build(op.resolve(params, "test")))
    return lambda images, seeds: fn(images, seeds).numpy()


def keras_reference(params, images, seeds):
    """Keras's apply_transform on each image with the parameters our op drew for it."""
    resolved = registry.get("idg").resolve(params, "test")
    settings = {k: v for k, v in resolved.items() if k not in ("rescale", "legacy_axes")}
    drawn = ImageDataGenerator(**settings).get_random_transform(
        seeds, float(images.shape[1]), float(images.shape[2]))
    keras = KerasIDG(**settings)
    out = []
    for i in range(len(images)):
        row = {k: None if v is None else v.numpy()[i].item() for k, v in drawn.items()}
        out.append(keras.apply_transform(images[i].numpy() * 255.0, row))
    return np.stack(out), drawn


def test_op_contract():
    op = registry.get("idg")
    fn = build(op.test_params)
    out = fn(IMAGES, SEEDS)
    assert out.shape == tuple(IMAGES.shape) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(fn(IMAGES, SEEDS), out)
    other = fn(IMAGES, SEEDS + 1)
    for i in range(len(out)):
        assert not np.array_equal(other[i], out[i])


@pytest.mark.parametrize("params", [
    {"rotation_range": 30, "width_shift_range": 0.2, "height_shift_range": 0.1,
     "shear_range": 15, "zoom_range": 0.3, "horizontal_flip": True, "vertical_flip": True},
    {"rotation_range": 40, "width_shift_range": 10, "height_shift_range": [0.05, 0.2],
     "zoom_range": [0.7, 1.0], "fill_mode": "reflect", "interpolation_order": 0},
])
def test_geometry_matches_keras_apply_transform(params):
    ours = build(params)(IMAGES, SEEDS) * 255.0
    reference, _ = keras_reference(params, IMAGES, SEEDS)
    # One float32 resample vs scipy's float64 one: measured max 0.0005 on 0-255.
    np.testing.assert_allclose(ours, reference, rtol=0, atol=0.01)


def test_channel_shift_and_brightness_match_keras_apply_transform():
    params = {"rotation_range": 20, "channel_shift_range": 40.0, "brightness_range": [0.5, 1.5]}
    ours = build(params)(IMAGES, SEEDS) * 255.0
    reference, drawn = keras_reference(params, IMAGES, SEEDS)
    assert np.abs(drawn["channel_shift_intensity"].numpy()).max() > 1.0
    # PIL truncates to 8-bit twice; a value a hair below a whole level after the resample can
    # truncate one level apart (x the brightness factor, up to 1.5): rare, and at most 2.
    diff = np.abs(ours - reference)
    assert diff.max() <= 2.0 + 1e-3
    assert (diff > 0.01).mean() < 0.005


def test_horizontal_flip_is_an_exact_mirror_on_half_the_copies():
    seeds = tf.stack([tf.range(8), tf.range(8) * 7], axis=1)
    images = tf.repeat(IMAGES[:1], 8, axis=0)
    out = build({"horizontal_flip": True})(images, seeds)
    flipped = ImageDataGenerator(horizontal_flip=True).get_random_transform(
        seeds, 48.0, 64.0)["flip_horizontal"].numpy()
    assert 0 < flipped.sum() < 8
    original = images[0].numpy()
    for image, flip in zip(out, flipped):
        np.testing.assert_array_equal(image, np.fliplr(original) if flip else original)


def test_idg_shift_laws():
    """IDG's distributions: float ranges uniform, fractions of the side below 1, an int n picks
    0..n-1 with a random sign, a list picks one of its values with a random sign."""
    seeds = tf.stack([tf.range(400), tf.range(400) * 3 + 1], axis=1)
    generator = ImageDataGenerator(rotation_range=30, width_shift_range=10,
                                   height_shift_range=[0.1, 0.25], zoom_range=0.2)
    drawn = {k: v.numpy() for k, v in tf.function(generator.get_random_transform)(
        seeds, 48.0, 64.0).items() if v is not None}
    assert np.abs(drawn["theta"]).max() <= 30 and drawn["theta"].std() > 15
    ty = drawn["ty"]  # width_shift_range -> ty, in pixels
    assert set(np.unique(ty)) <= set(range(-9, 10)) and ty.min() < -5 and ty.max() > 5
    fractions = np.abs(drawn["tx"].astype(np.float64)) / 48  # fractions of the rows
    assert set(np.round(fractions, 5)) == {0.1, 0.25}
    assert (drawn["tx"] < 0).any() and (drawn["tx"] > 0).any()
    assert drawn["zx"].min() >= 0.8 and drawn["zx"].max() <= 1.2
    assert not np.array_equal(drawn["zx"], drawn["zy"])  # drawn independently


def test_keras_axes_by_default_and_keras_preprocessing_axes_on_request():
    """Keras 2.9+ moves images sideways for height_shift_range (its axis swap);
    legacy_axes gives the older keras-preprocessing meaning: up and down."""
    params = {"height_shift_range": 6, "interpolation_order": 0}
    x = IMAGES.numpy()
    tx = ImageDataGenerator(height_shift_range=6).get_random_transform(
        SEEDS, 48.0, 64.0)["tx"].numpy().astype(int)
    assert (tx != 0).all()
    sideways = build(params)(IMAGES, SEEDS)
    vertical = build(dict(params, legacy_axes=True))(IMAGES, SEEDS)
    rows, cols = np.arange(48), np.arange(64)
    for i, shift in enumerate(tx):  # output pixel samples the input `shift` further along
        np.testing.assert_array_equal(sideways[i], x[i][:, np.clip(cols + shift, 0, 63)])
        np.testing.assert_array_equal(vertical[i], x[i][np.clip(rows + shift, 0, 47)])


def test_units_cval_and_channel_shift_are_0_255():
    filled = build({"width_shift_range": [0.25], "fill_mode": "constant", "cval": 255.0,
                    "interpolation_order": 0})(IMAGES, SEEDS)
    white = (filled == 1.0).all(axis=-1).mean(axis=(1, 2))
    assert (white >= 0.3).all()  # 0.25 x 64 = 16 of the 48 rows uncovered, filled with 255
    fn = registry.get("idg").build(registry.get("idg").resolve(
        {"channel_shift_range": 51.0}, "test"))
    assert not isinstance(fn, geometry.Projective)  # no geometry: no resample at all
    out = tf.function(fn)(IMAGES, SEEDS).numpy()
    intensity = ImageDataGenerator(channel_shift_range=51.0).get_random_transform(
        SEEDS, 48.0, 64.0)["channel_shift_intensity"].numpy()
    for i in range(2):
        x = IMAGES[i].numpy()
        np.testing.assert_allclose(out[i], np.clip(x + intensity[i] / 255, x.min(), x.max()),
                                   atol=1e-6)


def test_rescale_and_bad_arguments():
    steps = chain.normalize([{"op": "idg", "rotation_range": 10, "rescale": 1 / 255}])
    assert steps[0]["params"]["rescale"] == 1 / 255
    bad = [({"rescale": 0.5}, "rescale"),
           ({"width_shift_range": "wide"}, "width_shift_range"),
           ({"zoom_range": [0.5]}, "zoom_range"),
           ({"brightness_range": 1.2}, "brightness_range"),
           ({"fill_mode": "mirror"}, "one of"),
           ({"rotation_angle": 10}, "unknown parameter")]
    for params, message in bad:
        with pytest.raises(ConfigError, match=message) as error:
            chain.normalize([dict({"op": "idg"}, **params)])
        assert error.value.path.startswith("augment.chain[0]")

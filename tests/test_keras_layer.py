"""Training-time augmentation: the chain as a Keras layer inside a model, trained one step."""
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import ConfigError
from pipeline.keras_layer import augmentation_layer
from tests.conftest import SAMPLE_CONFIGS, SAMPLE_IMAGES, decode_file

# tf.image, a Keras layer op and a python op in one chain, inside a model.
CHAIN = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "keras.layers.RandomRotation", "factor": 0.05, "fill_mode": "reflect"},
    {"op": "tf.image.stateless_random_brightness", "max_delta": 0.2, "probability": 0.5},
    {"op": "python", "function": "tests.user_ops:salt_and_pepper"},
]


@pytest.fixture(scope="module")
def batch():
    """8 sample photos resized to 32x32, float32 in [0, 255], and their class labels."""
    paths = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*")))[::4][:8]
    classes = sorted(os.listdir(SAMPLE_IMAGES))
    images = np.stack([tf.image.resize(decode_file(p), (32, 32)).numpy() for p in paths])
    labels = np.array([classes.index(os.path.basename(os.path.dirname(p))) for p in paths])
    return np.clip(images, 0, 255).astype(np.float32), labels


def test_trains_a_model_one_step_and_changes_images_only_in_training(batch):
    images, labels = batch
    layer = augmentation_layer(CHAIN, seed=1, allow_python_ops=True)
    model = tf.keras.Sequential([
        tf.keras.Input((32, 32, 3)), layer, tf.keras.layers.Rescaling(1 / 255),
        tf.keras.layers.Conv2D(4, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(3)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    state = layer._rng.state.numpy()
    history = model.fit(images, labels, batch_size=8, epochs=1, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(state, layer._rng.state.numpy())  # fit drew augmentation seeds

    trained = layer(images, training=True).numpy()
    assert trained.shape == images.shape and trained.dtype == np.float32
    assert 0.0 <= trained.min() and trained.max() <= 255.0
    assert all(not np.allclose(a, b, atol=1.0) for a, b in zip(trained, images))
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images)
    np.testing.assert_array_equal(model.layers[0](images).numpy(), images)  # default: inference


def test_seed_repeats_the_sequence_and_each_call_draws_anew(batch):
    images, _ = batch
    first = augmentation_layer(CHAIN[:3], seed=5)
    second = augmentation_layer(CHAIN[:3], seed=5)
    a, b = first(images, training=True).numpy(), second(images, training=True).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, first(images, training=True).numpy())


def test_builds_from_a_sample_config_and_refuses_size_changes(batch):
    images, _ = batch
    layer = augmentation_layer(os.path.join(SAMPLE_CONFIGS, "light_classification.yaml"), seed=0)
    assert layer(images, training=True).shape == images.shape
    with pytest.raises(ConfigError, match=r"augment.chain\[0\]: changes the image size"):
        augmentation_layer([{"op": "tf.image.random_crop", "height": 16, "width": 16}])
    with pytest.raises(ConfigError, match="--allow-python-ops"):
        augmentation_layer(CHAIN)


# Keras 2 writes .keras, .h5 and a SavedModel folder; Keras 3 .keras (and .h5 only as legacy).
SAVE_FORMATS = (["model.keras"] if keras.__version__.startswith("3.")
                else ["model.keras", "model.h5", "saved_model"])


@pytest.mark.parametrize("filename", SAVE_FORMATS)
def test_a_model_holding_the_layer_saves_and_loads_back_augmenting_the_same(
        batch, tmp_path, filename):
    images, _ = batch
    steps = CHAIN[:3] + [{"one_of": [{"op": "tf.image.random_hue", "max_delta": 0.05},
                                     {"op": "python", "function": "tests.user_ops:random_gamma"}],
                          "weights": [1, 2]}]
    model = tf.keras.Sequential([tf.keras.Input((32, 32, 3)),
                                 augmentation_layer(steps, seed=9, allow_python_ops=True),
                                 tf.keras.layers.Dense(2)])
    path = str(tmp_path / filename)
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects: the layer is registered

    original, restored = model.layers[0], loaded.layers[0]
    assert type(restored) is type(original)
    assert restored.get_config() == original.get_config()
    assert restored.get_config()["steps"][1] == {
        "op": "keras.layers.RandomRotation", "factor": 0.05, "fill_mode": "reflect",
        "interpolation": "bilinear", "fill_value": 0.0, "probability": 1.0}
    for _ in range(2):  # the same seed draws the same sequence: the same pixels, call after call
        np.testing.assert_array_equal(restored(images, training=True).numpy(),
                                      original(images, training=True).numpy())
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


def test_boxes_and_masks_follow_the_chain_in_the_layer():
    from pipeline.keras_layer import augmentation_layer
    images = np.full((6, 48, 64, 3), 20.0, np.float32)
    images[:, 10:30, 16:40] = 230.0
    masks = np.zeros((6, 48, 64, 1), np.int32)
    masks[:, 10:30, 16:40] = 5
    boxes = {"boxes": np.tile([[[10 / 48, 16 / 64, 30 / 48, 40 / 64], [0, 0, 0.02, 0.02]]],
                              [6, 1, 1]).astype(np.float32),
             "labels": np.tile([[1, 2]], [6, 1])}
    layer = augmentation_layer([
        {"op": "tf.image.random_flip_left_right"},
        {"op": "tfa.image.rotate", "max_degrees": 30, "interpolation": "nearest"},
        {"op": "tfa.image.translate", "dx": [-10, 10], "dy": [-6, 6]},
        {"op": "tf.image.random_brightness", "max_delta": 0.05}], seed=3)
    out = layer({"images": images, "bounding_boxes": boxes, "segmentation_masks": masks},
                training=True)
    for image, box, label, mask in zip(out["images"].numpy(), out["bounding_boxes"]["boxes"],
                                       out["bounding_boxes"]["labels"].numpy(),
                                       out["segmentation_masks"].numpy()):
        ys, xs = np.nonzero(image[..., 0] > 125)
        truth = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        assert label[0] == 1
        np.testing.assert_allclose(box[0].numpy() * [48, 64, 48, 64], truth, atol=1.01)
        assert set(np.unique(mask)) <= {0, 5}
        assert ((mask[..., 0] == 5) == (image[..., 0] > 125)).mean() > 0.99
    assert (out["bounding_boxes"]["labels"].numpy()[:, 1] == -1).any()  # pushed out: -1
    same = layer({"images": images, "bounding_boxes": boxes}, training=False)
    np.testing.assert_array_equal(same["bounding_boxes"]["boxes"], boxes["boxes"])

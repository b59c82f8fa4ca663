"""Example user functions for `python` ops: function(image uint8 [H, W, C], rng) -> image.

Used by the tests and by sample_configs/python_ops.yaml (`function: tests.user_ops:...`).
"""
import numpy as np
import tensorflow as tf


def salt_and_pepper(image, rng, amount=0.02):
    """Impulse noise: a random `amount` of the pixels turned black or white."""
    out = image.copy()
    hit = rng.random(image.shape[:2]) < amount
    white = rng.random(image.shape[:2]) < 0.5
    out[hit & white] = 255
    out[hit & ~white] = 0
    return out


def random_gamma(image, rng, low=0.7, high=1.4):
    """A gamma curve with gamma drawn from [low, high); returns floats in [0, 1]."""
    return (image / 255.0) ** rng.uniform(low, high)


def random_square_thumbnail(image, rng, side=32):
    """A random square crop, shrunk to side x side by nearest-neighbour sampling."""
    height, width = image.shape[:2]
    crop = min(height, width)
    top = rng.integers(0, height - crop + 1)
    left = rng.integers(0, width - crop + 1)
    index = np.arange(side) * crop // side
    return image[top + index[:, None], left + index[None, :]]


def drops_a_row(image, rng):
    """A broken function for the tests: its output is one row short."""
    return image[:-1]


NOT_A_FUNCTION = 42



def blur_with_tensorflow(image, rng):
    """A 3x3 box blur by a TensorFlow function called from Python (a python op may call
    TensorFlow again: the runner must not run several of these at once)."""
    return _box_blur(tf.constant(image[None], tf.float32))[0].numpy().round().astype(np.uint8)


@tf.function
def _box_blur(images):
    return tf.nn.avg_pool2d(images, 3, 1, "SAME")

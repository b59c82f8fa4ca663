"""User functions for the tests' `python` ops: the examples (examples/augment_ops.py, which
sample_configs/python_ops.yaml uses) under their old names, and broken ones the tests need.
"""
import numpy as np
import tensorflow as tf

from examples.augment_ops import (  # noqa: F401 - named here by the tests
    random_gamma, random_square_thumbnail, salt_and_pepper)


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

"""Python ops to copy: function(image uint8 [H, W, C], rng) -> image, numpy only.

Use one in a config with --allow-python-ops (sample_configs/python_ops.yaml does):

    - op: python
      function: examples.augment_ops:salt_and_pepper

`rng` is a numpy Generator seeded from the image's seed, so every draw is reproducible. Return
the same shape (uint8, or floats in [0, 1]); a function that changes the size is a
`python.sized` op, with the output's height and width in the config. The module must be
importable wherever the pipeline runs: installed, or its folder on PYTHONPATH.
"""
import numpy as np


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

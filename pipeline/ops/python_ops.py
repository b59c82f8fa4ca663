"""python: a user's numpy function as an op. Runs only with --allow-python-ops.

    - op: python
      function: my_package.augment:salt_and_pepper

The function is called once per image as ``function(image, rng) -> image``: `image` is uint8
numpy [H, W, C]; `rng` is a numpy Generator seeded from the example's seed
(``np.random.Generator(np.random.Philox(key=...))``), so its draws are a pure function of
(seed, key, copy, op) like every other op's. It returns an array of the same shape, either
uint8 (any integer type with values in 0..255) or floats in [0, 1]. `python.sized` is the same
for a function whose output has another size, declared as `height` and `width`.

The module is imported when the config is validated, which happens only when the run allows
python ops (chain.normalize refuses them before), and again on each worker. It must be
importable there: installed, or its folder on PYTHONPATH.
"""
import importlib

import numpy as np
import tensorflow as tf

from pipeline.errors import did_you_mean
from pipeline.ops.registry import Param, register

F = "python"
# tests/user_ops.py; the registry-driven tests run every op with its test_params.
_TEST_FUNCTION = "tests.user_ops:salt_and_pepper"


def load_function(spec):
    """'package.module:function' -> the function. ValueError with a readable reason if not."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module '{module_name}' ({e}); it must be importable: "
                         "installed, or its folder on PYTHONPATH") from None
    except Exception as e:  # the user's module raised while importing
        raise ValueError(f"importing '{module_name}' failed: {type(e).__name__}: {e}") from None
    function = module
    for part in attr.split("."):
        if not hasattr(function, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attr}'"
                             + did_you_mean(part, [n for n in dir(function)
                                                   if not n.startswith("_")]))
        function = getattr(function, part)
    if not callable(function):
        raise ValueError(f"'{spec}' is not a function")
    return function


def _check_function(params):
    try:
        load_function(params["function"])
    except ValueError as e:
        return f"function {params['function']!r}: {e}"
    return None


def example_rng(seed):
    """The numpy Generator of one example: Philox keyed by its two int32 seed words."""
    key = (int(seed[0]) & 0xFFFFFFFF) << 32 | (int(seed[1]) & 0xFFFFFFFF)
    return np.random.Generator(np.random.Philox(key=key))


def _as_unit_float(result, spec, expected_shape):
    """The function's output as float32 in [0, 1], or ValueError saying what is wrong."""
    result = np.asarray(result)
    if result.shape != expected_shape:
        raise ValueError(f"python op {spec} returned shape {result.shape}, expected "
                         f"{expected_shape}")
    if np.issubdtype(result.dtype, np.integer) and not np.issubdtype(result.dtype, np.bool_):
        if result.size and (result.min() < 0 or result.max() > 255):
            raise ValueError(f"python op {spec} returned integers outside 0..255 "
                             f"(min {result.min()}, max {result.max()})")
        return result.astype(np.float32) / 255.0
    if np.issubdtype(result.dtype, np.floating):
        if result.size and not (np.isfinite(result).all() and result.min() >= 0.0
                                and result.max() <= 1.0):
            raise ValueError(f"python op {spec} returned floats outside [0, 1] (min "
                             f"{result.min()}, max {result.max()}): return uint8, or floats "
                             "in [0, 1]")
        return result.astype(np.float32)
    raise ValueError(f"python op {spec} returned dtype {result.dtype}: return uint8, or floats "
                     "in [0, 1]")


def _python_op(spec, size=None):
    """The op fn: one tf.numpy_function call per batch, the function called per image."""
    function = load_function(spec)

    def run(images, seeds):
        height, width = size or images.shape[1:3]
        expected = (height, width, images.shape[3])
        out = np.zeros((len(images),) + expected, np.float32)
        for i, (image, seed) in enumerate(zip(images, seeds)):
            out[i] = _as_unit_float(function(image.copy(), example_rng(seed)), spec, expected)
        return out

    def fn(images, seeds):
        as_uint8 = tf.image.convert_image_dtype(tf.clip_by_value(images, 0.0, 1.0), tf.uint8,
                                                saturate=True)
        out = tf.numpy_function(run, [as_uint8, seeds], tf.float32, name="python_op")
        if size:
            return tf.ensure_shape(out, [None, size[0], size[1], images.shape[3]])
        out.set_shape(images.shape)
        return out
    return fn


@register("python", F, random=True, check=_check_function,
          test_params={"function": _TEST_FUNCTION},
          params=[Param("function", "str", help="'package.module:function', called as "
                        "function(image uint8 [H, W, C], rng np.random.Generator) -> image")])
def python(function):
    """Your numpy function on each image, with a numpy rng seeded per example; same size out."""
    return _python_op(function)


@register("python.sized", F, random=True, keeps_shape=False, check=_check_function,
          test_params={"function": "tests.user_ops:random_square_thumbnail", "height": 32,
                       "width": 32},
          params=[Param("function", "str", help="'package.module:function' (as for python)"),
                  Param("height", "int", low=1, help="height of every image it returns"),
                  Param("width", "int", low=1, help="width of every image it returns")])
def python_sized(function, height, width):
    """Like python, for a function whose output has another size, declared as height, width."""
    return _python_op(function, (height, width))

"""tfa.image ops (TensorFlow Addons). Names follow tfa.image; where tfa takes one fixed value
(an angle, a sigma, a factor) the op takes a number or a [low, high] range and draws it per
example, so `rotate: {max_degrees: 20}` turns each copy by its own angle.

Images are float32 [B, H, W, C] in [0, 1] (see registry.py for the op contract). tfa's colour
functions (blend, sharpness, equalize) work on 0-255 values; those ops scale to 0-255 and back.

This is the only module that imports tensorflow_addons. tfa is end-of-life and does not import
on TF >= 2.16 / Keras 3; there the ops run on `pipeline.ops.tfa_core`, pure-TF functions with
tfa's signatures and math. `BACKEND` says which one is in use; AUGBATCH_TFA_BACKEND=core forces
the fallback, AUGBATCH_TFA_BACKEND=tfa requires tfa.

Geometric ops (rotate, transform, translate, translate_xy, shear_x, shear_y) build one matrix per
example and resample the whole batch in one ImageProjectiveTransformV3 call, the kernel
tfa.image.transform calls; consecutive ones fuse into one resample (see geometry.py).
"""
import contextlib
import functools
import logging
import math
import numbers
import os
import warnings

import tensorflow as tf

from pipeline.errors import UserError
from pipeline.ops import draw, geometry, native, tfa_core
from pipeline.ops.registry import TRANSFORMED, UNCHANGED, Param, register

F = "tfa.image"
log = logging.getLogger("augbatch")

TFA, CORE = "tensorflow-addons", "core-tf"
ENV = "AUGBATCH_TFA_BACKEND"
_CHOICES = {"": None, "auto": None, "tfa": TFA, TFA: TFA, "core": CORE, CORE: CORE}


def _import_tfa_image():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tfa's end-of-life notice, printed on every import
        import tensorflow_addons as tfa_impl
    return tfa_impl.image


def load_backend(choice=None):
    """(module with tfa.image's functions, its name), honouring AUGBATCH_TFA_BACKEND."""
    value = os.environ.get(ENV, "") if choice is None else choice
    if value.lower() not in _CHOICES:
        raise UserError(f"{ENV}={value!r} is not a backend",
                        hint="use 'core' (pure TensorFlow) or 'tfa' (tensorflow-addons)")
    wanted = _CHOICES[value.lower()]
    if wanted != CORE:
        try:
            return _import_tfa_image(), TFA
        # Any failure to import means tfa cannot run on this stack (on TF >= 2.16 it is a
        # ModuleNotFoundError from inside tfa, but older/newer mixes fail in other ways).
        except Exception as error:  # noqa: BLE001
            if wanted == TFA:
                raise UserError(f"{ENV}=tfa but tensorflow_addons does not import: {error}")
            # Expected on the modern stack (README): not said on every command.
            log.debug("tensorflow_addons does not import (%s); tfa.image ops run on core TF",
                      error)
    return tfa_core, CORE


impl, BACKEND = load_backend()


@contextlib.contextmanager
def backend(name):
    """Build ops on another backend inside the block ('tensorflow-addons' or 'core-tf').

    Ops capture the backend when built, so both can run side by side (the tests compare them).
    """
    global impl, BACKEND
    saved = impl, BACKEND
    impl, BACKEND = load_backend(name)
    try:
        yield impl
    finally:
        impl, BACKEND = saved


def _plain_graph(builder):
    """The op functions are plain graph code: mark them so AutoGraph does not rewrite them, and
    the tfa code they call, when a chain is traced (seconds per op, on every worker)."""
    @functools.wraps(builder)
    def build(**params):
        fn = builder(**params)
        if isinstance(fn, geometry.Projective):
            return fn  # geometry marks its own
        return tf.autograph.experimental.do_not_convert(fn)
    return build


# --- parameters and checks -------------------------------------------------------------------

def _sampling(interpolation="nearest"):
    return [Param("interpolation", "str", interpolation, choices=geometry.INTERPOLATIONS),
            Param("fill_mode", "str", "constant", choices=geometry.FILL_MODES,
                  help="how points outside the image are filled"),
            Param("fill_value", "float", 0.0, low=0.0, high=1.0,
                  help="the fill for fill_mode constant, in [0, 1]")]


def _int_pair(value):
    """An int or a pair of ints -> (h, w), or None if it is neither."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value), int(value))
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        return (int(value[0]), int(value[1]))
    return None


def _check_size(name, even=False):
    def check(params):
        pair = _int_pair(params[name])
        if pair is None or min(pair) < 1:
            return f"{name} must be a positive integer or a [height, width] pair of them"
        if even and any(v % 2 for v in pair):
            return f"{name} must be even (tfa centres the box on a pixel), got {params[name]}"
        return None
    return check


def _check_positive(name):
    return lambda p: None if p[name][0] > 0 else f"{name} must be above 0"


def _checks(*checks):
    def check(params):
        for one in checks:
            problem = one(params)
            if problem:
                return problem
        return None
    return check


def _uniforms(seeds, *ranges):
    """[B] values per [low, high] range (exactly `low` when low == high), all from one draw of
    len(ranges) uniforms per example (one map_fn however many parameters)."""
    u = draw.uniform(seeds, 0.0, 1.0, shape=(len(ranges),))
    return [low + (high - low) * u[:, i] for i, (low, high) in enumerate(ranges)]


def _fixed(value_range):
    return value_range[0] == value_range[1]


def _to_255(fn):
    """Run a tfa colour function written for 0-255 values on [0, 1] images."""
    return lambda images, *args: tf.clip_by_value(fn(images * 255.0, *args) / 255.0, 0.0, 1.0)


def _columns(*values):
    """[B] values -> [B, N]. Not tf.stack: grappler rewrites stack-then-slice (tfa's
    `translations[:, 0, None]`, tfa_core's `offset[:, 1, None, None]`) into a wrong shape."""
    return tf.concat([value[:, None] for value in values], axis=1)


def _per_example(fn, images, *values):
    """fn(image [H, W, C], value, ...) for each example, with its own values."""
    return draw.each(lambda args: fn(*args), (images,) + values,
                     fn_output_signature=tf.TensorSpec([None, None, images.shape[-1]],
                                                       images.dtype))


# --- geometry ---------------------------------------------------------------------------------

def _angle_check(params):
    given = [k for k in ("degrees", "max_degrees", "radians") if params[k] is not None]
    if len(given) != 1:
        return ("give the angle as exactly one of degrees: [low, high], max_degrees: M "
                f"(meaning [-M, M]) or radians: [low, high]; got {given or 'none'}")
    return None


@register("tfa.image.rotate", F, targets=TRANSFORMED, random=True, check=_angle_check,
          test_params={"max_degrees": 20, "interpolation": "bilinear"},
          params=[Param("degrees", "range", None, help="angle range in degrees"),
                  Param("max_degrees", "float", None, low=0.0, help="shorthand for degrees: "
                        "[-max_degrees, max_degrees]"),
                  Param("radians", "range", None, help="angle range in radians"),
                  *_sampling()])
@_plain_graph
def rotate(degrees, max_degrees, radians, interpolation, fill_mode, fill_value):
    """Rotate counter-clockwise about the centre by an angle drawn per example."""
    if max_degrees is not None:
        degrees = [-max_degrees, max_degrees]
    low, high = radians or [math.radians(d) for d in degrees]
    lib = impl

    def matrices(seeds, height, width):
        angles = draw.uniform(seeds, low, high)
        if native.usable():  # tfa's formula, each copy's sine and cosine as in a batch of one
            return tfa_core.rotation_transforms(*native.sin_cos(angles), height, width)
        return lib.angles_to_projective_transforms(angles, height, width)
    return geometry.Projective(matrices, interpolation, fill_mode, fill_value,
                               exact_in_batches=True)


def _check_transform(params):
    values = params["transforms"]
    if len(values) != 8 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                   for v in values):
        return "transforms must be 8 numbers [a0, a1, a2, b0, b1, b2, c0, c1]"
    return None


@register("tfa.image.transform", F, targets=TRANSFORMED, check=_check_transform,
          test_params={"transforms": [1.0, 0.1, -3.0, 0.05, 1.0, 2.0, 0.0, 0.0]},
          params=[Param("transforms", "list", help="[a0, a1, a2, b0, b1, b2, c0, c1]: output "
                        "pixel (x, y) samples the input at ((a0 x + a1 y + a2) / k, "
                        "(b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1"),
                  *_sampling()])
@_plain_graph
def transform(transforms, interpolation, fill_mode, fill_value):
    """Apply one fixed projective transform to every image."""
    flat = tf.constant([transforms], tf.float32)

    def matrices(seeds, height, width):
        return tf.tile(flat, [tf.shape(seeds)[0], 1])
    return geometry.Projective(matrices, interpolation, fill_mode, fill_value,
                               exact_in_batches=True)


def _shifts(seeds, dx, dy, x_scale=1.0, y_scale=1.0):
    """[B, 2] (dx, dy) drawn per example."""
    x, y = _uniforms(seeds, dx, dy)
    return _columns(x * x_scale, y * y_scale)


@register("tfa.image.translate", F, targets=TRANSFORMED, random=True,
          test_params={"dx": [-0.1, 0.1], "dy": [-0.1, 0.1], "units": "fraction"},
          params=[Param("dx", "range", [0.0, 0.0], help="horizontal shift range (right is "
                        "positive)"),
                  Param("dy", "range", [0.0, 0.0], help="vertical shift range (down is positive)"),
                  Param("units", "str", "pixels", choices=("pixels", "fraction"),
                        help="fraction: dx and dy are fractions of the width and height"),
                  *_sampling()])
@_plain_graph
def translate(dx, dy, units, interpolation, fill_mode, fill_value):
    """Shift by (dx, dy) drawn per example."""
    lib = impl

    def matrices(seeds, height, width):
        scale = (width, height) if units == "fraction" else (1.0, 1.0)
        return lib.translations_to_projective_transforms(_shifts(seeds, dx, dy, *scale))
    return geometry.Projective(matrices, interpolation, fill_mode, fill_value,
                               exact_in_batches=True)


_REPLACE = Param("replace", "float", 0.0, low=0.0, high=1.0,
                 help="value of the uncovered pixels, in [0, 1]")


@register("tfa.image.translate_xy", F, targets=TRANSFORMED, random=True, test_params={"dx": [-8, 8], "dy": [-5, 5]},
          params=[Param("dx", "range", [0.0, 0.0], help="horizontal shift range in pixels"),
                  Param("dy", "range", [0.0, 0.0], help="vertical shift range in pixels"),
                  _REPLACE])
@_plain_graph
def translate_xy(dx, dy, replace):
    """Shift by (dx, dy) pixels drawn per example; uncovered pixels get `replace` (nearest)."""
    lib = impl

    def matrices(seeds, height, width):
        return lib.translations_to_projective_transforms(_shifts(seeds, dx, dy))
    return geometry.Projective(matrices, "nearest", "constant", replace,
                               exact_in_batches=True)


def _shear(axis, level, replace):
    def matrices(seeds, height, width):
        levels = draw.uniform(seeds, level[0], level[1])
        ones, zeros = tf.ones_like(levels), tf.zeros_like(levels)
        a1, b0 = (levels, zeros) if axis == "x" else (zeros, levels)
        return tf.stack([ones, a1, zeros, b0, ones, zeros, zeros, zeros], axis=1)
    return geometry.Projective(matrices, "nearest", "constant", replace,
                               exact_in_batches=True)


_LEVEL = Param("level", "range", help="shear factor range; output (x, y) samples the input at "
               "(x + level * y, y) for shear_x")


@register("tfa.image.shear_x", F, targets=TRANSFORMED, random=True, test_params={"level": [-0.3, 0.3]},
          params=[_LEVEL, _REPLACE])
@_plain_graph
def shear_x(level, replace):
    """Shear along x by a level drawn per example (about the top-left corner, like tfa)."""
    return _shear("x", level, replace)


@register("tfa.image.shear_y", F, targets=TRANSFORMED, random=True, test_params={"level": [-0.3, 0.3]},
          params=[_LEVEL, _REPLACE])
@_plain_graph
def shear_y(level, replace):
    """Shear along y by a level drawn per example (about the top-left corner, like tfa)."""
    return _shear("y", level, replace)


# --- filters ---------------------------------------------------------------------------------

_PADDING = [Param("padding", "str", "REFLECT", choices=("REFLECT", "CONSTANT", "SYMMETRIC")),
            Param("constant_values", "float", 0.0, low=0.0, high=1.0,
                  help="pad value for CONSTANT padding")]
_FILTER_SHAPE = Param("filter_shape", "any", 3, help="int or [height, width], pixels")


def _gaussian_kernels(sigmas, size):
    """[B, size] 1-D Gaussian weights, tfa's formula (softmax of -x^2 / 2 sigma^2)."""
    x = tf.cast(tf.range(-size // 2 + 1, size // 2 + 1) ** 2, tf.float32)
    return tf.nn.softmax(-x[None] / (2.0 * sigmas[:, None] ** 2), axis=1)


def _pad(images, filter_shape, padding, constant_values):
    """tfa's filter padding: extra row/column on the bottom/right for even filters."""
    fh, fw = filter_shape
    return tf.pad(images, [[0, 0], [(fh - 1) // 2, fh // 2], [(fw - 1) // 2, fw // 2], [0, 0]],
                  mode=padding, constant_values=constant_values)


def _per_example_gaussian(images, sigmas, filter_shape, padding, constant_values):
    """tfa.image.gaussian_filter2d with each example's own sigma, in one depthwise conv.

    tfa needs sigma as a Python number; this builds its kernel per example and convolves the
    batch as one image whose channels are the examples' channels.
    """
    fh, fw = filter_shape
    kernels = (_gaussian_kernels(sigmas, fh)[:, :, None] * _gaussian_kernels(sigmas, fw)[:, None])
    shape = tf.shape(images)
    b, c = shape[0], shape[3]
    padded = _pad(images, filter_shape, padding, constant_values)
    stacked = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]),
                         [1, tf.shape(padded)[1], tf.shape(padded)[2], b * c])
    kernel = tf.repeat(tf.transpose(kernels, [1, 2, 0]), c, axis=2)[:, :, :, None]
    out = tf.nn.depthwise_conv2d(stacked, kernel, strides=[1, 1, 1, 1], padding="VALID")
    return tf.transpose(tf.reshape(out, [shape[1], shape[2], b, c]), [2, 0, 1, 3])


@register("tfa.image.gaussian_filter2d", F, targets=UNCHANGED, random=True,
          check=_checks(_check_size("filter_shape"), _check_positive("sigma")),
          test_params={"filter_shape": 5, "sigma": [0.5, 2.0]},
          params=[_FILTER_SHAPE,
                  Param("sigma", "range", [1.0, 1.0], low=0.0, help="standard deviation range"),
                  *_PADDING])
@_plain_graph
def gaussian_filter2d(filter_shape, sigma, padding, constant_values):
    """Gaussian blur with a sigma drawn per example (a fixed sigma calls tfa directly)."""
    lib, shape = impl, _int_pair(filter_shape)
    if _fixed(sigma):
        return lambda images, seeds: lib.gaussian_filter2d(images, shape, sigma[0], padding,
                                                           constant_values)

    def one(args):  # one image alone: the conv's channel count (and so its rounding) is fixed
        image, image_sigma = args
        return _per_example_gaussian(image[None], image_sigma[None], shape, padding,
                                     constant_values)[0]

    def fn(images, seeds):
        return tf.map_fn(one, (images, draw.uniform(seeds, sigma[0], sigma[1])),
                         fn_output_signature=tf.float32)
    return fn


@register("tfa.image.mean_filter2d", F, targets=UNCHANGED, check=_check_size("filter_shape"),
          test_params={"filter_shape": 3}, params=[_FILTER_SHAPE, *_PADDING])
@_plain_graph
def mean_filter2d(filter_shape, padding, constant_values):
    """Box blur: each pixel becomes the mean of its filter_shape window."""
    lib, shape = impl, _int_pair(filter_shape)
    return lambda images, seeds: lib.mean_filter2d(images, shape, padding, constant_values)


@register("tfa.image.median_filter2d", F, targets=UNCHANGED, check=_check_size("filter_shape"),
          test_params={"filter_shape": 3}, params=[_FILTER_SHAPE, *_PADDING])
@_plain_graph
def median_filter2d(filter_shape, padding, constant_values):
    """Median filter: each pixel becomes the median of its filter_shape window (denoise)."""
    lib, shape = impl, _int_pair(filter_shape)
    return lambda images, seeds: lib.median_filter2d(images, shape, padding, constant_values)


# --- cutout ----------------------------------------------------------------------------------

_MASK_SIZE = Param("mask_size", "any", help="even int or [height, width] of the box, in pixels")
_CONSTANT = Param("constant_values", "float", 0.0, low=0.0, high=1.0,
                  help="value of the box, in [0, 1]")


def _check_offset(params):
    if _int_pair(params["offset"]) is None:
        return "offset must be the box centre as [row, column] integers"
    return None


@register("tfa.image.cutout", F, targets=UNCHANGED, check=_checks(_check_size("mask_size", even=True), _check_offset),
          test_params={"mask_size": 16, "offset": [20, 30]},
          params=[_MASK_SIZE, Param("offset", "list", help="[row, column] of the box centre"),
                  _CONSTANT])
@_plain_graph
def cutout(mask_size, offset, constant_values):
    """Fill a fixed box (centre `offset`) with constant_values."""
    lib, size = impl, _int_pair(mask_size)
    return lambda images, seeds: lib.cutout(images, size, offset, constant_values)


@register("tfa.image.random_cutout", F, targets=UNCHANGED, random=True, check=_check_size("mask_size", even=True),
          test_params={"mask_size": [16, 20]}, params=[_MASK_SIZE, _CONSTANT])
@_plain_graph
def random_cutout(mask_size, constant_values):
    """Fill a mask_size box at a centre drawn per example (tfa.image.random_cutout's law)."""
    lib, size = impl, _int_pair(mask_size)

    def centre(u, mask, length):
        # Uniform over the centres that keep the box inside; the middle if it does not fit.
        half = mask // 2
        count = tf.cast(tf.maximum(length - 2 * half, 1), tf.float32)
        drawn = half + tf.cast(tf.floor(u * count), tf.int32)
        return tf.where(mask >= length, length // 2, drawn)

    def fn(images, seeds):
        shape = tf.shape(images)
        u = draw.uniform(seeds, 0.0, 1.0, shape=(2,))
        offset = _columns(centre(u[:, 0], size[0], shape[1]), centre(u[:, 1], size[1], shape[2]))
        return lib.cutout(images, size, offset, constant_values)
    return fn


# --- colour ----------------------------------------------------------------------------------

@register("tfa.image.equalize", F, targets=UNCHANGED, test_params={},
          params=[Param("bins", "int", 256, low=2, high=256)])
@_plain_graph
def equalize(bins):
    """Histogram equalization per channel, like PIL.ImageOps.equalize."""
    lib = impl
    return lambda images, seeds: lib.equalize(tf.round(images * 255.0), bins) / 255.0


@register("tfa.image.sharpness", F, targets=UNCHANGED, random=True, test_params={"factor": [0.0, 3.0]},
          params=[Param("factor", "range", low=0.0, help="0 = smoothed, 1 = unchanged, "
                        ">1 = sharper (PIL ImageEnhance.Sharpness)")])
@_plain_graph
def sharpness(factor):
    """PIL-style sharpness with a factor drawn per example."""
    lib = impl
    if _fixed(factor):
        return lambda images, seeds: _to_255(lib.sharpness)(images, factor[0])

    def fn(images, seeds):
        return _per_example(_to_255(lib.sharpness), images, draw.uniform(seeds, *factor))
    return fn


_HSV_CHECK = _checks(
    lambda p: None if p["lower_saturation"] <= p["upper_saturation"]
    else "lower_saturation must not exceed upper_saturation",
    lambda p: None if p["lower_value"] <= p["upper_value"]
    else "lower_value must not exceed upper_value")


@register("tfa.image.random_hsv_in_yiq", F, targets=UNCHANGED, random=True, check=_HSV_CHECK,
          test_params={"max_delta_hue": 0.5, "lower_saturation": 0.6, "upper_saturation": 1.4,
                       "lower_value": 0.8, "upper_value": 1.2},
          params=[Param("max_delta_hue", "float", 0.0, low=0.0, help="hue turn range "
                        "[-max, max], radians"),
                  Param("lower_saturation", "float", 1.0, low=0.0),
                  Param("upper_saturation", "float", 1.0, low=0.0),
                  Param("lower_value", "float", 1.0, low=0.0),
                  Param("upper_value", "float", 1.0, low=0.0)])
@_plain_graph
def random_hsv_in_yiq(max_delta_hue, lower_saturation, upper_saturation, lower_value,
                      upper_value):
    """Turn hue and scale saturation/value in YIQ space, drawn per example; RGB only."""
    lib = impl

    def adjust(image, hue, saturation, value):
        return tf.clip_by_value(lib.adjust_hsv_in_yiq(image, hue, saturation, value), 0.0, 1.0)

    def fn(images, seeds):
        return _per_example(adjust, images, *_uniforms(
            seeds, [-max_delta_hue, max_delta_hue], [lower_saturation, upper_saturation],
            [lower_value, upper_value]))
    return fn


@register("tfa.image.adjust_hsv_in_yiq", F, targets=UNCHANGED,
          test_params={"delta_hue": 0.3, "scale_saturation": 1.3, "scale_value": 0.9},
          params=[Param("delta_hue", "float", 0.0, help="hue turn, radians"),
                  Param("scale_saturation", "float", 1.0, low=0.0),
                  Param("scale_value", "float", 1.0, low=0.0)])
@_plain_graph
def adjust_hsv_in_yiq(delta_hue, scale_saturation, scale_value):
    """Turn hue by delta_hue and scale saturation/value in YIQ space; RGB only."""
    lib = impl
    return lambda images, seeds: tf.clip_by_value(
        lib.adjust_hsv_in_yiq(images, delta_hue, scale_saturation, scale_value), 0.0, 1.0)


BLEND_TARGETS = ("black", "grey", "mean", "grayscale", "blur")


def _blend_target(lib, images, target):
    """The image blended towards at factor 0, on the 0-255 scale."""
    if target == "black":
        return tf.zeros_like(images)
    if target == "grey":
        return tf.fill(tf.shape(images), 128.0)
    gray = tf.image.rgb_to_grayscale(images) if images.shape[-1] == 3 else images
    if target == "mean":
        return tf.broadcast_to(tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True),
                               tf.shape(images))
    if target == "grayscale":
        return tf.broadcast_to(gray, tf.shape(images))
    return lib.gaussian_filter2d(images, (5, 5), 1.5)


@register("tfa.image.blend", F, targets=UNCHANGED, random=True,
          test_params={"target": "mean", "factor": [0.5, 1.5]},
          params=[Param("target", "str", "mean", choices=BLEND_TARGETS,
                        help="what factor 0 gives: black (PIL Brightness), grey (128), mean "
                        "(its mean grey level: PIL Contrast), grayscale (PIL Color), blur "
                        "(5x5 Gaussian, sigma 1.5)"),
                  Param("factor", "range", low=0.0, help="0 = the target, 1 = unchanged, "
                        ">1 extrapolates away from the target")])
@_plain_graph
def blend(target, factor):
    """tfa.image.blend(target, image, factor) with factor drawn per example (PIL ImageEnhance)."""
    lib = impl
    # tfa's blend tests the factor with Python `if`: as a tf.function AutoGraph turns those
    # into graph conditionals, so it takes a per-example tensor factor.
    blend_one = tf.function(lib.blend)

    def fn(images, seeds):
        x = images * 255.0
        target_images = _blend_target(lib, x, target)
        if _fixed(factor):
            out = lib.blend(target_images, x, factor[0])
        else:
            out = draw.each(lambda a: blend_one(a[0], a[1], a[2]),
                            (target_images, x, draw.uniform(seeds, *factor)),
                            fn_output_signature=tf.TensorSpec([None, None, images.shape[-1]]))
        return tf.clip_by_value(out / 255.0, 0.0, 1.0)
    return fn


# --- warps -----------------------------------------------------------------------------------

@register("tfa.image.elastic_distortion", F, random=True,
          check=lambda p: None if p["sigma"] > 0 else "sigma must be above 0",
          test_params={"alpha": [20.0, 40.0], "sigma": 4.0},
          params=[Param("alpha", "range", [34.0, 34.0], low=0.0, help="displacement scale range, "
                        "pixels per unit of smoothed noise"),
                  Param("sigma", "float", 4.0, low=0.0, help="smoothness of the field, "
                        "pixels")])
@_plain_graph
def elastic_distortion(alpha, sigma):
    """Elastic distortion (Simard et al. 2003) by tfa.image.dense_image_warp.

    Each example gets a displacement field of uniform(-1, 1) noise, Gaussian-smoothed with
    `sigma` (zero beyond the border, so the edges move less) and scaled by alpha drawn per
    example; pixels are resampled bilinearly, clamped at the border.
    """
    lib = impl
    size = 2 * int(3 * sigma + 0.5) + 1  # the kernel covers +-3 sigma

    def noise(seed, shape):
        return tf.random.stateless_uniform(tf.concat([shape, [2]], 0), seed, -1.0, 1.0)

    def fn(images, seeds):
        hw = tf.shape(images)[1:3]
        field = draw.each(lambda s: noise(s, hw), draw.fold_in(seeds, 0),
                          fn_output_signature=tf.TensorSpec([None, None, 2], tf.float32))
        # The 2-D Gaussian is separable: two 1-D passes are cheaper than one size x size kernel.
        field = lib.gaussian_filter2d(field, (size, 1), sigma, "CONSTANT")
        field = lib.gaussian_filter2d(field, (1, size), sigma, "CONSTANT")
        flow = draw.expand(_uniforms(seeds, alpha)[0]) * field
        return tf.clip_by_value(lib.dense_image_warp(images, flow), 0.0, 1.0)
    return fn

"""tf.image ops. Names follow tf.image; random ones draw per example through TF's stateless ops.

Images are float32 [B, H, W, C] in [0, 1] (see registry.py for the op contract).
"""
import tensorflow as tf

from pipeline.ops import draw
from pipeline.ops.registry import Param, register

F = "tf.image"
METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
           "mitchellcubic")


def _pair_ordered(low, high):
    return lambda p: None if p[low] <= p[high] else f"{low} must not exceed {high}"


# --- flips and rotations ---------------------------------------------------------------------

@register("tf.image.flip_left_right", F, test_params={})
def flip_left_right():
    """Mirror every image horizontally."""
    return lambda images, seeds: tf.image.flip_left_right(images)


@register("tf.image.flip_up_down", F, test_params={})
def flip_up_down():
    """Mirror every image vertically."""
    return lambda images, seeds: tf.image.flip_up_down(images)


def _random_flip(flip):
    def fn(images, seeds):
        return tf.where(draw.expand(draw.coin(seeds, 0.5)), flip(images), images)
    return fn


@register("tf.image.random_flip_left_right", F, random=True, test_params={})
def random_flip_left_right():
    """Mirror horizontally with probability 1/2, drawn per example."""
    return _random_flip(tf.image.flip_left_right)


@register("tf.image.random_flip_up_down", F, random=True, test_params={})
def random_flip_up_down():
    """Mirror vertically with probability 1/2, drawn per example."""
    return _random_flip(tf.image.flip_up_down)


@register("tf.image.rot90", F, keeps_shape=False, test_params={"k": 1},
          params=[Param("k", "int", 1, help="number of quarter turns counter-clockwise")])
def rot90(k):
    """Rotate by k quarter turns (height and width swap for odd k)."""
    return lambda images, seeds: tf.image.rot90(images, k)


@register("tf.image.random_rot90", F, random=True, test_params={})
def random_rot90():
    """Rotate by 0-3 quarter turns, drawn per example; non-square images draw 0 or 2 only."""
    def fn(images, seeds):
        shape = tf.shape(images)
        k = draw.uniform(seeds, 0, 4, dtype=tf.int32)
        k = tf.where(tf.equal(shape[1], shape[2]), k, 2 * (k % 2))
        return draw.per_example(lambda image, turns: tf.image.rot90(image, turns),
                                images, k)
    return fn


@register("tf.image.transpose", F, keeps_shape=False, test_params={})
def transpose():
    """Swap height and width."""
    return lambda images, seeds: tf.image.transpose(images)


# --- colour -----------------------------------------------------------------------------------

@register("tf.image.adjust_brightness", F, test_params={"delta": 0.1},
          params=[Param("delta", "float", low=-1.0, high=1.0)])
def adjust_brightness(delta):
    """Add `delta` to every pixel."""
    return lambda images, seeds: tf.image.adjust_brightness(images, delta)


@register("tf.image.random_brightness", F, random=True, test_params={"max_delta": 0.2},
          params=[Param("max_delta", "float", low=0.0, high=1.0)])
def random_brightness(max_delta):
    """Add a delta drawn from [-max_delta, max_delta) (tf.image.stateless_random_brightness)."""
    def fn(images, seeds):
        return images + draw.expand(draw.uniform(seeds, -max_delta, max_delta))
    return fn


@register("tf.image.adjust_contrast", F, test_params={"contrast_factor": 1.5},
          params=[Param("contrast_factor", "float", low=0.0)])
def adjust_contrast(contrast_factor):
    """Scale each channel's distance from its mean by `contrast_factor`."""
    return lambda images, seeds: tf.image.adjust_contrast(images, contrast_factor)


def _per_image_factor(adjust, factors):
    """Apply a tf.image adjust_* op that takes a scalar factor, with one factor per example."""
    return lambda images, seeds: draw.per_example(adjust, images, factors(seeds))


@register("tf.image.random_contrast", F, random=True,
          test_params={"lower": 0.6, "upper": 1.4}, check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0)])
def random_contrast(lower, upper):
    """adjust_contrast with a factor drawn from [lower, upper) (stateless_random_contrast)."""
    return _per_image_factor(tf.image.adjust_contrast,
                             lambda seeds: draw.uniform(seeds, lower, upper))


@register("tf.image.adjust_saturation", F, test_params={"saturation_factor": 1.5},
          params=[Param("saturation_factor", "float", low=0.0)])
def adjust_saturation(saturation_factor):
    """Multiply saturation (in HSV) by `saturation_factor`; RGB images only."""
    return lambda images, seeds: tf.image.adjust_saturation(images, saturation_factor)


@register("tf.image.random_saturation", F, random=True,
          test_params={"lower": 0.5, "upper": 1.5}, check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0)])
def random_saturation(lower, upper):
    """adjust_saturation with a factor drawn from [lower, upper) (stateless_random_saturation)."""
    return _per_image_factor(tf.image.adjust_saturation,
                             lambda seeds: draw.uniform(seeds, lower, upper))


@register("tf.image.adjust_hue", F, test_params={"delta": 0.1},
          params=[Param("delta", "float", low=-1.0, high=1.0)])
def adjust_hue(delta):
    """Rotate hue by `delta` (a fraction of the hue circle); RGB images only."""
    return lambda images, seeds: tf.image.adjust_hue(images, delta)


@register("tf.image.random_hue", F, random=True, test_params={"max_delta": 0.1},
          params=[Param("max_delta", "float", low=0.0, high=0.5)])
def random_hue(max_delta):
    """adjust_hue with a delta drawn from [-max_delta, max_delta) (stateless_random_hue)."""
    return _per_image_factor(tf.image.adjust_hue,
                             lambda seeds: draw.uniform(seeds, -max_delta, max_delta))


@register("tf.image.adjust_gamma", F, test_params={"gamma": 0.8},
          params=[Param("gamma", "float", 1.0, low=0.0), Param("gain", "float", 1.0, low=0.0)])
def adjust_gamma(gamma, gain):
    """gain * image ** gamma."""
    return lambda images, seeds: tf.image.adjust_gamma(images, gamma, gain)


@register("tf.image.random_gamma", F, random=True, test_params={"lower": 0.7, "upper": 1.5},
          check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0),
                  Param("gain", "float", 1.0, low=0.0)])
def random_gamma(lower, upper, gain):
    """adjust_gamma with gamma drawn from [lower, upper) per example."""
    def fn(images, seeds):
        return gain * tf.pow(images, draw.expand(draw.uniform(seeds, lower, upper)))
    return fn


@register("tf.image.adjust_jpeg_quality", F, test_params={"jpeg_quality": 30},
          params=[Param("jpeg_quality", "int", low=0, high=100)])
def adjust_jpeg_quality(jpeg_quality):
    """Re-encode as JPEG at `jpeg_quality` and decode again (compression artefacts)."""
    return lambda images, seeds: draw.per_example(
        lambda image, _: tf.image.adjust_jpeg_quality(image, jpeg_quality), images, seeds)


@register("tf.image.random_jpeg_quality", F, random=True,
          test_params={"min_jpeg_quality": 20, "max_jpeg_quality": 80},
          check=_pair_ordered("min_jpeg_quality", "max_jpeg_quality"),
          params=[Param("min_jpeg_quality", "int", low=0, high=100),
                  Param("max_jpeg_quality", "int", low=0, high=100)])
def random_jpeg_quality(min_jpeg_quality, max_jpeg_quality):
    """JPEG round trip at a quality drawn per example (stateless_random_jpeg_quality)."""
    return lambda images, seeds: draw.per_example(
        lambda image, seed: tf.image.stateless_random_jpeg_quality(
            image, min_jpeg_quality, max_jpeg_quality, seed), images, seeds)


# --- crops and sizes -------------------------------------------------------------------------

@register("tf.image.central_crop", F, keeps_shape=False, test_params={"central_fraction": 0.8},
          params=[Param("central_fraction", "float", low=0.0, high=1.0)])
def central_crop(central_fraction):
    """Keep the central `central_fraction` of each side."""
    return lambda images, seeds: tf.image.central_crop(images, central_fraction)


@register("tf.image.random_crop", F, random=True, keeps_shape=False,
          test_params={"height": 24, "width": 32},
          params=[Param("height", "int", low=1), Param("width", "int", low=1)])
def random_crop(height, width):
    """A height x width window at a position drawn per example (stateless_random_crop)."""
    def fn(images, seeds):
        size = tf.stack([height, width, tf.shape(images)[3]])
        return draw.per_example(
            lambda image, seed: tf.image.stateless_random_crop(image, size, seed), images, seeds)
    return fn


@register("tf.image.random_crop_and_resize", F, random=True,
          test_params={"scale": [0.6, 1.0]},
          params=[Param("scale", "range", [0.6, 1.0], low=0.01, high=1.0,
                        help="side of the crop as a fraction of the image side"),
                  Param("method", "str", "bilinear", choices=("bilinear", "nearest"))])
def random_crop_and_resize(scale, method):
    """Crop a random window (side fraction drawn from `scale`) and resize it back to full size."""
    def fn(images, seeds):
        side = draw.uniform(draw.fold_in(seeds, 0), scale[0], scale[1])
        corner = draw.uniform(draw.fold_in(seeds, 1), 0.0, 1.0, shape=(2,)) * (1.0 - side)[:, None]
        boxes = tf.concat([corner, corner + side[:, None]], axis=1)  # y1, x1, y2, x2
        size = tf.shape(images)[1:3]
        return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), size,
                                        method=method)
    return fn


@register("tf.image.resize", F, keeps_shape=False, test_params={"height": 40, "width": 30},
          params=[Param("height", "int", low=1), Param("width", "int", low=1),
                  Param("method", "str", "bilinear", choices=METHODS),
                  Param("antialias", "bool", False),
                  Param("preserve_aspect_ratio", "bool", False)])
def resize(height, width, method, antialias, preserve_aspect_ratio):
    """Resize to height x width (tf.image.resize)."""
    return lambda images, seeds: tf.image.resize(
        images, (height, width), method=method, antialias=antialias,
        preserve_aspect_ratio=preserve_aspect_ratio)

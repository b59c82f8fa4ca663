"""uint8: colour ops with the arithmetic of 8-bit pipelines (OpenCV's convertTo, albumentations'
RandomBrightnessContrast): one multiply-add per pixel value and one rounding, no mean. Where
the chain holds its stored uint8 pixels (augment.plan: at its head, and at its tail with the
opencv-uint8 kernel) they work on those and give back uint8 pixels at once, cheaper than
tf.image's pair (whose contrast moves each channel around its own mean, in float32); between
float ops they compute the same map on the floats, rounded when the chain stores its pixels.

It computes with TensorFlow's ops on every device, rounding x * alpha + beta to the nearest level,
half to even. (Its first version, of 2026-12-03, called OpenCV's addWeighted under the CPU's
OpenCV kernels: that call from the graph, a Python function, waits for Python's lock while the
runner's other threads hold it, and cost more CPU and wall time in whole runs than TensorFlow's
four passes.)
"""
import tensorflow as tf

from pipeline.ops import draw, native
from pipeline.ops.registry import UNCHANGED, Param, register

F = "uint8"


@register("uint8.random_brightness_contrast", F, targets=UNCHANGED, random=True,
          uint8_native=True, test_params={"contrast": [0.7, 1.3], "brightness": [-0.2, 0.2]},
          params=[Param("contrast", "range", [0.8, 1.2], low=0.0, high=100.0,
                        help="the gain alpha, drawn from [low, high)"),
                  Param("brightness", "range", [-0.2, 0.2], low=-1.0, high=1.0,
                        help="the offset beta, drawn from [low, high), in full scales "
                             "(x 255 on 8-bit pixels)")])
def random_brightness_contrast(contrast, brightness):
    """x * alpha + beta per pixel, clipped: no mean (albumentations' RandomBrightnessContrast).

    One gain and one offset drawn per image; on uint8 pixels rounded once to the nearest level
    (brightness_by_max, as albumentations' default)."""
    def fn(images, seeds):
        alpha = draw.uniform(draw.fold_in(seeds, 0), contrast[0], contrast[1])
        beta = draw.uniform(draw.fold_in(seeds, 1), brightness[0], brightness[1])
        if images.dtype != tf.uint8:
            out = images * draw.expand(alpha) + draw.expand(beta)
            return tf.raw_ops.ClipByValue(t=out, clip_value_min=0.0, clip_value_max=1.0)
        return multiply_add(images, alpha, beta * 255.0)
    return fn


def multiply_add(images, alpha, beta):
    """uint8 images [B, H, W, C] -> round(x * alpha + beta) saturated to 0..255, with alpha
    and beta float32 [B] (one per image). On the CPU, each image's 256 results computed so
    and looked up (native.lookup): the same bytes, one pass over the pixels, not four."""
    with tf.name_scope("uint8_multiply_add"):
        if not native.usable():
            return _multiply_add(images, alpha, beta)
        levels = native.levels(tf.shape(images)[0])
        tables = tf.reshape(_multiply_add(levels, alpha, beta), [-1, 256, 1])
        return native.lookup(images, tables)


def _multiply_add(images, alpha, beta):
    out = tf.round(tf.cast(images, tf.float32) * draw.expand(alpha) + draw.expand(beta))
    return tf.cast(tf.raw_ops.ClipByValue(t=out, clip_value_min=0.0, clip_value_max=255.0),
                   tf.uint8)

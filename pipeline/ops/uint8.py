"""uint8: colour ops with the arithmetic of 8-bit pipelines (OpenCV's convertTo, albumentations'
RandomBrightnessContrast): one multiply-add per pixel value and one rounding, no mean and no
float32 round trip. Where the chain holds its stored uint8 pixels (augment.plan: at its head,
and at its tail with the opencv-uint8 kernel) they work on those, several times cheaper than
tf.image's pair (whose contrast moves each channel around its own mean, in float32); between
float ops they compute the same map on the floats, rounded when the chain stores its pixels.

On the CPU with an OpenCV kernel (runtime.kernel), uint8 pixels go through OpenCV's
addWeighted; elsewhere (runtime.kernel tensorflow, a GPU, XLA) through TensorFlow's ops. Both
round x * alpha + beta to the nearest level, half to even; OpenCV may fuse the multiply-add,
so a value within a float32 rounding of a half level can land on the other side:
tests/test_uint8_ops.py bounds it on real photos.
"""
import numpy as np
import tensorflow as tf

from pipeline.ops import draw, geometry
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
    and beta float32 [B] (one per image)."""
    if geometry.kernel_in_use() == "opencv":
        out = geometry.call_opencv(_add_weighted, [images, alpha, beta], tf.uint8,
                                   name="opencv_multiply_add")
        return tf.ensure_shape(out, images.shape)
    out = tf.round(tf.cast(images, tf.float32) * draw.expand(alpha) + draw.expand(beta))
    return tf.cast(tf.raw_ops.ClipByValue(t=out, clip_value_min=0.0, clip_value_max=255.0),
                   tf.uint8)


def _add_weighted(images, alpha, beta):
    """OpenCV's saturating x * alpha + 0 * x + beta on each image, its channels side by side
    in one plane (element-wise: any number of channels)."""
    cv2 = geometry.cv2_module()
    batch, height = images.shape[:2]
    out = np.empty_like(images)
    for index in range(batch):
        plane = images[index].reshape(height, -1)
        cv2.addWeighted(plane, float(alpha[index]), plane, 0.0, float(beta[index]),
                        dst=out[index].reshape(height, -1))
    return out

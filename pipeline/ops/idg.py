"""Keras ImageDataGenerator's augmentation as one op, `idg`, with IDG's argument names and laws.

Move an ImageDataGenerator setup over unchanged: `ImageDataGenerator(rotation_range=20,
width_shift_range=0.1, zoom_range=0.2, horizontal_flip=True)` becomes

    - op: idg
      rotation_range: 20
      width_shift_range: 0.1
      zoom_range: 0.2
      horizontal_flip: true

Each example draws IDG's parameters from its own seed, with the distributions of
`ImageDataGenerator.get_random_transform` (Keras 2.15, keras/src/preprocessing/image.py):
  rotation_range r      theta ~ U(-r, r) degrees
  width/height_shift_range s
                        float: U(-s, s); int n: one of 0..n-1 with a random sign; list: one of
                        its values with a random sign. Pixels, or a fraction of the image side
                        when every value is below 1 (so 1.0 means one pixel, as in IDG)
  shear_range s         U(-s, s) degrees
  zoom_range z          [1 - z, 1 + z] (or a [low, high] pair); zx and zy drawn independently;
                        zx > 1 zooms out
  horizontal/vertical_flip   each with probability 1/2
  channel_shift_range c U(-c, c), in 0-255 units
  brightness_range [a, b]    U(a, b), PIL ImageEnhance.Brightness factor
and applies them as `ImageDataGenerator.apply_transform` does, but as ONE resample: rotation,
shift, shear, zoom and both flips become one affine matrix per example (IDG resamples once
too, then flips), followed by the channel shift (clipped to the image's own min and max, all
channels shifted by the same amount, as IDG does) and the brightness (PIL's truncating
8-bit arithmetic, reproduced).

Units: our images are floats in [0, 1] where IDG's are 0-255, so `cval` and
`channel_shift_range` keep IDG's 0-255 units and are divided by 255 here.

Keras's axes: since Keras 2.9 (and in Keras 3's legacy module) apply_affine_transform builds its
matrix in (row, column) order and then swaps the axes, so height_shift_range moves images
sideways, width_shift_range moves them up and down, and on non-square images the rotation
centre is (h/2, w/2) read as (x, y), off the true centre. The op reproduces that by default,
so outputs match the Keras you trained with; `legacy_axes: true` gives the older
keras-preprocessing geometry (height_shift_range vertical, rotation about the true centre).

Differences from IDG that remain: fill_mode "wrap" is TensorFlow's tiling, where scipy's "wrap"
repeats the edge pixel once; with fill_mode "constant" and bilinear sampling, TensorFlow blends
the last pixel with `cval` across a one-pixel band at the border where scipy switches abruptly.

`rescale` multiplies IDG's output (after augmentation) for the model's sake. This op writes
images, stored as 8-bit 0-255 pixels: the usual rescale=1/255 is exactly what reading them back
as floats (tf.image.convert_image_dtype, or / 255) does, so it is accepted and changes nothing in
the stored pixels; apply it when you read the records for training. Any other value would give
pixels that an image cannot hold, so it is refused with a message saying so.
"""
import math
import numbers

import tensorflow as tf

from pipeline.ops import draw, geometry
from pipeline.ops.registry import TRANSFORMED, Param, register

F = "idg"
# Each example draws one vector of uniforms in [0, 1) (one map_fn); each parameter has its slot.
(_THETA, _TX, _TX_SIGN, _TY, _TY_SIGN, _SHEAR, _ZX, _ZY, _FLIP_H, _FLIP_V, _CHANNEL,
 _BRIGHT) = range(12)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _shift_problem(name, value):
    if _is_number(value) and value >= 0:
        return None
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        return None
    return (f"{name} must be a number >= 0 (a fraction of the side if < 1, else pixels), an "
            f"integer n (pixels 0..n-1 either way) or a list of values; got {value!r}")


def _check(params):
    for name in ("width_shift_range", "height_shift_range"):
        problem = _shift_problem(name, params[name])
        if problem:
            return problem
    zoom = params["zoom_range"]
    if not ((_is_number(zoom) and zoom >= 0)
            or (isinstance(zoom, list) and len(zoom) == 2 and all(_is_number(v) for v in zoom))):
        return f"zoom_range must be a number >= 0 or a [low, high] pair; got {zoom!r}"
    brightness = params["brightness_range"]
    if brightness is not None and not (isinstance(brightness, list) and len(brightness) == 2
                                       and all(_is_number(v) and v >= 0 for v in brightness)):
        return f"brightness_range must be a [low, high] pair of factors >= 0; got {brightness!r}"
    rescale = params["rescale"]
    if rescale is not None and not _is_number(rescale):
        return f"rescale must be a number; got {rescale!r}"
    if rescale and not (math.isclose(rescale, 1.0) or math.isclose(rescale, 1 / 255, rel_tol=1e-4)):
        return (f"rescale={rescale} would scale pixel values out of what an 8-bit image holds; "
                "this op writes images, so rescale at training time instead (rescale 1/255 is "
                "accepted: reading the images back as floats does exactly that)")
    return None


class ImageDataGenerator:
    """IDG's augmentation arguments; draws per example (TF stateless) and applies them."""

    def __init__(self, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0,
                 brightness_range=None, shear_range=0.0, zoom_range=0.0,
                 channel_shift_range=0.0, fill_mode="nearest", cval=0.0, horizontal_flip=False,
                 vertical_flip=False, interpolation_order=1, legacy_axes=False):
        self.rotation_range = rotation_range
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.brightness_range = brightness_range
        self.shear_range = shear_range
        self.zoom_range = (list(zoom_range) if isinstance(zoom_range, (list, tuple))
                           else [1 - zoom_range, 1 + zoom_range])
        self.channel_shift_range = channel_shift_range
        self.horizontal_flip = horizontal_flip
        self.vertical_flip = vertical_flip
        self.legacy_axes = legacy_axes
        self.sampling = ("nearest" if interpolation_order == 0 else "bilinear", fill_mode,
                         cval / 255.0)

    @property
    def has_geometry(self):
        return bool(self.rotation_range or self.width_shift_range or self.height_shift_range
                    or self.shear_range or self.zoom_range != [1, 1]
                    or self.horizontal_flip or self.vertical_flip)

    @property
    def has_pixel_shifts(self):
        return bool(self.channel_shift_range) or self.brightness_range is not None

    # --- draws (get_random_transform) ---------------------------------------------------------

    def get_random_transform(self, seeds, height, width):
        """IDG's transform parameters, one value per example: a dict of [B] tensors.

        Keys and units are Keras's (degrees, pixels, 0-255 intensities), so a row can be passed
        to keras ImageDataGenerator.apply_transform. Parameters IDG would not draw are 0 / 1 /
        False; channel_shift_intensity and brightness are None when off.
        """
        u = _draws(seeds)
        return {**self._geometry_params(u, height, width), **self._pixel_params(u)}

    def _geometry_params(self, u, height, width):
        zeros = tf.zeros_like(u[:, 0])

        def symmetric(limit, slot):  # U(-limit, limit), or 0 where IDG does not draw
            return _between(u[:, slot], -limit, limit) if limit else zeros

        zoom = self.zoom_range != [1, 1]
        return {
            "theta": symmetric(self.rotation_range, _THETA),
            # IDG's tx comes from height_shift_range (scaled by the rows), ty from width.
            "tx": _shift(u[:, _TX], u[:, _TX_SIGN], self.height_shift_range, height, zeros),
            "ty": _shift(u[:, _TY], u[:, _TY_SIGN], self.width_shift_range, width, zeros),
            "shear": symmetric(self.shear_range, _SHEAR),
            "zx": _between(u[:, _ZX], *self.zoom_range) if zoom else zeros + 1.0,
            "zy": _between(u[:, _ZY], *self.zoom_range) if zoom else zeros + 1.0,
            "flip_horizontal": (u[:, _FLIP_H] < 0.5) & self.horizontal_flip,
            "flip_vertical": (u[:, _FLIP_V] < 0.5) & self.vertical_flip,
        }

    def _pixel_params(self, u):
        shift, brightness = self.channel_shift_range, self.brightness_range
        return {
            "channel_shift_intensity": (_between(u[:, _CHANNEL], -shift, shift)
                                        if shift else None),
            "brightness": (_between(u[:, _BRIGHT], *brightness)
                           if brightness is not None else None),
        }

    # --- application (apply_transform) --------------------------------------------------------

    def matrices(self, params, height, width):
        """[B, 8] output -> input transforms: IDG's affine matrix, then its flips."""
        theta = params["theta"] * (math.pi / 180.0)
        shear = params["shear"] * (math.pi / 180.0)
        ones, zeros = tf.ones_like(theta), tf.zeros_like(theta)
        cos, sin = tf.cos(theta), tf.sin(theta)
        # apply_affine_transform: rotation @ shift @ shear @ zoom, about the centre
        # (h/2 - 0.5, w/2 - 0.5) in the matrix's own (first, second) coordinates.
        m = _matrix([cos, -sin, zeros], [sin, cos, zeros])
        m = m @ _matrix([ones, zeros, params["tx"]], [zeros, ones, params["ty"]])
        m = m @ _matrix([ones, -tf.sin(shear), zeros], [zeros, tf.cos(shear), zeros])
        m = m @ _matrix([params["zx"], zeros, zeros], [zeros, params["zy"], zeros])
        o1, o2 = height / 2.0 - 0.5, width / 2.0 - 0.5
        m = (_matrix([ones, zeros, ones * o1], [zeros, ones, ones * o2]) @ m
             @ _matrix([ones, zeros, -ones * o1], [zeros, ones, -ones * o2]))
        if self.legacy_axes:
            # keras-preprocessing applied the matrix to (row, column); ours take (x, y).
            swap = tf.constant([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
            m = swap @ m @ swap
        # Keras 2.9+ hands the same matrix to scipy after swapping rows and columns, which
        # is the matrix itself in (x, y): used as it is.
        # IDG flips the transformed image; flipping output coordinates first does the same.
        flip_h = tf.where(params["flip_horizontal"], -1.0, 1.0)
        flip_v = tf.where(params["flip_vertical"], -1.0, 1.0)
        m = m @ _matrix([flip_h, zeros, (1.0 - flip_h) / 2.0 * (width - 1.0)],
                        [zeros, flip_v, (1.0 - flip_v) / 2.0 * (height - 1.0)])
        return geometry.to_flat(m)

    def pixel_shifts(self, images, params):
        """IDG's channel shift, then its brightness, on [0, 1] images."""
        if params["channel_shift_intensity"] is not None:
            low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
            high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
            shift = draw.expand(params["channel_shift_intensity"] / 255.0)
            images = tf.clip_by_value(images + shift, low, high)
        if params["brightness"] is not None:
            # PIL: the float image is cast to uint8 (truncating), then
            # ImageEnhance.Brightness blends with black, truncating again and clipping to 255.
            # The 1e-3 absorbs float error in values that were whole numbers on 0-255.
            pixels = tf.floor(images * 255.0 + 1e-3)
            images = tf.minimum(tf.floor(pixels * draw.expand(params["brightness"])), 255.0)
            images = images / 255.0
        return images

    def op(self):
        """The `idg` op function: a fusable geometric op when there is geometry to apply."""
        def matrices(seeds, height, width):
            return self.matrices(self._geometry_params(_draws(seeds), height, width),
                                 height, width)

        def finish(images, seeds):
            return self.pixel_shifts(images, self._pixel_params(_draws(seeds)))

        if not self.has_geometry:
            # Plain graph code: AutoGraph need not rewrite it when a chain is traced.
            return tf.autograph.experimental.do_not_convert(
                finish if self.has_pixel_shifts else (lambda images, seeds: images))
        return geometry.Projective(matrices, *self.sampling,
                                   finish=finish if self.has_pixel_shifts else None)


def _draws(seeds):
    """[B, 12] uniforms in [0, 1), one row per example."""
    return draw.uniform(seeds, 0.0, 1.0, shape=(12,))


def _between(u, low, high):
    return low + (high - low) * u


def _shift(u, u_sign, shift_range, size, zeros):
    """IDG's shift law for one axis, in pixels."""
    if not shift_range:
        return zeros
    if isinstance(shift_range, float):
        shift = _between(u, -shift_range, shift_range)
    else:
        # An int n or a list: np.random.choice picks one of range(n) / the list, then a sign.
        values = (tf.range(shift_range, dtype=tf.float32) if isinstance(shift_range, int)
                  else tf.constant(shift_range, tf.float32))
        count = tf.size(values)
        pick = tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)
        shift = tf.gather(values, pick) * tf.where(u_sign < 0.5, -1.0, 1.0)
    top = max(shift_range) if isinstance(shift_range, list) else shift_range
    return shift * size if top < 1 else shift


def _matrix(row0, row1):
    """[B, 3, 3] affine matrices from two rows of three [B] tensors each."""
    ones, zeros = tf.ones_like(row0[0]), tf.zeros_like(row0[0])
    return tf.reshape(tf.stack(list(row0) + list(row1) + [zeros, zeros, ones], axis=1), [-1, 3, 3])


@register("idg", F, targets=TRANSFORMED, random=True, check=_check,
          test_params={"rotation_range": 20, "width_shift_range": 0.1,
                       "height_shift_range": 0.1, "shear_range": 10, "zoom_range": 0.2,
                       "channel_shift_range": 20.0, "brightness_range": [0.8, 1.2],
                       "horizontal_flip": True, "fill_mode": "reflect"},
          params=[Param("rotation_range", "float", 0.0, low=0.0, help="degrees"),
                  Param("width_shift_range", "any", 0.0, help="fraction (< 1), pixels, int n "
                        "or list of values, as in IDG"),
                  Param("height_shift_range", "any", 0.0, help="as width_shift_range"),
                  Param("brightness_range", "any", None, help="[low, high] brightness factors"),
                  Param("shear_range", "float", 0.0, low=0.0, help="degrees"),
                  Param("zoom_range", "any", 0.0, help="z for [1 - z, 1 + z], or [low, high]"),
                  Param("channel_shift_range", "float", 0.0, low=0.0, help="0-255 units"),
                  Param("fill_mode", "str", "nearest", choices=geometry.FILL_MODES),
                  Param("cval", "float", 0.0, low=0.0, high=255.0,
                        help="fill for fill_mode constant, 0-255 units"),
                  Param("horizontal_flip", "bool", False),
                  Param("vertical_flip", "bool", False),
                  Param("rescale", "any", None, help="1/255 (or 1): accepted, a no-op for stored "
                        "images; other values are refused"),
                  Param("interpolation_order", "int", 1, choices=(0, 1),
                        help="0 nearest, 1 bilinear"),
                  Param("legacy_axes", "bool", False, help="keras-preprocessing's geometry: "
                        "height_shift_range vertical, rotation about the true centre")])
def idg(rotation_range, width_shift_range, height_shift_range, brightness_range, shear_range,
        zoom_range, channel_shift_range, fill_mode, cval, horizontal_flip, vertical_flip, rescale,
        interpolation_order, legacy_axes):
    """Keras ImageDataGenerator's random transform, drawn per example, applied in one resample."""
    return ImageDataGenerator(
        rotation_range, width_shift_range, height_shift_range, brightness_range, shear_range,
        zoom_range, channel_shift_range, fill_mode, cval, horizontal_flip, vertical_flip,
        interpolation_order, legacy_axes).op()

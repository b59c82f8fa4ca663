"""tf.image ops. Names follow tf.image; random ones draw per example through TF's stateless ops.

Images are float32 [B, H, W, C] in [0, 1] (see registry.py for the op contract).
"""
import tensorflow as tf

from pipeline.ops import draw, native
from pipeline.ops.registry import TRANSFORMED, UNCHANGED, Param, register

F = "tf.image"
METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
           "mitchellcubic")


def _pair_ordered(low, high):
    return lambda p: None if p[low] <= p[high] else f"{low} must not exceed {high}"


# --- where the pixels go: each geometric op's output -> input map, for its targets ------------
# A geometry builder takes the op's params and returns fn(seeds, height, width) -> (transforms
# [B, 8], out_height, out_width) in geometry.py's convention (pixel indices), drawing exactly
# what the op draws from the same seeds.

def _f(value):
    return tf.cast(value, tf.float32)


def _affine(seeds, x_row, y_row):
    """[B, 8] affine transforms: input x = a0 x + a1 y + a2, input y = b0 x + b1 y + b2 (each
    coefficient a number or one per example)."""
    batch = tf.shape(seeds)[0]
    columns = [tf.broadcast_to(_f(c), [batch]) for c in (*x_row, *y_row, 0.0, 0.0)]
    return tf.stack(columns, axis=1)


def _coin(seeds):  # _random_flip's draw
    return draw.coin(seeds, 0.5)


def _stateless_coin(seeds):  # tf.image.stateless_random_flip_*'s draw, per example
    return draw.uniform(seeds, 0.0, 1.0) < 0.5


def _flip_geometry(axis, chosen=None):
    def builder():
        def fn(seeds, height, width):
            flip = tf.ones([tf.shape(seeds)[0]], tf.bool) if chosen is None else chosen(seeds)
            sign = tf.where(flip, -1.0, 1.0)
            if axis == "x":
                move = tf.where(flip, _f(width) - 1.0, 0.0)
                return _affine(seeds, (sign, 0.0, move), (0.0, 1.0, 0.0)), height, width
            move = tf.where(flip, _f(height) - 1.0, 0.0)
            return _affine(seeds, (1.0, 0.0, 0.0), (0.0, sign, move)), height, width
        return fn
    return builder


def _quarter_turns(seeds, turns, height, width):
    """rot90 by `turns` [B] (each in 0..3, counter-clockwise) as transforms: out (x, y) reads
    the input at ...; k = 1: (W - 1 - y, x), k = 2: (W - 1 - x, H - 1 - y), k = 3: (y, H - 1 - x)."""
    w1, h1 = _f(width) - 1.0, _f(height) - 1.0
    table = tf.constant([[1, 0, 0, 0, 1, 0], [0, -1, 1, 1, 0, 0], [-1, 0, 1, 0, -1, 1],
                         [0, 1, 0, -1, 0, 1]], tf.float32)  # coefficients; offsets times W-1/H-1
    rows = tf.gather(table, turns % 4)
    return _affine(seeds, (rows[:, 0], rows[:, 1], rows[:, 2] * w1),
                   (rows[:, 3], rows[:, 4], rows[:, 5] * h1))


def _rot90_geometry(k):
    def fn(seeds, height, width):
        turns = tf.fill([tf.shape(seeds)[0]], k % 4)
        out_h, out_w = (width, height) if k % 2 else (height, width)
        return _quarter_turns(seeds, turns, height, width), out_h, out_w
    return fn


def _random_rot90_geometry():
    def fn(seeds, height, width):
        k = draw.uniform(seeds, 0, 4, dtype=tf.int32)
        k = tf.where(tf.equal(height, width), k, 2 * (k % 2))
        return _quarter_turns(seeds, k, height, width), height, width
    return fn


def _transpose_geometry():
    return lambda seeds, height, width: (
        _affine(seeds, (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)), width, height)


def _shift(seeds, top, left, out_h, out_w):
    """A window of the input whose top-left corner is at (top, left) (negative: padding)."""
    return _affine(seeds, (1.0, 0.0, left), (0.0, 1.0, top)), out_h, out_w


def _central_crop_geometry(central_fraction):
    def fn(seeds, height, width):
        def start(size):  # tf.image.central_crop's arithmetic
            size = tf.cast(size, tf.float64)
            return tf.cast((size - size * central_fraction) / 2, tf.int32)
        top, left = start(height), start(width)
        return _shift(seeds, top, left, height - 2 * top, width - 2 * left)
    return fn


def _crop_offsets(seeds, height, width, crop_h, crop_w):
    """tf.image.stateless_random_crop's offsets for each example's seed: [B] rows, [B] columns."""
    # Never below 1: an image smaller than the crop must fail in the crop itself, with its clear
    # message, not race it here with "Integer division by zero" (both run in one TF call).
    limit = tf.maximum(tf.stack([height - crop_h + 1, width - crop_w + 1, 1]), 1)
    offsets = draw.each(lambda s: tf.random.stateless_uniform(
        [3], s, maxval=tf.int32.max, dtype=tf.int32) % limit, seeds,
        fn_output_signature=tf.TensorSpec([3], tf.int32))
    return offsets[:, 0], offsets[:, 1]


def _random_crop_geometry(height, width):
    def fn(seeds, in_h, in_w):
        top, left = _crop_offsets(seeds, in_h, in_w, height, width)
        return _shift(seeds, top, left, height, width)
    return fn


def _stateless_crop_geometry(size):
    return _random_crop_geometry(size[0], size[1])


def _crop_geometry(offset_height, offset_width, target_height, target_width):
    return lambda seeds, height, width: _shift(seeds, offset_height, offset_width,
                                               target_height, target_width)


def _pad_geometry(offset_height, offset_width, target_height, target_width):
    return lambda seeds, height, width: _shift(seeds, -offset_height, -offset_width,
                                               target_height, target_width)


def _crop_or_pad_geometry(target_height, target_width):
    def fn(seeds, height, width):  # tf.image.resize_with_crop_or_pad's offsets
        def offset(size, target):
            diff = target - size
            return tf.maximum(-diff // 2, 0) - tf.maximum(diff // 2, 0)
        return _shift(seeds, offset(height, target_height), offset(width, target_width),
                      target_height, target_width)
    return fn


def _scaled(seeds, height, width, out_h, out_w, top=0.0, left=0.0):
    """tf.image.resize's map (half-pixel centres) from height x width to out_h x out_w,
    placed at (top, left) in the output."""
    sy, sx = _f(height) / _f(out_h), _f(width) / _f(out_w)
    return _affine(seeds, (sx, 0.0, (0.5 - _f(left)) * sx - 0.5),
                   (0.0, sy, (0.5 - _f(top)) * sy - 0.5))


def _resize_geometry(height, width, method, antialias, preserve_aspect_ratio):
    def fn(seeds, in_h, in_w):
        out_h, out_w = tf.constant(height), tf.constant(width)
        if preserve_aspect_ratio:  # tf.image.resize's arithmetic
            scale = tf.minimum(height / _f(in_h), width / _f(in_w))
            out_h = tf.cast(tf.round(_f(in_h) * scale), tf.int32)
            out_w = tf.cast(tf.round(_f(in_w) * scale), tf.int32)
        return _scaled(seeds, in_h, in_w, out_h, out_w), out_h, out_w
    return fn


def _letterbox_geometry(target_height, target_width, method, antialias):
    def fn(seeds, height, width):  # tf.image.resize_with_pad's arithmetic
        ratio = tf.maximum(_f(width) / target_width, _f(height) / target_height)
        resized_h, resized_w = _f(height) / ratio, _f(width) / ratio
        top = tf.maximum(0.0, tf.floor((target_height - resized_h) / 2))
        left = tf.maximum(0.0, tf.floor((target_width - resized_w) / 2))
        return (_scaled(seeds, height, width, tf.floor(resized_h), tf.floor(resized_w), top, left),
                target_height, target_width)
    return fn


def _crop_and_resize_geometry(scale, method):
    def fn(seeds, height, width):  # the op's own draws; crop_and_resize's sampling
        side = draw.uniform(draw.fold_in(seeds, 0), scale[0], scale[1])
        corner = draw.uniform(draw.fold_in(seeds, 1), 0.0, 1.0, shape=(2,)) * (1.0 - side)[:, None]
        h1, w1 = _f(height) - 1.0, _f(width) - 1.0
        step = side  # (y2 - y1) (size - 1) / (size - 1)
        return (_affine(seeds, (step, 0.0, corner[:, 1] * w1), (0.0, step, corner[:, 0] * h1)),
                height, width)
    return fn


def _distorted_box_geometry(min_object_covered, aspect_ratio_range, area_range, max_attempts,
                            method):
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

    def fn(seeds, height, width):
        def box(seed):  # the op's own sampler, same seed: the same box
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.stack([height, width, 1]), whole_image, seed,
                min_object_covered=min_object_covered, aspect_ratio_range=aspect_ratio_range,
                area_range=area_range, max_attempts=max_attempts,
                use_image_if_no_bounding_boxes=True)
            return tf.concat([begin[:2], size[:2]], 0)
        boxes = _f(draw.each(box, seeds, fn_output_signature=tf.TensorSpec([4], tf.int32)))
        sy, sx = boxes[:, 2] / _f(height), boxes[:, 3] / _f(width)
        return (_affine(seeds, (sx, 0.0, boxes[:, 1] + 0.5 * sx - 0.5),
                        (0.0, sy, boxes[:, 0] + 0.5 * sy - 0.5)), height, width)
    return fn


# --- flips and rotations ---------------------------------------------------------------------

def _mirror_left_right(images):
    """tf.image.flip_left_right on [B, H, W, C], the same pixels: reversed as [B * H, W, C].
    TensorFlow's reverse of a 4-D tensor is 4-6x slower on a CPU than of this 3-D view
    (0.25 vs 0.04 ms for a 256 x 256 RGB image on one thread)."""
    shape = tf.shape(images)
    return tf.reshape(tf.reverse(tf.reshape(images, [-1, shape[2], shape[3]]), [1]), shape)


def _mirror_up_down(images):
    """tf.image.flip_up_down on [B, H, W, C], the same pixels: reversed as [B, H, W * C]."""
    shape = tf.shape(images)
    return tf.reshape(tf.reverse(tf.reshape(images, [shape[0], shape[1], -1]), [1]), shape)


@register("tf.image.flip_left_right", F, targets=TRANSFORMED, geometry=_flip_geometry("x"), uint8_exact=True, xla=True, test_params={})
def flip_left_right():
    """Mirror every image horizontally."""
    return lambda images, seeds: _mirror_left_right(images)


@register("tf.image.flip_up_down", F, targets=TRANSFORMED, geometry=_flip_geometry("y"), uint8_exact=True, xla=True, test_params={})
def flip_up_down():
    """Mirror every image vertically."""
    return lambda images, seeds: _mirror_up_down(images)


def _random_flip(axis):
    """Mirror along `axis` (1: up-down, 2: left-right) with probability 1/2, per example."""
    flip = _mirror_up_down if axis == 1 else _mirror_left_right

    def fn(images, seeds):
        chosen = draw.coin(seeds, 0.5)
        if images.dtype == tf.uint8 and native.usable():  # only the chosen, in place
            return native.mirror(images, chosen, axis)
        return draw.apply_where(chosen, flip, images)
    return fn


@register("tf.image.random_flip_left_right", F, targets=TRANSFORMED, geometry=_flip_geometry("x", _coin), uint8_exact=True, xla=True, random=True, test_params={})
def random_flip_left_right():
    """Mirror horizontally with probability 1/2, drawn per example."""
    return _random_flip(axis=2)


@register("tf.image.random_flip_up_down", F, targets=TRANSFORMED, geometry=_flip_geometry("y", _coin), uint8_exact=True, xla=True, random=True, test_params={})
def random_flip_up_down():
    """Mirror vertically with probability 1/2, drawn per example."""
    return _random_flip(axis=1)


@register("tf.image.rot90", F, targets=TRANSFORMED, geometry=_rot90_geometry, uint8_exact=True, keeps_shape=False, test_params={"k": 1},
          params=[Param("k", "int", 1, help="number of quarter turns counter-clockwise")])
def rot90(k):
    """Rotate by k quarter turns (height and width swap for odd k)."""
    return lambda images, seeds: tf.image.rot90(images, k)


@register("tf.image.random_rot90", F, targets=TRANSFORMED, geometry=_random_rot90_geometry, uint8_exact=True, random=True, test_params={})
def random_rot90():
    """Rotate by 0-3 quarter turns, drawn per example; non-square images draw 0 or 2 only."""
    def fn(images, seeds):
        shape = tf.shape(images)
        k = draw.uniform(seeds, 0, 4, dtype=tf.int32)
        k = tf.where(tf.equal(shape[1], shape[2]), k, 2 * (k % 2))
        return draw.per_example(lambda image, turns: tf.image.rot90(image, turns),
                                images, k)
    return fn


@register("tf.image.transpose", F, targets=TRANSFORMED, geometry=_transpose_geometry, uint8_exact=True, keeps_shape=False, test_params={})
def transpose():
    """Swap height and width."""
    return lambda images, seeds: tf.image.transpose(images)


# --- colour -----------------------------------------------------------------------------------

@register("tf.image.adjust_brightness", F, targets=UNCHANGED, xla=True, test_params={"delta": 0.1},
          params=[Param("delta", "float", low=-1.0, high=1.0)])
def adjust_brightness(delta):
    """Add `delta` to every pixel."""
    return _pointwise(lambda images, seeds: tf.image.adjust_brightness(images, delta))


@register("tf.image.random_brightness", F, targets=UNCHANGED, xla=True, random=True, test_params={"max_delta": 0.2},
          params=[Param("max_delta", "float", low=0.0, high=1.0)])
def random_brightness(max_delta):
    """Add a delta drawn from [-max_delta, max_delta) (tf.image.stateless_random_brightness)."""
    def fn(images, seeds):
        return images + draw.expand(draw.uniform(seeds, -max_delta, max_delta))
    return _pointwise(fn)


@register("tf.image.adjust_contrast", F, targets=UNCHANGED, xla=True, test_params={"contrast_factor": 1.5},
          params=[Param("contrast_factor", "float", low=0.0)])
def adjust_contrast(contrast_factor):
    """Scale each channel's distance from its mean by `contrast_factor`."""
    return _on_levels(lambda images, seeds: tf.image.adjust_contrast(images, contrast_factor),
                      _contrast_on_levels(lambda seeds: tf.constant(contrast_factor, tf.float32)))


def _per_image_factor(adjust, factors):
    """Apply a tf.image adjust_* op that takes a scalar factor, with one factor per example."""
    return lambda images, seeds: draw.per_example(adjust, images, factors(seeds))


def _on_levels(fn, levels):
    """The op `fn`, with its form on the 256 levels of uint8 pixels (augment.through_levels):
    levels(values float32 [B, 256, 1, C], seeds, mean_of) -> values, where values[b, v, 0, c]
    stands for the pixels of image b, channel c, whose stored level is v, and mean_of(values)
    is each image's channel means of the pixels they stand for, [B, 1, 1, C]."""
    fn.levels = levels
    return fn


def _pointwise(fn):
    """An op whose pixels depend only on their own value: on the levels, the op itself."""
    return _on_levels(fn, lambda values, seeds, mean_of: fn(values, seeds))


def _contrast_on_levels(factors):
    """adjust_contrast's arithmetic, mean + factor * (x - mean), for factors(seeds) per image
    (or one for all)."""
    def levels(values, seeds, mean_of):
        mean = mean_of(values)
        return mean + draw.expand(factors(seeds)) * (values - mean)
    return levels


@register("tf.image.random_contrast", F, targets=UNCHANGED, xla=True, random=True,
          test_params={"lower": 0.6, "upper": 1.4}, check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0)])
def random_contrast(lower, upper):
    """adjust_contrast with a factor drawn from [lower, upper) (stateless_random_contrast)."""
    def factors(seeds):
        return draw.uniform(seeds, lower, upper)
    return _on_levels(_per_image_factor(tf.image.adjust_contrast, factors),
                      _contrast_on_levels(factors))


@register("tf.image.adjust_saturation", F, targets=UNCHANGED, xla=True, test_params={"saturation_factor": 1.5},
          params=[Param("saturation_factor", "float", low=0.0)])
def adjust_saturation(saturation_factor):
    """Multiply saturation (in HSV) by `saturation_factor`; RGB images only."""
    return lambda images, seeds: tf.image.adjust_saturation(images, saturation_factor)


@register("tf.image.random_saturation", F, targets=UNCHANGED, xla=True, random=True,
          test_params={"lower": 0.5, "upper": 1.5}, check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0)])
def random_saturation(lower, upper):
    """adjust_saturation with a factor drawn from [lower, upper) (stateless_random_saturation)."""
    return _per_image_factor(tf.image.adjust_saturation,
                             lambda seeds: draw.uniform(seeds, lower, upper))


@register("tf.image.adjust_hue", F, targets=UNCHANGED, xla=True, test_params={"delta": 0.1},
          params=[Param("delta", "float", low=-1.0, high=1.0)])
def adjust_hue(delta):
    """Rotate hue by `delta` (a fraction of the hue circle); RGB images only."""
    return lambda images, seeds: tf.image.adjust_hue(images, delta)


@register("tf.image.random_hue", F, targets=UNCHANGED, xla=True, random=True, test_params={"max_delta": 0.1},
          params=[Param("max_delta", "float", low=0.0, high=0.5)])
def random_hue(max_delta):
    """adjust_hue with a delta drawn from [-max_delta, max_delta) (stateless_random_hue)."""
    return _per_image_factor(tf.image.adjust_hue,
                             lambda seeds: draw.uniform(seeds, -max_delta, max_delta))


@register("tf.image.adjust_gamma", F, targets=UNCHANGED, xla=True, test_params={"gamma": 0.8},
          params=[Param("gamma", "float", 1.0, low=0.0), Param("gain", "float", 1.0, low=0.0)])
def adjust_gamma(gamma, gain):
    """gain * image ** gamma."""
    return lambda images, seeds: tf.image.adjust_gamma(images, gamma, gain)


@register("tf.image.random_gamma", F, targets=UNCHANGED, xla=True, random=True, test_params={"lower": 0.7, "upper": 1.5},
          check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0),
                  Param("gain", "float", 1.0, low=0.0)])
def random_gamma(lower, upper, gain):
    """adjust_gamma with gamma drawn from [lower, upper) per example."""
    def fn(images, seeds):
        return gain * tf.pow(images, draw.expand(draw.uniform(seeds, lower, upper)))
    return fn


@register("tf.image.adjust_jpeg_quality", F, targets=UNCHANGED, test_params={"jpeg_quality": 30},
          params=[Param("jpeg_quality", "int", low=0, high=100)])
def adjust_jpeg_quality(jpeg_quality):
    """Re-encode as JPEG at `jpeg_quality` and decode again (compression artefacts)."""
    return lambda images, seeds: draw.per_example(
        lambda image, _: tf.image.adjust_jpeg_quality(image, jpeg_quality), images, seeds)


@register("tf.image.random_jpeg_quality", F, targets=UNCHANGED, random=True,
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

@register("tf.image.central_crop", F, targets=TRANSFORMED, geometry=_central_crop_geometry, uint8_exact=True, keeps_shape=False, test_params={"central_fraction": 0.8},
          params=[Param("central_fraction", "float", low=0.0, high=1.0)])
def central_crop(central_fraction):
    """Keep the central `central_fraction` of each side."""
    return lambda images, seeds: tf.image.central_crop(images, central_fraction)


@register("tf.image.random_crop", F, targets=TRANSFORMED, geometry=_random_crop_geometry, uint8_exact=True, random=True, keeps_shape=False,
          test_params={"height": 24, "width": 32},
          params=[Param("height", "int", low=1), Param("width", "int", low=1)])
def random_crop(height, width):
    """A height x width window at a position drawn per example (stateless_random_crop)."""
    def fn(images, seeds):
        size = tf.stack([height, width, tf.shape(images)[3]])
        return draw.per_example(
            lambda image, seed: tf.image.stateless_random_crop(image, size, seed), images, seeds)
    return fn


@register("tf.image.random_crop_and_resize", F, targets=TRANSFORMED, geometry=_crop_and_resize_geometry, random=True,
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


@register("tf.image.resize", F, targets=TRANSFORMED, geometry=_resize_geometry, keeps_shape=False, test_params={"height": 40, "width": 30},
          params=[Param("height", "int", low=1), Param("width", "int", low=1),
                  Param("method", "str", "bilinear", choices=METHODS),
                  Param("antialias", "bool", False),
                  Param("preserve_aspect_ratio", "bool", False)])
def resize(height, width, method, antialias, preserve_aspect_ratio):
    """Resize to height x width (tf.image.resize)."""
    return lambda images, seeds: tf.image.resize(
        images, (height, width), method=method, antialias=antialias,
        preserve_aspect_ratio=preserve_aspect_ratio)


BOX_PARAMS = [Param("offset_height", "int", low=0), Param("offset_width", "int", low=0),
              Param("target_height", "int", low=1), Param("target_width", "int", low=1)]


@register("tf.image.crop_to_bounding_box", F, targets=TRANSFORMED, geometry=_crop_geometry, uint8_exact=True, keeps_shape=False,
          test_params={"offset_height": 4, "offset_width": 6, "target_height": 24,
                       "target_width": 32},
          params=BOX_PARAMS)
def crop_to_bounding_box(offset_height, offset_width, target_height, target_width):
    """Keep the target_height x target_width box whose top-left corner is at the offsets."""
    return lambda images, seeds: tf.image.crop_to_bounding_box(
        images, offset_height, offset_width, target_height, target_width)


@register("tf.image.pad_to_bounding_box", F, targets=TRANSFORMED, geometry=_pad_geometry, keeps_shape=False,
          test_params={"offset_height": 2, "offset_width": 3, "target_height": 56,
                       "target_width": 64},
          params=BOX_PARAMS)
def pad_to_bounding_box(offset_height, offset_width, target_height, target_width):
    """Place the image at the offsets on a black target_height x target_width canvas."""
    return lambda images, seeds: tf.image.pad_to_bounding_box(
        images, offset_height, offset_width, target_height, target_width)


@register("tf.image.resize_with_crop_or_pad", F, targets=TRANSFORMED, geometry=_crop_or_pad_geometry, keeps_shape=False,
          test_params={"target_height": 40, "target_width": 56},
          params=[Param("target_height", "int", low=1), Param("target_width", "int", low=1)])
def resize_with_crop_or_pad(target_height, target_width):
    """Centre-crop or zero-pad each side to the target size (no resampling)."""
    return lambda images, seeds: tf.image.resize_with_crop_or_pad(
        images, target_height, target_width)


@register("tf.image.resize_with_pad", F, targets=TRANSFORMED, geometry=_letterbox_geometry, keeps_shape=False,
          test_params={"target_height": 40, "target_width": 40},
          params=[Param("target_height", "int", low=1), Param("target_width", "int", low=1),
                  Param("method", "str", "bilinear", choices=METHODS),
                  Param("antialias", "bool", False)])
def resize_with_pad(target_height, target_width, method, antialias):
    """Resize keeping the aspect ratio, then zero-pad to the target size (letterbox)."""
    return lambda images, seeds: tf.image.resize_with_pad(
        images, target_height, target_width, method=method, antialias=antialias)


@register("tf.image.rgb_to_grayscale", F, targets=UNCHANGED, test_params={})
def rgb_to_grayscale():
    """Grey by tf.image's luma weights, repeated in every channel (the channel count is kept)."""
    def fn(images, seeds):
        if images.shape[-1] == 1:
            return images
        grey = tf.image.rgb_to_grayscale(images)
        return tf.repeat(grey, images.shape[-1], axis=-1)
    return fn


# --- tf.image.stateless_random_*: TF's own ops, called once per example with its seed ----------
# Each equals tf.image.stateless_random_X(image, ..., seed) for that example's seed row.

def _stateless(fn):
    """fn(image [H, W, C], seed [2]) -> image, applied per example."""
    return lambda images, seeds: draw.per_example(fn, images, seeds)


@register("tf.image.stateless_random_brightness", F, targets=UNCHANGED, xla=True, random=True,
          test_params={"max_delta": 0.2},
          params=[Param("max_delta", "float", low=0.0, high=1.0)])
def stateless_random_brightness(max_delta):
    """Add a delta drawn from [-max_delta, max_delta)."""
    return _stateless(lambda image, seed: tf.image.stateless_random_brightness(
        image, max_delta, seed))


@register("tf.image.stateless_random_contrast", F, targets=UNCHANGED, xla=True, random=True,
          test_params={"lower": 0.6, "upper": 1.4}, check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0)])
def stateless_random_contrast(lower, upper):
    """adjust_contrast with a factor drawn from [lower, upper)."""
    return _stateless(lambda image, seed: tf.image.stateless_random_contrast(
        image, lower, upper, seed))


@register("tf.image.stateless_random_hue", F, targets=UNCHANGED, xla=True, random=True, test_params={"max_delta": 0.1},
          params=[Param("max_delta", "float", low=0.0, high=0.5)])
def stateless_random_hue(max_delta):
    """adjust_hue with a delta drawn from [-max_delta, max_delta); RGB images only."""
    return _stateless(lambda image, seed: tf.image.stateless_random_hue(image, max_delta, seed))


@register("tf.image.stateless_random_saturation", F, targets=UNCHANGED, xla=True, random=True,
          test_params={"lower": 0.5, "upper": 1.5}, check=_pair_ordered("lower", "upper"),
          params=[Param("lower", "float", low=0.0), Param("upper", "float", low=0.0)])
def stateless_random_saturation(lower, upper):
    """adjust_saturation with a factor drawn from [lower, upper); RGB images only."""
    return _stateless(lambda image, seed: tf.image.stateless_random_saturation(
        image, lower, upper, seed))


@register("tf.image.stateless_random_jpeg_quality", F, targets=UNCHANGED, random=True,
          test_params={"min_jpeg_quality": 20, "max_jpeg_quality": 80},
          check=_pair_ordered("min_jpeg_quality", "max_jpeg_quality"),
          params=[Param("min_jpeg_quality", "int", low=0, high=100),
                  Param("max_jpeg_quality", "int", low=0, high=100)])
def stateless_random_jpeg_quality(min_jpeg_quality, max_jpeg_quality):
    """JPEG round trip at a quality drawn from [min_jpeg_quality, max_jpeg_quality)."""
    return _stateless(lambda image, seed: tf.image.stateless_random_jpeg_quality(
        image, min_jpeg_quality, max_jpeg_quality, seed))


@register("tf.image.stateless_random_flip_left_right", F, targets=TRANSFORMED, geometry=_flip_geometry("x", _stateless_coin), uint8_exact=True, xla=True, random=True, test_params={})
def stateless_random_flip_left_right():
    """Mirror horizontally with probability 1/2."""
    return _stateless(tf.image.stateless_random_flip_left_right)


@register("tf.image.stateless_random_flip_up_down", F, targets=TRANSFORMED, geometry=_flip_geometry("y", _stateless_coin), uint8_exact=True, xla=True, random=True, test_params={})
def stateless_random_flip_up_down():
    """Mirror vertically with probability 1/2."""
    return _stateless(tf.image.stateless_random_flip_up_down)


def _crop_size(params):
    if len(params["size"]) not in (2, 3) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in params["size"]):
        return f"size: expected [height, width] (or [height, width, channels]) of positive " \
               f"integers, got {params['size']!r}"
    return None


@register("tf.image.stateless_random_crop", F, targets=TRANSFORMED, geometry=_stateless_crop_geometry, uint8_exact=True, random=True, keeps_shape=False,
          test_params={"size": [24, 32]}, check=_crop_size,
          params=[Param("size", "list", help="[height, width] of the crop; a third entry, the "
                        "channel count, is accepted as in TF")])
def stateless_random_crop(size):
    """A size[0] x size[1] window at a position drawn per example."""
    def fn(images, seeds):
        full = tf.stack([size[0], size[1], tf.shape(images)[3]])
        return _stateless(lambda image, seed: tf.image.stateless_random_crop(
            image, full, seed))(images, seeds)
    return fn


@register("tf.image.stateless_sample_distorted_bounding_box", F, targets=TRANSFORMED, geometry=_distorted_box_geometry, random=True,
          test_params={"area_range": [0.3, 1.0]},
          params=[Param("min_object_covered", "float", 0.1, low=0.0, high=1.0),
                  Param("aspect_ratio_range", "range", [0.75, 1.33], low=0.01),
                  Param("area_range", "range", [0.05, 1.0], low=0.001, high=1.0),
                  Param("max_attempts", "int", 100, low=1),
                  Param("method", "str", "bilinear", choices=METHODS)])
def stateless_sample_distorted_bounding_box(min_object_covered, aspect_ratio_range, area_range,
                                            max_attempts, method):
    """Inception-style crop: the box TF's sampler draws (whole image as the object), resized
    back to the input size."""
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

    def one(image, seed):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), whole_image, seed, min_object_covered=min_object_covered,
            aspect_ratio_range=aspect_ratio_range, area_range=area_range,
            max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
        crop = tf.slice(image, begin, size)
        return tf.image.resize(crop, tf.shape(image)[:2], method=method)
    return _stateless(one)

"""tfa.image ops re-implemented on core TensorFlow only (no tensorflow_addons import).

tensorflow-addons is end-of-life and does not import on TF >= 2.16 / Keras 3. Every function here
has the signature (argument names, order and defaults) and the math of its `tfa.image` namesake
(tensorflow-addons 0.23.0), so callers get the same pixels on either stack;
tests/test_tfa_core.py compares them against tfa itself. As in tfa: images may be 2-, 3- or 4-D,
their rank known only when the graph runs; median_filter2d, interpolate_bilinear and
dense_image_warp are tf.functions (get_concrete_function works); a bad filter_shape is a
ValueError; a grid narrower or lower than 2 pixels fails with tfa's message; flows and query
points may be any float type (tests/test_tfa_core_compat.py, on both stacks).

What differs from tfa.image 0.23.0:
- random_cutout and random_hsv_in_yiq draw a stateless seed from TensorFlow's global random
  state (honouring tf.random.set_seed and the op-level `seed`, like tfa), then call
  stateless_random_cutout / stateless_random_hsv_in_yiq (extra here: `seed` an int [2] tensor,
  as tf.random.stateless_* take). Same distributions, not tfa's numbers.
- adjust_hsv_in_yiq is tfa's matrix formulation in TensorFlow ops; tfa runs a C++ kernel for
  it, which differs in the last bits (the tolerance is stated in tests/test_tfa_core.py).
- Extra here: rotation_transforms, angles_to_projective_transforms from the angles' sines
  and cosines (tfa_image.rotate's, with the native ops' sine and cosine).
- Not here: connected_components, euclidean_dist_transform, interpolate_spline, resampler and
  sparse_image_warp (augbatch's ops use none of them).
"""
import tensorflow as tf

_IMAGE_DTYPES = {tf.uint8, tf.int32, tf.int64, tf.float16, tf.float32, tf.float64}


# --- shape helpers ---------------------------------------------------------------------------

def _to_4d(image):
    """[H, W] / [H, W, C] / [B, H, W, C] -> ([B, H, W, C], original rank). The rank may be
    unknown until run time (then it is returned as a tensor, and checked when the graph runs)."""
    ndims = image.shape.rank
    if ndims is None:
        ndims = tf.rank(image)
        check = tf.debugging.assert_equal(
            (ndims >= 2) & (ndims <= 4), True, message="`image` must be a 2/3/4-D tensor")
        with tf.control_dependencies([check]):
            shape = tf.shape(image)
        # One leading 1 unless already 4-D, one trailing 1 if 2-D.
        lead = tf.ones([tf.cast(ndims <= 3, tf.int32)], tf.int32)
        trail = tf.ones([tf.cast(ndims == 2, tf.int32)], tf.int32)
        image4 = tf.reshape(image, tf.concat([lead, shape, trail], 0))
        image4.set_shape([None] * 4)
        return image4, ndims
    if ndims not in (2, 3, 4):
        raise ValueError(f"`image` must be a 2/3/4-D tensor, got {image.shape}")
    if ndims == 2:
        return image[None, :, :, None], ndims
    return (image[None] if ndims == 3 else image), ndims


def _from_4d(image, ndims):
    """Undo `_to_4d`."""
    if isinstance(ndims, tf.Tensor):  # the rank was unknown: drop what _to_4d added
        shape = tf.shape(image)
        return tf.reshape(image, shape[tf.cast(ndims <= 3, tf.int32):
                                       4 - tf.cast(ndims == 2, tf.int32)])
    if ndims == 2:
        return tf.squeeze(image, [0, 3])
    return tf.squeeze(image, [0]) if ndims == 3 else image


def _pair(value, what):
    """An int or a 2-sequence -> tuple of 2 ints (keras normalize_tuple)."""
    if isinstance(value, int):
        return (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2:  # ValueError, as tfa raises for e.g. (3, None, 3)
        raise ValueError(f"{what} must be an int or a tuple of 2 ints, got {value}")
    return pair


def _wrap(image):
    """Append an all-ones channel to a 3-D image (marks pixels that came from the input)."""
    shape = tf.shape(image)
    return tf.concat([image, tf.ones([shape[0], shape[1], 1], image.dtype)], 2)


def _unwrap(image, replace):
    """Drop the ones channel added by `_wrap`, setting pixels where it is not 1 to `replace`."""
    replace = tf.cast(tf.convert_to_tensor(replace), image.dtype)
    replace = tf.broadcast_to(replace, tf.shape(image)[-1:] - 1)
    replace = tf.concat([replace, tf.ones([1], image.dtype)], 0)
    return tf.where(tf.equal(image[..., -1:], 1), image, replace)[..., :-1]


# --- projective transforms -------------------------------------------------------------------

def transform(images, transforms, interpolation="nearest", fill_mode="constant", output_shape=None,
              name=None, fill_value=0.0):
    """Apply projective transform(s) [a0 a1 a2 b0 b1 b2 c0 c1] (output -> input) to image(s)."""
    with tf.name_scope(name or "transform"):
        images = tf.convert_to_tensor(images, name="images")
        if images.dtype.base_dtype not in _IMAGE_DTYPES:
            raise TypeError(f"Invalid dtype {images.dtype}.")
        transforms = tf.convert_to_tensor(transforms, tf.float32, name="transforms")
        if transforms.shape.rank not in (1, 2):
            raise ValueError(f"transforms should have static rank 1 or 2, got {transforms.shape}")
        images4, ndims = _to_4d(images)
        if output_shape is None:
            output_shape = tf.shape(images4)[1:3]
        output_shape = tf.convert_to_tensor(output_shape, tf.int32, name="output_shape")
        if not output_shape.shape.is_compatible_with([2]):
            raise ValueError("output_shape must be a 1-D Tensor of 2 elements: height, width")
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=images4, transforms=tf.reshape(transforms, [-1, 8]),
            output_shape=output_shape, fill_value=tf.convert_to_tensor(fill_value, tf.float32),
            interpolation=interpolation.upper(), fill_mode=fill_mode.upper())
        return _from_4d(out, ndims)


def flat_transforms_to_matrices(transforms, name=None):
    """[8] or [N, 8] flat transforms -> [N, 3, 3] matrices (output -> input coordinates)."""
    with tf.name_scope(name or "flat_transforms_to_matrices"):
        transforms = tf.convert_to_tensor(transforms, name="transforms")
        if transforms.shape.rank not in (1, 2):
            raise ValueError(f"Transforms should be 1D or 2D, got: {transforms}")
        transforms = tf.reshape(transforms, [-1, 8])
        ones = tf.ones([tf.shape(transforms)[0], 1], transforms.dtype)
        return tf.reshape(tf.concat([transforms, ones], axis=1), [-1, 3, 3])


def matrices_to_flat_transforms(transform_matrices, name=None):
    """[3, 3] or [N, 3, 3] matrices (output -> input) -> [N, 8] flat transforms."""
    with tf.name_scope(name or "matrices_to_flat_transforms"):
        matrices = tf.convert_to_tensor(transform_matrices, name="transform_matrices")
        if matrices.shape.rank not in (2, 3):
            raise ValueError(f"Matrices should be 2D or 3D, got: {matrices}")
        flat = tf.reshape(matrices, [-1, 9])
        return (flat / flat[:, 8:9])[:, :8]


def compose_transforms(transforms, name=None):
    """Compose a list of flat transforms into one that applies them all, in list order."""
    assert transforms, "transforms cannot be empty"
    with tf.name_scope(name or "compose_transforms"):
        composed = flat_transforms_to_matrices(transforms[0])
        for tr in transforms[1:]:
            composed = tf.matmul(composed, flat_transforms_to_matrices(tr))
        return matrices_to_flat_transforms(composed)


def angles_to_projective_transforms(angles, image_height, image_width, name=None):
    """[N, 8] transforms rotating images counterclockwise by `angles` (radians) about the centre."""
    with tf.name_scope(name or "angles_to_projective_transforms"):
        angles = tf.convert_to_tensor(angles, tf.float32, name="angles")
        if angles.shape.rank not in (0, 1):
            raise ValueError("angles should have rank 0 or 1.")
        angles = tf.reshape(angles, [-1])
        return rotation_transforms(tf.math.sin(angles), tf.math.cos(angles), image_height,
                                   image_width)


def rotation_transforms(sin, cos, image_height, image_width):
    """angles_to_projective_transforms from the angles' sines and cosines [N]."""
    x_offset = ((image_width - 1) - (cos * (image_width - 1) - sin * (image_height - 1))) / 2
    y_offset = ((image_height - 1) - (sin * (image_width - 1) + cos * (image_height - 1))) / 2
    zeros = tf.zeros_like(sin)
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)


def rotate(images, angles, interpolation="nearest", fill_mode="constant", name=None,
           fill_value=0.0):
    """Rotate image(s) counterclockwise by `angles` radians (scalar, or one per image)."""
    with tf.name_scope(name or "rotate"):
        images = tf.convert_to_tensor(images)
        images4, ndims = _to_4d(images)
        height = tf.cast(tf.shape(images4)[1], tf.float32)[None]
        width = tf.cast(tf.shape(images4)[2], tf.float32)[None]
        out = transform(images4, angles_to_projective_transforms(angles, height, width),
                        interpolation=interpolation, fill_mode=fill_mode, fill_value=fill_value)
        return _from_4d(out, ndims)


def translations_to_projective_transforms(translations, name=None):
    """[N, 8] transforms shifting images by [dx, dy] (a [2] vector or an [N, 2] matrix)."""
    with tf.name_scope(name or "translations_to_projective_transforms"):
        translations = tf.convert_to_tensor(translations, tf.float32, name="translations")
        if translations.shape.rank not in (1, 2):
            raise TypeError("Translations should have static rank 1 or 2.")
        translations = tf.reshape(translations, [-1, 2])
        ones = tf.ones_like(translations[:, 0])
        zeros = tf.zeros_like(ones)
        return tf.stack([ones, zeros, -translations[:, 0], zeros, ones, -translations[:, 1],
                         zeros, zeros], axis=1)


def translate(images, translations, interpolation="nearest", fill_mode="constant", name=None,
              fill_value=0.0):
    """Shift image(s) by [dx, dy] pixels (one vector, or one per image)."""
    with tf.name_scope(name or "translate"):
        return transform(images, translations_to_projective_transforms(translations),
                         interpolation=interpolation, fill_mode=fill_mode, fill_value=fill_value)


def translate_xy(image, translate_to, replace):
    """Shift a 3-D image by `translate_to` [dx, dy], filling uncovered pixels with `replace`."""
    trans = tf.convert_to_tensor(translate_to)
    out = translate(_wrap(tf.convert_to_tensor(image)), [trans[0], trans[1]])
    return _unwrap(out, replace)


def shear_x(image, level, replace):
    """Shear a 3-D image along x by `level`, filling uncovered pixels with `replace`."""
    out = transform(_wrap(tf.convert_to_tensor(image)), [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    return _unwrap(out, replace)


def shear_y(image, level, replace):
    """Shear a 3-D image along y by `level`, filling uncovered pixels with `replace`."""
    out = transform(_wrap(tf.convert_to_tensor(image)), [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])
    return _unwrap(out, replace)


# --- filters ---------------------------------------------------------------------------------

def _pad(image, filter_shape, mode, constant_values):
    """Pad a 4-D image so a VALID `filter_shape` filter keeps its size (extra on bottom/right)."""
    if mode.upper() not in {"REFLECT", "CONSTANT", "SYMMETRIC"}:
        raise ValueError('padding should be one of "REFLECT", "CONSTANT", or "SYMMETRIC".')
    (fh, fw) = filter_shape
    paddings = [[0, 0], [(fh - 1) // 2, fh // 2], [(fw - 1) // 2, fw // 2], [0, 0]]
    return tf.pad(image, paddings, mode=mode,
                  constant_values=tf.convert_to_tensor(constant_values, image.dtype))


def _depthwise(image, kernel2d):
    """Apply one [h, w] kernel to every channel of a padded 4-D image (VALID)."""
    kernel = tf.tile(kernel2d[:, :, None, None], [1, 1, tf.shape(image)[3], 1])
    return tf.nn.depthwise_conv2d(image, kernel, strides=(1, 1, 1, 1), padding="VALID")


def _gaussian_kernel(sigma, size):
    """1-D Gaussian weights (softmax of -x^2 / 2 sigma^2) over `size` taps."""
    x = tf.cast(tf.range(-size // 2 + 1, size // 2 + 1) ** 2, sigma.dtype)
    return tf.nn.softmax(-x / (2.0 * sigma ** 2))


@tf.function  # like tfa: grappler constant-folds the kernel, which eager rounds differently
def gaussian_filter2d(image, filter_shape=(3, 3), sigma=1.0, padding="REFLECT", constant_values=0,
                      name=None):
    """Gaussian blur of image(s); `sigma` is a float or (sigma_y, sigma_x)."""
    with tf.name_scope(name or "gaussian_filter2d"):
        return _gaussian_filter2d(image, filter_shape, sigma, padding, constant_values)


def _gaussian_filter2d(image, filter_shape, sigma, padding, constant_values):
    sigma = tuple(sigma) if isinstance(sigma, (list, tuple)) else (sigma, sigma)
    if len(sigma) != 2:
        raise ValueError("sigma should be a float or a tuple/list of 2 floats")
    if any(s < 0 for s in sigma):
        raise ValueError("sigma should be greater than or equal to 0.")
    image4, ndims = _to_4d(tf.convert_to_tensor(image, name="image"))
    orig_dtype = image4.dtype
    if not orig_dtype.is_floating:
        image4 = tf.cast(image4, tf.float32)
    fh, fw = _pair(filter_shape, "filter_shape")
    sigma = tf.cast(tf.convert_to_tensor(sigma), image4.dtype)
    kernel = tf.matmul(_gaussian_kernel(sigma[0], fh)[:, None],
                       _gaussian_kernel(sigma[1], fw)[None])
    out = _depthwise(_pad(image4, (fh, fw), padding, constant_values), kernel)
    return tf.cast(_from_4d(out, ndims), orig_dtype)


@tf.function  # like tfa: in a graph, grappler turns `/ area` into a multiply by 1 / area
def mean_filter2d(image, filter_shape=(3, 3), padding="REFLECT", constant_values=0, name=None):
    """Box (mean) filter of image(s)."""
    with tf.name_scope(name or "mean_filter2d"):
        return _mean_filter2d(image, filter_shape, padding, constant_values)


def _mean_filter2d(image, filter_shape, padding, constant_values):
    image4, ndims = _to_4d(tf.convert_to_tensor(image, name="image"))
    orig_dtype = image4.dtype
    if not orig_dtype.is_floating:
        image4 = tf.cast(image4, tf.float32)
    fh, fw = _pair(filter_shape, "filter_shape")
    out = _depthwise(_pad(image4, (fh, fw), padding, constant_values),
                     tf.ones([fh, fw], image4.dtype))
    out /= tf.constant(fh * fw, image4.dtype)
    return tf.cast(_from_4d(out, ndims), orig_dtype)


@tf.function  # as tfa makes it (get_concrete_function works)
def median_filter2d(image, filter_shape=(3, 3), padding="REFLECT", constant_values=0, name=None):
    """Median filter of image(s); even windows average the two middle values."""
    with tf.name_scope(name or "median_filter2d"):
        return _median_filter2d(image, filter_shape, padding, constant_values)


def _median_filter2d(image, filter_shape, padding, constant_values):
    image4, ndims = _to_4d(tf.convert_to_tensor(image, name="image"))
    fh, fw = _pair(filter_shape, "filter_shape")
    b, h, w, c = tf.unstack(tf.shape(image4))
    area = fh * fw
    patches = tf.image.extract_patches(_pad(image4, (fh, fw), padding, constant_values),
                                       sizes=[1, fh, fw, 1], strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding="VALID")
    patches = tf.transpose(tf.reshape(patches, [b, h, w, area, c]), [0, 1, 2, 4, 3])
    top = tf.nn.top_k(patches, k=area // 2 + 1).values
    lo, hi = (area + 1) // 2 - 1, area // 2
    median = top[..., lo] if area % 2 else (top[..., lo] + top[..., hi]) / 2
    return _from_4d(tf.cast(median, image4.dtype), ndims)


# --- cutout ----------------------------------------------------------------------------------

def _mask_size_pair(mask_size):
    """Check `mask_size` is even and return it as an int32 [2] (height, width)."""
    mask_size = tf.convert_to_tensor(mask_size)
    tf.debugging.assert_equal(tf.reduce_any(mask_size % 2 != 0), False,
                              "mask_size should be divisible by 2")
    return tf.cast(tf.broadcast_to(mask_size, [2]), tf.int32)


def cutout(images, mask_size, offset=(0, 0), constant_values=0):
    """Fill a mask_size box centred at `offset` (y, x; or one per image) with constant_values."""
    images4, ndims = _to_4d(tf.convert_to_tensor(images))
    half = _mask_size_pair(mask_size) // 2
    offset = tf.reshape(tf.cast(tf.convert_to_tensor(offset), tf.int32), [-1, 2])
    rows = tf.range(tf.shape(images4)[1])[None, :, None]
    cols = tf.range(tf.shape(images4)[2])[None, None, :]
    # offset[:, 0][:, None, None], not offset[:, 0, None, None]: the latter meets a grappler
    # shape bug after tf.stack inside tf.function.
    cy, cx = offset[:, 0][:, None, None], offset[:, 1][:, None, None]
    inside = ((rows >= cy - half[0]) & (rows < cy + half[0])
              & (cols >= cx - half[1]) & (cols < cx + half[1]))
    out = tf.where(inside[..., None], tf.cast(constant_values, images4.dtype), images4)
    return _from_4d(out, ndims)


def stateless_random_cutout(images, mask_size, seed, constant_values=0):
    """`cutout` at a uniformly drawn centre per image (tfa.image.random_cutout, stateless seed)."""
    images4, ndims = _to_4d(tf.convert_to_tensor(images))
    mask = _mask_size_pair(mask_size)
    shape = tf.shape(images4)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    centres = []
    for i in range(2):
        size, half = shape[i + 1], mask[i] // 2
        drawn = tf.random.stateless_uniform([shape[0]], seeds[i], minval=half,
                                            maxval=tf.maximum(size - half, half + 1),
                                            dtype=tf.int32)
        centres.append(tf.where(mask[i] >= size, tf.fill([shape[0]], size // 2), drawn))
    out = cutout(images4, mask, tf.stack(centres, axis=1), constant_values)
    return _from_4d(out, ndims)


def random_cutout(images, mask_size, constant_values=0, seed=None):
    """tfa.image.random_cutout: `stateless_random_cutout` seeded from TF's global random state
    (and the op-level `seed`), so a call draws anew as tfa's does (not the same numbers)."""
    return stateless_random_cutout(images, mask_size, _stateful_seed(seed), constant_values)


def _stateful_seed(seed):
    """An int32 [2] stateless seed drawn from TF's global random state (op-level `seed`)."""
    return tf.random.uniform([2], -2 ** 31, 2 ** 31 - 1, tf.int32, seed=seed)


# --- color -----------------------------------------------------------------------------------

def blend(image1, image2, factor):
    """image1 + factor * (image2 - image1), rounded, clipped to [0, 255] unless 0 < factor < 1."""
    static = tf.get_static_value(factor)
    if static is not None:
        factor = float(static)
        if factor == 0.0:
            return tf.convert_to_tensor(image1)
        if factor == 1.0:
            return tf.convert_to_tensor(image2)
    else:
        factor = tf.cast(factor, tf.float32)
    image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    temp = image1 + factor * (image2 - image1)
    if static is not None:
        if 0.0 < factor < 1.0:
            return tf.round(temp)
        return tf.round(tf.clip_by_value(temp, 0.0, 255.0))
    out = tf.where((factor > 0.0) & (factor < 1.0), tf.round(temp),
                   tf.round(tf.clip_by_value(temp, 0.0, 255.0)))
    return tf.where(factor == 0.0, image1, tf.where(factor == 1.0, image2, out))


def equalize(image, bins=256, name=None):
    """Histogram-equalize each channel of image(s) like PIL.ImageOps.equalize."""
    with tf.name_scope(name or "equalize"):
        return _equalize(image, bins)


def _equalize(image, bins):
    image4, ndims = _to_4d(tf.convert_to_tensor(image))
    b, h, w, c = tf.unstack(tf.shape(image4))
    values = tf.reshape(tf.transpose(tf.cast(image4, tf.int32), [0, 3, 1, 2]), [b * c, h * w])
    # Bin index exactly as tf.histogram_fixed_width(values, [0, bins - 1], nbins=bins) computes it.
    width = (bins - 1) / bins
    index = tf.cast(tf.minimum(tf.cast(tf.maximum(values, 0), tf.float64) / width, bins - 1.0),
                    tf.int32)
    histo = tf.math.bincount(index, minlength=bins, maxlength=bins, axis=-1)
    last_nonzero = bins - 1 - tf.argmax(tf.reverse(histo, [1]) != 0, axis=1, output_type=tf.int32)
    last = tf.gather(histo, last_nonzero, batch_dims=1)
    step = (tf.reduce_sum(histo, axis=1) - last) // (bins - 1)
    safe_step = tf.maximum(step, 1)[:, None]
    lut = tf.clip_by_value((tf.cumsum(histo, axis=1, exclusive=True) + safe_step // 2) // safe_step,
                           0, bins - 1)
    result = tf.where(step[:, None] == 0, values, tf.gather(lut, values, batch_dims=1))
    result = tf.transpose(tf.reshape(result, [b, c, h, w]), [0, 2, 3, 1])
    return _from_4d(tf.cast(result, image4.dtype), ndims)


def sharpness(image, factor, name=None):
    """PIL-style sharpness: blend a 3x3 smoothed copy (border kept) with the image by `factor`."""
    with tf.name_scope(name or "sharpness"):
        return _sharpness(image, factor)


def _sharpness(image, factor):
    image4, ndims = _to_4d(tf.convert_to_tensor(image))
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    degenerate = tf.cast(_depthwise(tf.cast(image4, tf.float32), kernel), image4.dtype)
    inner = tf.pad(tf.ones_like(degenerate), [[0, 0], [1, 1], [1, 1], [0, 0]])
    smoothed = tf.where(tf.equal(inner, 1), tf.pad(degenerate, [[0, 0], [1, 1], [1, 1], [0, 0]]),
                        image4)
    return _from_4d(tf.cast(blend(smoothed, image4, factor), image4.dtype), ndims)


_YIQ = ((0.299, 0.596, 0.211), (0.587, -0.274, -0.523), (0.114, -0.322, 0.312))
_YIQ_INVERSE = ((1.0, 1.0, 1.0), (0.95617069, -0.2726886, -1.103744),
                (0.62143257, -0.64681324, 1.70062309))


def adjust_hsv_in_yiq(image, delta_hue=0, scale_saturation=1, scale_value=1, name=None):
    """Rotate hue by delta_hue (radians) and scale saturation/value of RGB image(s) in YIQ space."""
    with tf.name_scope(name or "adjust_hsv_in_yiq"):
        return _adjust_hsv_in_yiq(image, delta_hue, scale_saturation, scale_value)


def _adjust_hsv_in_yiq(image, delta_hue, scale_saturation, scale_value):
    image = tf.convert_to_tensor(image, name="image")
    if image.shape.rank is not None and image.shape.rank < 3:
        raise ValueError("input must be at least 3-D.")
    if image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(f"input must have 3 channels but instead has {image.shape[-1]}.")
    orig_dtype = image.dtype
    if not orig_dtype.is_floating:
        image = tf.image.convert_image_dtype(image, tf.float32)
    h, s, v = (tf.cast(x, image.dtype) for x in (delta_hue, scale_saturation, scale_value))
    vsu, vsw = v * s * tf.math.cos(h), v * s * tf.math.sin(h)
    zero = tf.zeros_like(v)
    hsv = tf.stack([tf.stack([v, zero, zero]), tf.stack([zero, vsu, vsw]),
                    tf.stack([zero, -vsw, vsu])])
    matrix = tf.constant(_YIQ, image.dtype) @ hsv @ tf.constant(_YIQ_INVERSE, image.dtype)
    return tf.image.convert_image_dtype(image @ matrix, orig_dtype)


def stateless_random_hsv_in_yiq(image, max_delta_hue, lower_saturation, upper_saturation,
                                lower_value, upper_value, seed):
    """`adjust_hsv_in_yiq` with hue/saturation/value drawn uniformly from the given ranges."""
    if max_delta_hue < 0 or lower_saturation < 0 or lower_value < 0:
        raise ValueError("max_delta_hue, lower_saturation and lower_value must be non-negative.")
    if lower_saturation > upper_saturation or lower_value > upper_value:
        raise ValueError("lower_* must not be greater than upper_*.")
    seeds = tf.random.experimental.stateless_split(seed, 3)

    def draw(i, low, high):
        """One uniform scalar in [low, high), or `low` itself when the range is empty."""
        return low if low == high else tf.random.stateless_uniform([], seeds[i], low, high)

    return adjust_hsv_in_yiq(image, draw(0, -max_delta_hue, max_delta_hue),
                             draw(1, lower_saturation, upper_saturation),
                             draw(2, lower_value, upper_value))


def random_hsv_in_yiq(image, max_delta_hue=0, lower_saturation=1, upper_saturation=1,
                      lower_value=1, upper_value=1, seed=None, name=None):
    """tfa.image.random_hsv_in_yiq: `stateless_random_hsv_in_yiq` seeded from TF's global
    random state (and the op-level `seed`), so a call draws anew as tfa's does."""
    with tf.name_scope(name or "random_hsv_in_yiq"):
        return stateless_random_hsv_in_yiq(image, max_delta_hue, lower_saturation,
                                           upper_saturation, lower_value, upper_value,
                                           _stateful_seed(seed))


# --- dense warp ------------------------------------------------------------------------------

@tf.function  # as tfa makes it (get_concrete_function works)
def interpolate_bilinear(grid, query_points, indexing="ij", name=None):
    """Bilinearly sample grid [B, H, W, C] at query_points [B, N, 2] (clamped to the border)."""
    if indexing not in ("ij", "xy"):
        raise ValueError("Indexing mode must be 'ij' or 'xy'")
    with tf.name_scope(name or "interpolate_bilinear"):
        return _interpolate_bilinear(grid, query_points, indexing)


def _interpolate_bilinear(grid, query_points, indexing):
    grid, query_points = tf.convert_to_tensor(grid), tf.convert_to_tensor(query_points)
    shape = tf.shape(grid)  # a rank unknown until run time is checked then
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    checks = [tf.debugging.assert_rank(grid, 4, message="Grid must be 4 dimensional."),
              tf.debugging.assert_greater_equal(h, 2, message="Grid height must be at least 2."),
              tf.debugging.assert_greater_equal(w, 2, message="Grid width must be at least 2.")]
    with tf.control_dependencies(checks):
        queries = [query_points[:, :, 0], query_points[:, :, 1]]
    if indexing == "xy":
        queries = queries[::-1]
    floors, alphas = [], []
    for query, size in zip(queries, (h, w)):
        zero = tf.zeros([], query.dtype)  # not 0.0: float16/float64 queries inside tf.function
        floor = tf.minimum(tf.maximum(zero, tf.math.floor(query)), tf.cast(size - 2, query.dtype))
        floors.append(tf.cast(floor, tf.int32))
        alpha = tf.clip_by_value(tf.cast(query - floor, grid.dtype), 0.0, 1.0)
        alphas.append(alpha[:, :, None])
    flat = tf.reshape(grid, [b, h * w, c])

    def at(y, x):
        """Grid values at integer (y, x) per query."""
        return tf.gather(flat, y * w + x, batch_dims=1)

    (y0, x0), (ay, ax) = floors, alphas
    top_left, top_right = at(y0, x0), at(y0, x0 + 1)
    bottom_left, bottom_right = at(y0 + 1, x0), at(y0 + 1, x0 + 1)
    top = ax * (top_right - top_left) + top_left
    bottom = ax * (bottom_right - bottom_left) + bottom_left
    return ay * (bottom - top) + top


@tf.function  # as tfa makes it (get_concrete_function works)
def dense_image_warp(image, flow, name=None):
    """Warp image [B, H, W, C]: output[b, y, x] = image[b, y - flow[..., 0], x - flow[..., 1]]."""
    with tf.name_scope(name or "dense_image_warp"):
        return _dense_image_warp(image, flow)


def _dense_image_warp(image, flow):
    image, flow = tf.convert_to_tensor(image), tf.convert_to_tensor(flow)
    shape = tf.shape(image)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    grid_x, grid_y = tf.meshgrid(tf.range(w), tf.range(h))
    grid = tf.cast(tf.stack([grid_y, grid_x], axis=2), flow.dtype)[None]
    queries = tf.reshape(grid - flow, [b, h * w, 2])
    return tf.reshape(_interpolate_bilinear(image, queries, "ij"), [b, h, w, c])

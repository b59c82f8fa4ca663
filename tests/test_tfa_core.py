"""pipeline.ops.tfa_core against tensorflow-addons itself, on real photos from sample_data/.

Exact equality wherever both sides run the same TF kernels in the same order; the one tolerance
(adjust_hsv_in_yiq vs tfa's C++ kernel) is stated where it is used.
"""
import glob
import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_addons as tfa  # noqa: E402 (conftest leaves this file out where tfa is absent)

from pipeline.ops import tfa_core as core  # noqa: E402

# tfa warns on every call of its C++ adjust_hsv_in_yiq kernel; we call it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:C\\+\\+/CUDA kernel:DeprecationWarning")

H, W = 48, 64
INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")

SAMPLE_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "sample_data", "images")
PREFERRED = ("chelsea_01.jpg", "astronaut_01.jpg", "coffee_01.jpg", "brick_01.jpg")


def _synthetic():
    """A 48x64x3 uint8 stand-in photo (used only without sample_data): gradients, shapes, noise."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.stack([255 * x / (W - 1), 255 * y / (H - 1),
                    128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)], -1)
    img[(y - 20) ** 2 + (x - 40) ** 2 < 12 ** 2] = (250, 30, 60)
    img[30:40, 5:25] = (20, 200, 90)
    img += np.random.default_rng(0).normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _photos():
    """Four real sample JPEGs (cat, astronaut, coffee, brick), centre-cropped to 48x64, uint8."""
    rank = {name: i for i, name in enumerate(PREFERRED)}
    paths = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*.jpg")),
                   key=lambda p: (rank.get(os.path.basename(p), len(rank)), p))[:4]
    if len(paths) < 4:
        base = _synthetic()
        return np.stack([base, base[::-1], base[:, ::-1], 255 - base])
    crops = []
    for path in paths:
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()
        top, left = (img.shape[0] - H) // 2, (img.shape[1] - W) // 2
        crops.append(img[top:top + H, left:left + W])
    return np.stack(crops)


BATCH = _photos()  # [4, 48, 64, 3] uint8
PHOTO = BATCH[0]  # the cat


def image(kind):
    """Test inputs: {u8, f32 (in [0,1]), f255 (float in [0,255])} x {single 3-D, batch 4-D}."""
    dtype, rank = kind.split("-")
    arr = PHOTO if rank == "hwc" else BATCH
    if dtype == "f32":
        arr = arr.astype(np.float32) / 255.0
    elif dtype == "f255":
        arr = arr.astype(np.float32)
    return tf.constant(arr)


KINDS = ("u8-hwc", "u8-bhwc", "f32-hwc", "f32-bhwc")


def assert_same(ours, theirs):
    """Bit-for-bit equal, same dtype and shape."""
    ours, theirs = tf.convert_to_tensor(ours), tf.convert_to_tensor(theirs)
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


# --- projective transforms -------------------------------------------------------------------

PROJECTIVE = [0.9, 0.15, 3.5, -0.1, 1.05, -2.0, 0.0008, -0.0006]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_transform(kind, interpolation, fill_mode):
    images = image(kind)
    transforms = PROJECTIVE
    if images.shape.rank == 4:  # one transform per image
        transforms = [[t * (1 + 0.05 * i) if j < 6 else t for j, t in enumerate(PROJECTIVE)]
                      for i in range(4)]
    args = dict(interpolation=interpolation, fill_mode=fill_mode, fill_value=0.25)
    assert_same(core.transform(images, transforms, **args),
                tfa.image.transform(images, transforms, **args))


def test_transform_output_shape_and_2d():
    gray = tf.constant(PHOTO[..., 0])
    args = dict(interpolation="bilinear", output_shape=[30, 70])
    assert_same(core.transform(gray, PROJECTIVE, **args),
                tfa.image.transform(gray, PROJECTIVE, **args))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_rotate(kind, interpolation, fill_mode):
    images = image(kind)
    angles = 0.4 if images.shape.rank == 3 else [0.4, -1.2, 3.0, 0.0]
    args = dict(interpolation=interpolation, fill_mode=fill_mode, fill_value=7.0)
    assert_same(core.rotate(images, angles, **args), tfa.image.rotate(images, angles, **args))


@pytest.mark.parametrize("angles", [0.7, [0.1, -2.5, 3.1]])
def test_angles_to_projective_transforms(angles):
    assert_same(core.angles_to_projective_transforms(angles, 48.0, 64.0),
                tfa.image.angles_to_projective_transforms(angles, 48.0, 64.0))


def test_compose_and_matrix_helpers():
    rot = tfa.image.angles_to_projective_transforms([0.3, 1.1], 48.0, 64.0)
    shift = tfa.image.translations_to_projective_transforms([[3.0, -2.0], [0.5, 7.0]])
    persp = tf.constant([PROJECTIVE, PROJECTIVE])
    assert_same(core.compose_transforms([rot, shift, persp]),
                tfa.image.compose_transforms([rot, shift, persp]))
    assert_same(core.compose_transforms([persp[0]]), tfa.image.compose_transforms([persp[0]]))
    ops = tfa.image.transform_ops
    assert_same(core.flat_transforms_to_matrices(persp), ops.flat_transforms_to_matrices(persp))
    matrices = ops.flat_transforms_to_matrices(persp) * 2.0
    assert_same(core.matrices_to_flat_transforms(matrices),
                ops.matrices_to_flat_transforms(matrices))


@pytest.mark.parametrize("translations", [[3.0, -5.0], [[2.5, 1.0], [-7.0, 0.0], [0.0, 9.0],
                                                          [30.0, -20.0]]])
def test_translations_to_projective_transforms(translations):
    assert_same(core.translations_to_projective_transforms(translations),
                tfa.image.translations_to_projective_transforms(translations))


@pytest.mark.parametrize("kind", ["u8-hwc", "f32-bhwc"])
@pytest.mark.parametrize("interpolation,fill_mode", [
    ("nearest", "constant"), ("bilinear", "reflect"), ("nearest", "wrap"), ("bilinear", "nearest")])
def test_translate(kind, interpolation, fill_mode):
    images = image(kind)
    shift = [5.5, -3.0] if images.shape.rank == 3 else [[5.5, -3.0], [-10.0, 2.0], [0.0, 0.0],
                                                         [1.25, 40.0]]
    args = dict(interpolation=interpolation, fill_mode=fill_mode, fill_value=3.0)
    assert_same(core.translate(images, shift, **args), tfa.image.translate(images, shift, **args))


@pytest.mark.parametrize("kind", ["u8-hwc", "f32-hwc"])
@pytest.mark.parametrize("replace", [128, [10, 200, 30]])
def test_translate_xy_and_shears(kind, replace):
    img = image(kind)
    replace = tf.constant(replace, img.dtype) if kind == "u8-hwc" else tf.constant(replace) / 255
    for to in ([7, -4], [-20, 0]):
        assert_same(core.translate_xy(img, to, replace), tfa.image.translate_xy(img, to, replace))
    for level in (0.3, -0.45):
        assert_same(core.shear_x(img, level, replace), tfa.image.shear_x(img, level, replace))
        assert_same(core.shear_y(img, level, replace), tfa.image.shear_y(img, level, replace))


# --- filters ---------------------------------------------------------------------------------

FILTER_KINDS = ("u8-hwc", "u8-bhwc", "f32-bhwc", "u8-hw")
FILTER_ARGS = [
    dict(),
    dict(filter_shape=5, padding="CONSTANT", constant_values=9),
    dict(filter_shape=(3, 5), padding="SYMMETRIC"),
    dict(filter_shape=(4, 4), padding="REFLECT"),  # even window: extra pad bottom/right
]


@pytest.mark.parametrize("kind", FILTER_KINDS)
@pytest.mark.parametrize("args,sigma", list(zip(FILTER_ARGS, [1.0, (0.7, 2.0), 1.5, (2.0, 0.5)])))
def test_gaussian_filter2d(kind, args, sigma):
    img = tf.constant(PHOTO[..., 1]) if kind == "u8-hw" else image(kind)
    assert_same(core.gaussian_filter2d(img, sigma=sigma, **args),
                tfa.image.gaussian_filter2d(img, sigma=sigma, **args))


@pytest.mark.parametrize("kind", FILTER_KINDS)
@pytest.mark.parametrize("args", FILTER_ARGS)
def test_mean_filter2d(kind, args):
    img = tf.constant(PHOTO[..., 1]) if kind == "u8-hw" else image(kind)
    assert_same(core.mean_filter2d(img, **args), tfa.image.mean_filter2d(img, **args))


@pytest.mark.parametrize("kind", FILTER_KINDS)
@pytest.mark.parametrize("args", FILTER_ARGS)
def test_median_filter2d(kind, args):
    img = tf.constant(PHOTO[..., 1]) if kind == "u8-hw" else image(kind)
    assert_same(core.median_filter2d(img, **args), tfa.image.median_filter2d(img, **args))


# --- cutout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["u8-bhwc", "f32-bhwc"])
@pytest.mark.parametrize("mask_size,offset,value", [
    (8, (0, 0), 0),                                     # corner: clipped box
    ((10, 20), (24, 32), 77),                           # centred, rectangular
    ((6, 4), [[5, 60], [47, 0], [20, 20], [0, 63]], 1), # one offset per image, at the borders
    ((60, 80), (24, 32), 0),                            # mask larger than the image
])
def test_cutout(kind, mask_size, offset, value):
    images = image(kind)
    assert_same(core.cutout(images, mask_size, offset, value),
                tfa.image.cutout(images, mask_size, offset, value))


@pytest.mark.parametrize("mask_size", [(10, 20), 16, (60, 20)])
def test_stateless_random_cutout(mask_size):
    images, seed = image("u8-bhwc"), tf.constant([7, 42])
    ours = core.stateless_random_cutout(images, mask_size, seed, constant_values=5)
    assert_same(ours, core.stateless_random_cutout(images, mask_size, seed, constant_values=5))
    # Same draws as tfa.image.random_cutout (uniform centre in [half, size - half), or size // 2
    # when the mask covers the axis), made stateless: one split seed per axis.
    mh, mw = (mask_size, mask_size) if isinstance(mask_size, int) else mask_size
    seeds = tf.random.experimental.stateless_split(seed, 2)
    centres = [tf.fill([4], size // 2) if m >= size else
               tf.random.stateless_uniform([4], s, m // 2, size - m // 2, tf.int32)
               for m, size, s in ((mh, H, seeds[0]), (mw, W, seeds[1]))]
    assert_same(ours, tfa.image.cutout(images, mask_size, tf.stack(centres, 1), 5))
    if mh >= H:  # the height draw is deterministic there, in tfa too
        assert np.all(centres[0].numpy() == H // 2)


# --- color -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["u8-hwc", "u8-bhwc", "f255-hwc", "f255-bhwc"])
def test_equalize(kind):
    img = image(kind)
    assert_same(core.equalize(img), tfa.image.equalize(img))
    low_contrast = tf.cast(tf.cast(img, tf.float32) * 0.3 + 60, img.dtype)
    assert_same(core.equalize(low_contrast), tfa.image.equalize(low_contrast))


def test_equalize_flat_bins_and_2d():
    flat = tf.fill([H, W, 3], tf.constant(90, tf.uint8))  # step == 0: returned unchanged
    assert_same(core.equalize(flat), tfa.image.equalize(flat))
    half = tf.constant(PHOTO // 2)  # values < 128, so bins=128 is valid
    assert_same(core.equalize(half, bins=128), tfa.image.equalize(half, bins=128))
    gray = tf.constant(PHOTO[..., 2])
    assert_same(core.equalize(gray), tfa.image.equalize(gray))


@pytest.mark.parametrize("kind", ["u8-hwc", "u8-bhwc", "f255-bhwc"])
@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 2.5])
def test_sharpness(kind, factor):
    img = image(kind)
    assert_same(core.sharpness(img, factor), tfa.image.sharpness(img, factor))


@pytest.mark.parametrize("kind", ["u8-hwc", "f255-bhwc", "f32-hwc"])
@pytest.mark.parametrize("factor", [0.0, 0.3, 1.0, 1.7, -0.5])
def test_blend(kind, factor):
    a = image(kind)
    b = tf.reverse(a, [-2])
    assert_same(core.blend(a, b, factor), tfa.image.blend(a, b, factor))
    # A tensor factor takes the graph-friendly path; same values (always float32).
    expected = tf.cast(tfa.image.blend(a, b, factor), tf.float32)
    assert_same(tf.function(core.blend)(a, b, tf.constant(factor)), expected)


def assert_close_to_kernel(ours, kernel):
    """Equal up to float rounding to tfa's C++ adjust_hsv_in_yiq kernel.

    The kernel builds the 3x3 matrix with Eigen (std::cos/sin) and sums each pixel's three products
    in its own order, where we use TF matmuls: float32 results differ by a few ulp (measured
    <= 2.4e-7 on this image, hence 1e-6). Converted back to uint8 (x * 255.5, truncated) such a
    difference can only matter right at an integer boundary: at most 1 step (measured: 0).
    """
    assert ours.dtype == kernel.dtype and ours.shape == kernel.shape
    diff = np.abs(ours.numpy().astype(np.float64) - kernel.numpy().astype(np.float64))
    assert diff.max() <= (1 if ours.dtype == tf.uint8 else 1e-6)


HSV_ARGS = [(0.0, 1.0, 1.0), (0.8, 1.0, 1.0), (-2.0, 1.6, 0.7), (3.0, 0.2, 1.3)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hsv", HSV_ARGS)
def test_adjust_hsv_in_yiq(kind, hsv):
    img = image(kind)
    ours = core.adjust_hsv_in_yiq(img, *hsv)
    # Same math as tfa's own pure-TF fallback, op for op: exact.
    fallback = tfa.image.distort_image_ops._adjust_hsv_in_yiq
    as_float = tf.image.convert_image_dtype(img, tf.float32)
    expected = tf.image.convert_image_dtype(fallback(as_float, *[tf.constant(v, tf.float32)
                                                                 for v in hsv]), img.dtype)
    assert_same(ours, expected)
    assert_close_to_kernel(ours, tfa.image.adjust_hsv_in_yiq(img, *hsv))


@pytest.mark.parametrize("kind", ["u8-hwc", "f32-bhwc"])
def test_stateless_random_hsv_in_yiq(kind):
    img, seed = image(kind), tf.constant([3, 9])
    ranges = (0.5, 0.6, 1.4, 0.8, 1.1)
    ours = core.stateless_random_hsv_in_yiq(img, *ranges, seed=seed)
    assert_same(ours, core.stateless_random_hsv_in_yiq(img, *ranges, seed=seed))
    assert not np.array_equal(ours, core.stateless_random_hsv_in_yiq(img, *ranges, seed=[3, 10]))
    # tfa.image.random_hsv_in_yiq draws uniform delta_hue in [-max, max) and scales in
    # [lower, upper); ours draws them statelessly from one split seed each.
    seeds = tf.random.experimental.stateless_split(seed, 3)
    draws = [tf.random.stateless_uniform([], s, lo, hi)
             for s, (lo, hi) in zip(seeds, [(-0.5, 0.5), (0.6, 1.4), (0.8, 1.1)])]
    assert_same(ours, core.adjust_hsv_in_yiq(img, *draws))
    # Degenerate ranges draw nothing, so tfa's stateful op is deterministic and comparable.
    fixed = (0.0, 1.2, 1.2, 0.9, 0.9)
    ours = core.stateless_random_hsv_in_yiq(img, *fixed, seed=seed)
    assert_same(ours, core.adjust_hsv_in_yiq(img, 0.0, 1.2, 0.9))
    assert_close_to_kernel(ours, tfa.image.random_hsv_in_yiq(img, *fixed))


# --- dense warp ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_dense_image_warp(dtype):
    img = tf.cast(image("f32-bhwc"), dtype)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:H, 0:W]
    smooth = np.stack([4 * np.sin(xx / 7.0), 6 * np.cos(yy / 9.0)], -1)
    flow = tf.constant(smooth[None] + rng.normal(0, 1.5, (4, H, W, 2)) + [[[[0]]], [[[30]]],
                                                                          [[[-3]]], [[[0.5]]]],
                       dtype)  # includes flows that leave the image (clamped to the border)
    assert_same(core.dense_image_warp(img, flow), tfa.image.dense_image_warp(img, flow))


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_interpolate_bilinear(indexing):
    grid = image("f32-bhwc")
    points = tf.constant(np.random.default_rng(2).uniform(-5, 70, (4, 200, 2)), tf.float32)
    assert_same(core.interpolate_bilinear(grid, points, indexing),
                tfa.image.interpolate_bilinear(grid, points, indexing))


def test_signatures_are_tfas():
    """Argument names, order and defaults as tfa's."""
    def params(fn):
        fn = getattr(fn, "python_function", fn)
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    public = [n for n in dir(tfa.image)
              if not n.startswith("_") and callable(getattr(tfa.image, n))]
    shared = [n for n in public if hasattr(core, n)]
    assert set(public) - set(shared) == {  # as tfa_core's docstring says
        "connected_components", "euclidean_dist_transform", "interpolate_spline", "resampler",
        "sparse_image_warp"}
    for name in shared:
        ours, theirs = params(getattr(core, name)), params(getattr(tfa.image, name))
        assert ours == theirs, name
